"""Section 6's dissection study: its models and concept data at each scale, cached dissections and
the chapter's summaries.

* Models: :func:`zoo_models` (the small CIFAR-10 trio :data:`ZOO_TRIO` from the zoo) and
  :func:`imagenet_models` (torchvision's ResNet-50 and ConvNeXt-T, paper scale; the ResNet-50 without
  residual ReLU via :func:`strip_residual_relu`).
* Data: :func:`concept_dataset` (Broden at paper scale, :func:`lib.synthetic_concepts.make_concept_dataset`
  on CIFAR-10 otherwise).
* :func:`dissect_memo`: :func:`lib.dissection.dissect` cached with :func:`lib.zoo.memo`.
* Summaries: :func:`rotation_trend`, :func:`rotation_slope_test` (slope, confidence interval and
  permutation test), :func:`unit_examples`.

Every name here is also reachable as ``lib.dissection.<name>``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import dissection
from .broden import BrodenDataset
from .config import get_device
from .dissection import DissectionResult, quantile_thresholds
from .synthetic_concepts import make_concept_dataset

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ZOO_TRIO", "stage_outputs", "strip_residual_relu", "imagenet_models",
           "zoo_models", "concept_dataset", "rotation_trend", "rotation_slope_test", "dissect_memo", "unit_examples"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The small-scale trio from the zoo: (zoo family, label, residual-stream output, layer inside the block).
# The residual output named here is the paper's choice (the last one); the chapter may dissect another
# stage (:func:`stage_outputs`), since colour detectors sit early in these small CIFAR networks.
ZOO_TRIO = (
    ("resnet20_dissection", "ResNet20, ReLU on the residual stream", "layer3.2", "layer3.2.act1"),
    ("resnet20_noresrelu", "ResNet20, no residual ReLU", "layer3.2", "layer3.2.act1"),
    ("convnext", "ConvNeXt-style, no residual activation", "stage3.1.out", "stage3.1.act"),
)


def stage_outputs(model: nn.Module) -> list[str]:
    """The residual-stream output of the last block of each stage, in forward order.

    ResNet20: ``["layer1.2", "layer2.2", "layer3.2"]`` (after the residual ReLU where there is one);
    the CIFAR ConvNeXt: ``["stage1.1.out", "stage2.1.out", "stage3.1.out"]``. Stage ``k`` (from 1)
    works at ``32 / 2**(k-1)`` pixels. Names work with :func:`lib.models.features`.
    """
    from .models import residual_outputs

    last = {}
    for name in residual_outputs(model):
        last[name.split(".")[0]] = name
    return list(last.values())


class _BottleneckNoResidualReLU(nn.Module):
    """torchvision's ``Bottleneck.forward`` without the ReLU after the residual addition (the
    paper's modified ResNet-50). torchvision shares one ``relu`` module between the three uses, so
    the block's class is swapped rather than a module replaced."""

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + identity


def strip_residual_relu(model: nn.Module) -> nn.Module:
    """Remove the ReLU after every residual addition of a torchvision ResNet with Bottleneck blocks
    (in place; returns ``model``). The ReLUs inside the blocks stay."""
    from torchvision.models.resnet import Bottleneck

    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no torchvision Bottleneck blocks; "
                         f"supported: torchvision.models.resnet50 and its relatives")
    for m in blocks:
        m.__class__ = type("BottleneckNoResidualReLU", (_BottleneckNoResidualReLU, Bottleneck), {})
    return model


def _pretrained(name: str, builder, weights):
    try:
        return builder(weights=weights)
    except Exception as exc:
        raise RuntimeError(
            f"could not load torchvision's ImageNet weights {weights} for {name} ({type(exc).__name__}: "
            f"{exc}). They are downloaded on first use into {torch.hub.get_dir()}/checkpoints; on a "
            f"machine without network access copy {weights.url.rsplit('/', 1)[-1]} (from "
            f"{weights.url}) there, or point TORCH_HOME at a folder holding checkpoints/ with it.") from exc


def imagenet_models(noresrelu_weights=None) -> dict:
    """The paper's ImageNet models (paper scale): ``{name: dict(model, label, layer, inner_layer, key)}``.

    * ``resnet50``: torchvision's ResNet-50 (``IMAGENET1K_V1``), dissected at ``layer4`` (the last
      residual output, after its ReLU) and inside the last block at ``layer4.2.conv2``;
    * ``resnet50_noresrelu``: a ResNet-50 without the residual ReLU (:func:`strip_residual_relu`)
      with the state dict saved at ``noresrelu_weights`` (the authors trained their own; torchvision
      has none), included only when that path is given;
    * ``convnext_tiny``: torchvision's ConvNeXt-T (``IMAGENET1K_V1``), at its last block output
      ``features.7.2`` and inside that block at ``features.7.2.block.5`` (the expanded layer after GELU).

    Weights come from torchvision's cache (downloading them if the network allows); when they cannot
    be had, a ``RuntimeError`` says which file is missing and where to put it. Models are in eval mode.
    """
    import torchvision.models as tvm

    out = {}
    model = _pretrained("resnet50", tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1)
    out["resnet50"] = dict(model=model.eval(), label="ResNet-50 (ImageNet)", layer="layer4",
                           inner_layer="layer4.2.conv2", key="torchvision-resnet50-IMAGENET1K_V1")
    if noresrelu_weights is not None:
        path = Path(noresrelu_weights)
        if not path.is_file():
            raise ValueError(f"noresrelu_weights must be the path of a ResNet-50 state dict, got {str(path)!r} "
                             f"(no such file)")
        model = strip_residual_relu(tvm.resnet50(weights=None))
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        out["resnet50_noresrelu"] = dict(model=model.eval(), label="ResNet-50 without residual ReLU",
                                         layer="layer4", inner_layer="layer4.2.conv2",
                                         key=f"resnet50-noresrelu-{_file_sha256(path)[:16]}")
    model = _pretrained("convnext_tiny", tvm.convnext_tiny, tvm.ConvNeXt_Tiny_Weights.IMAGENET1K_V1)
    out["convnext_tiny"] = dict(model=model.eval(), label="ConvNeXt-T (ImageNet)", layer="features.7.2",
                                inner_layer="features.7.2.block.5", key="torchvision-convnext_tiny-IMAGENET1K_V1")
    return out


def _file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def zoo_models(scale: str, seed: int = 0, data=None, device=None) -> dict:
    """The small-scale trio (:data:`ZOO_TRIO`) from the zoo at ``scale`` (trained if not cached):
    ``{name: dict(model, label, layer, inner_layer, key, test_acc, arch)}``; ``key`` is the zoo's model
    key, ``arch`` the architecture settings as text (``"arch=resnet20, width=0.25"``)."""
    from . import zoo

    data = data or zoo.load_data()
    book = zoo.book_models(scale, seed)
    out = {}
    for name, label, layer, inner in ZOO_TRIO:
        entry = book[name]
        model_seed = entry["seeds"][0]
        model = zoo.get(entry["arch"], entry["recipe"], model_seed, data=data, device=device, progress=False)
        out[name] = dict(model=model, label=label, layer=layer, inner_layer=inner,
                         key=zoo.model_key(entry["arch"], entry["recipe"], model_seed, data.identity),
                         test_acc=model.zoo_meta["test_acc"],
                         arch=", ".join(f"{k}={v}" for k, v in entry["arch"].items()))
    return out


def concept_dataset(scale: str, broden_dir=None, n_images: int | None = None, seed: int = 0, data=None,
                    pasted: bool = True):
    """The concept dataset of Section 6 at ``scale``: ``(BrodenDataset, config dict)``.

    ``paper``: the real Broden dataset at ``broden_dir`` (required), images resized to 224 and
    normalised as for ImageNet. ``smoke``/``cpu``: :func:`make_concept_dataset` from ``n_images``
    (default: the scale's ``dissection_images``) CIFAR-10 test images with their class labels, written
    once under ``cache_dir("broden")``. ``pasted=False`` leaves the images untouched: no pasted
    textures and shapes, only the concepts computed from the photographs themselves (per-pixel colour
    names and the image-level class). The config dict identifies the data (for :func:`lib.zoo.memo`).
    """
    from .config import cache_dir, check_choice, scale_settings

    check_choice("scale", scale, ("smoke", "cpu", "paper"))
    if scale == "paper":
        if broden_dir is None or not Path(broden_dir).is_dir():
            raise ValueError(f"broden_dir must be the folder of the Broden dataset (e.g. broden1_224 from "
                             f"NetDissect's script/dlbroden.sh) at scale 'paper', got {broden_dir!r}")
        ds = BrodenDataset(broden_dir, resolution=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return ds, dict(broden_dir=str(Path(broden_dir).resolve()), n_images=len(ds), resolution=224)
    from . import zoo

    n = scale_settings(scale).dissection_images if n_images is None else n_images
    data = data or zoo.load_data()
    p = 0.5 if pasted else 0.0
    root = cache_dir("broden") / f"cifar10-test-n{n}-seed{seed}{'' if pasted else '-natural'}"
    make_concept_dataset(root, n, seed=seed, images=data.x_test.numpy(), labels=data.y_test.numpy(),
                         p_texture=p, p_shape=p)
    config = dict(generator="make_concept_dataset", n_images=n, seed=seed, data=data.identity)
    if not pasted:      # the pasted dataset keeps its old config, so its cached dissections stay valid
        config["pasted"] = False
    return BrodenDataset(root), config


def rotation_trend(alphas, counts, tolerance: float = 0.1) -> dict:
    """How a count changes along the rotation path: ``counts`` ``(n_alphas, n_rotations)``.

    Returns ``slope`` (least-squares slope of the mean count against alpha), ``start`` and ``end``
    (mean counts at the first and last alpha), ``relative_change`` (``(end - start) / start``, NaN
    when ``start`` is 0) and ``verdict``: ``"falls"`` / ``"rises"`` if the relative change is below
    ``-tolerance`` / above ``tolerance``, else ``"flat"`` (from a start of 0: ``"rises"`` if the end
    is positive, else ``"flat"``).
    """
    x = np.asarray(alphas, dtype=float)
    y = np.asarray(counts, dtype=float)
    if y.ndim != 2 or y.shape[0] != len(x) or len(x) < 2:
        raise ValueError(f"counts must have shape (n_alphas, n_rotations) with n_alphas = len(alphas) >= 2, "
                         f"got {y.shape} for {len(x)} alphas")
    if not 0 <= tolerance:
        raise ValueError(f"tolerance must be a non-negative number, got {tolerance!r}")
    mean = y.mean(1)
    slope = float(np.polyfit(x, mean, 1)[0])
    start, end = float(mean[0]), float(mean[-1])
    rel = (end - start) / start if start > 0 else float("nan")
    if start > 0:
        verdict = "falls" if rel < -tolerance else "rises" if rel > tolerance else "flat"
    else:
        verdict = "rises" if end > 0 else "flat"
    return dict(slope=slope, start=start, end=end, relative_change=rel, verdict=verdict)


def rotation_slope_test(alphas, counts, n_permutations: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Is the change of a count along the rotation path significant? ``counts``: ``(n_alphas, n_rotations)``.

    Each random rotation ``Q_r`` gives one curve ``counts[:, r]`` against ``alphas``, and the rotations
    are independent draws, so the statistic is the mean over rotations of the least-squares slope of
    each curve (units per unit of alpha; the change from alpha 0 to alpha 1 on the fitted line).

    * ``ci``: the ``level`` confidence interval of that mean slope, Student's t over the rotations
      (NaN with a single rotation).
    * ``p_value``: a two-sided permutation test of "the count does not depend on alpha": within each
      rotation's curve the counts are shuffled across the alphas (``n_permutations`` random shuffles
      from ``seed``), and ``p = (1 + #{|slope*| >= |slope|}) / (1 + n_permutations)``.
    * ``verdict``: ``"falls"`` / ``"rises"`` if ``p < 1 - level`` and the interval lies below / above 0,
      else ``"flat"`` (no significant change).

    Parameters
    ----------
    alphas : sequence of float, length ``n_alphas`` >= 2.
    counts : array ``(n_alphas, n_rotations)`` (e.g. :attr:`DissectionResult.interpretable`).
    n_permutations : int >= 1.
    seed : int, for the shuffles.
    level : float in (0, 1).

    Returns
    -------
    dict with ``slope``, ``ci`` (low, high), ``p_value``, ``verdict``, ``slopes`` (one per rotation),
    ``n_rotations`` and ``level``.
    """
    import scipy.stats

    x = np.asarray(alphas, dtype=float)
    y = np.asarray(counts, dtype=float)
    if y.ndim != 2 or y.shape[0] != len(x) or len(x) < 2 or y.shape[1] < 1:
        raise ValueError(f"counts must have shape (n_alphas, n_rotations) with n_alphas = len(alphas) >= 2 "
                         f"and n_rotations >= 1, got {y.shape} for {len(x)} alphas")
    if not np.isfinite(y).all() or not np.isfinite(x).all():
        raise ValueError("alphas and counts must be finite")
    if np.ptp(x) == 0:
        raise ValueError(f"alphas must not all be equal, got {x.tolist()}")
    if not isinstance(n_permutations, int) or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive int, got {n_permutations!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    xc = (x - x.mean()) / ((x - x.mean()) ** 2).sum()          # slope of curve r = xc @ y[:, r]
    slopes = xc @ y
    slope = float(slopes.mean())
    r = y.shape[1]
    if r > 1:
        half = scipy.stats.t.ppf(0.5 + level / 2, r - 1) * slopes.std(ddof=1) / np.sqrt(r)
        ci = (slope - half, slope + half)
    else:
        ci = (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    # Shuffle each rotation's counts across the alphas: argsort of uniforms is a batch of permutations.
    order = rng.random((n_permutations, len(x), r)).argsort(1)
    shuffled = np.take_along_axis(np.broadcast_to(y, (n_permutations, *y.shape)), order, 1)
    null = np.einsum("a,par->p", xc, shuffled) / r
    p = float((1 + (np.abs(null) >= abs(slope) - 1e-12).sum()) / (1 + n_permutations))
    significant = p < 1 - level
    if significant and ci[1] < 0:
        verdict = "falls"
    elif significant and ci[0] > 0:
        verdict = "rises"
    else:
        verdict = "flat"
    return dict(slope=slope, ci=(float(ci[0]), float(ci[1])), p_value=p, verdict=verdict, slopes=slopes.tolist(),
                n_rotations=r, level=level)


def dissect_memo(net: dict, layer: str, dataset: BrodenDataset, dataset_config: dict, alphas, n_rotations: int,
                 seed: int = 0, quantile: float = 0.005, iou_threshold: float = 0.04, device=None) -> DissectionResult:
    """:func:`dissect` of ``net["model"]`` at ``layer``, cached with :func:`lib.zoo.memo` under the
    model's ``net["key"]``, the layer, ``dataset_config`` (what identifies the data, e.g. from
    :func:`concept_dataset`), the alphas, the number of rotations, the seed and the NetDissect settings."""
    from . import zoo

    config = dict(model=net["key"], layer=layer, dataset=dataset_config, alphas=[float(a) for a in alphas],
                  n_rotations=n_rotations, seed=seed, quantile=quantile, iou_threshold=iou_threshold)
    # dissect is looked up on lib.dissection at call time, so that replacing it there takes effect.
    d = zoo.memo("dissection", config, lambda: dissection.dissect(
        net["model"], layer, dataset, alphas=alphas, n_rotations=n_rotations, seed=seed, quantile=quantile,
        iou_threshold=iou_threshold, device=device, progress=False).to_dict())
    return DissectionResult.from_dict(d)


def unit_examples(model: nn.Module, layer: str, dataset: BrodenDataset, unit: int, concept: str,
                  k: int = 6, quantile: float = 0.005, device=None, batch_size: int = 128) -> dict:
    """The ``k`` images on which ``unit`` of ``layer`` is most active, with its thresholded map and the
    concept's mask, for figures.

    Returns ``images`` uint8 ``(k, H, W, 3)``, ``unit_masks`` bool ``(k, 1, H, W)`` (the unit's map
    upsampled bilinearly to the mask size and above its NetDissect threshold, ``quantile`` over the whole
    dataset), ``concept_masks`` bool ``(k, 1, H, W)`` and the dataset ``indices`` ``(k,)``.
    """
    from .models import features

    if concept not in dataset.concepts:
        raise ValueError(f"unknown concept {concept!r}; accepted values: {', '.join(dataset.concepts)}")
    dev = get_device(device)
    model = model.to(dev)
    acts = torch.cat([features(model, x.to(dev), [layer], batch_size)[layer][:, unit:unit + 1]
                      for x, _, _ in dataset.batches(batch_size)]).float()
    if acts.shape[1] != 1:
        raise ValueError(f"unit must be in [0, units) of layer {layer!r}, got {unit!r}")
    threshold = quantile_thresholds(acts, quantile)[0]
    top = acts.amax((1, 2, 3)).topk(min(k, len(acts))).indices.cpu().tolist()
    c = dataset.concepts.index(concept)
    images, unit_masks, concept_masks = [], [], []
    for i in top:
        x, masks, _ = next(dataset.batches(1, normalize=False, indices=[i]))
        images.append((x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
        up = F.interpolate(acts[i:i + 1], size=dataset.mask_size, mode="bilinear", align_corners=False)
        unit_masks.append((up[0] > threshold).cpu().numpy())
        concept_masks.append(masks[0, c:c + 1].numpy())
    return dict(images=np.stack(images), unit_masks=np.stack(unit_masks),
                concept_masks=np.stack(concept_masks), indices=np.array(top))
