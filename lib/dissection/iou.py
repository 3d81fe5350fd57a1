"""Network dissection (Bau et al. 2017) of a layer, in its own basis and in rotated bases (Section
6).

:func:`iou_scores` and :func:`dissect` implement the NetDissect algorithm. Each unit's threshold is
its top ``quantile`` activation value over the dataset (:func:`quantile_thresholds`); its activation
maps are upsampled bilinearly to the mask resolution and thresholded; the IoU with every concept is
accumulated over the dataset, counting only images annotated for the concept's category; a unit
detects its best concept if that IoU exceeds ``iou_threshold``. :func:`dissect` repeats this in
bases rotated by ``Q^alpha`` (``lib.dissection.rotations``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..config import get_device
from ..models import features
from ..settings import NETDISSECT_IOU_THRESHOLD, NETDISSECT_QUANTILE
from .broden import BrodenDataset
from .result import DissectionResult
from .rotations import Rotations, random_rotation, rotation_power

__all__ = ["quantile_thresholds", "iou_scores", "NetDissectSettings", "dissect"]


# --------------------------------------------------------------------------------------------
# The NetDissect algorithm
# --------------------------------------------------------------------------------------------
def _check_quantile(quantile) -> None:
    if not (isinstance(quantile, (int, float)) and 0 < quantile < 1):
        raise ValueError(
            f"quantile must be a number in (0, 1) (NetDissect: 0.005), got {quantile!r}"
        )


def _row_quantile(values: torch.Tensor, quantile: float) -> torch.Tensor:
    # The (1 - q) quantile of each row with numpy's linear interpolation between order statistics:
    # only the top ceil(q N) + 1 values matter, so topk is far cheaper than a sort for small q.
    n = values.shape[1]
    pos = (1.0 - quantile) * (n - 1)
    lo = math.floor(pos)
    top = values.topk(n - lo, dim=1).values  # descending; last = order stat lo
    v_lo = top[:, -1]
    v_hi = top[:, -2] if n - lo >= 2 else v_lo
    return v_lo + (pos - lo) * (v_hi - v_lo)


def quantile_thresholds(
    activations: torch.Tensor, quantile: float = NETDISSECT_QUANTILE
) -> torch.Tensor:
    """Per-unit thresholds: the value exceeded by a fraction ``quantile`` of the unit's activations.

    The threshold is the ``1 - quantile`` quantile of all ``n*h*w`` values of a unit, with linear
    interpolation between order statistics (``numpy.quantile``'s default).

    Parameters
    ----------
    activations : torch.Tensor
        ``(n, units, h, w)``, finite.
    quantile : float
        Fraction of each unit's values above its threshold, in (0, 1) (NetDissect: 0.005).

    Returns
    -------
    torch.Tensor
        float32 ``(units,)`` on ``activations``' device.

    Raises
    ------
    ValueError
        If ``quantile`` is not in (0, 1) or the activations are empty, not 4-d or not finite.
    """
    _check_quantile(quantile)
    _check_activations(activations)
    return _row_quantile(
        activations.transpose(0, 1).reshape(activations.shape[1], -1).float(), quantile
    )


def _interp_matrix(n_in: int, n_out: int, device) -> torch.Tensor:
    """``(n_out, n_in)`` matrix of 1-d linear interpolation (``align_corners=False``); bilinear
    upsampling is this along each axis, so it runs as two matrix products."""
    eye = torch.eye(n_in, device=device)[:, None, :]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[
        :, 0, :
    ].T.contiguous()


class _Tally:
    """IoU counts of K bases at once, accumulated batch by batch (all counts in float64)."""

    def __init__(self, k: int, units: int, concepts: int, act_hw: tuple, mask_hw: tuple, device):
        self.upsample = tuple(act_hw) != tuple(mask_hw)
        self.wh_t = _interp_matrix(act_hw[0], mask_hw[0], device).T.contiguous()
        self.ww_t = _interp_matrix(act_hw[1], mask_hw[1], device).T.contiguous()
        self.inter = torch.zeros(k, units, concepts, dtype=torch.float64, device=device)
        self.unit = torch.zeros(k, units, concepts, dtype=torch.float64, device=device)
        self.label = torch.zeros(concepts, dtype=torch.float64, device=device)

    def add_masks(self, masks: torch.Tensor, annotated: torch.Tensor):
        """Count a batch's concept pixels; returns the masks as ``(B*H*W, concepts)`` floats and
        the annotation flags as ``(B, concepts)`` floats, for :meth:`add`."""
        # Pixels of unannotated images never count, whatever their mask says.
        masks = masks & annotated[:, :, None, None]
        b, c = masks.shape[:2]
        m = masks.reshape(b, c, -1).float()
        self.label += m.sum((0, 2)).double()
        return m.permute(0, 2, 1).reshape(-1, c), annotated.float()

    def add(
        self,
        k: int,
        acts: torch.Tensor,
        thresholds: torch.Tensor,
        m: torch.Tensor,
        ann: torch.Tensor,
    ):
        """Basis ``k``: unit-major activations ``acts`` ``(units, B, h, w)``, thresholds
        ``(units,)``."""
        if self.upsample:
            acts = (acts.transpose(-1, -2) @ self.wh_t).transpose(
                -1, -2
            ) @ self.ww_t  # (U, B, H, W)
        else:
            acts = acts.clone()
        u, b = acts.shape[:2]
        on = acts.gt_(thresholds[:, None, None, None]).reshape(u, -1)  # (U, B*H*W), 0/1 floats
        # Intersections of all units with all concepts as one product over the batch's pixels.
        self.inter[k] += (on @ m).double()
        self.unit[k] += (on.reshape(u, b, -1).sum(2) @ ann).double()

    def iou(self) -> torch.Tensor:
        union = self.unit + self.label - self.inter
        return torch.where(union > 0, self.inter / union.clamp_min(1e-12), torch.zeros_like(union))


def _check_activations(activations) -> None:
    """``ValueError`` unless ``activations`` is a non-empty finite ``(n, units, h, w)`` tensor."""
    if not isinstance(activations, torch.Tensor) or activations.dim() != 4:
        shape = (
            tuple(activations.shape)
            if isinstance(activations, torch.Tensor)
            else type(activations).__name__
        )
        raise ValueError(f"activations must have shape (n, units, h, w), got {shape}")
    if activations.numel() == 0:
        raise ValueError(
            f"activations must be non-empty (n, units, h, w all >= 1), got shape "
            f"{tuple(activations.shape)}"
        )
    # One NaN would shift its unit's quantile threshold and IoU without any sign; refuse instead.
    finite = torch.isfinite(activations)
    if not bool(finite.all()):
        bad = (
            (~finite)
            .transpose(0, 1)
            .reshape(activations.shape[1], -1)
            .any(1)
            .nonzero()
            .flatten()
            .tolist()
        )
        raise ValueError(
            f"activations must be finite; units {bad[:10]}{' ...' if len(bad) > 10 else ''} "
            f"hold NaN or infinite values"
        )


def _check_masks(masks, annotated, n):
    if not isinstance(masks, torch.Tensor) or masks.dim() != 4 or masks.dtype != torch.bool:
        got = (
            f"{masks.dtype} {tuple(masks.shape)}"
            if isinstance(masks, torch.Tensor)
            else type(masks).__name__
        )
        raise ValueError(f"masks must be a boolean tensor of shape (n, concepts, H, W), got {got}")
    if masks.shape[0] != n:
        raise ValueError(
            f"masks has {masks.shape[0]} images, activations {n}; masks must have shape "
            f"(n, concepts, H, W) with the activations' n"
        )
    if 0 in masks.shape[1:]:
        raise ValueError(
            f"masks must have at least one concept and one pixel, shape (n, concepts >= 1, "
            f"H >= 1, W >= 1), got {tuple(masks.shape)}"
        )
    if annotated is None:
        return torch.ones(masks.shape[:2], dtype=torch.bool, device=masks.device)
    if annotated.dtype != torch.bool or tuple(annotated.shape) != tuple(masks.shape[:2]):
        raise ValueError(
            f"annotated must be a boolean tensor of shape {tuple(masks.shape[:2])} "
            f"(n, concepts), got {annotated.dtype} {tuple(annotated.shape)}"
        )
    return annotated


def iou_scores(
    activations: torch.Tensor,
    masks: torch.Tensor,
    quantile: float = NETDISSECT_QUANTILE,
    annotated: torch.Tensor | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """NetDissect IoU of every unit with every concept, over a whole (in-memory) dataset.

    Parameters
    ----------
    activations : torch.Tensor
        ``(n, units, h, w)``; thresholds come from these (:func:`quantile_thresholds`).
    masks : torch.Tensor
        bool ``(n, concepts, H, W)``; activation maps are upsampled bilinearly to ``(H, W)``.
    quantile : float
        Fraction of each unit's activations above its threshold, in (0, 1).
    annotated : torch.Tensor, optional
        bool ``(n, concepts)``, whether image ``i`` is annotated for concept ``c``'s category
        (default: all). Unannotated images count neither in the union nor the intersection.
    batch_size : int
        Images per step of the tally.

    Returns
    -------
    torch.Tensor
        float64 ``(units, concepts)`` on the CPU, fractions in [0, 1]:
        ``sum_i |A_iu & M_ic| / sum_i |A_iu | M_ic|`` over the annotated images, where ``A_iu`` is
        the upsampled map above the threshold (0 where the union is empty).

    Raises
    ------
    ValueError
        If the activations are empty, not 4-d or hold NaN or infinite values; if the masks are not a
        non-empty boolean ``(n, concepts, H, W)`` tensor with the activations' ``n``; if
        ``annotated`` is not boolean ``(n, concepts)``; if ``quantile`` is not in (0, 1).
    """
    _check_activations(activations)
    annotated = _check_masks(masks, annotated, activations.shape[0])
    thresholds = quantile_thresholds(activations, quantile)
    dev = activations.device
    tally = _Tally(
        1, activations.shape[1], masks.shape[1], activations.shape[-2:], masks.shape[-2:], dev
    )
    for s in range(0, activations.shape[0], batch_size):
        m, ann = tally.add_masks(
            masks[s : s + batch_size].to(dev), annotated[s : s + batch_size].to(dev)
        )
        tally.add(0, activations[s : s + batch_size].float().transpose(0, 1), thresholds, m, ann)
    return tally.iou()[0].cpu()


def _summarize(iou: np.ndarray, threshold: float, concept_cat: np.ndarray, n_cat: int):
    best = iou.argmax(1)
    score = iou.max(1)
    det = score > threshold
    by_cat = np.bincount(concept_cat[best[det]], minlength=n_cat)
    return int(det.sum()), len(set(best[det].tolist())), by_cat, best, score, det


@dataclasses.dataclass(frozen=True)
class NetDissectSettings:
    """NetDissect's two numbers (Bau et al. 2017), checked when made; the defaults are
    ``lib.settings.NETDISSECT_QUANTILE`` and ``NETDISSECT_IOU_THRESHOLD``.

    Parameters
    ----------
    quantile : float
        Fraction of a unit's activations above its threshold, in (0, 1) (NetDissect: 0.005).
    iou_threshold : float
        A unit detects its best concept if that IoU (a fraction) exceeds this, in [0, 1)
        (NetDissect: 0.04).

    Raises
    ------
    ValueError
        If a number is outside its range.
    """

    quantile: float = NETDISSECT_QUANTILE
    iou_threshold: float = NETDISSECT_IOU_THRESHOLD

    def __post_init__(self):
        _check_quantile(self.quantile)
        t = self.iou_threshold
        if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t < 1):
            raise ValueError(
                f"iou_threshold must be a number in [0, 1) (NetDissect: 0.04), got {t!r}"
            )


def _layer_activations(
    model: nn.Module, layer: str, dataset: BrodenDataset, device, batch_size: int, *, progress: bool
) -> torch.Tensor:
    # The layer's float32 activations (n, units, h, w) over the whole dataset, checked.
    acts = []
    for x, _, _ in tqdm(
        dataset.batches(batch_size),
        total=math.ceil(len(dataset) / batch_size),
        desc=f"features {layer}",
        disable=not progress,
    ):
        acts.append(features(model, x.to(device), [layer], batch_size)[layer])
    acts = torch.cat(acts).float()
    if acts.dim() != 4:
        raise ValueError(
            f"layer {layer!r} gives activations of shape {tuple(acts.shape[1:])}; "
            f"dissection needs a convolutional layer (units, h, w)"
        )
    _check_activations(acts)
    return acts


def _bases(units: int, rotations: Rotations) -> tuple:
    # Basis 0 is the identity; then one basis per (nonzero alpha, rotation). Returns the float64
    # bases (K, units, units) and {(alpha index, rotation): basis index}.
    gen = torch.Generator().manual_seed(rotations.seed)
    qs = [random_rotation(units, gen) for _ in range(rotations.n_rotations)]
    bases, where = [torch.eye(units, dtype=torch.float64)], {}
    for ai, a in enumerate(rotations.alphas):
        for r in range(rotations.n_rotations):
            if a == 0:
                where[ai, r] = 0
            else:
                where[ai, r] = len(bases)
                bases.append(rotation_power(qs[r], float(a)))
    return torch.stack(bases), where


def _rotated_iou(
    acts: torch.Tensor,
    bases: torch.Tensor,
    dataset: BrodenDataset,
    quantile: float,
    batch_size: int,
    *,
    progress: bool,
) -> np.ndarray:
    # IoU (K, units, concepts) of every basis: the masks streamed once, all bases tallied together.
    dev = acts.device
    units = acts.shape[1]
    # Unit-major (units, n, h, w): a rotation of the channel axis is then one matrix product.
    # Rotating before upsampling is exact: both maps are linear, one on channels, one on pixels.
    acts = acts.transpose(0, 1).contiguous()
    flat = acts.reshape(units, -1)
    thresholds = torch.stack([_row_quantile(b @ flat, quantile) for b in bases])
    del flat
    tally = _Tally(
        len(bases), units, len(dataset.concepts), acts.shape[-2:], dataset.mask_size, dev
    )
    start = 0
    for _, masks, annotated in tqdm(
        dataset.batches(batch_size),
        total=math.ceil(len(dataset) / batch_size),
        desc="IoU",
        disable=not progress,
    ):
        a_batch = acts[:, start : start + len(masks)]
        start += len(masks)
        shape = a_batch.shape
        a_batch = a_batch.reshape(units, -1)
        m, ann = tally.add_masks(masks.to(dev), annotated.to(dev))
        for k, b in enumerate(bases):
            rotated = a_batch if k == 0 else b @ a_batch
            tally.add(k, rotated.reshape(shape), thresholds[k], m, ann)
    return tally.iou().cpu().numpy()


def _result(
    layer: str,
    dataset: BrodenDataset,
    iou: np.ndarray,
    where: dict,
    rotations: Rotations,
    settings: NetDissectSettings,
) -> DissectionResult:
    # Counts per (alpha, rotation) from the IoU of each basis, and the unrotated basis' unit labels.
    cats = dataset.categories
    cat_index = np.array([cats.index(c) for c in dataset.concept_categories])
    shape = (len(rotations.alphas), rotations.n_rotations)
    interpretable, unique = np.zeros(shape, dtype=int), np.zeros(shape, dtype=int)
    by_category = np.zeros(shape + (len(cats),), dtype=int)
    for (ai, r), k in where.items():
        interpretable[ai, r], unique[ai, r], by_category[ai, r], *_ = _summarize(
            iou[k], settings.iou_threshold, cat_index, len(cats)
        )
    *_, best, score, det = _summarize(iou[0], settings.iou_threshold, cat_index, len(cats))
    units = iou.shape[1]
    labels = [
        dict(
            unit=u,
            concept=dataset.concepts[best[u]],
            category=dataset.concept_categories[best[u]],
            iou=float(score[u]),
            detector=bool(det[u]),
        )
        for u in range(units)
    ]
    return DissectionResult(
        layer=layer,
        alphas=[float(a) for a in rotations.alphas],
        n_rotations=rotations.n_rotations,
        n_images=len(dataset),
        n_units=units,
        concepts=list(dataset.concepts),
        concept_categories=list(dataset.concept_categories),
        categories=list(cats),
        quantile=settings.quantile,
        iou_threshold=settings.iou_threshold,
        interpretable=interpretable,
        unique=unique,
        by_category=by_category,
        iou=iou[0],
        labels=labels,
    )


def dissect(
    model: nn.Module,
    layer: str,
    dataset: BrodenDataset,
    rotations: Rotations = Rotations(),
    settings: NetDissectSettings = NetDissectSettings(),
    *,
    device=None,
    batch_size: int = 128,
    progress: bool = True,
) -> DissectionResult:
    """Network dissection of ``layer`` in its own basis and in bases rotated by ``Q_r^alpha``.

    The layer's activations ``(n, units, h, w)`` over the whole dataset are collected once (with
    :func:`lib.models.features`; ``model`` is moved to ``device``); for each alpha and each of the
    Haar-random rotations ``Q_r`` (drawn from ``rotations.seed``) the activations are rotated on
    the channel axis by ``Q_r^alpha`` and then dissected as in :func:`iou_scores`, with thresholds
    from the rotated activations. The masks are streamed once, all bases tallied together.

    Parameters
    ----------
    model : torch.nn.Module
        The network; moved to ``device``.
    layer : str
        A convolutional layer's module name (activations ``(n, units, h, w)``).
    dataset : BrodenDataset
        The concept dataset.
    rotations : lib.dissection.Rotations
        The alphas (positions on the geodesic from I to ``Q_r``), the rotations per alpha and
        their seed.
    settings : NetDissectSettings
        The quantile of the units' thresholds and the IoU a detector exceeds.
    device : str or torch.device, optional
        Where to compute (default: :func:`lib.config.get_device`).
    batch_size : int
        Images per batch.
    progress : bool
        Show progress bars.

    Returns
    -------
    DissectionResult
        Counts per alpha and rotation, the unrotated basis' IoU matrix and unit labels.

    Raises
    ------
    ValueError
        If ``dataset`` is not a :class:`BrodenDataset`, or the layer's activations are not 4-d or
        not finite (bad alphas, rotation counts or NetDissect numbers are refused when
        ``rotations`` and ``settings`` are made).
    """
    if not isinstance(dataset, BrodenDataset):
        raise ValueError(f"dataset must be a BrodenDataset, got {type(dataset).__name__}")
    dev = get_device(device)
    model = model.to(dev)
    acts = _layer_activations(model, layer, dataset, dev, batch_size, progress=progress)
    bases, where = _bases(acts.shape[1], rotations)
    bases = bases.float().to(dev)
    iou = _rotated_iou(acts, bases, dataset, settings.quantile, batch_size, progress=progress)
    return _result(layer, dataset, iou, where, rotations, settings)
