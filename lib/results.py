"""Key numbers of each chapter, recorded machine-readably for "Results at a glance" and for sweeps.

A chapter records every number it compares with the paper::

    rec = Recorder("stitching", scale, seed)
    rec.add("penalty_grelu_act3", ours=12.3, paper=9.0, unit="%")
    rec.save()

``save`` writes ``<results dir>/<scale>/<chapter>[-seed<k>].json`` atomically. The results dir is
``$SYMMETRIES_RESULTS`` if set (sweeps set it per run), else the ``results`` folder of the cache.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .config import atomic_path, cache_dir, check_choice, SCALES

__all__ = ["Recorder", "results_dir", "load_results", "table", "markdown_table"]


def results_dir() -> Path:
    """Where chapters write their results (``$SYMMETRIES_RESULTS`` or the cache's ``results``)."""
    env = os.environ.get("SYMMETRIES_RESULTS")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env)
    return cache_dir("results")


def _plain(x):
    # numpy / torch scalars become Python floats so that the JSON stays portable.
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class Recorder:
    """Collects ``(key, ours, paper)`` rows for one chapter run and writes them as JSON."""

    def __init__(self, chapter: str, scale: str, seed: int = 0):
        check_choice("scale", scale, SCALES)
        self.chapter, self.scale, self.seed = chapter, scale, int(seed)
        self.rows: list[dict] = []

    def add(self, key: str, ours, paper=None, unit: str = "", note: str = "", std=None, paper_std=None):
        """Record one number (``ours``), optionally its spread (``std``) and the paper's value."""
        self.rows = [r for r in self.rows if r["key"] != key]
        self.rows.append(dict(key=key, ours=_plain(ours), std=_plain(std), paper=_plain(paper),
                              paper_std=_plain(paper_std), unit=unit, note=note))
        return ours

    def path(self) -> Path:
        suffix = f"-seed{self.seed}" if self.seed else ""
        return results_dir() / self.scale / f"{self.chapter}{suffix}.json"

    def save(self) -> Path:
        path = self.path()
        payload = dict(chapter=self.chapter, scale=self.scale, seed=self.seed, rows=self.rows)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(payload, indent=1))
        return path


def load_results(scale: str, directory: str | os.PathLike | None = None) -> list[dict]:
    """Every recorded row at ``scale``, each with its ``chapter`` and ``seed``, sorted by chapter."""
    check_choice("scale", scale, SCALES)
    folder = Path(directory) if directory else results_dir() / scale
    rows = []
    for f in sorted(folder.glob("*.json")):
        try:
            payload = json.loads(f.read_text())
            rows.extend(dict(chapter=payload["chapter"], seed=payload["seed"], **r) for r in payload["rows"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"the results file {f} is damaged ({type(exc).__name__}: {exc}); delete it and "
                             f"re-run the chapter that wrote it ({f.stem.split('-seed')[0]})") from exc
    return rows


def _fmt(value, std=None, unit="") -> str:
    if value is None:
        return ""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    if std is not None:
        text += f" ± {std:.2g}" if isinstance(std, float) else f" ± {std}"
    return text + (f" {unit}" if unit and unit != "%" else unit)


# A cell "is a number" when it starts like one: "12.3", "-0.5 ± 0.1", "87.1 % (CIFAR-10)", "1.0e-12",
# "nan". Such columns are right-aligned so that digits line up.
_NUMBER = re.compile(r"^[-+\u2212]?(\d|\.\d|nan\b|inf\b)", re.IGNORECASE)
_BLANKS = ("", "-", "\u2013", "\u2014")


def _cell(value) -> str:
    # A pipe inside a cell would end it; Markdown escapes it with a backslash.
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header, rows, align: str | None = None) -> str:
    """A Markdown (pipe) table whose numeric columns are right-aligned.

    Every table the book shows goes through here; the book renders chapter outputs as MyST
    (``nb_render_markdown_format``), so the result becomes an HTML ``<table>`` and keeps inline math.

    Parameters
    ----------
    header : sequence
        The column titles.
    rows : iterable of sequences
        One sequence of cells per row, as long as ``header``; cells are formatted with ``str``.
    align : str, optional
        One letter per column, ``"l"``, ``"c"`` or ``"r"``. By default a column is right-aligned when
        every non-empty cell in it starts with a number, and left-aligned otherwise.

    Returns
    -------
    str
        The table, one line per row, to pass to ``IPython.display.Markdown``.

    Raises
    ------
    ValueError
        If a row's length differs from the header's, or ``align`` has the wrong length or letters.
    """
    header = [_cell(h) for h in header]
    body = [[_cell(c) for c in row] for row in rows]
    for i, row in enumerate(body):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells but header has {len(header)}: {row!r}")
    if align is None:
        # Empty cells and dashes ("no value") do not decide a column's alignment.
        filled = [[c for c in col if c not in _BLANKS] for col in zip(*body)] or [[] for _ in header]
        align = "".join("r" if col and all(_NUMBER.match(c) for c in col) else "l" for col in filled)
    if len(align) != len(header) or set(align) - set("lcr"):
        raise ValueError(f"align must have one of 'l', 'c', 'r' per column ({len(header)}), got {align!r}")
    rule = {"l": "---", "c": ":---:", "r": "---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def markdown_table(rows: list[dict], order: list[str] | None = None) -> str:
    """The rows of :func:`load_results` as a Markdown table, ours beside the paper's.

    Chapters appear in ``order`` (e.g. the book's table of contents), then alphabetically.
    """
    order = order or []
    rank = lambda r: (order.index(r["chapter"]) if r["chapter"] in order else len(order), r["chapter"], r["seed"])
    return table(["chapter", "seed", "quantity", "ours", "paper", "note"],
                 [[r["chapter"], r["seed"], f"`{r['key']}`", _fmt(r["ours"], r["std"], r["unit"]),
                   _fmt(r["paper"], r["paper_std"], r["unit"]), r["note"]] for r in sorted(rows, key=rank)],
                 align="lrlrrl")
