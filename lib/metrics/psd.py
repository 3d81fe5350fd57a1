"""A positive semi-definite, G_ReLU-invariant kernel for CKA: a repair of Lemma 5.5.

Lemma 5.5 of the paper calls the max kernel ``k(x, y) = max_c x_c y_c`` positive semi-definite
(PSD); it is not (``(1, 0), (0, 1), (1, 1)`` give the eigenvalue ``1 - sqrt(2)``). This module
replaces it by the *channel-exponential kernel* on the paper's normalised features
(:func:`psd_grelu_gram`)::

    k_beta(x_i, x_j) = sum_c exp(beta * s_c(i, j)),    s_c(i, j) = <z_ic, z_jc> / m,

where ``z`` is ``X`` with each channel centred and scaled to unit norm over (samples, positions), as
in :func:`lib.metrics.grelu_cka` (``lib.metrics.preprocessing.normalize_channel_major``), ``z_ic``
is channel ``c`` of sample ``i`` (a vector over positions) and ``m = max_{c,i} ||z_ic||^2`` the
largest diagonal entry of the max kernel. So ``|s_c| <= 1`` (Cauchy-Schwarz): ``beta`` is
dimensionless and the kernel's entries lie in ``[C e^-beta, C e^beta]`` for ``C`` channels.

- **PSD.** ``s_c`` is a linear kernel (PSD); ``exp(beta s_c) = sum_k beta^k s_c^k / k!`` is PSD
  because Hadamard powers of a PSD matrix are PSD (Schur) and the coefficients are non-negative;
  a sum of PSD kernels is PSD.
- **Invariance.** ``Y = X P D + 1 v^T`` on channels (``P`` permutation, ``D`` diagonal with
  non-zero entries, ``v`` one constant per channel) permutes the normalised channels and flips the
  signs of some; ``s_c`` is unchanged by a sign flip, ``m`` and the sum by a permutation, so the
  Gram matrix is the same. So is an orthogonal map of the positions of each channel. (The max
  kernel has exactly these invariances too: both are invariant to *negative* channel scalings,
  which are not in G_ReLU.)
- **The max kernel as a limit.** ``max_c s_c <= log(k_beta) / beta <= max_c s_c + log(C) / beta``
  entrywise, so ``log(k_beta) / beta -> K_max / m`` as ``beta -> oo``. The logarithm is what breaks
  positive semi-definiteness: the max kernel is a limit of logarithms of PSD kernels.
- **Orthogonal CKA as the other limit.** ``k_beta = C + beta * sum_c s_c + O(beta^2)``, and CKA
  ignores constants and scale, so :func:`psd_grelu_cka` tends to :func:`lib.metrics.orthogonal_cka`
  as ``beta -> 0``.
- **When CKA = 1.** With the unbiased HSIC, ``psd_grelu_cka(X, Y) = 1`` if and only if there are
  ``a > 0`` and ``b`` in R^n with ``K_Y[i, j] = a K_X[i, j] + b_i + b_j`` for all ``i != j``
  (equality in Cauchy-Schwarz for the U-centred inner product, whose null space is exactly these
  ``b_i + b_j``). In particular it is 1 whenever ``Y`` is ``X`` up to the invariances above.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .gram import BLOCK_BYTES
from .hsic import cka_from_grams, u_center
from .normalization import normalize_channel_major
from .preprocessing import check_same_samples, compute_device

__all__ = [
    "PSD_BETA",
    "channel_log_gram",
    "check_beta",
    "psd_grelu_cka",
    "psd_grelu_gram",
    "psd_normalized_gram",
]

#: Default ``beta`` of :func:`psd_grelu_gram` (dimensionless: every exponent lies in
#: ``[-beta, beta]``). At 10 the kernel sits between the linear kernel (``beta -> 0``, orthogonal
#: CKA) and the max kernel (``beta -> oo``); measured on trained features in the book's chapter 12.
PSD_BETA = 10.0


def check_beta(beta) -> float:
    """``beta`` as a float, after checking that it is a positive finite real number.

    Parameters
    ----------
    beta : float
        The inverse temperature of :func:`psd_grelu_gram`.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        If ``beta`` is not a real number (booleans included), not finite, or ``<= 0``.
    """
    real = isinstance(beta, (int, float, np.integer, np.floating))
    ok = real and not isinstance(beta, (bool, np.bool_))
    if not (ok and math.isfinite(float(beta)) and float(beta) > 0):
        raise ValueError(f"beta must be a positive finite number; got {beta!r}")
    return float(beta)


def _chunk(n: int, c: int, itemsize: int, device: torch.device, memory_budget) -> int:
    """Channels per chunk so that one chunk's ``(chunk, n, n)`` products fit ``memory_budget``."""
    budget = memory_budget
    if budget is None:
        budget = BLOCK_BYTES["cuda" if device.type == "cuda" else "cpu"]
    if not (isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget > 0):
        raise ValueError(
            f"memory_budget must be a positive number of bytes or None; got {memory_budget!r}"
        )
    return int(min(c, max(1, budget // (n * n * itemsize))))


def channel_log_gram(
    z: torch.Tensor, beta: float, memory_budget: float | None = None
) -> torch.Tensor:
    """``log sum_c exp(beta z_c z_c^T / m)``, ``m = max_{c,i} ||z_ic||^2``, of normalised features.

    A running log-sum-exp over chunks of channels (the largest term is factored out), so no entry
    overflows whatever ``beta`` and the features.

    Parameters
    ----------
    z : torch.Tensor
        ``(channels, n_samples, positions)``, e.g. from
        ``lib.metrics.preprocessing.normalize_channel_major``.
    beta : float
        Positive (see ``lib.metrics.psd.check_beta``).
    memory_budget : float, optional
        Bytes for one chunk's per-channel products; None: ``lib.metrics.gram.BLOCK_BYTES`` of the
        device (at least one channel per chunk).

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)``, exactly symmetric: the logarithm of the channel-exponential
        kernel.
    """
    beta = check_beta(beta)
    c, n, _ = z.shape
    chunk = _chunk(n, c, z.element_size(), z.device, memory_budget)
    m = float(z.square().sum(dim=2).amax())
    if not m > 0:
        raise ValueError("every channel is zero; the kernel is undefined")
    top = total = None
    for c0 in range(0, c, chunk):
        g = torch.bmm(z[c0 : c0 + chunk], z[c0 : c0 + chunk].transpose(1, 2)).mul_(beta / m)
        g_top = g.amax(dim=0)
        new_top = g_top if top is None else torch.maximum(top, g_top)
        part = g.sub_(new_top).exp_().sum(dim=0)
        total = part if total is None else total.mul_(torch.exp(top - new_top)).add_(part)
        top = new_top
    log_k = total.log_().add_(top)
    # Products of a chunk with itself are symmetric only up to round-off; make the result exact.
    return torch.triu(log_k) + torch.triu(log_k, 1).T


def psd_grelu_gram(
    X,
    beta: float = PSD_BETA,
    zero_channels: str = "raise",
    *,
    log: bool = False,
    memory_budget: float | None = None,
    dtype=torch.float64,
    device=None,
) -> torch.Tensor:
    """Gram matrix of the channel-exponential kernel on the paper's normalised features.

    ``K[i, j] = sum_c exp(beta <z_ic, z_jc> / m)`` with ``z`` the channels of ``X`` centred and
    scaled to unit norm over (samples, positions) (as in :func:`lib.metrics.grelu_cka`) and
    ``m = max_{c,i} ||z_ic||^2``. Positive semi-definite for every ``beta > 0``; invariant to
    permutations, non-zero scalings and translations of channels; ``log(K) / beta`` lies within
    ``log(C) / beta`` above the max kernel divided by ``m`` (``lib.metrics.psd`` proves all three).

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, channels[, height, width])``, see :func:`lib.metrics.to_channels`.
    beta : float
        Inverse temperature, positive and dimensionless (default :data:`PSD_BETA`). Small: close to
        the linear kernel of orthogonal CKA; large: close to the max kernel (on the log scale).
    zero_channels : str
        See :func:`lib.metrics.normalize_channels`; a kept zero channel adds the constant 1, which
        CKA ignores.
    log : bool
        Return ``log(K)`` itself instead of ``K`` divided by its largest entry.
    memory_budget : float, optional
        Bytes for one chunk of per-channel products (see ``lib.metrics.psd.channel_log_gram``).
    dtype, device
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)``, exactly symmetric: ``K / max(K)`` (entries in
        ``[e^(-2 beta), 1]``) or, with ``log=True``, ``log(K)``.

    Raises
    ------
    ValueError
        If ``beta`` is not a positive finite number, or as for
        :func:`lib.metrics.normalize_channels`.
    """
    beta = check_beta(beta)
    dev = compute_device(X, device=device)
    z = normalize_channel_major(X, True, zero_channels, dtype, dev, "X")
    log_k = channel_log_gram(z, beta, memory_budget)
    del z
    return log_k if log else log_k.sub_(log_k.max()).exp_()


def _centred_gram(A, beta, zero_channels, memory_budget, dtype, device, name) -> torch.Tensor:
    """The U-centred kernel of ``A`` scaled to unit Frobenius norm (what the unbiased HSIC sees).

    Only the off-diagonal entries matter: the diagonal, which can lie far above the rest (up to
    ``e^(2 beta)`` times), is never exponentiated, and the off-diagonal mean is removed before
    U-centring, which keeps small ``beta`` (entries ``1 + O(beta)``) from cancelling in the HSIC's
    sums.
    """
    z = normalize_channel_major(A, True, zero_channels, dtype, device, name)
    log_k = channel_log_gram(z, beta, memory_budget)
    del z
    log_k.fill_diagonal_(-math.inf)
    K = log_k.sub_(log_k.max()).exp_()
    n = K.shape[0]
    if n >= 4:
        K -= K.sum() / (n * (n - 1))
    K = u_center(K)
    norm = float(torch.linalg.vector_norm(K))
    if not norm > 0:
        raise ValueError(
            f"{name} gives a degenerate Gram matrix (HSIC with itself = 0), e.g. all "
            f"its samples coincide after preprocessing; CKA is undefined"
        )
    return K.div_(norm)


def psd_grelu_cka(
    X,
    Y,
    beta: float = PSD_BETA,
    zero_channels: str = "raise",
    *,
    memory_budget: float | None = None,
    dtype=torch.float64,
    device=None,
) -> float:
    """CKA with the channel-exponential kernel: a G_ReLU-invariant CKA whose kernel is PSD.

    :func:`lib.metrics.grelu_cka` with :func:`psd_grelu_gram` in place of the max kernel (same
    preprocessing, unbiased HSIC). Equals 1 if and only if ``K_Y = a K_X + b 1^T + 1 b^T`` off the
    diagonal for some ``a > 0`` and vector ``b``; in particular when ``Y = X P D + 1 v^T`` on
    channels (``P`` permutation, ``D`` non-zero diagonal, ``v`` one constant per channel). Tends to
    :func:`lib.metrics.orthogonal_cka` as ``beta -> 0``.

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, cx[, h, w])``, at least 4 samples.
    Y : array or tensor
        ``(n_samples, cy[, h', w'])``; may differ from ``X`` in shape apart from ``n_samples``.
    beta : float
        See :func:`psd_grelu_gram`.
    zero_channels : str
        See :func:`lib.metrics.normalize_channels`.
    memory_budget : float, optional
        See ``lib.metrics.psd.channel_log_gram``.
    dtype, device
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    float
        In ``[-1, 1]`` (the unbiased estimator can be slightly negative, as for every debiased CKA).

    Raises
    ------
    ValueError
        If ``beta`` is out of range, for fewer than 4 samples, for a degenerate Gram matrix, or as
        for :func:`lib.metrics.grelu_cka`.
    """
    beta = check_beta(beta)
    check_same_samples(X, Y)
    dev = compute_device(X, Y, device=device)
    grams = [
        _centred_gram(A, beta, zero_channels, memory_budget, dtype, dev, name)
        for A, name in ((X, "X"), (Y, "Y"))
    ]
    return cka_from_grams(*grams, unbiased=True)


def psd_normalized_gram(
    X,
    beta: float = PSD_BETA,
    zero_channels: str = "keep",
    *,
    memory_budget: float | None = None,
    dtype=torch.float64,
    device=None,
    name: str = "X",
) -> torch.Tensor:
    """The U-centred :func:`psd_grelu_gram` of ``X``, scaled to unit Frobenius norm.

    As ``lib.metrics.normalized_gram`` for the CKA measures: the inner product of two such matrices
    is :func:`psd_grelu_cka`, so a layer's matrix is computed once and compared with many.

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, channels[, height, width])``, at least 4 samples.
    beta, zero_channels, memory_budget
        As for :func:`psd_grelu_cka` (zero channels are kept by default, as in
        ``lib.metrics.normalized_gram``).
    dtype, device, name
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)`` of unit Frobenius norm.

    Raises
    ------
    ValueError
        If the U-centred matrix is zero (CKA undefined), or as for :func:`psd_grelu_cka`.
    """
    beta = check_beta(beta)
    dev = compute_device(X, device=device)
    return _centred_gram(X, beta, zero_channels, memory_budget, dtype, dev, name)
