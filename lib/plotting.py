"""Figures. Every function takes arrays (saved results) and returns a ``matplotlib.figure.Figure``.

Figures are built with the object API (no pyplot state), so a chapter cell that ends with the
figure shows it exactly once (as a PNG); captions live in the chapter's MyST figure metadata, not in
titles. Every function takes ``figsize``, ``(width, height)`` in inches.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure


def _register_png_display() -> None:
    # A bare Figure (object API, no pyplot) has no rich display until IPython's figure formatter is
    # registered; registering it here makes `fig` at the end of a chapter cell render as a PNG
    # without `%matplotlib inline` and without touching the kernel's matplotlib backend.
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        select_figure_formats(shell, {"png"}, bbox_inches="tight", dpi=110)


_register_png_display()

__all__ = [
    "HEATMAP_CMAP",
    "bars_with_errors",
    "heatmap",
    "curves",
    "curve_panels",
    "concept_samples",
]

HEATMAP_CMAP = "magma"
"""str: the colour map of every heatmap (perceptually uniform, dark at 0)."""


def bars_with_errors(
    labels, groups: dict, ylabel: str = "", paper: dict | None = None, figsize=(7, 3.5)
) -> Figure:
    """Grouped bars with error bars, and the paper's values as black ticks.

    Parameters
    ----------
    labels : sequence
        The groups along the x axis, ``(n_labels,)``.
    groups : dict
        ``{name: (means, stds)}``, each ``(n_labels,)``: one bar series per name.
    ylabel : str
    paper : dict, optional
        ``{name: values}`` ``(n_labels,)``, drawn as ticks on the matching bars.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    n = len(groups)
    x = np.arange(len(labels))
    w = 0.8 / max(n, 1)
    for k, (name, (mean, std)) in enumerate(groups.items()):
        pos = x - 0.4 + w * (k + 0.5)
        ax.bar(pos, mean, w, yerr=std, capsize=2, label=name)
        if paper and name in paper and paper[name] is not None:
            ax.scatter(
                pos,
                paper[name],
                marker="_",
                s=200,
                color="k",
                zorder=3,
                label="paper" if k == 0 else None,
            )
    ax.set_xticks(x, [str(label) for label in labels])
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    return fig


def heatmap(
    matrices: dict,
    row_labels,
    col_labels=None,
    vmin=0.0,
    vmax=1.0,
    xlabel: str = "",
    ylabel: str = "",
    figsize=None,
) -> Figure:
    """Side-by-side heatmaps with one colour bar (colour map :data:`HEATMAP_CMAP`).

    Parameters
    ----------
    matrices : dict
        ``{panel title: matrix}``, each ``(n_rows, n_cols)``.
    row_labels, col_labels : sequence
        Tick labels (``col_labels`` defaults to ``row_labels``).
    vmin, vmax : float
        The colour scale's range.
    xlabel, ylabel : str
    figsize : tuple of float, optional
        Inches; default: 4.2 per panel plus 0.6, by 4.

    Returns
    -------
    matplotlib.figure.Figure
    """
    col_labels = row_labels if col_labels is None else col_labels
    n = len(matrices)
    fig = Figure(figsize=figsize or (4.2 * n + 0.6, 4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    im = None
    for ax, (name, m) in zip(axes, matrices.items()):
        im = ax.imshow(np.asarray(m), vmin=vmin, vmax=vmax, cmap=HEATMAP_CMAP, origin="lower")
        ax.set_title(name, fontsize="medium")
        ax.set_xticks(range(len(col_labels)), col_labels, rotation=90, fontsize="x-small")
        ax.set_yticks(range(len(row_labels)), row_labels, fontsize="x-small")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    return fig


def curves(
    x,
    ys: dict,
    xlabel: str = "",
    ylabel: str = "",
    stds: dict | None = None,
    figsize=(5, 3.5),
    logy: bool = False,
) -> Figure:
    """Curves against a common x axis, with shaded ± std.

    Parameters
    ----------
    x : sequence
        ``(n_points,)``.
    ys : dict
        ``{name: y}``, each ``(n_points,)``.
    xlabel, ylabel : str
    stds : dict, optional
        ``{name: std}``, each ``(n_points,)``, shaded around the curve.
    logy : bool
        Logarithmic y axis.

    Returns
    -------
    matplotlib.figure.Figure
    """
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


def curve_panels(
    panels: dict, xlabel: str = "", ylabel: str = "", figsize=None, sharey: bool = True
) -> Figure:
    """Line plots side by side, the legend on the first.

    Parameters
    ----------
    panels : dict
        ``{title: {name: (x, y)}}``.
    xlabel, ylabel : str
    sharey : bool
        One y axis for all panels.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=figsize or (3.2 * len(panels), 3.2), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=sharey, squeeze=False)[0]
    for ax, (title, lines) in zip(axes, panels.items()):
        for name, (x, y) in lines.items():
            ax.plot(x, y, marker="o", ms=3, label=name)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize="small")
    return fig


def concept_samples(images, rows: dict, figsize=None) -> Figure:
    """A grid of sample images (top row) and, below, one row of mask overlays per entry of ``rows``.

    ``images``: ``(n, H, W, 3)`` or ``(n, 3, H, W)``, uint8 or floats in [0, 1];
    ``rows[name] = (masks, concept_names)`` or ``(masks, concept_names, colours)`` with boolean
    ``masks`` of shape ``(n, k, h, w)`` and optional RGB ``colours`` ``(k, 3)`` in [0, 255]
    (default: the tab20 palette). Each overlay shows the image in grey with every present concept
    painted in its colour, the names of the present concepts beneath.

    Parameters
    ----------
    images : array
        ``(n, H, W, 3)`` or ``(n, 3, H, W)``.
    rows : dict
        As above.

    Returns
    -------
    matplotlib.figure.Figure
    """

    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 3 and images.shape[-1] != 3:
        images = images.transpose(0, 2, 3, 1)
    images = images.astype(float) / 255.0 if images.dtype == np.uint8 else np.clip(images, 0, 1)
    n = len(images)
    fig = Figure(figsize=figsize or (1.3 * n, 1.6 * (1 + len(rows))), layout="constrained")
    axes = fig.subplots(1 + len(rows), n, squeeze=False)
    for j in range(n):
        axes[0, j].imshow(images[j], interpolation="nearest")
        for r, (name, row) in enumerate(rows.items(), start=1):
            masks, names = np.asarray(row[0], dtype=bool)[j], row[1]
            colours = (
                np.asarray(row[2], dtype=float) / 255.0
                if len(row) > 2
                else np.array([colormaps["tab20"](k % 20)[:3] for k in range(len(names))])
            )
            grey = 0.25 + 0.5 * images[j].mean(-1, keepdims=True) * np.ones(3)
            over = grey.copy()
            present = [k for k in range(len(names)) if masks[k].any()]
            for k in present:
                # Nearest-neighbour upsampling of the mask to the image size, for display only.
                ys = (np.arange(over.shape[0]) * masks.shape[1]) // over.shape[0]
                xs = (np.arange(over.shape[1]) * masks.shape[2]) // over.shape[1]
                m = masks[k][ys][:, xs]
                over[m] = 0.2 * grey[m] + 0.8 * colours[k]
            axes[r, j].imshow(over, interpolation="nearest")
            axes[r, j].set_xlabel("\n".join(names[k] for k in present[:4]), fontsize="x-small")
            if j == 0:
                axes[r, j].set_ylabel(name, fontsize="small")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


# --------------------------------------------------------------------------------------------
# Intertwiner groups and weight-space symmetries (Sections 3.1-3.2)
# --------------------------------------------------------------------------------------------
def log_bars(
    labels,
    groups: dict,
    ylabel: str = "",
    hline: float | None = None,
    floor: float = 1e-17,
    figsize=(7, 3.5),
) -> Figure:
    """Grouped bars on a log axis.

    Parameters
    ----------
    labels : sequence
        ``(n_labels,)``.
    groups : dict
        ``{name: values}``, each ``(n_labels,)`` (NaN: no bar).
    ylabel : str
    hline : float, optional
        A dashed reference level (e.g. a tolerance).
    floor : float
        The bottom of the axis; smaller values (exact zeros included) are drawn there.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    w = 0.8 / max(len(groups), 1)
    for k, (name, values) in enumerate(groups.items()):
        v = np.asarray(values, dtype=float)
        ax.bar(
            x - 0.4 + w * (k + 0.5),
            np.where(np.isnan(v), np.nan, np.maximum(v, floor)),
            w,
            bottom=floor / 10,
            label=name,
        )
    if hline is not None:
        ax.axhline(hline, color="k", ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor / 10)
    ax.set_xticks(x, [str(label) for label in labels], rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    return fig


def ray_images(points: dict, figsize=None) -> Figure:
    """Images of coordinate rays on the unit circle, with the rays R>=0 e_1, R>=0 e_2 as arrows.

    Parameters
    ----------
    points : dict
        ``{panel title: unit vectors}``, each ``(m, 2)``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    n = len(points)
    fig = Figure(figsize=figsize or (3.2 * n, 3.3), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    t = np.linspace(0, 2 * np.pi, 200)
    for ax, (name, p) in zip(axes, points.items()):
        p = np.asarray(p, dtype=float)
        ax.plot(np.cos(t), np.sin(t), color="0.8", lw=0.8)
        for e in ((1, 0), (0, 1)):
            ax.annotate("", xy=e, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="k"))
        ax.scatter(p[:, 0], p[:, 1], s=14, alpha=0.6, color="C3", zorder=3)
        ax.set_title(name, fontsize="medium")
        ax.set_aspect("equal")
        ax.set_xlim(-1.2, 1.2)
        ax.set_ylim(-1.2, 1.2)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def channel_scatter(
    panels: dict, xlabel: str = "", ylabel: str = "", c=None, figsize=None
) -> Figure:
    """Scatter plots side by side, e.g. two hidden channels before and after a weight-space
    transform.

    Parameters
    ----------
    panels : dict
        ``{title: (x, y)}``, each ``(n_points,)``.
    xlabel, ylabel : str
    c : array, optional
        ``(n_points,)`` colours of the points, the same in every panel.

    Returns
    -------
    matplotlib.figure.Figure
    """
    n = len(panels)
    fig = Figure(figsize=figsize or (3.6 * n, 3.4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (name, (x, y)) in zip(axes, panels.items()):
        ax.scatter(
            np.asarray(x), np.asarray(y), s=8, c=c, cmap="viridis" if c is not None else None
        )
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    return fig


__all__ += ["log_bars", "ray_images", "channel_scatter"]


# --------------------------------------------------------------------------------------------
# Network dissection under rotations (Section 6)
# --------------------------------------------------------------------------------------------
def rotation_curves(
    alphas, panels: dict, xlabel: str = r"rotation $\alpha$ ($Q^\alpha$)", figsize=None
) -> Figure:
    """Side-by-side panels of curves against ``alphas`` ``(n_alphas,)`` with shaded ± std.

    A name keeps its colour across panels and the legend is drawn once, in the first panel.

    Parameters
    ----------
    alphas : sequence
        ``(n_alphas,)``.
    panels : dict
        ``{ylabel: {name: (mean, std)}}``, each ``(n_alphas,)``.
    xlabel : str

    Returns
    -------
    matplotlib.figure.Figure
    """

    fig = Figure(figsize=figsize or (4.2 * len(panels), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    names = list(dict.fromkeys(n for curves in panels.values() for n in curves))
    colours = {n: colormaps["tab10"](k % 10) for k, n in enumerate(names)}
    x = np.asarray(alphas, dtype=float)
    for ax, (ylabel, curves) in zip(axes, panels.items()):
        for name, (mean, std) in curves.items():
            mean, std = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
            ax.plot(x, mean, marker="o", ms=3, color=colours[name], label=name)
            ax.fill_between(x, mean - std, mean + std, color=colours[name], alpha=0.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize="small")
    return fig


__all__ += ["rotation_curves"]


# --------------------------------------------------------------------------------------------
# Similarity measures (Section 5)
# --------------------------------------------------------------------------------------------
def labeled_scatter(
    x, y, labels, xlabel: str = "", ylabel: str = "", xerr=None, yerr=None, figsize=(4.5, 3.6)
) -> Figure:
    """A scatter plot with each point annotated (e.g. with a layer name).

    Parameters
    ----------
    x, y : sequence
        ``(n_points,)``.
    labels : sequence
        ``(n_points,)`` annotations.
    xlabel, ylabel : str
    xerr, yerr : sequence, optional
        ``(n_points,)`` error bars.

    Returns
    -------
    matplotlib.figure.Figure
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", ms=5, capsize=2)
    for xi, yi, label in zip(x, y, labels):
        ax.annotate(
            str(label), (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize="small"
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


__all__ += ["labeled_scatter"]
