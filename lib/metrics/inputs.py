"""The first check of every similarity measure (:mod:`lib.metrics`), before any preprocessing.

A 1-D input or a single sample is reported as such, not by a later step that it happens to break (a
zero median distance for the RBF bandwidth, "every channel is constant", a spatial shape).
"""

from __future__ import annotations

from .preprocessing import check_same_samples, shape_of

__all__ = ["check_samples"]


def check_samples(X, Y, minimum: int, measure: str) -> None:
    """Check that ``X`` and ``Y`` are feature arrays with the same samples, at least 2 of them.

    Sample counts from 2 to ``minimum - 1`` are left to the measure's own checks, which say why
    they are too few.

    Parameters
    ----------
    X, Y : arrays or tensors
        ``(n_samples, n_features)`` or ``(n_samples, channels[, height, width])`` each.
    minimum : int
        The fewest samples the measure takes, named in the error.
    measure : str
        The measure's name, e.g. ``"rbf_cka"``.

    Raises
    ------
    ValueError
        For an input of another dimensionality, different sample counts, or fewer than 2 samples.
    """
    for A, name in ((X, "X"), (Y, "Y")):
        if len(shape_of(A)) not in (2, 3, 4):
            raise ValueError(
                f"{name} must have shape (n_samples, n_features) or (n_samples, "
                f"channels, height, width); got shape {shape_of(A)}"
            )
    check_same_samples(X, Y)
    n = shape_of(X)[0]
    if n < 2:
        raise ValueError(f"{measure}: need at least {minimum} samples; got {n}")
