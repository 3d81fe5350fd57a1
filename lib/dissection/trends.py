"""Does a dissection count change along the rotation path? A descriptive trend
(:func:`rotation_trend`) and a test over the independent rotations (:func:`rotation_slope_test`)."""
from __future__ import annotations

import numpy as np
import scipy.stats

__all__ = ["rotation_trend", "rotation_slope_test"]


def rotation_trend(alphas, counts, tolerance: float = 0.1) -> dict:
    """How a count changes along the rotation path, from its mean over the rotations.

    Parameters
    ----------
    alphas : sequence of float
        Positions on the path, length ``n_alphas`` >= 2.
    counts : array_like
        ``(n_alphas, n_rotations)``, e.g. the ``interpretable`` field of a :class:`DissectionResult`.
    tolerance : float
        The relative change (a fraction, >= 0) beyond which the count falls or rises.

    Returns
    -------
    dict
        ``slope`` (least-squares slope of the mean count against alpha, counts per unit of alpha),
        ``start`` and ``end`` (mean counts at the first and last alpha), ``relative_change``
        (``(end - start) / start``, a fraction; NaN when ``start`` is 0) and ``verdict``:
        ``"falls"`` / ``"rises"`` if the relative change is below ``-tolerance`` / above
        ``tolerance``, else ``"flat"`` (from a start of 0: ``"rises"`` if the end is positive, else
        ``"flat"``).

    Raises
    ------
    ValueError
        If ``counts`` does not have shape ``(len(alphas), n_rotations)`` with at least two alphas,
        or ``tolerance`` is negative.
    """
    x = np.asarray(alphas, dtype=float)
    y = np.asarray(counts, dtype=float)
    if y.ndim != 2 or y.shape[0] != len(x) or len(x) < 2:
        raise ValueError(f"counts must have shape (n_alphas, n_rotations) with n_alphas = len(alphas) >= 2, "
                         f"got {y.shape} for {len(x)} alphas")
    if not 0 <= tolerance:
        raise ValueError(f"tolerance must be a non-negative number, got {tolerance!r}")
    mean = y.mean(1)
    slope = float(np.polyfit(x, mean, 1)[0])
    start, end = float(mean[0]), float(mean[-1])
    rel = (end - start) / start if start > 0 else float("nan")
    if start > 0:
        verdict = "falls" if rel < -tolerance else "rises" if rel > tolerance else "flat"
    else:
        verdict = "rises" if end > 0 else "flat"
    return dict(slope=slope, start=start, end=end, relative_change=rel, verdict=verdict)


def _check_slope_input(alphas, counts, n_permutations, level) -> tuple:
    # alphas (n_alphas,) and counts (n_alphas, n_rotations) as float arrays, checked.
    x = np.asarray(alphas, dtype=float)
    y = np.asarray(counts, dtype=float)
    if y.ndim != 2 or y.shape[0] != len(x) or len(x) < 2 or y.shape[1] < 1:
        raise ValueError(f"counts must have shape (n_alphas, n_rotations) with n_alphas = "
                         f"len(alphas) >= 2 and n_rotations >= 1, got {y.shape} for {len(x)} "
                         f"alphas")
    if not np.isfinite(y).all() or not np.isfinite(x).all():
        raise ValueError("alphas and counts must be finite")
    if np.ptp(x) == 0:
        raise ValueError(f"alphas must not all be equal, got {x.tolist()}")
    if not isinstance(n_permutations, int) or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive int, got {n_permutations!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return x, y


def _permutation_p_value(xc: np.ndarray, y: np.ndarray, slope: float, n_permutations: int,
                         seed: int) -> float:
    # Two-sided: the shuffles (and the observed order) whose mean slope is at least as large.
    rng = np.random.default_rng(seed)
    r = y.shape[1]
    # Shuffle each rotation's counts across the alphas: argsort of uniforms is a batch of
    # permutations.
    order = rng.random((n_permutations, len(xc), r)).argsort(1)
    shuffled = np.take_along_axis(np.broadcast_to(y, (n_permutations, *y.shape)), order, 1)
    null = np.einsum("a,par->p", xc, shuffled) / r
    return float((1 + (np.abs(null) >= abs(slope) - 1e-12).sum()) / (1 + n_permutations))


def rotation_slope_test(alphas, counts, n_permutations: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Is the change of a count along the rotation path significant? ``counts``: ``(n_alphas, n_rotations)``.

    Each random rotation ``Q_r`` gives one curve ``counts[:, r]`` against ``alphas``, and the rotations
    are independent draws, so the statistic is the mean over rotations of the least-squares slope of
    each curve (units per unit of alpha; the change from alpha 0 to alpha 1 on the fitted line).

    * ``ci``: the ``level`` confidence interval of that mean slope, Student's t over the rotations
      (NaN with a single rotation).
    * ``p_value``: a two-sided permutation test of "the count does not depend on alpha": within each
      rotation's curve the counts are shuffled across the alphas (``n_permutations`` random shuffles
      from ``seed``), and ``p = (1 + #{|slope*| >= |slope|}) / (1 + n_permutations)``.
    * ``verdict``: ``"falls"`` / ``"rises"`` if ``p < 1 - level`` and the interval lies below / above 0,
      else ``"flat"`` (no significant change).

    Parameters
    ----------
    alphas : sequence of float
        Positions on the path, length ``n_alphas`` >= 2, not all equal.
    counts : array_like
        ``(n_alphas, n_rotations)``, e.g. the ``interpretable`` field of a :class:`DissectionResult`.
    n_permutations : int
        Random shuffles of the permutation test, >= 1.
    seed : int
        Seed of the shuffles.
    level : float
        Confidence level of the interval, in (0, 1); the test's significance level is ``1 - level``.

    Returns
    -------
    dict
        ``slope`` (counts per unit of alpha), ``ci`` (low, high), ``p_value`` (a fraction),
        ``verdict``, ``slopes`` (one per rotation), ``n_rotations`` and ``level``.

    Raises
    ------
    ValueError
        If the shapes disagree, a value is not finite, the alphas are all equal, ``n_permutations``
        is not a positive int or ``level`` not in (0, 1).
    """
    x, y = _check_slope_input(alphas, counts, n_permutations, level)
    xc = (x - x.mean()) / ((x - x.mean()) ** 2).sum()          # slope of curve r = xc @ y[:, r]
    slopes = xc @ y
    slope = float(slopes.mean())
    r = y.shape[1]
    if r > 1:
        half = scipy.stats.t.ppf(0.5 + level / 2, r - 1) * slopes.std(ddof=1) / np.sqrt(r)
        ci = (slope - half, slope + half)
    else:
        ci = (float("nan"), float("nan"))
    p = _permutation_p_value(xc, y, slope, n_permutations, seed)
    significant = p < 1 - level
    if significant and ci[1] < 0:
        verdict = "falls"
    elif significant and ci[0] > 0:
        verdict = "rises"
    else:
        verdict = "flat"
    return dict(slope=slope, ci=(float(ci[0]), float(ci[1])), p_value=p, verdict=verdict, slopes=slopes.tolist(),
                n_rotations=r, level=level)
