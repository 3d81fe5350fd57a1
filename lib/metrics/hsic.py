"""HSIC and CKA from Gram matrices, as inner products of centred Gram matrices.

:func:`hsic` (biased and unbiased estimators), :func:`cka_from_grams`, the U-centring of Székely
and Rizzo (:func:`u_center`) that both estimators and ``lib.metrics.layers`` use, and the test that
decides whether a Gram matrix is degenerate (``lib.metrics.hsic.centered_norm_``; the rule:
"Degenerate inputs" in ``lib.metrics.preprocessing``). The measures of ``lib.metrics.cka`` are built
on these.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .preprocessing import DEGENERATE_RTOL, DTYPES, STAGE_BYTES, DegenerateInputError, check_finite

__all__ = [
    "hsic",
    "cka_from_grams",
    "u_center",
    "centered_norm_",
    "sum_products",
    "cka_inplace",
    "check_cka_samples",
]


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
        raise ValueError(
            f"{name} must be a square (n_samples, n_samples) Gram matrix; got shape "
            f"{tuple(t.shape)}"
        )
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
        time (at most ``lib.metrics.preprocessing.STAGE_BYTES`` per block).

    Returns
    -------
    float
        The inner product.
    """
    return sum(
        float(torch.dot(A[i:j].double().reshape(-1), B[i:j].double().reshape(-1)))
        for i, j in _row_blocks(A)
    )


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

    Raises :class:`~lib.metrics.DegenerateInputError` where the centred matrix
    vanishes to the working precision: ``||K~||_F^2 <= DEGENERATE_RTOL * eps * ||K||_F^2``, ``eps``
    the machine epsilon of ``K``'s type and ``K`` with its diagonal zeroed for the unbiased
    estimator (see "Degenerate inputs" in ``lib.metrics.preprocessing``). HSIC(X, X) is then
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
            f"HSIC({name}, {name}) is zero and CKA is undefined"
        )
    return math.sqrt(h)


def hsic(K, L, unbiased: bool = True) -> float:
    """Hilbert-Schmidt independence criterion of two symmetric Gram matrices.

    ``unbiased=True``: ``[tr(KL) + 1^T K 1 1^T L 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K L 1] / (n(n-3))``
    with zero diagonals (the diagonals of ``K`` and ``L`` are ignored); ``False``: the biased
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
        raise ValueError(
            f"K and L must have the same shape; got {tuple(K.shape)} and {tuple(L.shape)}"
        )
    n = K.shape[0]
    if unbiased and n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples; got {n}")
    if n < 2:
        raise ValueError(f"HSIC needs at least 2 samples; got {n}")
    L = L.to(device=K.device, dtype=K.dtype)
    total = sum_products(_center_(K, unbiased), _center_(L, unbiased))
    return total / (n * (n - 3)) if unbiased else total / (n - 1) ** 2


def check_cka_samples(n: int, unbiased: bool) -> None:
    """Raise unless ``n`` samples are enough for a CKA: CKA from fewer is a number that says
    nothing about the features.

    Parameters
    ----------
    n : int
        Number of samples.
    unbiased : bool
        The unbiased HSIC estimator (needs 4) or the biased one (needs 3).

    Raises
    ------
    ValueError
        If ``n`` is too small.
    """
    if unbiased and n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples; got {n}")
    if n < 3:
        raise ValueError(
            f"CKA needs at least 3 samples (4 for the unbiased estimator); got {n}: "
            f"with 2, every centred Gram matrix is a multiple of [[1, -1], [-1, 1]] "
            f"and CKA is 1 for any inputs"
        )


def cka_inplace(K: torch.Tensor, L: torch.Tensor, unbiased: bool, names=("X", "Y")) -> float:
    """CKA of two Gram matrices that the caller gives up: both are centred in place.

    The measures of ``lib.metrics.cka`` call this on the Gram matrices they have just computed, so
    that no copy is made; :func:`cka_from_grams` copies first.

    Parameters
    ----------
    K, L : torch.Tensor
        ``(n_samples, n_samples)`` each, symmetric, of one type and device; overwritten.
    unbiased : bool
        HSIC estimator, see :func:`hsic`.
    names : tuple of str
        The inputs ``K`` and ``L`` were computed from, for error messages.

    Returns
    -------
    float
        In ``[-1, 1]``.

    Raises
    ------
    DegenerateInputError
        If ``K`` or ``L`` centres to zero (see ``lib.metrics.hsic.centered_norm_``).
    """
    check_cka_samples(K.shape[0], unbiased)
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
        If ``K`` or ``L`` centres to zero (see ``lib.metrics.hsic.centered_norm_``).
    """
    K, L = _gram(K, "K"), _gram(L, "L")
    if K.shape != L.shape:
        raise ValueError(
            f"K and L must have the same shape; got {tuple(K.shape)} and {tuple(L.shape)}"
        )
    return cka_inplace(K, L.to(device=K.device, dtype=K.dtype), unbiased, names=("K", "L"))
