"""Figures. Every function takes arrays (saved results) and returns a ``matplotlib.figure.Figure``.

Figures are built with the object API (no pyplot state), so a chapter cell that ends with the
figure shows it exactly once; captions live in the chapter's MyST figure metadata, not in titles.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["bars_with_errors", "heatmap", "curves"]


def bars_with_errors(labels, groups: dict, ylabel: str = "", paper: dict | None = None,
                     figsize=(7, 3.5)) -> Figure:
    """Grouped bars: ``groups[name] = (means, stds)`` over ``labels``; ``paper[name]`` (optional)
    draws the paper's values as black ticks on the matching bars."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    n = len(groups)
    x = np.arange(len(labels))
    w = 0.8 / max(n, 1)
    for k, (name, (mean, std)) in enumerate(groups.items()):
        pos = x - 0.4 + w * (k + 0.5)
        ax.bar(pos, mean, w, yerr=std, capsize=2, label=name)
        if paper and name in paper and paper[name] is not None:
            ax.scatter(pos, paper[name], marker="_", s=200, color="k", zorder=3,
                       label="paper" if k == 0 else None)
    ax.set_xticks(x, [str(l) for l in labels])
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    return fig


def heatmap(matrices: dict, row_labels, col_labels=None, vmin=0.0, vmax=1.0,
            xlabel: str = "", ylabel: str = "", cmap: str = "magma", figsize=None) -> Figure:
    """Side-by-side heatmaps, one per ``matrices[name]`` (panel titles are the names)."""
    col_labels = row_labels if col_labels is None else col_labels
    n = len(matrices)
    fig = Figure(figsize=figsize or (4.2 * n + 0.6, 4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    im = None
    for ax, (name, m) in zip(axes, matrices.items()):
        im = ax.imshow(np.asarray(m), vmin=vmin, vmax=vmax, cmap=cmap, origin="lower")
        ax.set_title(name, fontsize="medium")
        ax.set_xticks(range(len(col_labels)), col_labels, rotation=90, fontsize="x-small")
        ax.set_yticks(range(len(row_labels)), row_labels, fontsize="x-small")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return fig


def curves(x, ys: dict, xlabel: str = "", ylabel: str = "", stds: dict | None = None,
           figsize=(5, 3.5), logy: bool = False) -> Figure:
    """Line plot of ``ys[name]`` against ``x`` with optional shaded ``stds[name]``."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    for name, y in ys.items():
        y = np.asarray(y, dtype=float)
        ax.plot(x, y, marker="o", ms=3, label=name)
        if stds and name in stds:
            s = np.asarray(stds[name], dtype=float)
            ax.fill_between(x, y - s, y + s, alpha=0.2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    return fig
