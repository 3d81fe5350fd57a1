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
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .config import check_choice, get_device

__all__ = [
    "linear_cka", "rbf_cka", "grelu_cka", "orthogonal_cka", "grelu_procrustes", "orthogonal_procrustes",
    "to_channels", "flatten_features", "center_features", "normalize_channels", "normalize_total",
    "linear_gram", "rbf_gram", "max_kernel_gram", "hsic", "cka_from_grams",
    "grelu_cka_memory", "grelu_cka_max_samples",
]

DTYPES = (torch.float64, torch.float32)
# Temporaries of one block of the max-kernel Gram matrix. On the 2-core development CPU (32 MB L3
# cache), blocks with temporaries above about 32 MB were measured to fall off a performance cliff.
BLOCK_BYTES = {"cpu": 32 * 2**20, "cuda": 1024 * 2**20}
BLOCK_ROWS = {"cpu": 512, "cuda": 4096}
ZERO_CHANNELS = ("raise", "keep")


# -- inputs and preprocessing -----------------------------------------------------------------------

def _device(*arrays, device=None) -> torch.device:
    """``device`` if given, else the first CUDA device among the tensor inputs, else the CPU."""
    if device is not None:
        return get_device(device)
    for a in arrays:
        if isinstance(a, torch.Tensor) and a.device.type != "cpu":
            return a.device
    return torch.device("cpu")


def _raw(X, name: str) -> torch.Tensor:
    """``X`` as a torch tensor in the channel view ``(n, c, p)``, not yet converted (no copy for numpy)."""
    t = X.detach() if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if t.ndim not in (2, 3, 4):
        raise ValueError(f"{name} must have shape (n_samples, n_features) or (n_samples, channels, height, "
                         f"width); got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold real numbers; got dtype {t.dtype}")
    return t.reshape(t.shape[0], t.shape[1], -1)


def _check_finite(t: torch.Tensor, name: str) -> torch.Tensor:
    # The extremes propagate NaN and show infinities, without the full-size temporary of isfinite().
    if not (math.isfinite(float(t.amax())) and math.isfinite(float(t.amin()))):
        raise ValueError(f"{name} contains NaN or infinite values (after conversion to {t.dtype})")
    return t


def to_channels(X, *, dtype=torch.float64, device=None, name: str = "X") -> torch.Tensor:
    """Features in the channel view used by every measure.

    Parameters
    ----------
    X : array or tensor, ``(n_samples, n_features)``, ``(n_samples, channels, positions)`` or
        ``(n_samples, channels, height, width)``. Plain features count as channels with one position.
    dtype : ``torch.float64`` or ``torch.float32``.
    device : None (the input's device; CPU for numpy) or a device for :func:`lib.config.get_device`.

    Returns
    -------
    Tensor ``(n_samples, channels, positions)``; shares memory with ``X`` when no conversion is needed.
    """
    check_choice("dtype", dtype, DTYPES)
    t = _raw(X, name)
    return _check_finite(t.to(device=_device(X, device=device), dtype=dtype), name)


def flatten_features(X, **kw) -> torch.Tensor:
    """``(n_samples, channels * positions)``: conv features flattened in (C, H, W) order."""
    t = to_channels(X, **kw)
    return t.reshape(t.shape[0], -1)


def center_features(X, **kw) -> torch.Tensor:
    """Flattened features minus their mean over samples, ``(n_samples, n_features)`` (a new tensor)."""
    t = flatten_features(X, **kw)
    return t - t.mean(dim=0, keepdim=True)


def _channel_major(X, dtype, device, name) -> torch.Tensor:
    """A fresh contiguous ``(channels, n_samples, positions)`` copy of ``X`` in ``dtype``."""
    check_choice("dtype", dtype, DTYPES)
    t = _raw(X, name)
    z = torch.empty((t.shape[1], t.shape[0], t.shape[2]), dtype=dtype, device=_device(X, device=device))
    z.copy_(t.permute(1, 0, 2))
    return _check_finite(z, name)


def _normalize_channel_major(X, center, zero_channels, dtype, device, name) -> torch.Tensor:
    """:func:`normalize_channels` in the ``(channels, n_samples, positions)`` layout."""
    check_choice("zero_channels", zero_channels, ZERO_CHANNELS)
    z = _channel_major(X, dtype, device, name)
    before = torch.linalg.vector_norm(z, dim=(1, 2))
    if center:
        z -= z.mean(dim=(1, 2), keepdim=True)
    norms = torch.linalg.vector_norm(z, dim=(1, 2))
    # A channel constant over samples and positions leaves only round-off after centring.
    zero = norms <= 1e3 * torch.finfo(dtype).eps * before
    if bool(zero.all()):
        raise ValueError(f"every channel of {name} is {'constant' if center else 'zero'}; the measure is undefined")
    if bool(zero.any()):
        idx = torch.nonzero(zero).flatten().tolist()
        if zero_channels == "raise":
            raise ValueError(
                f"{name} has {len(idx)} channel(s) with zero norm{' after centring' if center else ''} "
                f"(e.g. channel {idx[0]}), so per-channel normalisation is undefined; pass "
                f"zero_channels='keep' to leave them at zero as the authors' code does")
        z[zero] = 0.0
    z /= torch.where(zero, torch.ones_like(norms), norms)[:, None, None]
    return z


def normalize_channels(X, center: bool = True, zero_channels: str = "raise", *, dtype=torch.float64,
                       device=None, name: str = "X") -> torch.Tensor:
    """Each channel (optionally centred, then) scaled to unit norm over (samples, positions).

    Parameters
    ----------
    X : array or tensor, see :func:`to_channels`.
    center : subtract each channel's mean over (samples, positions) first (G_ReLU-CKA: yes;
        G_ReLU-Procrustes: no).
    zero_channels : ``"raise"`` (a channel with zero norm is a ``ValueError``) or ``"keep"`` (it stays
        zero and contributes nothing, as in the authors' code; dead ReLU channels do this).

    Returns
    -------
    Tensor ``(n_samples, channels, positions)`` (a view of a channel-major copy).
    """
    return _normalize_channel_major(X, center, zero_channels, dtype, device, name).permute(1, 0, 2)


def normalize_total(X, *, dtype=torch.float64, device=None, name: str = "X") -> torch.Tensor:
    """``(n_samples, channels, positions)`` scaled to unit Frobenius norm as a whole (no centring)."""
    t = to_channels(X, dtype=dtype, device=device, name=name)
    norm = torch.linalg.vector_norm(t)
    if float(norm) == 0.0:
        raise ValueError(f"{name} is identically zero; the measure is undefined")
    return t / norm


def _shape(A) -> tuple:
    return tuple(A.shape) if hasattr(A, "shape") else np.shape(A)


def _same_samples(X, Y) -> None:
    sx, sy = _shape(X), _shape(Y)
    nx, ny = (sx[0] if sx else None), (sy[0] if sy else None)
    if nx != ny:
        raise ValueError(f"X and Y must have the same number of samples; got {nx} and {ny}")


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
    f = flatten_features(X, **kw)
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


def _cka(K, L, unbiased, names=("X", "Y")) -> float:
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


# -- the measures -----------------------------------------------------------------------------------

def linear_cka(X, Y, debiased: bool = False, *, dtype=torch.float64, device=None) -> float:
    """Linear CKA of Kornblith et al. 2019 on flattened, centred features.

    Biased: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` (computed from the smaller of the feature-space
    and sample-space forms); ``debiased=True`` uses the unbiased HSIC. ``X`` ``(n_samples, ...)`` and ``Y``
    ``(n_samples, ...)`` may have different feature counts.
    """
    _same_samples(X, Y)
    dev = _device(X, Y, device=device)
    x, y = (center_features(A, dtype=dtype, device=dev, name=nm) for A, nm in ((X, "X"), (Y, "Y")))
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    if debiased or n * (dx + dy) <= dx * dy + dx * dx + dy * dy:
        return _cka(x @ x.T, y @ y.T, unbiased=debiased)
    if n < 2:
        raise ValueError(f"HSIC needs at least 2 samples; got {n}")
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


# -- all layer pairs of two models (heatmaps, Table 2, layer identification) ------------------------

MATRIX_MEASURES = ("grelu_cka", "orthogonal_cka", "linear_cka", "grelu_procrustes", "orthogonal_procrustes")
CKA_MEASURES = ("grelu_cka", "orthogonal_cka", "linear_cka")
PAIRS = ("all", "diagonal")
__all__ += ["MATRIX_MEASURES", "CKA_MEASURES", "layer_features", "u_centre", "normalized_gram",
            "similarity_matrices", "similarity_matrix", "best_matches"]


@torch.no_grad()
def layer_features(model: torch.nn.Module, x: torch.Tensor, layers=None, *, dtype=torch.float32,
                   batch_size: int = 250) -> dict:
    """Hidden features of ``model`` on inputs ``x``, as CPU tensors in ``dtype``.

    Parameters
    ----------
    model : a model of :mod:`lib.models` (run in eval mode on its own device).
    x : model inputs ``(n_samples, 3, H, W)`` on the model's device (e.g. from :func:`lib.data.to_input`).
    layers : layer names for :func:`lib.models.features` (default: every hidden activation layer).
    dtype : storage type, ``torch.float32`` or ``torch.float16`` (half the memory; the measures convert
        back to ``float32``/``float64``; values beyond 65504 become infinite and are reported by them).
    batch_size : images per forward pass; only one batch's features exist in float32 at a time.

    Returns
    -------
    ``{name: tensor (n_samples, channels, height, width)}`` in forward order, on the CPU.
    """
    from .models import features

    check_choice("dtype", dtype, (torch.float32, torch.float16))
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    out: dict = {}
    for start in range(0, len(x), batch_size):
        chunk = features(model, x[start:start + batch_size], layers, batch_size=batch_size)
        for name, f in chunk.items():
            if name not in out:
                out[name] = torch.empty((len(x),) + tuple(f.shape[1:]), dtype=dtype)
            out[name][start:start + len(f)] = f.to("cpu", dtype)
    return out


def u_centre(K: torch.Tensor) -> torch.Tensor:
    """The "U-centred" Gram matrix of Székely and Rizzo, ``(n_samples, n_samples)``, in place.

    Off the diagonal ``K_ij - r_i/(n-2) - r_j/(n-2) + s/((n-1)(n-2))`` with ``r`` the row sums and ``s``
    the total of ``K`` with its diagonal zeroed; zero on the diagonal. The unbiased HSIC of
    :func:`hsic` is ``<u_centre(K), u_centre(L)> / (n (n-3))``, so a CKA is the cosine of U-centred
    Gram matrices: each layer's Gram matrix is centred and normalised once and then reused for every
    layer it is compared with.
    """
    n = K.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples; got {n}")
    K.fill_diagonal_(0)
    r = K.sum(dim=1)
    K -= r[:, None] / (n - 2)
    K -= r[None, :] / (n - 2)
    K += r.sum() / ((n - 1) * (n - 2))
    K.fill_diagonal_(0)
    return K


def normalized_gram(X, measure: str, zero_channels: str = "keep", *, block_size: int | None = None,
                    memory_budget: float | None = None, dtype=torch.float32, device=None,
                    name: str = "X") -> torch.Tensor:
    """The centred Gram matrix of ``X`` for a CKA ``measure``, scaled to unit Frobenius norm.

    ``measure``: ``"grelu_cka"`` (max kernel of the channel-normalised features, U-centred),
    ``"orthogonal_cka"`` (linear kernel of the same, U-centred) or ``"linear_cka"`` (linear kernel of
    the centred flattened features, i.e. Kornblith et al.'s biased CKA). The CKA of two inputs is the
    inner product of their matrices: ``(normalized_gram(X, m) * normalized_gram(Y, m)).sum()`` equals
    ``grelu_cka(X, Y)`` etc. Returns ``(n_samples, n_samples)``.
    """
    check_choice("measure", measure, CKA_MEASURES)
    dev = _device(X, device=device)
    if measure == "linear_cka":
        # Centred features give an already doubly centred Gram matrix: the biased HSIC is <K, L>.
        f = center_features(X, dtype=dtype, device=dev, name=name)
        K = f @ f.T
    else:
        z = _normalize_channel_major(X, True, zero_channels, dtype, dev, name)
        if measure == "grelu_cka":
            K = _max_kernel(z, block_size, memory_budget)
        else:
            f = z.permute(1, 0, 2).reshape(z.shape[1], -1)
            K = f @ f.T
        del z
        K = u_centre(K)
    norm = float(torch.linalg.vector_norm(K))
    if not norm > 0:
        raise ValueError(f"{name} gives a degenerate Gram matrix (all samples coincide after preprocessing); "
                         f"CKA is undefined")
    return K.div_(norm)


def similarity_matrices(feats_a: dict, feats_b: dict, measures=("grelu_cka", "orthogonal_cka"), *,
                        pairs: str = "all", zero_channels: str = "keep", block_size: int | None = None,
                        memory_budget: float | None = None, dtype=torch.float32, device=None) -> dict:
    """Similarity of every layer of model A with every layer of model B, for several measures.

    Parameters
    ----------
    feats_a, feats_b : ``{layer: features (n_samples, channels[, height, width])}`` of the two models on
        the same inputs (e.g. from :func:`layer_features`); the order of the dicts is the order of rows
        and columns.
    measures : names from :data:`MATRIX_MEASURES`.
    pairs : ``"all"`` (every layer pair) or ``"diagonal"`` (only layer ``i`` of A with layer ``i`` of B,
        e.g. Table 2; needs as many layers in A as in B).
    zero_channels : see :func:`normalize_channels`; ``"keep"`` by default because trained ReLU layers
        often have dead channels.
    dtype : computation type (``float32`` by default: the CKAs and Procrustes values agree with
        ``float64`` to about 1e-5 on real features, at half the time and memory).

    Returns
    -------
    ``{measure: array (len(feats_a), len(feats_b))}``. Entries not computed are NaN: off the diagonal
    for ``pairs="diagonal"``, and for the Procrustes measures every pair whose spatial shapes differ
    (the authors compare same-shaped layers only).

    Each CKA Gram matrix is computed once per layer and model (:func:`normalized_gram`), so the cost is
    ``len(feats_a) + len(feats_b)`` Gram matrices, not their product; A's matrices are held while B's
    are computed one at a time (peak ``(len(feats_a) + 1) n_samples^2`` numbers per measure).
    """
    for m in measures:
        check_choice("measure", m, MATRIX_MEASURES)
    check_choice("pairs", pairs, PAIRS)
    names_a, names_b = list(feats_a), list(feats_b)
    if not names_a or not names_b:
        raise ValueError("feats_a and feats_b must each hold at least one layer")
    if pairs == "diagonal" and len(names_a) != len(names_b):
        raise ValueError(f"pairs='diagonal' needs as many layers in feats_a as in feats_b; got "
                         f"{len(names_a)} and {len(names_b)}")
    for a in names_a:
        _same_samples(feats_a[a], feats_b[names_b[0]])
    for b in names_b:
        _same_samples(feats_a[names_a[0]], feats_b[b])
    wanted = np.array([[pairs == "all" or i == j for j in range(len(names_b))] for i in range(len(names_a))])
    gram_kw = dict(zero_channels=zero_channels, block_size=block_size, memory_budget=memory_budget,
                   dtype=dtype, device=device)
    out = {}
    for m in measures:
        S = np.full((len(names_a), len(names_b)), np.nan)
        if m in CKA_MEASURES:
            grams_a = [normalized_gram(feats_a[a], m, name=f"feats_a[{a!r}]", **gram_kw)
                       if wanted[i].any() else None for i, a in enumerate(names_a)]
            for j, b in enumerate(names_b):
                if not wanted[:, j].any():
                    continue
                L = normalized_gram(feats_b[b], m, name=f"feats_b[{b!r}]", **gram_kw)
                for i, K in enumerate(grams_a):
                    if wanted[i, j]:
                        S[i, j] = min(1.0, max(-1.0, float(torch.dot(K.reshape(-1), L.to(K).reshape(-1)))))
                del L
            del grams_a
        else:
            fn = grelu_procrustes if m == "grelu_procrustes" else orthogonal_procrustes
            kw = dict(zero_channels=zero_channels) if m == "grelu_procrustes" else {}
            for i, a in enumerate(names_a):
                for j, b in enumerate(names_b):
                    if wanted[i, j] and _shape(feats_a[a])[2:] == _shape(feats_b[b])[2:]:
                        S[i, j] = fn(feats_a[a], feats_b[b], dtype=dtype, device=device, **kw)
        out[m] = S
    return out


def similarity_matrix(feats_a: dict, feats_b: dict, measure: str, **kwargs) -> np.ndarray:
    """:func:`similarity_matrices` for one measure: array ``(len(feats_a), len(feats_b))``."""
    return similarity_matrices(feats_a, feats_b, (measure,), **kwargs)[measure]


def best_matches(S) -> np.ndarray:
    """For each row of a similarity matrix ``S`` ``(n_layers_a, n_layers_b)``, the column of its largest
    entry (NaN entries ignored; -1 for a row without any). The layer-identification test of Kornblith
    et al. 2019 asks for ``best_matches(S)[i] == i`` between two seeds of one architecture."""
    S = np.asarray(S, dtype=float)
    if S.ndim != 2:
        raise ValueError(f"S must be a 2-D similarity matrix; got shape {S.shape}")
    filled = np.where(np.isnan(S), -np.inf, S)
    best = filled.argmax(axis=1)
    return np.where(np.isfinite(filled).any(axis=1), best, -1)


def model_pair_similarities(model_a: torch.nn.Module, model_b: torch.nn.Module, x: torch.Tensor, layers=None,
                            measures=MATRIX_MEASURES, *, feature_dtype=torch.float32, batch_size: int = 250,
                            **kwargs) -> dict:
    """All-layer-pairs similarities of two models on the inputs ``x``, each model's features taken once.

    Parameters
    ----------
    model_a, model_b : models of :mod:`lib.models` with the same hidden layers ``layers``.
    x : inputs ``(n_samples, 3, H, W)`` on the models' device.
    layers : hidden layer names (default: every hidden activation layer of ``model_a``).
    measures : names from :data:`MATRIX_MEASURES`, all computed from the same features.
    feature_dtype : how features are held on the CPU between the forward passes and the measures
        (``float16`` halves the memory at some accuracy; see :func:`layer_features`).
    kwargs : for :func:`similarity_matrices` (``pairs``, ``dtype``, ``device``, ...).

    Returns
    -------
    ``dict(layers=[...], matrices={measure: array (n_layers, n_layers)}, seconds={"features": s,
    measure: s, ...}, feature_mib=MiB per model, n_samples=n)``.
    """
    t0 = time.perf_counter()
    fa = layer_features(model_a, x, layers, dtype=feature_dtype, batch_size=batch_size)
    fb = layer_features(model_b, x, list(fa), dtype=feature_dtype, batch_size=batch_size)
    seconds = {"features": time.perf_counter() - t0}
    matrices = {}
    for m in measures:
        t0 = time.perf_counter()
        matrices[m] = similarity_matrix(fa, fb, m, **kwargs)
        seconds[m] = time.perf_counter() - t0
    mib = sum(f.numel() * f.element_size() for f in fa.values()) / 2**20
    return dict(layers=list(fa), matrices=matrices, seconds=seconds, feature_mib=mib, n_samples=len(x))


__all__ += ["model_pair_similarities"]
