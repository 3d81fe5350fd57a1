"""The Procrustes measures of Section 5, as similarities ``1 - distance``.

- :func:`grelu_procrustes` (Definition 5.2): channels scaled to unit norm, matched by the Hungarian
  algorithm; invariant to permutations and positive scalings of channels, not to translations.
- :func:`orthogonal_procrustes`: the whole tensor scaled to unit norm, matched by the best rotation
  of channels. It uses the authors' ``1 - sqrt(2 - 2 ||X^T Y||_*) / 2``: it is 1 iff ``Y = XQ`` up
  to scale, but its smallest possible value is ``1 - 1/sqrt(2) ~ 0.293``, not 0.

Both compare features with the same spatial shape only (the authors upsample the smaller one).
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment

from .inputs import check_samples
from .normalization import normalize_channel_major, normalize_total
from .preprocessing import check_same_samples, compute_device, shape_of

__all__ = ["grelu_procrustes", "orthogonal_procrustes"]


def _procrustes_samples(X) -> None:
    # One sample leaves nothing to align: the measures would return 1.0 (orthogonal) or ~0.57
    # (G_ReLU) whatever the features.
    n = shape_of(X)[0] if shape_of(X) else 0
    if n < 2:
        raise ValueError(f"Procrustes measures need at least 2 samples; got {n}")


def _same_positions(X, Y) -> None:
    px, py = shape_of(X)[2:], shape_of(Y)[2:]
    if px != py:
        raise ValueError(
            f"Procrustes needs X and Y with the same spatial shape; got {px} and {py} (the "
            f"authors upsample the smaller one; resize before calling)"
        )


def _sum_squares_(a: torch.Tensor) -> float:
    """The sum of squares of a fresh matrix ``a`` (squared in place): over its rows in ``a``'s type
    (torch's cascade sum; ``vector_norm`` was measured 1e-5 off in float32), then in float64."""
    return float(a.square_().sum(dim=0).double().sum())


def grelu_procrustes(
    X, Y, zero_channels: str = "raise", *, dtype=torch.float64, device=None
) -> float:
    """G_ReLU-Procrustes similarity (Definition 5.2), ``1 - d``.

    Channels scaled to unit norm over (samples, positions), no centring; the ``(cx, cy)``
    cross-correlation of channels; Hungarian matching maximising the matched sum;
    ``d^2 = (||X~||^2 + ||Y~||^2 - 2 matched) / (4 max(cx, cy))`` (unequal channel counts: the
    smaller is padded with zero channels, as the authors do). Equals 1 when ``Y = X P D`` on
    channels.

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, cx[, h, w])``, at least 2 samples.
    Y : array or tensor
        ``(n_samples, cy[, h, w])``, the same spatial shape as ``X``.
    zero_channels : str
        See :func:`lib.metrics.normalize_channels`.
    dtype, device
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    float
        In ``[0, 1]``; at least ``1 - 1/sqrt(2)`` for non-negative (post-ReLU) features.
    """
    check_samples(X, Y, 2, "grelu_procrustes")
    check_same_samples(X, Y)
    _procrustes_samples(X)
    _same_positions(X, Y)
    dev = compute_device(X, Y, device=device)
    zx, zy = (
        normalize_channel_major(A, False, zero_channels, dtype, dev, nm)
        for A, nm in ((X, "X"), (Y, "Y"))
    )
    zx, zy = zx.reshape(zx.shape[0], -1), zy.reshape(zy.shape[0], -1)
    rows, cols = linear_sum_assignment((zx @ zy.T).cpu().numpy(), maximize=True)
    rows, cols = torch.as_tensor(rows, device=dev), torch.as_tensor(cols, device=dev)
    # The numerator of d^2 is the squared residual of the matching; summing it directly avoids the
    # cancellation of the expanded formula (whose round-off would show as 1 - 1e-8 for aligned
    # inputs).
    resid = _sum_squares_(zx[rows] - zy[cols])
    for z, matched in ((zx, rows), (zy, cols)):
        unmatched = torch.ones(z.shape[0], dtype=torch.bool, device=dev)
        unmatched[matched] = False
        resid += _sum_squares_(z[unmatched])
    d2 = resid / (4 * max(zx.shape[0], zy.shape[0]))
    return 1.0 - math.sqrt(min(1.0, max(0.0, d2)))


def orthogonal_procrustes(X, Y, *, dtype=torch.float64, device=None) -> float:
    """Orthogonal Procrustes similarity of the authors, ``1 - sqrt(2 - 2 ||X~^T Y~||_*) / 2``.

    ``X~``, ``Y~``: the features reshaped to ``(n_samples * positions, channels)`` and scaled to
    unit Frobenius norm (no centring). ``sqrt(2 - 2 ||X~^T Y~||_*)`` is the distance ``min_Q ||X~ -
    Y~ Q||_F`` over orthogonal ``Q`` (zero channels padding the smaller of the two), which lies in
    ``[0, sqrt(2)]``; with the authors' divisor 2 the similarity is 1 iff ``Y = c X Q`` (``c > 0``,
    ``Q`` orthogonal on channels).

    Parameters
    ----------
    X, Y, dtype, device
        As for :func:`grelu_procrustes`.

    Returns
    -------
    float
        In ``[1 - 1/sqrt(2), 1]`` for any input.
    """
    check_samples(X, Y, 2, "orthogonal_procrustes")
    check_same_samples(X, Y)
    _procrustes_samples(X)
    _same_positions(X, Y)
    dev = compute_device(X, Y, device=device)
    x, y = (
        normalize_total(A, dtype=dtype, device=dev, name=nm)
        .permute(0, 2, 1)
        .reshape(-1, shape_of(A)[1])
        for A, nm in ((X, "X"), (Y, "Y"))
    )
    c = max(x.shape[1], y.shape[1])
    x, y = (torch.nn.functional.pad(a, (0, c - a.shape[1])) for a in (x, y))
    # Distance from the residual of the optimal rotation Q = V U^T of X~^T Y~ = U S V^T, which
    # equals sqrt(2 - 2 ||X~^T Y~||_*) without that formula's cancellation.
    u, _, vh = torch.linalg.svd(x.T @ y)
    d2 = _sum_squares_(x - y @ (vh.T @ u.T))
    return 1.0 - math.sqrt(min(2.0, max(0.0, d2))) / 2.0
