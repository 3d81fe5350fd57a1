"""Inputs of the similarity measures (:mod:`lib.metrics`): the channel view and per-channel preprocessing.

Every measure takes feature arrays (numpy or torch, any device), either ``(n_samples, n_features)`` or
conv features ``(n_samples, channels, height, width)`` (also ``(n_samples, channels, positions)``).
:func:`to_channels` is the one place that maps inputs to the channel view ``(n_samples, channels,
positions)``; flattened ``(n_samples, channels * positions)`` features are a reshape of it. Computation
happens on the input's device (numpy: CPU; a CUDA tensor among the inputs: that device; or ``device=``,
see :func:`compute_device`), in ``dtype`` (float64 by default).

:func:`normalize_channels` is the authors' per-channel centring and scaling (G_ReLU-CKA,
G_ReLU-Procrustes, orthogonal CKA) and :func:`normalize_channel_major` the same in the layout of the
per-channel products; :func:`normalize_total` is the whole-tensor scaling of orthogonal Procrustes. The
input checks (:func:`check_same_samples`, :func:`check_finite`) and the exact power-of-two rescaling of
extreme inputs (:func:`rescaled`) are shared by every measure of the package.

Precision
---------
Centring is where float32 loses a measure: features with a mean of 1e4 and a spread of 1 keep only
three digits once cast to float32. So every centring and per-channel normalisation here works in
float64 on the input's own values (exact for float16, float32 and float64 inputs), a bounded chunk
of channels or features at a time (at most :data:`STAGE_BYTES` of temporaries), and only the
centred, normalised features are cast to the computation type ``dtype``. The sums that follow
(HSIC, norms, Procrustes residuals, ``lib.metrics.cka``) accumulate in float64 as well; the Gram
matrices themselves are computed in ``dtype``.

Degenerate inputs
-----------------
This is the one rule every measure of :mod:`lib.metrics` follows, in float32 and float64 alike: an
input for which a measure is undefined raises :class:`DegenerateInputError` (a ``ValueError``) that
names the argument and the reason; no measure returns a value for it, and none warns instead. The
cases:

- a channel constant over (samples, positions) (or zero, for the measures that do not centre):
  raised unless ``zero_channels="keep"``, which leaves it at zero; the test is exact (its largest
  value equals its smallest), so a channel with a large offset is never mistaken for a constant one;
- every channel constant (or zero), or every feature constant across samples (linear and RBF CKA);
- a Gram matrix whose centred (or U-centred) part vanishes to the working precision,
  ``||K~||_F^2 <= eps * ||K||_F^2`` (:data:`DEGENERATE_RTOL` times the machine epsilon of the Gram's
  type, ``K`` with its diagonal zeroed for the unbiased estimator): HSIC(X, X) is then zero
  or round-off, and CKA is 0/0. Example: ``X = [[-2], [1], [-2], [-2], [-2], [-2]]``, whose max and
  linear kernels U-centre to exactly zero; any affine image of it likewise;
- RBF kernels whose median squared distance vanishes to the working precision (at least half the
  sample pairs coincide);
- an identically zero input of orthogonal Procrustes;
- fewer samples than the estimator needs (a plain ``ValueError``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..config import check_choice, get_device

__all__ = ["DTYPES", "ZERO_CHANNELS", "STAGE_BYTES", "DEGENERATE_RTOL", "DegenerateInputError",
           "compute_device", "shape_of", "check_same_samples", "check_finite", "rescaled",
           "to_channels", "flatten_features", "center_features", "channel_major",
           "normalize_channel_major", "normalize_channels", "normalize_total"]

#: Computation types every measure accepts (``dtype=``); float64 is the default.
DTYPES = (torch.float64, torch.float32)

#: What per-channel normalisation does with a channel of zero norm, either ``"raise"`` a ``ValueError``
#: or ``"keep"`` it at zero (the authors' behaviour, e.g. for dead ReLU channels).
ZERO_CHANNELS = ("raise", "keep")

#: Bytes of float64 temporaries that centring and normalisation use at a time (one chunk of channels
#: or features); the float64 sums of ``lib.metrics.cka`` use as much per block of rows.
STAGE_BYTES = 32 * 2**20

#: A (U-)centred Gram matrix counts as zero when its squared norm is at most this many machine
#: epsilons of the Gram's type times the squared norm of the Gram matrix (see "Degenerate inputs").
DEGENERATE_RTOL = 1.0


class DegenerateInputError(ValueError):
    """An input for which a measure is undefined (see "Degenerate inputs" in
    :mod:`lib.metrics.preprocessing`): the message names the argument and the reason."""


def compute_device(*arrays, device=None) -> torch.device:
    """The device a measure computes on.

    Parameters
    ----------
    *arrays : arrays or tensors
        The measure's inputs.
    device : str or torch.device, optional
        An explicit choice, for :func:`lib.config.get_device`.

    Returns
    -------
    torch.device
        ``device`` if given, else the first non-CPU device among the tensor inputs, else the CPU.
    """
    if device is not None:
        return get_device(device)
    for a in arrays:
        if isinstance(a, torch.Tensor) and a.device.type != "cpu":
            return a.device
    return torch.device("cpu")


def shape_of(A) -> tuple:
    """The shape of an array, tensor or nested sequence, without converting it.

    Parameters
    ----------
    A : array, tensor or sequence
        Anything numpy can take the shape of; tensors are not moved or copied.

    Returns
    -------
    tuple of int
        ``A.shape`` (``()`` for a scalar).
    """
    return tuple(A.shape) if hasattr(A, "shape") else np.shape(A)


def check_same_samples(X, Y) -> None:
    """Check that two inputs of a measure hold the same number of samples (their first axis).

    Parameters
    ----------
    X, Y : arrays or tensors
        ``(n_samples, ...)`` each.

    Raises
    ------
    ValueError
        If the first axes differ (or one input is a scalar).
    """
    sx, sy = shape_of(X), shape_of(Y)
    nx, ny = (sx[0] if sx else None), (sy[0] if sy else None)
    if nx != ny:
        raise ValueError(f"X and Y must have the same number of samples; got {nx} and {ny}")


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


def check_finite(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` itself, after checking that it holds no NaN and no infinity.

    Parameters
    ----------
    t : torch.Tensor
        Any shape, real floating type.
    name : str
        The argument's name, for the error message.

    Returns
    -------
    torch.Tensor
        ``t`` (not copied).

    Raises
    ------
    ValueError
        If ``t`` contains NaN or an infinite value.
    """
    # The extremes propagate NaN and show infinities, without the full-size temporary of isfinite().
    if not (math.isfinite(float(t.amax())) and math.isfinite(float(t.amin()))):
        raise ValueError(f"{name} contains NaN or infinite values (after conversion to {t.dtype})")
    return t


# Every measure is invariant to scaling its inputs, so features of extreme magnitude (1e30 or 1e-30,
# whose squares overflow or underflow float32 and would read as "constant") are first scaled by a
# power of two, which is exact, to a maximum in [0.5, 1). Inputs whose largest magnitude lies within
# these bounds are left alone (the common case: no copy, bit-identical results).
_SAFE_MAGNITUDE = (2.0 ** -10, 2.0 ** 10)


def _safe_scale(t: torch.Tensor, dim=None) -> torch.Tensor:
    """Power-of-two factors (one, or one per index of ``t`` outside ``dim``) that bring the largest
    magnitude of ``t`` (over ``dim``; over all of ``t`` if None) into ``[0.5, 1)``; 1 where it is
    already within ``_SAFE_MAGNITUDE`` or zero."""
    hi = t.amax() if dim is None else t.amax(dim=dim)
    lo = t.amin() if dim is None else t.amin(dim=dim)
    m = torch.maximum(hi.abs(), lo.abs())
    _, exponent = torch.frexp(m)
    # The clamp keeps the factor finite for subnormal inputs.
    factor = torch.ldexp(torch.ones_like(m), (-exponent).clamp(max=math.frexp(torch.finfo(t.dtype).max)[1] - 2))
    safe = (m == 0) | ((m >= _SAFE_MAGNITUDE[0]) & (m <= _SAFE_MAGNITUDE[1]))
    return torch.where(safe, torch.ones_like(m), factor)


def rescaled(t: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``t`` scaled by a power of two (exactly) so that its largest magnitude lies in ``[0.5, 1)``.

    Every measure is invariant to scaling its inputs; this keeps the squares of extreme features
    (1e30, 1e-30) from overflowing or underflowing float32.

    Parameters
    ----------
    t : torch.Tensor
        Any shape, floating type.
    inplace : bool
        Scale ``t`` itself instead of a copy.

    Returns
    -------
    torch.Tensor
        Same shape as ``t``; ``t`` itself when it is zero or its largest magnitude already lies in
        ``[2^-10, 2^10]`` (the common case: no copy, bit-identical results).
    """
    factor = _safe_scale(t)
    if float(factor) == 1.0:
        return t
    return t.mul_(factor) if inplace else t * factor


def to_channels(X, *, dtype=torch.float64, device=None, name: str = "X") -> torch.Tensor:
    """Features in the channel view used by every measure.

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, n_features)``, ``(n_samples, channels, positions)`` or ``(n_samples, channels,
        height, width)``. Plain features count as channels with one position.
    dtype : torch.dtype
        ``torch.float64`` or ``torch.float32`` (``lib.metrics.preprocessing.DTYPES``).
    device : str or torch.device, optional
        None: the input's device (CPU for numpy); else a device for :func:`lib.config.get_device`.
    name : str
        The argument's name, for error messages.

    Returns
    -------
    torch.Tensor
        ``(n_samples, channels, positions)``; shares memory with ``X`` when no conversion is needed.

    Raises
    ------
    ValueError
        If ``X`` has another number of dimensions, is empty, complex, boolean or not finite.
    """
    check_choice("dtype", dtype, DTYPES)
    t = _raw(X, name)
    return check_finite(t.to(device=compute_device(X, device=device), dtype=dtype), name)


def flatten_features(X, **kw) -> torch.Tensor:
    """Features flattened to one vector per sample.

    Parameters
    ----------
    X : array or tensor
        See :func:`to_channels`.
    **kw
        ``dtype``, ``device``, ``name`` for :func:`to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, channels * positions)``: conv features flattened in (C, H, W) order.
    """
    t = to_channels(X, **kw)
    return t.reshape(t.shape[0], -1)


def _extremes(t: torch.Tensor, dim, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest and smallest value of ``t`` over ``dim``, after checking that ``t`` is finite."""
    hi, lo = t.amax(dim=dim), t.amin(dim=dim)
    # The extremes propagate NaN and show infinities, without the full-size temporary of isfinite().
    if not bool(torch.isfinite(hi).all() & torch.isfinite(lo).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return hi, lo


def _chunks(total: int, per_item: int):
    """Ranges ``(start, stop)`` over ``total`` items, each chunk holding at most :data:`STAGE_BYTES`
    of float64 numbers (at least one item of ``per_item`` numbers)."""
    step = max(1, STAGE_BYTES // (8 * max(1, per_item)))
    return [(i, min(i + step, total)) for i in range(0, total, step)]


def _staging(out: torch.Tensor) -> torch.Tensor:
    """Where a chunk is computed: ``out`` itself if it is float64, else a float64 buffer like it."""
    if out.dtype == torch.float64:
        return out
    return torch.empty(out.shape, dtype=torch.float64, device=out.device)


def center_features(X, *, dtype=torch.float64, device=None, name: str = "X",
                    rescale: bool = False) -> torch.Tensor:
    """Flattened features minus their mean over samples, centred in float64 before any cast.

    Parameters
    ----------
    X : array or tensor
        See :func:`to_channels`.
    dtype, device, name
        As for :func:`to_channels`.
    rescale : bool
        Scale all features by one power of two (exact) so that the largest input magnitude lies in
        ``[0.5, 1)`` unless it lies in ``[2^-10, 2^10]`` already, as :func:`rescaled` does: the
        measures use this; the centred features of ``1e30 * X`` then fit float32.

    Returns
    -------
    torch.Tensor
        ``(n_samples, channels * positions)``, a new tensor whose every column has mean zero (in
        float64, then rounded to ``dtype``); a feature constant across samples is exactly zero.

    Raises
    ------
    ValueError
        If ``X`` has another number of dimensions, is empty, complex, boolean or not finite.
    """
    check_choice("dtype", dtype, DTYPES)
    t = _raw(X, name)
    t = t.reshape(t.shape[0], -1)
    hi, lo = _extremes(t, 0, name)
    constant = (hi == lo).to(compute_device(X, device=device))
    factor = 1.0
    if rescale:
        factor = float(_safe_scale(torch.stack([hi.abs().max(), lo.abs().max()]).double()))
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
    return out


def channel_major(X, dtype=torch.float64, device=None, name: str = "X") -> torch.Tensor:
    """A fresh contiguous channel-major copy of ``X``: the layout of the per-channel products.

    Parameters
    ----------
    X : array or tensor
        See :func:`to_channels`.
    dtype, device, name
        As for :func:`to_channels`.

    Returns
    -------
    torch.Tensor
        ``(channels, n_samples, positions)`` in ``dtype``; never shares memory with ``X``.
    """
    check_choice("dtype", dtype, DTYPES)
    t = _raw(X, name)
    z = torch.empty((t.shape[1], t.shape[0], t.shape[2]), dtype=dtype, device=compute_device(X, device=device))
    z.copy_(t.permute(1, 0, 2))
    return check_finite(z, name)


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
            f"zero_channels='keep' to leave them at zero as the authors' code does")
    return zero


def _unit_channels(w: torch.Tensor, center: bool, zero: torch.Tensor) -> None:
    """Centre (optionally) and scale each channel of ``w`` ``(k, n, p)`` to unit norm, in place; the
    channels flagged ``zero`` become exactly zero."""
    factor = _safe_scale(w, dim=(1, 2))
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


def normalize_channel_major(X, center: bool = True, zero_channels: str = "raise", dtype=torch.float64,
                            device=None, name: str = "X") -> torch.Tensor:
    """:func:`normalize_channels` in the channel-major layout of :func:`channel_major`.

    The max kernel (``lib.metrics.gram.blocked_max_kernel``) and the linear kernel of the
    channel-normalised CKAs start from this layout, which spares a second copy of the features. The
    centring and scaling are done in float64 (chunks of channels of at most :data:`STAGE_BYTES`),
    and only the result is cast to ``dtype``.

    Parameters
    ----------
    X : array or tensor
        See :func:`to_channels`.
    center, zero_channels
        As for :func:`normalize_channels`.
    dtype, device, name
        As for :func:`to_channels`.

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
    t = _raw(X, name)
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


def normalize_channels(X, center: bool = True, zero_channels: str = "raise", *, dtype=torch.float64,
                       device=None, name: str = "X") -> torch.Tensor:
    """Each channel (optionally centred, then) scaled to unit norm over (samples, positions).

    Parameters
    ----------
    X : array or tensor
        See :func:`to_channels`.
    center : bool
        Subtract each channel's mean over (samples, positions) first (G_ReLU-CKA: yes;
        G_ReLU-Procrustes: no).
    zero_channels : str
        ``"raise"`` (a channel constant over (samples, positions), or zero without ``center``, is
        a :class:`DegenerateInputError`) or ``"keep"`` (it stays zero and contributes nothing, as in
        the authors' code; dead ReLU channels do this). The test is exact, on the input's values.
    dtype, device, name
        As for :func:`to_channels`.

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
        See :func:`to_channels`.
    dtype, device, name
        As for :func:`to_channels`.

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
