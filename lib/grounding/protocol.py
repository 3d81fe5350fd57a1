"""The three tests of Ding et al. on representations: sensitivity, specificity, distribution shift.

Each test yields points ``(dissimilarity, functional difference)`` for the measures of
:data:`MEASURES`, whose Spearman correlation (``lib.grounding.spearman_interval``) grades the
measure. Similarities to one reference representation are computed with its Gram matrices computed
once (:func:`similarities_to`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..metrics import MATRIX_MEASURES, get_measure, similarity_matrices
from .probe import delete_components, feature_shape, probe_accuracy, probe_scores

__all__ = ["MEASURES", "DELETION_ORDERS", "similarities_to", "pair_matrices", "sensitivity_rows",
           "specificity_points", "corrupt", "shift_rows"]

#: The measures the tests compare, every measure of ``lib.metrics.MEASURES`` that
#: ``lib.metrics.similarity_matrices`` computes (``lib.metrics.MATRIX_MEASURES``), in its order.
MEASURES = MATRIX_MEASURES
#: Which principal components :func:`sensitivity_rows` deletes first.
DELETION_ORDERS = ("lowest", "highest")


def similarities_to(X, others, measures=MEASURES, *, dtype=torch.float32) -> np.ndarray:
    """Each measure between ``X`` and each of ``others``, with ``X``'s Gram matrices computed once.

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, channels[, height, width])``.
    others : iterable of arrays or tensors
        Representations of the same samples (consumed one at a time, so a generator keeps one in
        memory).
    measures : sequence of str
        Names from :data:`MEASURES` (zero channels are kept, as in
        ``lib.metrics.similarity_matrices``).
    dtype : torch.dtype
        Computation type.

    Returns
    -------
    numpy.ndarray
        ``(len(others), len(measures))``; NaN where a Procrustes measure compares different
        spatial shapes (the authors compare same-shaped layers only).
    """
    specs = [get_measure(m, MEASURES) for m in measures]
    # Zero channels are kept (as in similarity_matrices); every other option is the default.
    options = [spec.pick(zero_channels="keep") for spec in specs]
    grams = [spec.gram(X, dtype=dtype, **kw) if spec.gram is not None else None
             for spec, kw in zip(specs, options)]
    rows = []
    for Y in others:
        row = []
        for spec, kw, K in zip(specs, options, grams):
            if K is not None:
                row.append(max(-1.0, min(1.0, float((K * spec.gram(Y, dtype=dtype, **kw)).sum()))))
            elif tuple(feature_shape(X)[1:]) != tuple(feature_shape(Y)[1:]):
                row.append(np.nan)
            else:
                row.append(spec.function(X, Y, dtype=dtype, **kw))
        rows.append(row)
    return np.array(rows, dtype=float).reshape(len(rows), len(measures))


def pair_matrices(feats_a: dict, feats_b: dict, measures=MEASURES, *, dtype=torch.float32) -> dict:
    """Each measure between every layer of model A and every layer of model B.

    ``lib.metrics.similarity_matrices`` (each Gram matrix computed once, the Procrustes measures on
    same-shaped layers only).

    Parameters
    ----------
    feats_a, feats_b : dict
        ``{layer: features (n_samples, channels[, height, width])}`` on the same inputs.
    measures : sequence of str
        Names from :data:`MEASURES`.
    dtype : torch.dtype
        Computation type.

    Returns
    -------
    dict
        ``{measure: numpy array (len(feats_a), len(feats_b))}``, NaN where undefined.
    """
    for m in measures:
        get_measure(m, MEASURES)
    out = similarity_matrices(feats_a, feats_b, measures, dtype=dtype)
    return {m: np.asarray(out[m], dtype=float) for m in measures}


def sensitivity_rows(probe: dict, X, y, counts, measures=MEASURES, *, dtype=torch.float32) -> list:
    """Ding et al.'s sensitivity test on one representation: delete principal components.

    For each order of :data:`DELETION_ORDERS` and each count ``k``, the ``k`` components of lowest
    (or highest) variance are projected out of ``X`` (:func:`delete_components`); the probe loses
    the same components (:func:`probe_accuracy` with ``keep``).

    Parameters
    ----------
    probe : dict
        From :func:`fit_probe` on training features of the same layer.
    X : array or tensor
        Test features ``(n, *probe["shape"])``.
    y : array or tensor
        Test labels ``(n,)``.
    counts : sequence of int
        Numbers of components to delete, each below the probe's rank (e.g. :func:`deletion_counts`).
    measures : sequence of str
        Names from :data:`MEASURES`.
    dtype : torch.dtype
        Computation type of the measures.

    Returns
    -------
    list of dict
        One per (order, count): ``order``, ``deleted``, ``variance_deleted`` (fraction of the
        training variance), ``accuracy``, ``drop`` (the probe's accuracy on ``X`` minus
        ``accuracy``, a fraction) and one similarity per measure.
    """
    r = probe["components"].shape[0]
    if any(not 1 <= int(k) < r for k in counts):
        raise ValueError(f"counts must lie in [1, {r - 1}] (the probe's rank is {r}); "
                         f"got {list(counts)}")
    scores = probe_scores(probe, X)
    base = probe_accuracy(probe, X, y, scores=scores)
    var = probe["variances"] / probe["variances"].sum()
    plan = []
    for order in DELETION_ORDERS:
        for k in counts:
            idx = np.arange(r - int(k), r) if order == "lowest" else np.arange(int(k))
            keep = np.ones(r, dtype=bool)
            keep[idx] = False
            acc = probe_accuracy(probe, X, y, keep, scores=scores)
            plan.append(dict(order=order, deleted=int(k), variance_deleted=float(var[idx].sum()),
                             accuracy=acc, drop=base - acc, keep=keep))
    sims = similarities_to(X, (_deleted(probe, X, scores, p["keep"]) for p in plan), measures,
                           dtype=dtype)
    return [dict({k: v for k, v in p.items() if k != "keep"}, **dict(zip(measures, row)))
            for p, row in zip(plan, sims)]


def _deleted(probe: dict, X, scores: torch.Tensor, keep: np.ndarray) -> torch.Tensor:
    """:func:`lib.grounding.delete_components` through the smaller of the deleted and kept sets:
    ``X`` minus the deleted part, or the mean plus the part outside the training span plus the kept
    part."""
    if (~keep).sum() <= keep.sum():
        return delete_components(probe, X, np.flatnonzero(~keep), scores=scores)
    everything = delete_components(probe, X, np.arange(keep.size), scores=scores)
    idx = torch.as_tensor(np.flatnonzero(keep))
    kept = (scores[:, idx] @ probe["components"][idx]).reshape(everything.shape)
    return everything + kept


def specificity_points(matrices: dict, acc_a, acc_b) -> tuple:
    """Ding et al.'s specificity points from all layer pairs of two models.

    Parameters
    ----------
    matrices : dict
        ``{measure: (layers_a, layers_b) similarity matrix}`` (e.g. :func:`pair_matrices`).
    acc_a, acc_b : array-like
        Probe accuracy of each layer of model A ``(layers_a,)`` and of model B ``(layers_b,)``.

    Returns
    -------
    functional : numpy.ndarray
        ``(layers_a * layers_b,)``: ``|acc_a[i] - acc_b[j]|``, row-major.
    dissimilarity : dict
        ``{measure: (layers_a * layers_b,)}``: ``1 - similarity`` in the same order (NaN kept).
    """
    acc_a, acc_b = np.asarray(acc_a, dtype=float), np.asarray(acc_b, dtype=float)
    functional = np.abs(acc_a[:, None] - acc_b[None, :]).ravel()
    out = {}
    for m, S in matrices.items():
        S = np.asarray(S, dtype=float)
        if S.shape != (acc_a.size, acc_b.size):
            raise ValueError(f"matrix of {m} has shape {S.shape}; "
                             f"expected {(acc_a.size, acc_b.size)}")
        out[m] = 1.0 - S.ravel()
    return functional, out


def corrupt(x: torch.Tensor, level: float, seed: int = 0) -> torch.Tensor:
    """Model inputs with additive Gaussian noise: the shifted distribution of the quality test.

    Parameters
    ----------
    x : torch.Tensor
        Normalised inputs ``(n, 3, H, W)`` (from ``lib.data.to_input``: unit variance per colour).
    level : float
        Standard deviation of the noise, in the inputs' units (non-negative; 0 returns ``x``).
    seed : int
        Seed of the noise (the same for every model, so that they see the same corrupted images).

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``x``.
    """
    if not (isinstance(level, (int, float)) and level >= 0):
        raise ValueError(f"level must be a non-negative number; got {level!r}")
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(x.shape, generator=g, dtype=torch.float32)
    return x + level * noise.to(device=x.device, dtype=x.dtype)


def shift_rows(probe: dict, X, shifted: dict, y, measures=MEASURES, *, dtype=torch.float32) -> list:
    """The quality test on one layer: clean features against features of corrupted images.

    Parameters
    ----------
    probe : dict
        From :func:`fit_probe` on clean training features of the layer.
    X : array or tensor
        Clean test features ``(n, *probe["shape"])``.
    shifted : dict
        ``{level: features of the same test images corrupted at that level}``.
    y : array or tensor
        Test labels ``(n,)``.
    measures : sequence of str
        Names from :data:`MEASURES`.
    dtype : torch.dtype
        Computation type of the measures.

    Returns
    -------
    list of dict
        One per level: ``level``, ``accuracy`` (the clean probe on the shifted features), ``drop``
        (its accuracy on ``X`` minus ``accuracy``) and one similarity per measure.
    """
    base = probe_accuracy(probe, X, y)
    sims = similarities_to(X, shifted.values(), measures, dtype=dtype)
    rows = []
    for (level, f), row in zip(shifted.items(), sims):
        acc = probe_accuracy(probe, f, y)
        rows.append(dict(level=level, accuracy=acc, drop=base - acc, **dict(zip(measures, row))))
    return rows
