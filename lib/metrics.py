"""Representation similarity measures of Section 5: G_ReLU- and orthogonal Procrustes and CKA.

Every measure takes two feature arrays (numpy or torch, any device) with the same number of samples,
either ``(n_samples, n_features)`` or conv features ``(n_samples, channels, height, width)`` (also
``(n_samples, channels, positions)``), and returns a Python float. :func:`to_channels` is the one place
that maps inputs to the channel view ``(n_samples, channels, positions)``; flattened ``(n_samples,
channels * positions)`` features are a reshape of it. Computation happens on the input's device (numpy:
CPU; a CUDA tensor among the inputs: that device; or ``device=``), in ``dtype`` (float64 by default).

The conventions are the authors' (``pnnl/modelsym``, see implementation-notes.md, "Similarity measures"):

- :func:`grelu_cka` (Definition 5.3): each channel centred and scaled to unit norm over (samples,
  positions); max kernel ``K[i, j] = max_c <x_ic, x_jc>``; unbiased HSIC; invariant to channel
  permutations, positive channel scalings and per-channel translations.
- :func:`orthogonal_cka` (the "orthogonal CKA" of Figs. 2 and 5): the same preprocessing and estimator
  with the linear kernel on flattened features. Because every channel is rescaled separately it is
  *not* invariant to rotations of channels in general (only to those preserving the channel norms,
  e.g. any rotation of whitened channels); it equals ``linear_cka(normalize_channels(X),
  normalize_channels(Y), debiased=True)``.
- :func:`linear_cka` / :func:`rbf_cka`: CKA of Kornblith et al. 2019 (features centred per feature over
  samples, no per-channel scaling, biased HSIC unless ``debiased``); invariant to any orthogonal
  transform of the flattened features and to isotropic scaling.
- :func:`grelu_procrustes` (Definition 5.2) and :func:`orthogonal_procrustes`, as similarities
  ``1 - distance``. The orthogonal one uses the authors' ``1 - sqrt(2 - 2 ||X^T Y||_*) / 2``: it is 1
  iff ``Y = XQ`` up to scale, but its smallest possible value is ``1 - 1/sqrt(2) ~ 0.293``, not 0.

The max kernel is *not* positive semi-definite in general, contrary to Lemma 5.5: the points
``(1, 0), (0, 1), (1, 1)`` give the Gram matrix ``[[1, 0, 1], [0, 1, 1], [1, 1, 1]]`` whose
determinant is -1. CKA stays within [-1, 1] anyway, because the unbiased HSIC is an inner product of
"unbiasedly centred" Gram matrices (Cauchy-Schwarz); like every debiased CKA it can be slightly negative.

The measures live here; their inputs and preprocessing in :mod:`lib.preprocessing`, Gram matrices, HSIC and
memory estimates in :mod:`lib.gram`, all-layer-pairs comparisons in :mod:`lib.similarity`. Every public name
of those modules is importable from ``lib.metrics`` as well.
"""
from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment

from ._lazy import forward_names
from .gram import (BLOCK_BYTES, BLOCK_ROWS, _check_cka_samples, _cka, _max_kernel, cka_from_grams, grelu_cka_memory,
                   grelu_cka_max_samples, hsic, linear_gram, max_kernel_gram, rbf_gram)
# Re-exported for the tests and benchmarks/metrics_speed.py, which reach them as lib.metrics.<name>.
from .gram import _block_plan, _reference_max_kernel_naive, _reference_max_kernel_row, _reference_max_kernel_rows
from .preprocessing import (DTYPES, ZERO_CHANNELS, _device, _normalize_channel_major, _rescaled, _same_samples, _shape,
                            center_features, flatten_features, normalize_channels, normalize_total, to_channels)

# lib.similarity imports this module (for the Procrustes measures), so its names are forwarded on first use.
_SIMILARITY_NAMES = ("MATRIX_MEASURES", "CKA_MEASURES", "PAIRS", "layer_features", "u_centre", "normalized_gram",
                     "similarity_matrices", "similarity_matrix", "best_matches", "model_pair_similarities")

__all__ = [
    "linear_cka", "rbf_cka", "grelu_cka", "orthogonal_cka", "grelu_procrustes", "orthogonal_procrustes",
    "to_channels", "flatten_features", "center_features", "normalize_channels", "normalize_total",
    "linear_gram", "rbf_gram", "max_kernel_gram", "hsic", "cka_from_grams",
    "grelu_cka_memory", "grelu_cka_max_samples",
    "MATRIX_MEASURES", "CKA_MEASURES", "layer_features", "u_centre", "normalized_gram",
    "similarity_matrices", "similarity_matrix", "best_matches", "model_pair_similarities",
]


def linear_cka(X, Y, debiased: bool = False, *, dtype=torch.float64, device=None) -> float:
    """Linear CKA of Kornblith et al. 2019 on flattened, centred features.

    Biased: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` (computed from the smaller of the feature-space
    and sample-space forms); ``debiased=True`` uses the unbiased HSIC. ``X`` ``(n_samples, ...)`` and ``Y``
    ``(n_samples, ...)`` may have different feature counts.
    """
    _same_samples(X, Y)
    dev = _device(X, Y, device=device)
    x, y = (_rescaled(center_features(A, dtype=dtype, device=dev, name=nm), inplace=True)
            for A, nm in ((X, "X"), (Y, "Y")))
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    _check_cka_samples(n, debiased)
    if debiased or n * (dx + dy) <= dx * dy + dx * dx + dy * dy:
        return _cka(x @ x.T, y @ y.T, unbiased=debiased)
    xx, yy = torch.linalg.matrix_norm(x.T @ x), torch.linalg.matrix_norm(y.T @ y)
    for v, name in ((xx, "X"), (yy, "Y")):
        if float(v) == 0.0:
            raise ValueError(f"{name} is constant across samples; CKA is undefined")
    return min(1.0, float(torch.linalg.matrix_norm(y.T @ x) ** 2 / (xx * yy)))


def rbf_cka(X, Y, threshold: float = 1.0, debiased: bool = False, *, dtype=torch.float64, device=None) -> float:
    """CKA with RBF kernels on flattened features, bandwidth as in :func:`rbf_gram` (Kornblith et al.)."""
    _same_samples(X, Y)
    dev = _device(X, Y, device=device)
    return _cka(rbf_gram(X, threshold, dtype=dtype, device=dev, name="X"),
                rbf_gram(Y, threshold, dtype=dtype, device=dev, name="Y"), unbiased=debiased)


def grelu_cka(X, Y, zero_channels: str = "raise", *, block_size: int | None = None,
              memory_budget: float | None = None, dtype=torch.float64, device=None) -> float:
    """G_ReLU-CKA (Definition 5.3) with the authors' conventions.

    Channels centred and scaled to unit norm over (samples, positions), max-kernel Gram matrices
    (:func:`max_kernel_gram`, with ``block_size`` and ``memory_budget``), unbiased HSIC. ``X``
    ``(n_samples, cx[, h, w])`` and ``Y`` ``(n_samples, cy[, h', w'])`` may differ in shape apart from
    ``n_samples``. Equals 1 when ``Y = X P D + 1 v^T`` on channels (``P`` permutation, ``D`` positive
    diagonal, ``v`` one constant per channel). Peak memory: :func:`grelu_cka_memory`.
    """
    _same_samples(X, Y)
    dev = _device(X, Y, device=device)
    grams = []
    for A, name in ((X, "X"), (Y, "Y")):
        z = _normalize_channel_major(A, True, zero_channels, dtype, dev, name)
        grams.append(_max_kernel(z, block_size, memory_budget))
        del z
    return _cka(*grams, unbiased=True)


def orthogonal_cka(X, Y, zero_channels: str = "raise", *, dtype=torch.float64, device=None) -> float:
    """The authors' "orthogonal CKA" (Figs. 2 and 5): :func:`grelu_cka` with the linear kernel.

    Differs from :func:`linear_cka` in three ways: each channel is scaled to unit norm over (samples,
    positions) (so the measure is invariant to positive per-channel scalings but not to general rotations
    of channels), centring subtracts one mean per channel rather than one per (channel, position), and
    HSIC is the unbiased estimator. Shapes as in :func:`grelu_cka`.
    """
    _same_samples(X, Y)
    dev = _device(X, Y, device=device)
    grams = []
    for A, name in ((X, "X"), (Y, "Y")):
        z = _normalize_channel_major(A, True, zero_channels, dtype, dev, name)
        f = z.permute(1, 0, 2).reshape(z.shape[1], -1)
        grams.append(f @ f.T)
        del z, f
    return _cka(*grams, unbiased=True)


def _procrustes_samples(X) -> None:
    # One sample leaves nothing to align: the measures would return 1.0 (orthogonal) or ~0.57 (G_ReLU)
    # whatever the features.
    n = _shape(X)[0] if _shape(X) else 0
    if n < 2:
        raise ValueError(f"Procrustes measures need at least 2 samples; got {n}")


def _same_positions(X, Y) -> None:
    px, py = _shape(X)[2:], _shape(Y)[2:]
    if px != py:
        raise ValueError(f"Procrustes needs X and Y with the same spatial shape; got {px} and {py} (the "
                         f"authors upsample the smaller one; resize before calling)")


def grelu_procrustes(X, Y, zero_channels: str = "raise", *, dtype=torch.float64, device=None) -> float:
    """G_ReLU-Procrustes similarity (Definition 5.2), ``1 - d`` in [0, 1].

    Channels scaled to unit norm over (samples, positions), no centring; the ``(cx, cy)``
    cross-correlation of channels; Hungarian matching maximising the matched sum;
    ``d^2 = (||X~||^2 + ||Y~||^2 - 2 matched) / (4 max(cx, cy))`` (unequal channel counts: the smaller
    is padded with zero channels, as the authors do). ``X`` ``(n_samples, cx[, h, w])``, ``Y``
    ``(n_samples, cy[, h, w])``. Equals 1 when ``Y = X P D`` on channels.
    """
    _same_samples(X, Y)
    _procrustes_samples(X)
    _same_positions(X, Y)
    dev = _device(X, Y, device=device)
    zx, zy = (_normalize_channel_major(A, False, zero_channels, dtype, dev, nm) for A, nm in ((X, "X"), (Y, "Y")))
    zx, zy = zx.reshape(zx.shape[0], -1), zy.reshape(zy.shape[0], -1)
    rows, cols = linear_sum_assignment((zx @ zy.T).cpu().numpy(), maximize=True)
    rows, cols = torch.as_tensor(rows, device=dev), torch.as_tensor(cols, device=dev)
    # The numerator of d^2 is the squared residual of the matching; summing it directly avoids the
    # cancellation of the expanded formula (whose round-off would show as 1 - 1e-8 for aligned inputs).
    resid = (zx[rows] - zy[cols]).square().sum()
    for z, matched in ((zx, rows), (zy, cols)):
        unmatched = torch.ones(z.shape[0], dtype=torch.bool, device=dev)
        unmatched[matched] = False
        resid += z[unmatched].square().sum()
    d2 = float(resid) / (4 * max(zx.shape[0], zy.shape[0]))
    return 1.0 - math.sqrt(min(1.0, max(0.0, d2)))


def orthogonal_procrustes(X, Y, *, dtype=torch.float64, device=None) -> float:
    """Orthogonal Procrustes similarity of the authors, ``1 - sqrt(2 - 2 ||X~^T Y~||_*) / 2``.

    ``X~``, ``Y~``: the features reshaped to ``(n_samples * positions, channels)`` and scaled to unit
    Frobenius norm (no centring). ``sqrt(2 - 2 ||X~^T Y~||_*)`` is the distance ``min_Q ||X~ - Y~ Q||_F``
    over orthogonal ``Q`` (zero channels padding the smaller of the two), which lies in ``[0, sqrt(2)]``;
    with the authors' divisor 2 the similarity lies in ``[1 - 1/sqrt(2), 1]`` and is 1 iff ``Y = c X Q``
    (``c > 0``, ``Q`` orthogonal on channels).
    """
    _same_samples(X, Y)
    _procrustes_samples(X)
    _same_positions(X, Y)
    dev = _device(X, Y, device=device)
    x, y = (normalize_total(A, dtype=dtype, device=dev, name=nm).permute(0, 2, 1).reshape(-1, _shape(A)[1])
            for A, nm in ((X, "X"), (Y, "Y")))
    c = max(x.shape[1], y.shape[1])
    x, y = (torch.nn.functional.pad(a, (0, c - a.shape[1])) for a in (x, y))
    # Distance from the residual of the optimal rotation Q = V U^T of X~^T Y~ = U S V^T, which equals
    # sqrt(2 - 2 ||X~^T Y~||_*) without that formula's cancellation.
    u, _, vh = torch.linalg.svd(x.T @ y)
    d2 = float((x - y @ (vh.T @ u.T)).square().sum())
    return 1.0 - math.sqrt(min(2.0, max(0.0, d2))) / 2.0


__getattr__, __dir__ = forward_names(__name__, "lib.similarity", _SIMILARITY_NAMES)
