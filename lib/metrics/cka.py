"""HSIC and the CKA measures of Section 5: G_ReLU-CKA, the authors' orthogonal CKA, linear and RBF CKA.

Every measure takes two feature arrays with the same number of samples (see
``lib.metrics.preprocessing``) and returns a Python float in ``[-1, 1]``.

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

The max kernel is *not* positive semi-definite in general, contrary to Lemma 5.5: the points
``(1, 0), (0, 1), (1, 1)`` give the Gram matrix ``[[1, 0, 1], [0, 1, 1], [1, 1, 1]]`` whose
determinant is -1. CKA stays within [-1, 1] anyway, because the unbiased HSIC is an inner product of
"unbiasedly centred" Gram matrices (Cauchy-Schwarz); like every debiased CKA it can be slightly negative.
:func:`grelu_cka_memory` and :func:`grelu_cka_max_samples` size G_ReLU-CKA's peak memory.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..config import check_choice
from .gram import BLOCK_BYTES, block_plan, blocked_max_kernel, rbf_gram
from .preprocessing import (DTYPES, center_features, check_finite, check_same_samples, compute_device,
                            normalize_channel_major, rescaled)
from .inputs import check_samples

__all__ = ["hsic", "cka_from_grams", "linear_cka", "rbf_cka", "grelu_cka", "orthogonal_cka",
           "grelu_cka_memory", "grelu_cka_max_samples"]


# -- HSIC and CKA from Gram matrices ----------------------------------------------------------------

def _gram(K, name) -> torch.Tensor:
    t = K.detach() if isinstance(K, torch.Tensor) else torch.as_tensor(np.asarray(K))
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"{name} must be a square (n_samples, n_samples) Gram matrix; got shape {tuple(t.shape)}")
    t = t if t.dtype in DTYPES else t.to(torch.float64)
    return check_finite(t, name)


def _hsic(K: torch.Tensor, L: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """HSIC of symmetric Gram matrices without ``n x n`` temporaries (dot products and row sums only)."""
    n = K.shape[0]
    if unbiased:
        # Song et al. / Nguyen et al. eq. 3 with the diagonals set to zero, which the authors do.
        if n < 4:
            raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples; got {n}")
        dk, dl = K.diagonal(), L.diagonal()
        rk, rl = K.sum(dim=1) - dk, L.sum(dim=1) - dl
        kl = torch.dot(K.reshape(-1), L.reshape(-1)) - torch.dot(dk, dl)
        return (kl + rk.sum() * rl.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * torch.dot(rk, rl)) / (n * (n - 3))
    if n < 2:
        raise ValueError(f"HSIC needs at least 2 samples; got {n}")
    rk, rl = K.sum(dim=1), L.sum(dim=1)
    # tr(KHLH) with H = I - 11^T/n, expanded.
    kl = torch.dot(K.reshape(-1), L.reshape(-1))
    return (kl - 2 / n * torch.dot(rk, rl) + rk.sum() * rl.sum() / n**2) / (n - 1) ** 2


def hsic(K, L, unbiased: bool = True) -> float:
    """Hilbert-Schmidt independence criterion of two symmetric Gram matrices.

    ``unbiased=True``: ``[tr(KL) + 1^T K 1 1^T L 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K L 1] / (n(n-3))`` with
    zero diagonals (the diagonals of ``K`` and ``L`` are ignored); ``False``: the biased
    ``tr(KHLH) / (n-1)^2`` with ``H = I - 11^T/n``.

    Parameters
    ----------
    K, L : arrays or tensors
        ``(n_samples, n_samples)`` each.
    unbiased : bool
        The unbiased estimator (needs ``n_samples >= 4``) or the biased one (``n_samples >= 2``).

    Returns
    -------
    float
        The estimate, in the product of the units of ``K`` and ``L``.
    """
    K, L = _gram(K, "K"), _gram(L, "L")
    if K.shape != L.shape:
        raise ValueError(f"K and L must have the same shape; got {tuple(K.shape)} and {tuple(L.shape)}")
    return float(_hsic(K, L.to(device=K.device, dtype=K.dtype), unbiased))


def _check_cka_samples(n: int, unbiased: bool) -> None:
    """CKA from fewer samples is a number that says nothing about the features: raise instead."""
    if unbiased and n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples; got {n}")
    if n < 3:
        raise ValueError(f"CKA needs at least 3 samples (4 for the unbiased estimator); got {n}: with 2, every "
                         f"centred Gram matrix is a multiple of [[1, -1], [-1, 1]] and CKA is 1 for any inputs")


def _cka(K, L, unbiased, names=("X", "Y")) -> float:
    _check_cka_samples(K.shape[0], unbiased)
    hk, hl = float(_hsic(K, K, unbiased)), float(_hsic(L, L, unbiased))
    for h, name in ((hk, names[0]), (hl, names[1])):
        if not h > 0:
            raise ValueError(f"{name} gives a degenerate Gram matrix (HSIC with itself = {h:.3g}), e.g. all its "
                             f"samples coincide after preprocessing; CKA is undefined")
    value = float(_hsic(K, L, unbiased)) / math.sqrt(hk * hl)
    # Cauchy-Schwarz bounds the exact value; clip the round-off.
    return min(1.0, max(-1.0, value))


def cka_from_grams(K, L, unbiased: bool = True) -> float:
    """CKA of two symmetric Gram matrices, ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

    Parameters
    ----------
    K, L : arrays or tensors
        ``(n_samples, n_samples)`` each.
    unbiased : bool
        HSIC estimator, see :func:`hsic`.

    Returns
    -------
    float
        In ``[-1, 1]``.
    """
    K, L = _gram(K, "K"), _gram(L, "L")
    if K.shape != L.shape:
        raise ValueError(f"K and L must have the same shape; got {tuple(K.shape)} and {tuple(L.shape)}")
    return _cka(K, L.to(device=K.device, dtype=K.dtype), unbiased, names=("K", "L"))


# -- the measures -----------------------------------------------------------------------------------

def linear_cka(X, Y, debiased: bool = False, *, dtype=torch.float64, device=None) -> float:
    """Linear CKA of Kornblith et al. 2019 on flattened, centred features.

    Biased: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` (computed from the smaller of the feature-space
    and sample-space forms); ``debiased=True`` uses the unbiased HSIC.

    Parameters
    ----------
    X, Y : arrays or tensors
        ``(n_samples, ...)`` each, possibly with different feature counts.
    debiased : bool
        Unbiased HSIC estimator instead of the biased one.
    dtype, device
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    float
        In ``[0, 1]`` (biased) or ``[-1, 1]`` (debiased).
    """
    check_same_samples(X, Y)
    dev = compute_device(X, Y, device=device)
    x, y = (rescaled(center_features(A, dtype=dtype, device=dev, name=nm), inplace=True)
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
    """CKA with RBF kernels on flattened features (Kornblith et al. 2019).

    Parameters
    ----------
    X, Y : arrays or tensors
        ``(n_samples, ...)`` each.
    threshold : float
        Bandwidth relative to the median distance, see :func:`lib.metrics.rbf_gram`.
    debiased : bool
        Unbiased HSIC estimator instead of the biased one.
    dtype, device
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    float
        In ``[-1, 1]``.
    """
    check_samples(X, Y, 4 if debiased else 3, "rbf_cka")
    check_same_samples(X, Y)
    dev = compute_device(X, Y, device=device)
    return _cka(rbf_gram(X, threshold, dtype=dtype, device=dev, name="X"),
                rbf_gram(Y, threshold, dtype=dtype, device=dev, name="Y"), unbiased=debiased)


def grelu_cka(X, Y, zero_channels: str = "raise", *, block_size: int | None = None,
              memory_budget: float | None = None, dtype=torch.float64, device=None) -> float:
    """G_ReLU-CKA (Definition 5.3) with the authors' conventions.

    Channels centred and scaled to unit norm over (samples, positions), max-kernel Gram matrices
    (:func:`lib.metrics.max_kernel_gram`), unbiased HSIC. Equals 1 when ``Y = X P D + 1 v^T`` on
    channels (``P`` permutation, ``D`` positive diagonal, ``v`` one constant per channel). Peak memory:
    :func:`grelu_cka_memory`.

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, cx[, h, w])``.
    Y : array or tensor
        ``(n_samples, cy[, h', w'])``; may differ from ``X`` in shape apart from ``n_samples``.
    zero_channels : str
        See :func:`lib.metrics.normalize_channels`.
    block_size, memory_budget
        See ``lib.metrics.gram.block_plan``.
    dtype, device
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    float
        In ``[-1, 1]``.
    """
    check_samples(X, Y, 4, "grelu_cka")
    check_same_samples(X, Y)
    dev = compute_device(X, Y, device=device)
    grams = []
    for A, name in ((X, "X"), (Y, "Y")):
        z = normalize_channel_major(A, True, zero_channels, dtype, dev, name)
        grams.append(blocked_max_kernel(z, block_size, memory_budget))
        del z
    return _cka(*grams, unbiased=True)


def orthogonal_cka(X, Y, zero_channels: str = "raise", *, dtype=torch.float64, device=None) -> float:
    """The authors' "orthogonal CKA" (Figs. 2 and 5): :func:`grelu_cka` with the linear kernel.

    Differs from :func:`linear_cka` in three ways: each channel is scaled to unit norm over (samples,
    positions) (so the measure is invariant to positive per-channel scalings but not to general rotations
    of channels), centring subtracts one mean per channel rather than one per (channel, position), and
    HSIC is the unbiased estimator.

    Parameters
    ----------
    X, Y, zero_channels, dtype, device
        As for :func:`grelu_cka`.

    Returns
    -------
    float
        In ``[-1, 1]``.
    """
    check_samples(X, Y, 4, "orthogonal_cka")
    check_same_samples(X, Y)
    dev = compute_device(X, Y, device=device)
    grams = []
    for A, name in ((X, "X"), (Y, "Y")):
        z = normalize_channel_major(A, True, zero_channels, dtype, dev, name)
        f = z.permute(1, 0, 2).reshape(z.shape[1], -1)
        grams.append(f @ f.T)
        del z, f
    return _cka(*grams, unbiased=True)


# -- memory -----------------------------------------------------------------------------------------

def grelu_cka_memory(n_samples: int, x_shape, y_shape=None, *, dtype=torch.float64,
                     memory_budget: float | None = None, device="cpu") -> int:
    """Estimated peak bytes that :func:`grelu_cka` allocates (the caller's inputs not counted).

    Peak = the first Gram matrix, the second and the channel-major copy of ``Y`` (or the copy of ``X``
    before that), plus block temporaries counted twice, because the allocator keeps those of the first
    Gram matrix. The BLAS library adds a few tens of MiB on top (``benchmarks/metrics_speed.py``
    compares this estimate with a measured peak).

    Parameters
    ----------
    n_samples : int
    x_shape : tuple of int
        Per-sample shape of ``X``: ``(channels, height, width)`` or ``(n_features,)``.
    y_shape : tuple of int, optional
        Per-sample shape of ``Y``; defaults to ``x_shape``.
    dtype, memory_budget, device
        As for :func:`grelu_cka`.

    Returns
    -------
    int
        Bytes.
    """
    check_choice("dtype", dtype, DTYPES)
    size = torch.empty(0, dtype=dtype).element_size()
    y_shape = x_shape if y_shape is None else y_shape
    mx, my = math.prod(x_shape), math.prod(y_shape)
    dev = torch.device(device)
    block, _ = block_plan(n_samples, 1, size, dev, None, memory_budget)
    budget = memory_budget or BLOCK_BYTES["cuda" if dev.type == "cuda" else "cpu"]
    gram = n_samples * n_samples * size
    return int(max(gram + n_samples * mx * size, 2 * gram + n_samples * my * size) + 2 * (budget + 2 * block**2 * size))


def grelu_cka_max_samples(total_bytes: float, x_shape, y_shape=None, **kw) -> int:
    """The largest ``n_samples`` whose :func:`grelu_cka_memory` fits in ``total_bytes``.

    Parameters
    ----------
    total_bytes : float
        Memory available, in bytes.
    x_shape, y_shape, **kw
        As for :func:`grelu_cka_memory`.

    Returns
    -------
    int
        0 if not even one sample fits.
    """
    lo, hi = 0, 1
    while grelu_cka_memory(hi, x_shape, y_shape, **kw) <= total_bytes:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if grelu_cka_memory(mid, x_shape, y_shape, **kw) <= total_bytes else (lo, mid)
    return lo
