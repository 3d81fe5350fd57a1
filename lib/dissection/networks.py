"""The networks that Section 6 dissects, per scale.

* :func:`zoo_models`: the small CIFAR-10 trio :data:`ZOO_TRIO` from the zoo (``smoke``, ``cpu``,
  ``gpu``), and :func:`stage_outputs`, the layers the chapter scans.
* :func:`imagenet_models`: torchvision's ResNet-50 and ConvNeXt-T (``paper``), the ResNet-50 without
  residual ReLU via :func:`strip_residual_relu`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import Bottleneck

from .. import zoo
from ..config import file_sha256
from ..data import load_data
from ..models import features, residual_outputs

__all__ = ["ZOO_TRIO", "MIN_UNITS", "stage_outputs", "dissection_layer", "strip_residual_relu", "imagenet_models",
           "zoo_models"]

#: The fewest units a dissected layer may have. With fewer, one unit moves the interpretable
#: fraction by more than 6 pp and the counts along alpha cannot show a trend.
MIN_UNITS = 16

#: The small-scale trio from the zoo, each ``(zoo family, label)``. Each is dissected at its last
#: residual output, the paper's choice (:func:`dissection_layer`).
ZOO_TRIO = (
    ("resnet20_dissection", "ResNet20, ReLU on the residual stream"),
    ("resnet20_noresrelu", "ResNet20, no residual ReLU"),
    ("convnext", "ConvNeXt-style, no residual activation"),
)


def stage_outputs(model: nn.Module) -> list[str]:
    """The residual-stream output of the last block of each stage, in forward order.

    Parameters
    ----------
    model : torch.nn.Module
        A ResNet20 or CIFAR ConvNeXt of :mod:`lib.models`.

    Returns
    -------
    list of str
        Module names that work with :func:`lib.models.features`. ResNet20:
        ``["layer1.2", "layer2.2", "layer3.2"]`` (after the residual ReLU where there is one); the
        CIFAR ConvNeXt: ``["stage1.1.out", "stage2.1.out", "stage3.1.out"]``. Stage ``k`` (from 1)
        works at ``32 / 2**(k-1)`` pixels.
    """
    last = {}
    for name in residual_outputs(model):
        last[name.split(".")[0]] = name
    return list(last.values())


def dissection_layer(model: nn.Module, min_units: int = MIN_UNITS) -> tuple[str, int]:
    """The layer Section 6 dissects: the last residual-stream output, as in the paper.

    Parameters
    ----------
    model : torch.nn.Module
        A ResNet20 or CIFAR ConvNeXt of :mod:`lib.models` (32 x 32 inputs).
    min_units : int
        The fewest units (channels) accepted.

    Returns
    -------
    layer : str
        E.g. ``"layer3.2"`` (ResNet20) or ``"stage3.2.out"`` (:func:`lib.models.convnext20`).
    units : int
        Its channels.

    Raises
    ------
    ValueError
        If that layer has fewer than ``min_units`` channels (a model too narrow to dissect).
    """
    layer = stage_outputs(model)[-1]
    with torch.no_grad():
        units = features(model.eval(), torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device),
                         [layer])[layer].shape[1]
    if units < min_units:
        raise ValueError(f"the last residual output {layer!r} has {units} units; dissection needs at least "
                         f"{min_units}: use a wider model (width multiplier)")
    return layer, units


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
    """Remove the ReLU after every residual addition of a torchvision ResNet with Bottleneck blocks.

    The ReLUs inside the blocks stay.

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision ResNet with ``Bottleneck`` blocks (e.g. ``torchvision.models.resnet50()``),
        changed in place.

    Returns
    -------
    torch.nn.Module
        ``model``.

    Raises
    ------
    ValueError
        If ``model`` has no ``Bottleneck`` block.
    """
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
    """The paper's ImageNet models (``paper`` scale), in eval mode.

    * ``resnet50``: torchvision's ResNet-50 (``IMAGENET1K_V1``), dissected at ``layer4`` (the last
      residual output, after its ReLU) and inside the last block at ``layer4.2.conv2``;
    * ``resnet50_noresrelu``: a ResNet-50 without the residual ReLU (:func:`strip_residual_relu`)
      with the state dict saved at ``noresrelu_weights`` (the authors trained their own; torchvision
      has none), included only when that path is given;
    * ``convnext_tiny``: torchvision's ConvNeXt-T (``IMAGENET1K_V1``), at its last block output
      ``features.7.2`` and inside that block at ``features.7.2.block.5`` (the expanded layer after GELU).

    Weights come from torchvision's cache (downloading them if the network allows).

    Parameters
    ----------
    noresrelu_weights : str or os.PathLike, optional
        The state dict of a ResNet-50 trained without residual ReLU.

    Returns
    -------
    dict
        ``{name: dict(model, label, layer, inner_layer, key)}``; ``key`` identifies the weights in
        cache keys.

    Raises
    ------
    ValueError
        If ``noresrelu_weights`` is given but is not a file (checked before anything is loaded).
    RuntimeError
        If torchvision's weights cannot be had; the message says which file is missing and where
        to put it.
    """
    path = None if noresrelu_weights is None else Path(noresrelu_weights)
    if path is not None and not path.is_file():
        raise ValueError(f"noresrelu_weights must be the path of a ResNet-50 state dict, got {str(path)!r} "
                         f"(no such file)")
    out = {}
    model = _pretrained("resnet50", tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1)
    out["resnet50"] = dict(model=model.eval(), label="ResNet-50 (ImageNet)", layer="layer4",
                           inner_layer="layer4.2.conv2", key="torchvision-resnet50-IMAGENET1K_V1")
    if path is not None:
        model = strip_residual_relu(tvm.resnet50(weights=None))
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        out["resnet50_noresrelu"] = dict(model=model.eval(), label="ResNet-50 without residual ReLU",
                                         layer="layer4", inner_layer="layer4.2.conv2",
                                         key=f"resnet50-noresrelu-{file_sha256(path)[:16]}")
    model = _pretrained("convnext_tiny", tvm.convnext_tiny, tvm.ConvNeXt_Tiny_Weights.IMAGENET1K_V1)
    out["convnext_tiny"] = dict(model=model.eval(), label="ConvNeXt-T (ImageNet)", layer="features.7.2",
                                inner_layer="features.7.2.block.5", key="torchvision-convnext_tiny-IMAGENET1K_V1")
    return out


def zoo_models(scale: str, seed: int = 0, data=None, device=None) -> dict:
    """The small-scale trio (:data:`ZOO_TRIO`) from the zoo at ``scale``, trained if not cached.

    Parameters
    ----------
    scale : str
        ``"smoke"``, ``"cpu"`` or ``"gpu"`` (the zoo's book families at that scale).
    seed : int
        The book's seed; each family's first model seed is used.
    data : lib.data.Dataset, optional
        CIFAR-10 (default: :func:`lib.data.load_data`).
    device : str or torch.device, optional
        Where to train if a model is not cached.

    Returns
    -------
    dict
        ``{name: dict(model, label, layer, inner_layer, key, test_acc, arch, seconds)}``: ``layer`` is
        :func:`dissection_layer`, ``inner_layer`` the activation inside that block; ``key`` is
        the zoo's model key, ``test_acc`` the test accuracy (a fraction), ``arch`` the architecture
        settings as text (``"arch=resnet20, width=0.25"``), ``seconds`` the recorded training time.
    """
    data = data or load_data()
    book = zoo.book_models(scale, seed)
    out = {}
    for name, label in ZOO_TRIO:
        entry = book[name]
        model_seed = entry["seeds"][0]
        model = zoo.get(entry["arch"], entry["recipe"], model_seed, data=data, device=device, progress=False)
        layer, _ = dissection_layer(model)
        inner = layer.removesuffix(".out") + (".act" if layer.endswith(".out") else ".act1")
        out[name] = dict(model=model, label=label, layer=layer, inner_layer=inner,
                         key=zoo.model_key(entry["arch"], entry["recipe"], model_seed, data.identity),
                         test_acc=model.zoo_meta["test_acc"], seconds=model.zoo_meta["seconds"],
                         arch=", ".join(f"{k}={v}" for k, v in entry["arch"].items()))
    return out
