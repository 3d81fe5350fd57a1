"""HSIC and the CKA measures of Section 5: G_ReLU-CKA, the authors' orthogonal CKA, linear and RBF
CKA.

Every measure takes two feature arrays with the same number of samples (see
``lib.metrics.preprocessing``) and returns a Python float in ``[-1, 1]``.

- :func:`grelu_cka` (Definition 5.3): each channel centred and scaled to unit norm over (samples,
  positions); max kernel ``K[i, j] = max_c <x_ic, x_jc>``; unbiased HSIC; invariant to channel
  permutations, positive channel scalings and per-channel translations.
- :func:`orthogonal_cka` (the "orthogonal CKA" of Figs. 2 and 5): the same preprocessing and
  estimator with the linear kernel on flattened features. Because every channel is rescaled
  separately it is *not* invariant to rotations of channels in general (only to those preserving the
  channel norms, e.g. any rotation of whitened channels); it equals
  ``linear_cka(normalize_channels(X), normalize_channels(Y), debiased=True)``.
- :func:`linear_cka` / :func:`rbf_cka`: CKA of Kornblith et al. 2019 (features centred per feature
  over samples, no per-channel scaling, biased HSIC unless ``debiased``); invariant to any
  orthogonal transform of the flattened features, to isotropic scaling and to translations.

Every HSIC is computed as an inner product of centred Gram matrices
(:func:`lib.metrics.hsic.u_center`), accumulated in float64, so float32 loses no more than the Gram
matrices' own round-off; inputs for which a CKA is undefined raise
:class:`~lib.metrics.DegenerateInputError` (the rule: "Degenerate inputs" in
``lib.metrics.preprocessing``; the Gram-matrix test: ``lib.metrics.hsic.centered_norm_``).

The max kernel is *not* positive semi-definite in general, contrary to Lemma 5.5: the points
``(1, 0), (0, 1), (1, 1)`` give the Gram matrix ``[[1, 0, 1], [0, 1, 1], [1, 1, 1]]`` whose
determinant is -1. CKA stays within [-1, 1] anyway, because the unbiased HSIC is an inner product of
"unbiasedly centred" Gram matrices (Cauchy-Schwarz); like every debiased CKA it can be slightly
negative. :func:`grelu_cka_memory` and :func:`grelu_cka_max_samples` size G_ReLU-CKA's peak memory.
"""

from __future__ import annotations

import math

import torch

from ..config import check_choice
from .gram import BLOCK_BYTES, block_plan, blocked_max_kernel, rbf_gram
from .hsic import centered_norm_, check_cka_samples, cka_inplace
from .inputs import check_samples
from .normalization import center_features, normalize_channel_major
from .preprocessing import (
    DTYPES,
    STAGE_BYTES,
    DegenerateInputError,
    check_same_samples,
    compute_device,
)

__all__ = [
    "linear_cka",
    "rbf_cka",
    "grelu_cka",
    "orthogonal_cka",
    "grelu_cka_gram",
    "orthogonal_cka_gram",
    "linear_cka_gram",
    "grelu_cka_memory",
    "grelu_cka_max_samples",
]


# -- the measures
# -----------------------------------------------------------------------------------


def linear_cka(X, Y, debiased: bool = False, *, dtype=torch.float64, device=None) -> float:
    """Linear CKA of Kornblith et al. 2019 on flattened, centred features.

    Biased: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` (computed from the smaller of the
    feature-space and sample-space forms); ``debiased=True`` uses the unbiased HSIC.

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
        ("Degenerate inputs" in ``lib.metrics.preprocessing``).
    """
    check_same_samples(X, Y)
    dev = compute_device(X, Y, device=device)
    x, y = (
        center_features(A, dtype=dtype, device=dev, name=nm, rescale=True)
        for A, nm in ((X, "X"), (Y, "Y"))
    )
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    check_cka_samples(n, debiased)
    if debiased or n * (dx + dy) <= dx * dy + dx * dx + dy * dy:
        return cka_inplace(x @ x.T, y @ y.T, unbiased=debiased)
    # Centring makes a constant feature exactly zero (see center_features).
    for v, name in ((x, "X"), (y, "Y")):
        if not bool(v.any()):
            raise DegenerateInputError(f"{name} is constant across samples; CKA is undefined")
    xx, yy, yx = (torch.linalg.matrix_norm((a.T @ b).double()) for a, b in ((x, x), (y, y), (y, x)))
    return min(1.0, float(yx**2 / (xx * yy)))


def rbf_cka(
    X, Y, threshold: float = 1.0, debiased: bool = False, *, dtype=torch.float64, device=None
) -> float:
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
        zero ("Degenerate inputs" in ``lib.metrics.preprocessing``).
    """
    check_samples(X, Y, 4 if debiased else 3, "rbf_cka")
    check_same_samples(X, Y)
    dev = compute_device(X, Y, device=device)
    return cka_inplace(
        rbf_gram(X, threshold, dtype=dtype, device=dev, name="X"),
        rbf_gram(Y, threshold, dtype=dtype, device=dev, name="Y"),
        unbiased=debiased,
    )


def grelu_cka(
    X,
    Y,
    zero_channels: str = "raise",
    *,
    block_size: int | None = None,
    memory_budget: float | None = None,
    dtype=torch.float64,
    device=None,
) -> float:
    """G_ReLU-CKA (Definition 5.3) with the authors' conventions.

    Channels centred and scaled to unit norm over (samples, positions), max-kernel Gram matrices
    (:func:`lib.metrics.max_kernel_gram`), unbiased HSIC. Equals 1 when ``Y = X P D + 1 v^T`` on
    channels (``P`` permutation, ``D`` positive diagonal, ``v`` one constant per channel). Peak
    memory: :func:`grelu_cka_memory`.

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
        zero ("Degenerate inputs" in ``lib.metrics.preprocessing``), e.g. ``X = [[-2], [1], [-2],
        [-2], [-2], [-2]]``.
    """
    check_samples(X, Y, 4, "grelu_cka")
    check_same_samples(X, Y)
    dev = compute_device(X, Y, device=device)
    grams = []
    for A, name in ((X, "X"), (Y, "Y")):
        z = normalize_channel_major(A, True, zero_channels, dtype, dev, name)
        grams.append(blocked_max_kernel(z, block_size, memory_budget))
        del z
    return cka_inplace(*grams, unbiased=True)


def orthogonal_cka(
    X, Y, zero_channels: str = "raise", *, dtype=torch.float64, device=None
) -> float:
    """The authors' "orthogonal CKA" (Figs. 2 and 5): :func:`grelu_cka` with the linear kernel.

    Differs from :func:`linear_cka` in three ways: each channel is scaled to unit norm over
    (samples, positions) (so the measure is invariant to positive per-channel scalings but not to
    general rotations of channels), centring subtracts one mean per channel rather than one per
    (channel, position), and HSIC is the unbiased estimator.

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
    check_samples(X, Y, 4, "orthogonal_cka")
    check_same_samples(X, Y)
    dev = compute_device(X, Y, device=device)
    grams = []
    for A, name in ((X, "X"), (Y, "Y")):
        z = normalize_channel_major(A, True, zero_channels, dtype, dev, name)
        f = z.permute(1, 0, 2).reshape(z.shape[1], -1)
        grams.append(f @ f.T)
        del z, f
    return cka_inplace(*grams, unbiased=True)


# -- Gram forms: each layer's matrix computed once, compared with many ----------------------------


def _unit(K: torch.Tensor, unbiased: bool, name: str) -> torch.Tensor:
    if unbiased:
        check_cka_samples(K.shape[0], unbiased=True)
    return K.div_(centered_norm_(K, unbiased=unbiased, name=name))


def grelu_cka_gram(
    X,
    zero_channels: str = "keep",
    *,
    block_size: int | None = None,
    memory_budget: float | None = None,
    dtype=torch.float32,
    device=None,
    name: str = "X",
) -> torch.Tensor:
    """G_ReLU-CKA's Gram matrix of ``X``, U-centred and scaled to unit Frobenius norm.

    The inner product of two such matrices is :func:`grelu_cka`:
    ``(grelu_cka_gram(X) * grelu_cka_gram(Y)).sum()`` equals ``grelu_cka(X, Y, "keep")``.

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, channels[, height, width])``, at least 4 samples.
    zero_channels : str
        See :func:`lib.metrics.normalize_channels`.
    block_size, memory_budget
        See ``lib.metrics.gram.block_plan``.
    dtype, device, name
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)`` of unit Frobenius norm.

    Raises
    ------
    DegenerateInputError
        As ``lib.metrics.hsic.centered_norm_`` and :func:`lib.metrics.normalize_channels` say.
    """
    z = normalize_channel_major(
        X, True, zero_channels, dtype, compute_device(X, device=device), name
    )
    K = blocked_max_kernel(z, block_size, memory_budget)
    del z
    return _unit(K, True, name)


def orthogonal_cka_gram(
    X, zero_channels: str = "keep", *, dtype=torch.float32, device=None, name: str = "X"
) -> torch.Tensor:
    """Orthogonal CKA's Gram matrix of ``X`` (the linear kernel of the normalised channels),
    U-centred and scaled to unit Frobenius norm: inner products of two are :func:`orthogonal_cka`.

    Parameters
    ----------
    X, zero_channels, dtype, device, name
        As for :func:`grelu_cka_gram`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)`` of unit Frobenius norm.

    Raises
    ------
    DegenerateInputError
        As for :func:`grelu_cka_gram`.
    """
    z = normalize_channel_major(
        X, True, zero_channels, dtype, compute_device(X, device=device), name
    )
    f = z.permute(1, 0, 2).reshape(z.shape[1], -1)
    del z
    return _unit(f @ f.T, True, name)


def linear_cka_gram(X, *, dtype=torch.float32, device=None, name: str = "X") -> torch.Tensor:
    """Linear CKA's Gram matrix of ``X`` (centred flattened features), centred and scaled to unit
    Frobenius norm: inner products of two are the biased :func:`linear_cka`.

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, ...)``.
    dtype, device, name
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)`` of unit Frobenius norm.

    Raises
    ------
    DegenerateInputError
        If the centred Gram matrix vanishes (``lib.metrics.hsic.centered_norm_``).
    """
    # Centred features give a doubly centred Gram matrix (centred again, to round-off).
    f = center_features(
        X, dtype=dtype, device=compute_device(X, device=device), name=name, rescale=True
    )
    return _unit(f @ f.T, False, name)


# -- memory
# -----------------------------------------------------------------------------------------


def grelu_cka_memory(
    n_samples: int,
    x_shape,
    y_shape=None,
    *,
    dtype=torch.float64,
    memory_budget: float | None = None,
    device="cpu",
) -> int:
    """Estimated peak bytes that :func:`grelu_cka` allocates (the caller's inputs not counted).

    Peak = the first Gram matrix, the second and the channel-major copy of ``Y`` (or the copy of
    ``X`` before that), plus block temporaries counted twice, because the allocator keeps those of
    the first Gram matrix, plus in float32 two float64 chunks of
    ``lib.metrics.preprocessing.STAGE_BYTES`` (centring, sums). The BLAS library adds a few tens
    of MiB on top (``benchmarks/metrics_speed.py`` compares this estimate with a measured peak).

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
    return int(
        max(gram + n_samples * mx * size, 2 * gram + n_samples * my * size)
        + 2 * (budget + 2 * block**2 * size)
        + staging
    )


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
        lo, hi = (
            (mid, hi) if grelu_cka_memory(mid, x_shape, y_shape, **kw) <= total_bytes else (lo, mid)
        )
    return lo
