"""Centring and per-channel normalisation of the similarity measures' inputs, in float64.

:func:`normalize_channels` is the authors' per-channel centring and scaling (G_ReLU-CKA,
G_ReLU-Procrustes, orthogonal CKA) and :func:`normalize_channel_major` the same in the layout of the
per-channel products; :func:`normalize_total` is the whole-tensor scaling of orthogonal Procrustes
and :func:`center_features` the per-feature centring of linear and RBF CKA. The inputs' conventions
and the rule for degenerate inputs are those of ``lib.metrics.preprocessing``.

Precision
---------
Centring is where float32 loses a measure: features with a mean of 1e4 and a spread of 1 keep only
three digits once cast to float32. So every centring and per-channel normalisation here works in
float64 on the input's own values (exact for float16, float32 and float64 inputs), a bounded chunk
of channels or features at a time (at most ``lib.metrics.preprocessing.STAGE_BYTES`` of
temporaries), and only the centred, normalised features are cast to the computation type ``dtype``.
The sums that follow (HSIC in :mod:`lib.metrics.hsic`, norms, Procrustes residuals) accumulate in
float64 as well; the Gram matrices themselves are computed in ``dtype``. On CUDA this assumes TF32
matrix products are off (torch's default; a caller's ``torch.backends.cuda.matmul.allow_tf32 =
True`` would round the products of float32 Gram matrices to TF32's 10-bit mantissa).
``benchmarks/metrics_float32.py`` measures float32 against float64 on real activations.
"""

from __future__ import annotations

import math

import torch

from ..config import check_choice
from .preprocessing import (
    DTYPES,
    STAGE_BYTES,
    ZERO_CHANNELS,
    DegenerateInputError,
    channel_view,
    check_finite,
    compute_device,
    power_of_two_scale,
    rescaled,
    to_channels,
)

__all__ = ["center_features", "normalize_channel_major", "normalize_channels", "normalize_total"]


def _extremes(t: torch.Tensor, dim, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest and smallest value of ``t`` over ``dim``, after checking that ``t`` is finite."""
    hi, lo = t.amax(dim=dim), t.amin(dim=dim)
    # The extremes propagate NaN and show infinities, without the full-size temporary of isfinite().
    if not bool(torch.isfinite(hi).all() & torch.isfinite(lo).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return hi, lo


def _chunks(total: int, per_item: int):
    """Ranges ``(start, stop)`` over ``total`` items, each chunk holding at most ``STAGE_BYTES``
    of float64 numbers (at least one item of ``per_item`` numbers)."""
    step = max(1, STAGE_BYTES // (8 * max(1, per_item)))
    return [(i, min(i + step, total)) for i in range(0, total, step)]


def _staging(out: torch.Tensor) -> torch.Tensor:
    """Where a chunk is computed: ``out`` itself if it is float64, else a float64 buffer like it."""
    if out.dtype == torch.float64:
        return out
    return torch.empty(out.shape, dtype=torch.float64, device=out.device)


def center_features(
    X, *, dtype=torch.float64, device=None, name: str = "X", rescale: bool = False
) -> torch.Tensor:
    """Flattened features minus their mean over samples, centred in float64 before any cast.

    Parameters
    ----------
    X : array or tensor
        See :func:`lib.metrics.to_channels`.
    dtype, device, name
        As for :func:`lib.metrics.to_channels`.
    rescale : bool
        Scale all features by one power of two (exact) so that the largest input magnitude lies in
        ``[0.5, 1)`` unless it lies in ``[2^-10, 2^10]`` already, as
        ``lib.metrics.preprocessing.rescaled`` does: the measures use this; the centred
        features of ``1e30 * X`` then fit float32.

    Returns
    -------
    torch.Tensor
        ``(n_samples, channels * positions)``, a new tensor whose every column has mean zero (in
        float64, then rounded to ``dtype``); a feature constant across samples is exactly zero.

    Raises
    ------
    ValueError
        If ``X`` has another number of dimensions, is empty, complex, boolean or not finite (also
        after the cast to ``dtype``).
    """
    check_choice("dtype", dtype, DTYPES)
    t = channel_view(X, name)
    t = t.reshape(t.shape[0], -1)
    hi, lo = _extremes(t, 0, name)
    constant = (hi == lo).to(compute_device(X, device=device))
    factor = 1.0
    if rescale:
        factor = float(power_of_two_scale(torch.stack([hi.abs().max(), lo.abs().max()]).double()))
    out = torch.empty(t.shape, dtype=dtype, device=compute_device(X, device=device))
    for f0, f1 in _chunks(t.shape[1], t.shape[0]):
        w = _staging(out[:, f0:f1])
        w.copy_(t[:, f0:f1])
        if factor != 1.0:
            w.mul_(factor)
        # Two passes, as in _unit_channels.
        w.sub_(w.mean(dim=0, keepdim=True))
        w.sub_(w.mean(dim=0, keepdim=True))
        w[:, constant[f0:f1]] = 0.0
        if w.dtype != dtype:
            out[:, f0:f1].copy_(w)
    # Without rescale, features beyond float32's range overflow in the cast.
    return check_finite(out, name)


def _zero_channels(hi, lo, center: bool, zero_channels: str, name: str) -> torch.Tensor:
    """Which channels are constant (``center``) or zero, exactly; raise as "Degenerate inputs"
    says."""
    zero = (hi == lo) if center else ((hi == 0) & (lo == 0))
    if bool(zero.all()):
        kind = "constant" if center else "zero"
        raise DegenerateInputError(f"every channel of {name} is {kind}; the measure is undefined")
    if bool(zero.any()) and zero_channels == "raise":
        idx = torch.nonzero(zero).flatten().tolist()
        raise DegenerateInputError(
            f"{name} has {len(idx)} channel(s) with zero norm{' after centring' if center else ''} "
            f"(e.g. channel {idx[0]}), so per-channel normalisation is undefined; pass "
            f"zero_channels='keep' to leave them at zero as the authors' code does"
        )
    return zero


def _unit_channels(w: torch.Tensor, center: bool, zero: torch.Tensor) -> None:
    """Centre (optionally) and scale each channel of ``w`` ``(k, n, p)`` to unit norm, in place; the
    channels flagged ``zero`` become exactly zero."""
    factor = power_of_two_scale(w, dim=(1, 2))
    if bool((factor != 1).any()):
        w.mul_(factor[:, None, None])
    if center:
        # Two passes: the second removes what the rounding of the first mean left (offsets up to
        # 1/eps of the spread, where the input can still hold the spread at all).
        w.sub_(w.mean(dim=(1, 2), keepdim=True))
        w.sub_(w.mean(dim=(1, 2), keepdim=True))
    norms = torch.linalg.vector_norm(w, dim=(1, 2))
    w[zero] = 0.0
    w.div_(torch.where(zero, torch.ones_like(norms), norms)[:, None, None])


def normalize_channel_major(
    X,
    center: bool = True,
    zero_channels: str = "raise",
    dtype=torch.float64,
    device=None,
    name: str = "X",
) -> torch.Tensor:
    """:func:`normalize_channels` in the layout of :func:`lib.metrics.preprocessing.channel_major`.

    The max kernel (``lib.metrics.gram.blocked_max_kernel``) and the linear kernel of the
    channel-normalised CKAs start from this layout, which spares a second copy of the features. The
    centring and scaling are done in float64 (chunks of channels of at most ``STAGE_BYTES``),
    and only the result is cast to ``dtype``.

    Parameters
    ----------
    X : array or tensor
        See :func:`lib.metrics.to_channels`.
    center, zero_channels
        As for :func:`normalize_channels`.
    dtype, device, name
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    torch.Tensor
        ``(channels, n_samples, positions)``, each channel of unit Frobenius norm (or zero, with
        ``zero_channels="keep"``).

    Raises
    ------
    DegenerateInputError
        If every channel is constant (``center``) or zero, or one is and ``zero_channels="raise"``.
    """
    check_choice("zero_channels", zero_channels, ZERO_CHANNELS)
    check_choice("dtype", dtype, DTYPES)
    t = channel_view(X, name)
    dev = compute_device(X, device=device)
    zero = _zero_channels(*_extremes(t, (0, 2), name), center, zero_channels, name).to(dev)
    z = torch.empty((t.shape[1], t.shape[0], t.shape[2]), dtype=dtype, device=dev)
    for c0, c1 in _chunks(t.shape[1], t.shape[0] * t.shape[2]):
        w = _staging(z[c0:c1])
        w.copy_(t[:, c0:c1].permute(1, 0, 2))
        _unit_channels(w, center, zero[c0:c1])
        if w.dtype != dtype:
            z[c0:c1].copy_(w)
    return z


def normalize_channels(
    X,
    center: bool = True,
    zero_channels: str = "raise",
    *,
    dtype=torch.float64,
    device=None,
    name: str = "X",
) -> torch.Tensor:
    """Each channel (optionally centred, then) scaled to unit norm over (samples, positions).

    Parameters
    ----------
    X : array or tensor
        See :func:`lib.metrics.to_channels`.
    center : bool
        Subtract each channel's mean over (samples, positions) first (G_ReLU-CKA: yes;
        G_ReLU-Procrustes: no).
    zero_channels : str
        ``"raise"`` (a channel constant over (samples, positions), or zero without ``center``, is
        a :class:`~lib.metrics.DegenerateInputError`) or ``"keep"`` (it stays zero
        and contributes nothing, as in the authors' code; dead ReLU channels do this). The test is
        exact, on the input's values.
    dtype, device, name
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, channels, positions)`` (a view of a channel-major copy).

    Raises
    ------
    DegenerateInputError
        If every channel is constant (``center``) or zero, or one is and ``zero_channels="raise"``.
    """
    return normalize_channel_major(X, center, zero_channels, dtype, device, name).permute(1, 0, 2)


def normalize_total(X, *, dtype=torch.float64, device=None, name: str = "X") -> torch.Tensor:
    """Features scaled to unit Frobenius norm as a whole, without centring (orthogonal Procrustes).

    Parameters
    ----------
    X : array or tensor
        See :func:`lib.metrics.to_channels`.
    dtype, device, name
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, channels, positions)`` of unit Frobenius norm.

    Raises
    ------
    DegenerateInputError
        If ``X`` is identically zero.
    """
    t = rescaled(to_channels(X, dtype=dtype, device=device, name=name))
    # Per sample in dtype (torch's cascade sum), over samples in float64; no float64 copy of t.
    norm = math.sqrt(float(t.square().sum(dim=(1, 2)).double().sum()))
    if norm == 0.0:
        raise DegenerateInputError(f"{name} is identically zero; the measure is undefined")
    return t / norm
