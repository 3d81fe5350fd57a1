"""Inputs of the similarity measures (:mod:`lib.metrics`): channel view, checks, degenerate inputs.

Every measure takes feature arrays (numpy or torch, any device), either ``(n_samples, n_features)``
or conv features ``(n_samples, channels, height, width)`` (also ``(n_samples, channels,
positions)``). :func:`to_channels` is the one place that maps inputs to the channel view
``(n_samples, channels, positions)``; flattened ``(n_samples, channels * positions)`` features are a
reshape of it. Computation happens on the input's device (numpy: CPU; a CUDA tensor among the
inputs: that device; or ``device=``, see :func:`compute_device`), in ``dtype`` (float64 by default).

The input checks (:func:`check_same_samples`, :func:`check_finite`), the exact power-of-two
rescaling of extreme inputs (:func:`rescaled`, :func:`power_of_two_scale`) and the rule for
degenerate inputs (below) are shared by every measure of the package; the centring and
per-channel normalisation are in :mod:`lib.metrics.normalization`.

Degenerate inputs
-----------------
This is the one rule every measure of :mod:`lib.metrics` follows, in float32 and float64 alike: an
input for which a measure is undefined raises :class:`~lib.metrics.DegenerateInputError` (a
``ValueError``) that names the argument and the reason; no measure returns a value for it, and none
warns instead. The cases:

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

__all__ = [
    "DTYPES",
    "ZERO_CHANNELS",
    "STAGE_BYTES",
    "DEGENERATE_RTOL",
    "DegenerateInputError",
    "compute_device",
    "shape_of",
    "check_same_samples",
    "channel_view",
    "check_finite",
    "power_of_two_scale",
    "rescaled",
    "to_channels",
    "flatten_features",
    "channel_major",
]

#: Computation types every measure accepts (``dtype=``); float64 is the default.
DTYPES = (torch.float64, torch.float32)

#: What per-channel normalisation does with a channel of zero norm, either ``"raise"`` a
#: ``ValueError`` or ``"keep"`` it at zero (the authors' behaviour, e.g. for dead ReLU channels).
ZERO_CHANNELS = ("raise", "keep")

#: Bytes of float64 temporaries that centring and normalisation use at a time (one chunk of channels
#: or features); the float64 sums of ``lib.metrics.hsic`` use as much per block of rows.
STAGE_BYTES = 32 * 2**20

#: A (U-)centred Gram matrix counts as zero when its squared norm is at most this many machine
#: epsilons of the Gram's type times the squared norm of the Gram matrix (see "Degenerate inputs").
DEGENERATE_RTOL = 1.0


class DegenerateInputError(ValueError):
    """An input for which a measure is undefined (see "Degenerate inputs" in
    ``lib.metrics.preprocessing``): the message names the argument and the reason."""


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


def channel_view(X, name: str = "X") -> torch.Tensor:
    """``X`` as a torch tensor in the channel view, not converted (no copy for numpy or torch).

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, n_features)``, ``(n_samples, channels, positions)`` or ``(n_samples, channels,
        height, width)``, any real type.
    name : str
        The argument's name, for error messages.

    Returns
    -------
    torch.Tensor
        ``(n_samples, channels, positions)`` in ``X``'s own type and on its device.

    Raises
    ------
    ValueError
        If ``X`` has another number of dimensions, is empty, complex or boolean.
    """
    t = X.detach() if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if t.ndim not in (2, 3, 4):
        raise ValueError(
            f"{name} must have shape (n_samples, n_features) or (n_samples, channels, height, "
            f"width); got shape {tuple(t.shape)}"
        )
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
_SAFE_MAGNITUDE = (2.0**-10, 2.0**10)


def power_of_two_scale(t: torch.Tensor, dim=None) -> torch.Tensor:
    """Power-of-two factors that bring the largest magnitude of ``t`` into ``[0.5, 1)``.

    Parameters
    ----------
    t : torch.Tensor
        Any shape, floating type.
    dim : int or tuple of int, optional
        The dimensions to take the largest magnitude over (None: all of ``t``, one factor).

    Returns
    -------
    torch.Tensor
        One factor per index of ``t`` outside ``dim`` (a scalar for None), in ``t``'s type: 1 where
        the largest magnitude is zero or already within ``[2^-10, 2^10]``.
    """
    hi = t.amax() if dim is None else t.amax(dim=dim)
    lo = t.amin() if dim is None else t.amin(dim=dim)
    m = torch.maximum(hi.abs(), lo.abs())
    _, exponent = torch.frexp(m)
    # The clamp keeps the factor finite for subnormal inputs.
    factor = torch.ldexp(
        torch.ones_like(m), (-exponent).clamp(max=math.frexp(torch.finfo(t.dtype).max)[1] - 2)
    )
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
    factor = power_of_two_scale(t)
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
    t = channel_view(X, name)
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
    t = channel_view(X, name)
    z = torch.empty(
        (t.shape[1], t.shape[0], t.shape[2]), dtype=dtype, device=compute_device(X, device=device)
    )
    z.copy_(t.permute(1, 0, 2))
    return check_finite(z, name)
