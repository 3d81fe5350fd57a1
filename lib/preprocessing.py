"""Inputs of the similarity measures (:mod:`lib.metrics`): the channel view and per-channel preprocessing.

Every measure takes feature arrays (numpy or torch, any device), either ``(n_samples, n_features)`` or
conv features ``(n_samples, channels, height, width)`` (also ``(n_samples, channels, positions)``).
:func:`to_channels` is the one place that maps inputs to the channel view ``(n_samples, channels,
positions)``; flattened ``(n_samples, channels * positions)`` features are a reshape of it. Computation
happens on the input's device (numpy: CPU; a CUDA tensor among the inputs: that device; or ``device=``),
in ``dtype`` (float64 by default). :func:`normalize_channels` is the authors' per-channel centring and
scaling (G_ReLU-CKA, G_ReLU-Procrustes, orthogonal CKA); :func:`normalize_total` the whole-tensor scaling
of orthogonal Procrustes. All names are re-exported by :mod:`lib.metrics`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .config import check_choice, get_device

__all__ = ["to_channels", "flatten_features", "center_features", "normalize_channels", "normalize_total"]

DTYPES = (torch.float64, torch.float32)
ZERO_CHANNELS = ("raise", "keep")


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


def _rescaled(t: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``t`` times :func:`_safe_scale` (all of it at once); ``t`` itself when no scaling is needed."""
    factor = _safe_scale(t)
    if float(factor) == 1.0:
        return t
    return t.mul_(factor) if inplace else t * factor


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
    t = _rescaled(to_channels(X, dtype=dtype, device=device, name=name))
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
