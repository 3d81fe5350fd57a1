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
  transform of the flattened features, to isotropic scaling and to translations.

Every HSIC is computed as an inner product of centred Gram matrices (:func:`u_center`),
accumulated in float64, so float32 loses no more than the Gram matrices' own round-off; inputs
for which a CKA is undefined raise :class:`~lib.metrics.preprocessing.DegenerateInputError` (the
rule: "Degenerate inputs" in :mod:`lib.metrics.preprocessing`; the Gram-matrix test:
:func:`centered_norm_`).

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
from .preprocessing import (DEGENERATE_RTOL, DTYPES, STAGE_BYTES, DegenerateInputError,
                            center_features, check_finite, check_same_samples, compute_device,
                            normalize_channel_major)

__all__ = ["hsic", "cka_from_grams", "u_center", "centered_norm_", "sum_products", "linear_cka",
           "rbf_cka", "grelu_cka", "orthogonal_cka", "grelu_cka_memory", "grelu_cka_max_samples"]


# -- HSIC and CKA from Gram matrices ----------------------------------------------------------------
#
# Every HSIC here is an inner product of centred Gram matrices: <HKH, HLH> / (n-1)^2 (biased) or
# <u_center(K), u_center(L)> / (n(n-3)) (unbiased). Centring first matters in float32: the expanded
# formula (tr(KL) plus row-sum terms) subtracts numbers of the size n^2 mean(K) mean(L) from each
# other, and the max kernel's large mean left nothing of the result. The matrices are centred in
# place in their own type, from row sums accumulated in float64, and every sum of products is
# accumulated in float64 a block of rows at a time (temporaries of at most STAGE_BYTES).

def _gram(K, name) -> torch.Tensor:
    """A copy of the Gram matrix ``K`` as a tensor (float32 stays float32, others are float64)."""
    t = K.detach() if isinstance(K, torch.Tensor) else torch.as_tensor(np.asarray(K))
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"{name} must be a square (n_samples, n_samples) Gram matrix; got shape {tuple(t.shape)}")
    t = t.clone(memory_format=torch.contiguous_format) if t.dtype in DTYPES else t.to(torch.float64)
    return check_finite(t, name)


def _row_blocks(K: torch.Tensor):
    """Ranges of rows of ``K`` whose float64 copy fits :data:`STAGE_BYTES` (one for float64)."""
    n, m = K.shape
    step = n if K.dtype == torch.float64 else max(1, STAGE_BYTES // (8 * m))
    return [(i, min(i + step, n)) for i in range(0, n, step)]


def sum_products(A: torch.Tensor, B: torch.Tensor) -> float:
    """The Frobenius inner product ``sum(A * B)``, accumulated in float64.

    Parameters
    ----------
    A, B : torch.Tensor
        ``(n, m)`` each, of one type and device; float32 matrices are converted a block of rows at a
        time (at most :data:`lib.metrics.preprocessing.STAGE_BYTES` per block).

    Returns
    -------
    float
        The inner product.
    """
    return sum(float(torch.dot(A[i:j].double().reshape(-1), B[i:j].double().reshape(-1)))
               for i, j in _row_blocks(A))


def _center_(K: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """``K`` centred in place: U-centred (Szekely and Rizzo; zero diagonal) or ``H K H``."""
    n = K.shape[0]
    if unbiased:
        K.fill_diagonal_(0)
    r = torch.cat([K[i:j].double().sum(dim=1) for i, j in _row_blocks(K)])
    # K_ij - r_i/m - r_j/m + s/c = K_ij - a_i - a_j with a_i = r_i/m - s/(2c).
    m, c = (n - 2, (n - 1) * (n - 2)) if unbiased else (n, n * n)
    a = (r / m - r.sum() / (2 * c)).to(K.dtype)
    K.sub_(a[:, None]).sub_(a[None, :])
    if unbiased:
        K.fill_diagonal_(0)
    return K


def u_center(K: torch.Tensor) -> torch.Tensor:
    """The "U-centred" Gram matrix of Székely and Rizzo, computed in place.

    Off the diagonal ``K_ij - r_i/(n-2) - r_j/(n-2) + s/((n-1)(n-2))`` with ``r`` the row sums and
    ``s`` the total of ``K`` with its diagonal zeroed (both accumulated in float64); zero on the
    diagonal. The unbiased HSIC of :func:`hsic` is ``<u_center(K), u_center(L)> / (n (n-3))``, so a
    CKA is the cosine of U-centred Gram matrices: ``lib.metrics.layers`` centres and normalises each
    layer's Gram matrix once and reuses it for every layer it is compared with.

    Parameters
    ----------
    K : torch.Tensor
        A symmetric ``(n_samples, n_samples)`` Gram matrix, ``n_samples >= 4``; overwritten.

    Returns
    -------
    torch.Tensor
        ``K`` itself, U-centred.
    """
    n = K.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples; got {n}")
    return _center_(K, True)


def centered_norm_(K: torch.Tensor, unbiased: bool, name: str = "X") -> float:
    """Centre the Gram matrix ``K`` in place (as :func:`hsic` does) and return its Frobenius norm.

    Raises :class:`~lib.metrics.preprocessing.DegenerateInputError` where the centred matrix
    vanishes to the working precision: ``||K~||_F^2 <= DEGENERATE_RTOL * eps * ||K||_F^2``, ``eps``
    the machine epsilon of ``K``'s type and ``K`` with its diagonal zeroed for the unbiased
    estimator (see "Degenerate inputs" in :mod:`lib.metrics.preprocessing`). HSIC(X, X) is then
    zero or round-off, and a CKA with ``X`` is undefined.

    Parameters
    ----------
    K : torch.Tensor
        A symmetric ``(n_samples, n_samples)`` Gram matrix; overwritten.
    unbiased : bool
        U-centring (the unbiased HSIC) or ``H K H`` (the biased one).
    name : str
        The input ``K`` was computed from, for the error message.

    Returns
    -------
    float
        ``||K~||_F``, accumulated in float64.

    Raises
    ------
    DegenerateInputError
        If the centred matrix vanishes to the working precision, as above.
    """
    if unbiased:
        K.fill_diagonal_(0)
    ref = sum_products(K, K)
    h = sum_products(_center_(K, unbiased), K)
    if not h > DEGENERATE_RTOL * torch.finfo(K.dtype).eps * ref:
        raise DegenerateInputError(
            f"{name} gives a degenerate Gram matrix: its {'U-' if unbiased else ''}centred part "
            f"vanishes to {K.dtype} precision (squared norm {h:.3g}, against {ref:.3g} for the "
            f"Gram matrix), e.g. all its samples coincide after preprocessing, or all but one do; "
            f"HSIC({name}, {name}) is zero and CKA is undefined")
    return math.sqrt(h)


def hsic(K, L, unbiased: bool = True) -> float:
    """Hilbert-Schmidt independence criterion of two symmetric Gram matrices.

    ``unbiased=True``: ``[tr(KL) + 1^T K 1 1^T L 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K L 1] / (n(n-3))`` with
    zero diagonals (the diagonals of ``K`` and ``L`` are ignored); ``False``: the biased
    ``tr(KHLH) / (n-1)^2`` with ``H = I - 11^T/n``. Both are computed as inner products of the
    centred matrices (U-centred for the unbiased estimator, see :func:`u_center`), accumulated in
    float64.

    Parameters
    ----------
    K, L : arrays or tensors
        ``(n_samples, n_samples)`` each (float32 stays float32; copies are centred, not the inputs).
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
    n = K.shape[0]
    if unbiased and n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples; got {n}")
    if n < 2:
        raise ValueError(f"HSIC needs at least 2 samples; got {n}")
    L = L.to(device=K.device, dtype=K.dtype)
    total = sum_products(_center_(K, unbiased), _center_(L, unbiased))
    return total / (n * (n - 3)) if unbiased else total / (n - 1) ** 2


def _check_cka_samples(n: int, unbiased: bool) -> None:
    """CKA from fewer samples is a number that says nothing about the features: raise instead."""
    if unbiased and n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples; got {n}")
    if n < 3:
        raise ValueError(f"CKA needs at least 3 samples (4 for the unbiased estimator); got {n}: with 2, every "
                         f"centred Gram matrix is a multiple of [[1, -1], [-1, 1]] and CKA is 1 for any inputs")


def _cka(K, L, unbiased, names=("X", "Y")) -> float:
    """CKA of two Gram matrices that the caller owns (both are centred in place)."""
    _check_cka_samples(K.shape[0], unbiased)
    nk, nl = centered_norm_(K, unbiased, names[0]), centered_norm_(L, unbiased, names[1])
    value = sum_products(K, L) / (nk * nl)
    # Cauchy-Schwarz bounds the exact value; clip the round-off.
    return min(1.0, max(-1.0, value))


def cka_from_grams(K, L, unbiased: bool = True) -> float:
    """CKA of two symmetric Gram matrices, ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

    Parameters
    ----------
    K, L : arrays or tensors
        ``(n_samples, n_samples)`` each (not changed).
    unbiased : bool
        HSIC estimator, see :func:`hsic`.

    Returns
    -------
    float
        In ``[-1, 1]``.

    Raises
    ------
    DegenerateInputError
        If ``K`` or ``L`` centres to zero (see :func:`centered_norm_`).
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

    Raises
    ------
    DegenerateInputError
        If ``X`` or ``Y`` is constant across samples, or its Gram matrix centres to zero
        ("Degenerate inputs" in :mod:`lib.metrics.preprocessing`).
    """
    check_same_samples(X, Y)
    dev = compute_device(X, Y, device=device)
    x, y = (center_features(A, dtype=dtype, device=dev, name=nm, rescale=True)
            for A, nm in ((X, "X"), (Y, "Y")))
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    _check_cka_samples(n, debiased)
    if debiased or n * (dx + dy) <= dx * dy + dx * dx + dy * dy:
        return _cka(x @ x.T, y @ y.T, unbiased=debiased)
    # Centring makes a constant feature exactly zero (see center_features).
    for v, name in ((x, "X"), (y, "Y")):
        if not bool(v.any()):
            raise DegenerateInputError(f"{name} is constant across samples; CKA is undefined")
    xx, yy, yx = (torch.linalg.matrix_norm((a.T @ b).double()) for a, b in ((x, x), (y, y), (y, x)))
    return min(1.0, float(yx ** 2 / (xx * yy)))


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

    Raises
    ------
    DegenerateInputError
        If at least half the sample pairs of ``X`` or ``Y`` coincide, or a Gram matrix centres to
        zero ("Degenerate inputs" in :mod:`lib.metrics.preprocessing`).
    """
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

    Raises
    ------
    DegenerateInputError
        For constant channels (unless ``zero_channels="keep"``) and Gram matrices that U-centre to
        zero ("Degenerate inputs" in :mod:`lib.metrics.preprocessing`), e.g. ``X = [[-2], [1], [-2],
        [-2], [-2], [-2]]``.
    """
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

    Raises
    ------
    DegenerateInputError
        As for :func:`grelu_cka`.
    """
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
    Gram matrix, plus in float32 two float64 chunks of :data:`lib.metrics.preprocessing.STAGE_BYTES`
    (centring, sums). The BLAS library adds a few tens of MiB on top
    (``benchmarks/metrics_speed.py`` compares this estimate with a measured peak).

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
    # float32 stages its centring and sums in float64 chunks, at most two of STAGE_BYTES at once.
    staging = 2 * STAGE_BYTES if dtype == torch.float32 else 0
    return int(max(gram + n_samples * mx * size, 2 * gram + n_samples * my * size)
               + 2 * (budget + 2 * block**2 * size) + staging)


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
