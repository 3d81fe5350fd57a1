"""Section 6's study: its concept data per scale, cached dissections, the layer scan and the
chapter's figures and checks.

* :func:`concept_dataset`: Broden at ``paper`` scale, the offline dataset of
  :func:`lib.dissection.make_concept_dataset` on CIFAR-10 otherwise.
* :func:`dissect_memo`: :func:`lib.dissection.dissect` cached with :func:`lib.cache.memo`;
  :func:`stage_scan` and :func:`most_interpretable_stage` choose the layer to dissect.
* :func:`layer_iou` and :func:`layers_agree` for the chapter's checks; :func:`unit_examples` for its
  figure of one detector.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import zoo
from ..cache import memo
from ..config import cache_dir, check_choice, get_device
from ..data import load_data
from ..settings import NETDISSECT_IOU_THRESHOLD, NETDISSECT_QUANTILE, SCALES, scale_settings
from ..models import features
from .broden import IMAGENET_MEAN, IMAGENET_STD, BrodenDataset
from .iou import NetDissectSettings, dissect, iou_scores, quantile_thresholds
from .networks import stage_outputs
from .result import DissectionResult
from .rotations import Rotations
from .synthetic import ConceptSpec, make_concept_dataset

__all__ = ["concept_dataset", "dissect_memo", "stage_scan", "most_interpretable_stage", "layer_iou",
           "layers_agree", "unit_examples"]


def concept_dataset(scale: str, broden_dir=None, n_images: int | None = None, seed: int = 0, data=None,
                    pasted: bool = True, object_radius: float | None = None):
    """The concept dataset of Section 6 at ``scale``: ``(BrodenDataset, config dict)``.

    Where the scale's ``dissection.source`` is ``"imagenet"`` (``paper``): the real Broden
    dataset at ``broden_dir`` (required), images resized to 224 and normalised as for ImageNet.
    Where it is ``"cifar10"`` (``smoke``, ``cpu``, ``gpu``): :func:`make_concept_dataset` from
    ``n_images`` (default: the scale's ``dissection.images``) CIFAR-10 test images with their
    class labels, written
    once under ``cache_dir("broden")``. ``pasted=False`` leaves the images untouched: no pasted
    textures and shapes, only the concepts computed from the photographs themselves (per-pixel colour
    names and the image-level class). ``object_radius`` adds the ``object`` category: the image's
    class in a central disc of that radius (pixels), a crude stand-in for Broden's object masks.

    Parameters
    ----------
    scale : str
        A scale of :data:`lib.settings.SCALES` (``"smoke"``, ``"cpu"``, ``"gpu"``, ``"paper"``).
    broden_dir : str or os.PathLike, optional
        The Broden dataset's folder (e.g. ``broden1_224``); required for the ``"imagenet"`` source.
    n_images : int, optional
        Images of the offline dataset (default: the scale's ``dissection.images``).
    seed : int
        Seed of the image choice and the pasted concepts.
    data : lib.data.Dataset, optional
        CIFAR-10 (default: :func:`lib.data.load_data`).
    pasted : bool
        Paste textures and shapes into the images (True) or keep the photographs (False).
    object_radius : float, optional
        Radius in pixels of the ``object`` concept's central disc (None: no object category);
        ignored for the ``"imagenet"`` source, where Broden has real object masks.

    Returns
    -------
    dataset : BrodenDataset
        The concept dataset.
    config : dict
        What identifies the data, for cache keys (:func:`dissect_memo`).

    Raises
    ------
    ValueError
        If ``scale`` is unknown, or ``broden_dir`` is not a folder for the ``"imagenet"`` source.
    """

    check_choice("scale", scale, SCALES)
    settings = scale_settings(scale).dissection
    if settings.source == "imagenet":
        if broden_dir is None or not Path(broden_dir).is_dir():
            raise ValueError(f"broden_dir must be the folder of the Broden dataset (e.g. "
                             f"broden1_224 from NetDissect's script/dlbroden.sh) at scale {scale!r}, "
                             f"got {broden_dir!r}")
        ds = BrodenDataset(broden_dir, resolution=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return ds, dict(broden_dir=str(Path(broden_dir).resolve()), n_images=len(ds), resolution=224)
    n = settings.images if n_images is None else n_images
    data = data or load_data()
    p = 0.5 if pasted else 0.0
    obj = "" if object_radius is None else f"-object{float(object_radius):g}"
    root = cache_dir("broden") / f"cifar10-test-n{n}-seed{seed}{'' if pasted else '-natural'}{obj}"
    make_concept_dataset(root, n, seed=seed, images=data.x_test.numpy(), labels=data.y_test.numpy(),
                         concepts=ConceptSpec(p_texture=p, p_shape=p, object_radius=object_radius))
    config = dict(generator="make_concept_dataset", n_images=n, seed=seed, data=data.identity,
                  pasted=bool(pasted), object_radius=None if object_radius is None else float(object_radius))
    return BrodenDataset(root), config




def dissect_memo(net: dict, layer: str, dataset: BrodenDataset, dataset_config: dict, alphas, n_rotations: int,
                 seed: int = 0, quantile: float = NETDISSECT_QUANTILE,
                 iou_threshold: float = NETDISSECT_IOU_THRESHOLD, device=None) -> DissectionResult:
    """:func:`lib.dissection.dissect`, cached with :func:`lib.cache.memo`.

    The cache key holds the model's ``net["key"]``, the layer, ``dataset_config``, the alphas, the
    number of rotations, the seed and the NetDissect settings.

    Parameters
    ----------
    net : dict
        ``model`` (the network) and ``key`` (what identifies its weights), as from :func:`zoo_models`.
    layer : str
        The layer to dissect.
    dataset : BrodenDataset
        The concept dataset.
    dataset_config : dict
        What identifies the data, as from :func:`concept_dataset`.
    alphas, n_rotations, seed, quantile, iou_threshold, device
        As for :func:`lib.dissection.dissect`.

    Returns
    -------
    DissectionResult
    """
    config = dict(model=net["key"], layer=layer, dataset=dataset_config, alphas=[float(a) for a in alphas],
                  n_rotations=n_rotations, seed=seed, quantile=quantile, iou_threshold=iou_threshold)
    d = memo("dissection", config, lambda: dissect(
        net["model"], layer, dataset, Rotations(alphas, n_rotations, seed),
        NetDissectSettings(quantile, iou_threshold), device=device, progress=False).to_dict())
    return DissectionResult.from_dict(d)


def stage_scan(nets: dict, dataset: BrodenDataset, dataset_config: dict, seed: int = 0,
               quantile: float = NETDISSECT_QUANTILE,
               iou_threshold: float = NETDISSECT_IOU_THRESHOLD) -> dict:
    """Dissection at alpha 0 (the unrotated basis) of every stage output (:func:`stage_outputs`).

    Parameters
    ----------
    nets : dict
        ``{name: dict(model, key, ...)}``, as from :func:`lib.dissection.zoo_models`.
    dataset, dataset_config
        As for :func:`dissect_memo`.
    seed, quantile, iou_threshold
        As for :func:`lib.dissection.dissect`.

    Returns
    -------
    dict
        ``{name: [DissectionResult per stage, in forward order]}``, each cached by :func:`dissect_memo`.
    """
    return {name: [dissect_memo(net, layer, dataset, dataset_config, [0.0], 1, seed, quantile, iou_threshold)
                   for layer in stage_outputs(net["model"])] for name, net in nets.items()}


def most_interpretable_stage(results) -> int:
    """The stage whose layer has the largest fraction of detector units in the unrotated basis.

    Parameters
    ----------
    results : sequence of DissectionResult
        One per stage, in order, as from :func:`stage_scan`.

    Returns
    -------
    int
        The stage, counted from 1 (the first on ties).
    """
    fraction = [r.interpretable[0, 0] / r.n_units for r in results]
    return int(np.argmax(fraction)) + 1


def layer_iou(model: nn.Module, layer: str, dataset: BrodenDataset,
              quantile: float = NETDISSECT_QUANTILE, device=None,
              batch_size: int = 256) -> np.ndarray:
    """NetDissect IoU of a layer's units in their own basis, by :func:`lib.dissection.iou_scores`
    on the layer's activations over the whole dataset, held in memory (an independent path to the
    alpha-0 IoU of :func:`lib.dissection.dissect`).

    Parameters
    ----------
    model : torch.nn.Module
        The network; moved to ``device``.
    layer : str
        A convolutional layer.
    dataset : BrodenDataset
        The concept dataset (small enough to hold all its masks in memory).
    quantile : float
        Fraction of a unit's activations above its threshold, in (0, 1).
    device : str or torch.device, optional
        Where to compute.
    batch_size : int
        Images per batch read from the dataset.

    Returns
    -------
    numpy.ndarray
        float64 ``(units, concepts)``, fractions in [0, 1].
    """
    dev = get_device(device)
    model = model.to(dev)
    acts = torch.cat([features(model, x.to(dev), [layer])[layer] for x, _, _ in dataset.batches(batch_size)])
    _, masks, annotated = next(dataset.batches(len(dataset)))
    return iou_scores(acts, masks, quantile, annotated).numpy()


def layers_agree(model: nn.Module, dataset: BrodenDataset, layers, n_images: int = 32, device=None) -> bool:
    """Whether the named layers output the same tensor on the dataset's first images.

    Parameters
    ----------
    model : torch.nn.Module
        The network; moved to ``device``.
    dataset : BrodenDataset
        Source of the images.
    layers : sequence of str
        Two or more module names.
    n_images : int
        How many images.
    device : str or torch.device, optional
        Where to compute.

    Returns
    -------
    bool
        True if every layer's output equals the first's exactly.
    """
    layers = list(layers)
    dev = get_device(device)
    model = model.to(dev)
    out = features(model, next(dataset.batches(n_images))[0].to(dev), layers)
    return all(torch.equal(out[layers[0]], out[name]) for name in layers[1:])


def unit_examples(model: nn.Module, layer: str, dataset: BrodenDataset, unit: int, concept: str,
                  k: int = 6, quantile: float = NETDISSECT_QUANTILE, device=None,
                  batch_size: int = 128) -> dict:
    """The ``k`` images on which ``unit`` of ``layer`` is most active, with its thresholded map and the
    concept's mask, for figures.

    Parameters
    ----------
    model : torch.nn.Module
        The network; moved to ``device``.
    layer : str
        A convolutional layer.
    dataset : BrodenDataset
        The concept dataset.
    unit : int
        The unit (channel) of ``layer``.
    concept : str
        One of ``dataset.concepts``.
    k : int
        How many images.
    quantile : float
        NetDissect's fraction of the unit's activations above its threshold, in (0, 1).
    device : str or torch.device, optional
        Where to compute.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    dict
        ``images`` uint8 ``(k, H, W, 3)``; ``unit_masks`` bool ``(k, 1, H, W)`` (the unit's map
        upsampled bilinearly to the mask size and above its threshold over the whole dataset);
        ``concept_masks`` bool ``(k, 1, H, W)``; the dataset ``indices`` ``(k,)``, in decreasing
        order of the unit's peak activation.

    Raises
    ------
    ValueError
        If ``concept`` is unknown or ``unit`` is not a unit of ``layer``.
    """
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
