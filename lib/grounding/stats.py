"""Spearman's rank correlation with a bootstrap interval: the statistic of Ding et al.'s tests."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["spearman_interval"]


def spearman_interval(x, y, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Spearman's rank correlation of paired values with a percentile bootstrap interval.

    Parameters
    ----------
    x, y : array-like
        ``(n_points,)`` each; pairs with a NaN in either are left out.
    n_boot : int
        Bootstrap resamples of the pairs.
    level : float
        Coverage of the interval, in ``(0, 1)``.
    seed : int
        Seed of the resampling.

    Returns
    -------
    dict
        ``rho`` (NaN for fewer than 3 pairs or a constant input), ``low``, ``high`` (percentiles of
        the resampled rho, resamples with a constant side left out) and ``n`` (pairs used).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level!r}")
    if not (isinstance(n_boot, int) and n_boot >= 1):
        raise ValueError(f"n_boot must be a positive integer; got {n_boot!r}")
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length; got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = x.size
    if n < 3:
        return dict(rho=np.nan, low=np.nan, high=np.nan, n=n)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    rhos = _rank_corr(np.vstack([x, x[idx]]), np.vstack([y, y[idx]]))
    tail = 100 * (1 - level) / 2
    low, high = (
        np.nanpercentile(rhos[1:], q) if np.isfinite(rhos[1:]).any() else np.nan
        for q in (tail, 100 - tail)
    )
    return dict(rho=float(rhos[0]), low=float(low), high=float(high), n=n)


def _rank_corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of ``x`` and ``y`` ``(m, n)`` (average ranks for ties)."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / den, np.nan)
