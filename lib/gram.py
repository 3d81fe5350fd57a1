"""Gram-level building blocks of the similarity measures (:mod:`lib.metrics`).

Gram matrices of features (:func:`linear_gram`, :func:`rbf_gram` with Kornblith et al.'s bandwidth, and
:func:`max_kernel_gram`, the max kernel of G_ReLU-CKA computed block by block within a memory budget),
HSIC (:func:`hsic`, biased or unbiased) and CKA from two Gram matrices (:func:`cka_from_grams`), the peak
memory of :func:`lib.metrics.grelu_cka` (:func:`grelu_cka_memory`, :func:`grelu_cka_max_samples`) and
slow reference implementations of the max kernel (tests and ``benchmarks/metrics_speed.py``). All
public names are re-exported by :mod:`lib.metrics`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .config import check_choice
from .preprocessing import DTYPES, _channel_major, _check_finite, _rescaled, flatten_features, to_channels

__all__ = ["linear_gram", "rbf_gram", "max_kernel_gram", "hsic", "cka_from_grams",
           "grelu_cka_memory", "grelu_cka_max_samples"]

# Temporaries of one block of the max-kernel Gram matrix. On the 2-core development CPU (32 MB L3
# cache), blocks with temporaries above about 32 MB were measured to fall off a performance cliff.
BLOCK_BYTES = {"cpu": 32 * 2**20, "cuda": 1024 * 2**20}
BLOCK_ROWS = {"cpu": 512, "cuda": 4096}


# -- Gram matrices ----------------------------------------------------------------------------------

def linear_gram(X, **kw) -> torch.Tensor:
    """``X X^T`` of the flattened features (no centring), ``(n_samples, n_samples)``."""
    f = flatten_features(X, **kw)
    return f @ f.T


def _median(t: torch.Tensor) -> torch.Tensor:
    """``np.median`` of all entries (the mean of the two middle values for an even count)."""
    flat = t.reshape(-1)
    m = flat.numel()
    hi = flat.kthvalue(m // 2 + 1).values
    return hi if m % 2 else (hi + flat.kthvalue(m // 2).values) / 2


def rbf_gram(X, threshold: float = 1.0, **kw) -> torch.Tensor:
    """RBF Gram matrix ``exp(-||x_i - x_j||^2 / (2 sigma^2))`` of the flattened features.

    As in Kornblith et al.'s ``gram_rbf``: ``sigma^2 = threshold^2 * median`` of the squared distances,
    the median taken over all ``n_samples^2`` entries including the zero diagonal, so ``sigma`` is
    ``threshold`` times the square root of that median. Returns ``(n_samples, n_samples)``.
    """
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive number; got {threshold!r}")
    f = _rescaled(flatten_features(X, **kw))
    g = f @ f.T
    sq = g.diagonal().clone()
    d = g.mul_(-2).add_(sq[:, None]).add_(sq[None, :]).clamp_(min=0)
    d.fill_diagonal_(0)
    med = float(_median(d))
    if med == 0.0:
        raise ValueError("the median squared distance between samples is zero (at least half the sample "
                         "pairs coincide); the RBF bandwidth is undefined")
    return d.mul_(-1.0 / (2 * threshold ** 2 * med)).exp_()


def _block_plan(n, c, itemsize, device, block_size, memory_budget):
    """Rows per block and channels per chunk so that one chunk's products fit ``memory_budget``."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    if memory_budget is None:
        memory_budget = BLOCK_BYTES[kind]
    if not (isinstance(memory_budget, (int, float)) and memory_budget > 0):
        raise ValueError(f"memory_budget must be a positive number of bytes or None; got {memory_budget!r}")
    if block_size is None:
        rows = min(BLOCK_ROWS[kind], max(1, math.isqrt(int(memory_budget // itemsize))))
        block = math.ceil(n / math.ceil(n / rows))
    elif isinstance(block_size, (int, np.integer)) and not isinstance(block_size, bool) and block_size >= 1:
        block = min(int(block_size), n)
    else:
        raise ValueError(f"block_size must be a positive integer or None; got {block_size!r}")
    chunk = int(min(c, max(1, memory_budget // (block * block * itemsize))))
    return block, chunk


def _max_kernel(z: torch.Tensor, block_size=None, memory_budget=None) -> torch.Tensor:
    """Max-kernel Gram matrix of channel-major features ``z`` ``(channels, n, positions)``.

    Per channel the Gram matrix ``z_c z_c^T`` is a matrix product; the maximum over channels is kept
    running over chunks of channels, block by block (upper triangle only, mirrored), so that the
    temporaries stay within ``memory_budget`` instead of the ``(n, n, channels)`` of a broadcast.
    """
    c, n, _ = z.shape
    block, chunk = _block_plan(n, c, z.element_size(), z.device, block_size, memory_budget)
    K = torch.empty((n, n), dtype=z.dtype, device=z.device)
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        for j0 in range(i0, n, block):
            j1 = min(j0 + block, n)
            tile = None
            for c0 in range(0, c, chunk):
                c1 = min(c0 + chunk, c)
                g = torch.bmm(z[c0:c1, i0:i1], z[c0:c1, j0:j1].transpose(1, 2)).amax(dim=0)
                tile = g if tile is None else torch.maximum(tile, g, out=tile)
            if j0 == i0:
                # Products of a block with itself are symmetric only up to round-off; make it exact.
                tile = torch.triu(tile) + torch.triu(tile, 1).T
            K[i0:i1, j0:j1] = tile
            if j0 != i0:
                K[j0:j1, i0:i1] = tile.T
    return K


def max_kernel_gram(X, block_size: int | None = None, memory_budget: float | None = None, *,
                    dtype=torch.float64, device=None) -> torch.Tensor:
    """Gram matrix of the max kernel ``K[i, j] = max_c sum_p X[i, c, p] X[j, c, p]`` (no preprocessing).

    Parameters
    ----------
    X : array or tensor, see :func:`to_channels`; for ``(n_samples, n_features)`` this is
        ``max_k X[i, k] X[j, k]``.
    block_size : rows (and columns) of one block; None chooses it from ``memory_budget``.
    memory_budget : bytes for the per-channel products of one block (the channel chunk is sized to fit;
        at least one channel per chunk); None: 32 MiB on CPU, 1 GiB on CUDA. The block itself and its
        running maximum add ``2 * block_size^2`` elements.

    Returns
    -------
    Tensor ``(n_samples, n_samples)``, diagonal included (``max_c ||x_ic||^2``; the unbiased HSIC ignores it).
    """
    z = _channel_major(X, dtype, device, "X")
    return _max_kernel(z, block_size, memory_budget)


# -- HSIC and CKA -----------------------------------------------------------------------------------

def _gram(K, name) -> torch.Tensor:
    t = K.detach() if isinstance(K, torch.Tensor) else torch.as_tensor(np.asarray(K))
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"{name} must be a square (n_samples, n_samples) Gram matrix; got shape {tuple(t.shape)}")
    t = t if t.dtype in DTYPES else t.to(torch.float64)
    return _check_finite(t, name)


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
    """Hilbert-Schmidt independence criterion of two symmetric Gram matrices ``(n_samples, n_samples)``.

    ``unbiased=True``: ``[tr(KL) + 1^T K 1 1^T L 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K L 1] / (n(n-3))`` with
    zero diagonals (the diagonals of ``K`` and ``L`` are ignored); needs ``n >= 4``. ``False``: the
    biased ``tr(KHLH) / (n-1)^2``.
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
    """``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` for symmetric Gram matrices ``(n_samples, n_samples)``."""
    K, L = _gram(K, "K"), _gram(L, "L")
    if K.shape != L.shape:
        raise ValueError(f"K and L must have the same shape; got {tuple(K.shape)} and {tuple(L.shape)}")
    return _cka(K, L.to(device=K.device, dtype=K.dtype), unbiased, names=("K", "L"))

# -- memory -----------------------------------------------------------------------------------------

def grelu_cka_memory(n_samples: int, x_shape, y_shape=None, *, dtype=torch.float64,
                     memory_budget: float | None = None, device="cpu") -> int:
    """Estimated peak bytes that :func:`grelu_cka` allocates (the caller's inputs not counted).

    ``x_shape``/``y_shape``: per-sample shapes, ``(channels, height, width)`` or ``(n_features,)``
    (``y_shape`` defaults to ``x_shape``). Peak = the first Gram matrix, the second and the channel-major
    copy of ``Y`` (or the copy of ``X`` before that), plus block temporaries counted twice, because the
    allocator keeps those of the first Gram matrix. The BLAS library adds a few tens of MiB on top
    (``benchmarks/metrics_speed.py`` compares this estimate with a measured peak).
    """
    check_choice("dtype", dtype, DTYPES)
    size = torch.empty(0, dtype=dtype).element_size()
    y_shape = x_shape if y_shape is None else y_shape
    mx, my = math.prod(x_shape), math.prod(y_shape)
    dev = torch.device(device)
    block, _ = _block_plan(n_samples, 1, size, dev, None, memory_budget)
    budget = memory_budget or BLOCK_BYTES["cuda" if dev.type == "cuda" else "cpu"]
    gram = n_samples * n_samples * size
    return int(max(gram + n_samples * mx * size, 2 * gram + n_samples * my * size) + 2 * (budget + 2 * block**2 * size))


def grelu_cka_max_samples(total_bytes: float, x_shape, y_shape=None, **kw) -> int:
    """Largest ``n_samples`` whose :func:`grelu_cka_memory` fits in ``total_bytes`` (0 if none does)."""
    lo, hi = 0, 1
    while grelu_cka_memory(hi, x_shape, y_shape, **kw) <= total_bytes:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if grelu_cka_memory(mid, x_shape, y_shape, **kw) <= total_bytes else (lo, mid)
    return lo

# -- slow references (tests and benchmarks/metrics_speed.py) ----------------------------------------

def _reference_max_kernel_row(f: torch.Tensor, i: int, kind: str = "authors") -> torch.Tensor:
    """Row ``i`` of the max kernel against rows ``< i`` of ``f`` ``(n, c, p)``.

    ``"authors"``: elementwise product and sum as in the authors' ``wreath_cka`` (an ``(i, c, p)``
    temporary); ``"matvec"``: the same with matrix-vector products (no temporary; a stronger baseline).
    """
    if kind == "authors":
        return (f[:i] * f[i]).sum(dim=-1).amax(dim=1)
    return torch.einsum("jcp,cp->jc", f[:i], f[i]).amax(dim=1)


def _reference_max_kernel_rows(X, kind: str = "authors") -> torch.Tensor:
    """Max-kernel Gram matrix filled one row at a time in a Python loop (the authors' way)."""
    f = to_channels(X)
    n = f.shape[0]
    K = torch.zeros((n, n), dtype=f.dtype, device=f.device)
    for i in range(1, n):
        K[i, :i] = _reference_max_kernel_row(f, i, kind)
    K = K + K.T
    K.diagonal().copy_(f.square().sum(dim=-1).amax(dim=1))
    return K


def _reference_max_kernel_naive(X) -> torch.Tensor:
    """Max-kernel Gram matrix through the full ``(n, n, channels)`` tensor of per-channel inner products."""
    f = to_channels(X)
    return torch.einsum("icp,jcp->ijc", f, f).amax(dim=-1)
