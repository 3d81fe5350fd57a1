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
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..config import check_choice, get_device

__all__ = ["DTYPES", "ZERO_CHANNELS", "compute_device", "shape_of", "check_same_samples", "check_finite",
           "rescaled", "to_channels", "flatten_features", "center_features", "channel_major",
           "normalize_channel_major", "normalize_channels", "normalize_total"]

#: Computation types every measure accepts (``dtype=``); float64 is the default.
DTYPES = (torch.float64, torch.float32)

#: What per-channel normalisation does with a channel of zero norm, either ``"raise"`` a ``ValueError``
#: or ``"keep"`` it at zero (the authors' behaviour, e.g. for dead ReLU channels).
ZERO_CHANNELS = ("raise", "keep")


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


def center_features(X, **kw) -> torch.Tensor:
    """Flattened features minus their mean over samples.

    Parameters
    ----------
    X : array or tensor
        See :func:`to_channels`.
    **kw
        ``dtype``, ``device``, ``name`` for :func:`to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, channels * positions)``, a new tensor whose every column has mean zero.
    """
    t = flatten_features(X, **kw)
    return t - t.mean(dim=0, keepdim=True)


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


def normalize_channel_major(X, center: bool = True, zero_channels: str = "raise", dtype=torch.float64,
                            device=None, name: str = "X") -> torch.Tensor:
    """:func:`normalize_channels` in the channel-major layout of :func:`channel_major`.

    The max kernel (``lib.metrics.gram.blocked_max_kernel``) and the linear kernel of the
    channel-normalised CKAs start from this layout, which spares a second copy of the features.

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
    ValueError
        If every channel has zero norm, or one does and ``zero_channels="raise"``.
    """
    check_choice("zero_channels", zero_channels, ZERO_CHANNELS)
    z = channel_major(X, dtype, device, name)
    factor = _safe_scale(z, dim=(1, 2))
    if bool((factor != 1).any()):
        z.mul_(factor[:, None, None])
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
    X : array or tensor
        See :func:`to_channels`.
    center : bool
        Subtract each channel's mean over (samples, positions) first (G_ReLU-CKA: yes;
        G_ReLU-Procrustes: no).
    zero_channels : str
        ``"raise"`` (a channel with zero norm is a ``ValueError``) or ``"keep"`` (it stays zero and
        contributes nothing, as in the authors' code; dead ReLU channels do this).
    dtype, device, name
        As for :func:`to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, channels, positions)`` (a view of a channel-major copy).

    Raises
    ------
    ValueError
        If every channel has zero norm, or one does and ``zero_channels="raise"``.
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
    ValueError
        If ``X`` is identically zero.
    """
    t = rescaled(to_channels(X, dtype=dtype, device=device, name=name))
    norm = torch.linalg.vector_norm(t)
    if float(norm) == 0.0:
        raise ValueError(f"{name} is identically zero; the measure is undefined")
    return t / norm
