"""Key numbers of each chapter, recorded machine-readably for "Results at a glance" and for sweeps.

A chapter records every number it compares with the paper::

    rec = Recorder("stitching", scale, seed)
    rec.add("penalty_grelu_act3", ours=12.3, paper=9.0, unit="%")
    rec.save()

``save`` writes ``<results dir>/<scale>/<chapter>[-seed<k>].json`` atomically. The results dir is
``$SYMMETRIES_RESULTS`` if set (sweeps set it per run), else the ``results`` folder of the cache.

:func:`compare_results` lists every recorded number that differs between two results folders
(``python -m lib.results compare A B``), e.g. before and after a change that must not change any.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import os
import re
import sys
from pathlib import Path

from .cache import checked_json, read_checked_json
from .config import atomic_path, cache_dir, check_choice
from .settings import SCALES

__all__ = [
    "Recorder",
    "results_dir",
    "read_results_file",
    "load_results",
    "table",
    "markdown_table",
    "VALUE_FIELDS",
    "compare_results",
    "main",
]

# The fields of a results file written before it carried its own checksum ("sha256").
_LEGACY_FIELDS = ("chapter", "scale", "seed", "rows")


def results_dir() -> Path:
    """Where chapters write their results.

    Returns
    -------
    pathlib.Path
        ``$SYMMETRIES_RESULTS`` if set (created), else the cache's ``results`` folder; one that
        cannot be created is an ``OSError`` naming it and what to do.
    """
    env = os.environ.get("SYMMETRIES_RESULTS")
    advice = "set SYMMETRIES_RESULTS to a writable folder"
    return cache_dir(root=env, advice=advice) if env else cache_dir("results", advice=advice)


def _plain(x):
    # numpy / torch scalars become Python floats so that the JSON stays portable.
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class Recorder:
    """Collects ``(key, ours, paper)`` rows for one chapter run and writes them as JSON.

    Parameters
    ----------
    chapter : str
        The chapter's name (``"stitching"``), the stem of its results file.
    scale : str
        A key of :data:`lib.settings.SCALES`.
    seed : int
        The chapter's replicate; files of seeds other than 0 are called ``<chapter>-seed<k>.json``.
    """

    def __init__(self, chapter: str, scale: str, seed: int = 0):
        check_choice("scale", scale, SCALES)
        self.chapter, self.scale, self.seed = chapter, scale, int(seed)
        self.rows: list[dict] = []

    def add(
        self, key: str, ours, paper=None, unit: str = "", note: str = "", std=None, paper_std=None
    ):
        """Record one number; a key recorded again keeps the last value.

        Parameters
        ----------
        key : str
            Unique within the chapter, e.g. ``"penalty_grelu_act3"``.
        ours : float or int
            Our number; NaN and infinities are stored as ``None``.
        paper : float, optional
            The paper's number in the same unit.
        unit : str
            ``"%"`` (percent), ``"pp"`` (percentage points), ``""`` (a fraction or a count), ...
        note : str
            What the reader needs to compare (seeds, images, departures).
        std, paper_std : float, optional
            Spreads over seeds or pairs.

        Returns
        -------
        object
            ``ours``, unchanged (so a chapter can record and use a number in one expression).
        """
        self.rows = [r for r in self.rows if r["key"] != key]
        self.rows.append(
            dict(
                key=key,
                ours=_plain(ours),
                std=_plain(std),
                paper=_plain(paper),
                paper_std=_plain(paper_std),
                unit=unit,
                note=note,
            )
        )
        return ours

    def path(self) -> Path:
        """The file :meth:`save` writes: ``<results dir>/<scale>/<chapter>[-seed<k>].json``."""
        suffix = f"-seed{self.seed}" if self.seed else ""
        return results_dir() / self.scale / f"{self.chapter}{suffix}.json"

    def save(self) -> Path:
        """Write the rows atomically, with their checksum (:func:`lib.cache.checked_json`), and
        return :meth:`path`."""
        path = self.path()
        payload = dict(chapter=self.chapter, scale=self.scale, seed=self.seed, rows=self.rows)
        with atomic_path(path, advice="set SYMMETRIES_RESULTS to a writable folder") as tmp:
            tmp.write_text(checked_json(payload))
        return path


def read_results_file(path: str | os.PathLike) -> dict:
    """The verified content of one results file written by :meth:`Recorder.save`.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    dict
        ``chapter``, ``scale``, ``seed`` and ``rows`` (dicts with at least ``key`` and ``ours``).

    Raises
    ------
    ValueError
        Naming the file and the chapter to re-run, if it is damaged: not JSON, not matching its
        checksum, or not of this layout. A file written before results files carried a checksum is
        checked for its layout only.
    """
    path = Path(path)
    try:
        payload, _ = read_checked_json(path, _LEGACY_FIELDS)
        rows = payload.get("rows")
        if not (
            isinstance(payload.get("chapter"), str)
            and isinstance(payload.get("seed"), int)
            and isinstance(rows, list)
        ):
            raise ValueError("it lacks a 'chapter', a 'seed' or a list of 'rows'")
        for i, r in enumerate(rows):
            if not (isinstance(r, dict) and isinstance(r.get("key"), str) and "ours" in r):
                raise ValueError(f"row {i} is not a recorded number (a 'key' and 'ours')")
    except ValueError as exc:
        chapter = path.stem.split("-seed")[0]
        raise ValueError(
            f"the results file {path} is damaged ({type(exc).__name__}: {exc}); "
            f"delete it and re-run the chapter that wrote it ({chapter})"
        ) from exc
    return payload


def load_results(scale: str, directory: str | os.PathLike | None = None) -> list[dict]:
    """Every recorded row at one scale.

    Parameters
    ----------
    scale : str
        A key of :data:`lib.settings.SCALES`.
    directory : path-like, optional
        The folder of results files (default: ``results_dir() / scale``).

    Returns
    -------
    list of dict
        The rows of :meth:`Recorder.add`, each with its ``chapter`` and ``seed``, by file name.

    Raises
    ------
    ValueError
        Naming a damaged results file and the chapter to re-run.
    """
    check_choice("scale", scale, SCALES)
    folder = Path(directory) if directory else results_dir() / scale
    rows = []
    for f in sorted(folder.glob("*.json")):
        payload = read_results_file(f)
        rows.extend(
            dict(chapter=payload["chapter"], seed=payload["seed"], **r) for r in payload["rows"]
        )
    return rows


def _fmt(value, std=None, unit="") -> str:
    if value is None:
        return ""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    if std is not None:
        text += f" ± {std:.2g}" if isinstance(std, float) else f" ± {std}"
    return text + (f" {unit}" if unit and unit != "%" else unit)


# A cell "is a number" when it starts like one: "12.3", "-0.5 ± 0.1", "87.1 % (CIFAR-10)",
# "1.0e-12", "nan". Such columns are right-aligned so that digits line up.
_NUMBER = re.compile(r"^[-+\u2212]?(\d|\.\d|nan\b|inf\b)", re.IGNORECASE)
_BLANKS = ("", "-", "\u2013", "\u2014")


def _cell(value) -> str:
    # A pipe inside a cell would end it; Markdown escapes it with a backslash.
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header, rows, align: str | None = None) -> str:
    """A Markdown (pipe) table whose numeric columns are right-aligned.

    Every table the book shows goes through here; the book renders chapter outputs as MyST
    (``nb_render_markdown_format``), so the result becomes an HTML ``<table>`` and keeps inline
    math.

    Parameters
    ----------
    header : sequence
        The column titles.
    rows : iterable of sequences
        One sequence of cells per row, as long as ``header``; cells are formatted with ``str``.
    align : str, optional
        One letter per column, ``"l"``, ``"c"`` or ``"r"``. By default a column is right-aligned
        when every non-empty cell in it starts with a number, and left-aligned otherwise.

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
        filled = [[c for c in col if c not in _BLANKS] for col in zip(*body)] or [
            [] for _ in header
        ]
        align = "".join(
            "r" if col and all(_NUMBER.match(c) for c in col) else "l" for col in filled
        )
    if len(align) != len(header) or set(align) - set("lcr"):
        raise ValueError(
            f"align must have one of 'l', 'c', 'r' per column ({len(header)}), got {align!r}"
        )
    rule = {"l": "---", "c": ":---:", "r": "---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


# The fields of a row of load_results that markdown_table shows.
_ROW_FIELDS = ("chapter", "seed", "key", "ours", "std", "paper", "paper_std", "unit", "note")


def markdown_table(rows: list[dict], order: list[str] | None = None) -> str:
    """The rows of :func:`load_results` as a Markdown table, ours beside the paper's (via
    :func:`table`).

    Parameters
    ----------
    rows : list of dict
        From :func:`load_results`.
    order : list of str, optional
        Chapter names in the order to show them (e.g. the book's table of contents); others follow
        alphabetically.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        For a row that lacks a field (``"ours"``, ...), naming the row, its key and its file.
    """
    for i, r in enumerate(rows):
        missing = [f for f in _ROW_FIELDS if not isinstance(r, dict) or f not in r]
        if missing:
            r = r if isinstance(r, dict) else {}
            stem, seed = r.get("chapter", "?"), r.get("seed")
            file = f"{stem}-seed{seed}.json" if seed else f"{stem}.json"
            raise ValueError(
                f"results row {i} (key {r.get('key', '?')!r}) lacks the fields "
                f"{missing}: its results file {file} (in the results folder of its "
                f"scale) is damaged or was not written by lib.results.Recorder; delete "
                f"it and re-run its chapter"
            )
    order = order or []

    def rank(r):
        position = order.index(r["chapter"]) if r["chapter"] in order else len(order)
        return position, r["chapter"], r["seed"]

    return table(
        ["chapter", "seed", "quantity", "ours", "paper", "note"],
        [
            [
                r["chapter"],
                r["seed"],
                f"`{r['key']}`",
                _fmt(r["ours"], r["std"], r["unit"]),
                _fmt(r["paper"], r["paper_std"], r["unit"]),
                r["note"],
            ]
            for r in sorted(rows, key=rank)
        ],
        align="lrlrrl",
    )


#: The fields of a recorded row that :func:`compare_results` compares (notes hold wall times).
VALUE_FIELDS = ("ours", "std", "paper", "paper_std", "unit", "verdict", "n")


def _recorded(folder: Path) -> dict:
    # {(results file relative to folder, key): row} of every JSON results file under folder.
    out = {}
    for f in sorted(folder.rglob("*.json")):
        for r in read_results_file(f)["rows"]:
            out[str(f.relative_to(folder)), r["key"]] = r
    return out


def _same(a, b, rtol: float, atol: float) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if numbers:
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    return a == b


def compare_results(
    dir_a, dir_b, rtol: float = 1e-9, atol: float = 0.0, ignore=("*_seconds",), fields=VALUE_FIELDS
) -> list[dict]:
    """Every recorded value that differs between two results folders, and every key recorded in one
    only.

    Parameters
    ----------
    dir_a, dir_b : path-like
        Results folders: ``$SYMMETRIES_RESULTS`` of two runs (holding ``<scale>/<chapter>.json``),
        or two scale folders. Every ``*.json`` below them is read; rows are matched by the file's
        path relative to the folder and the row's ``key``.
    rtol, atol : float
        Numbers ``a`` and ``b`` agree when ``|a - b| <= max(rtol * max(|a|, |b|), atol)``
        (``math.isclose``); other values (``None``, units) must be equal.
    ignore : sequence of str
        Glob patterns of keys not compared (default: wall-clock times, ``*_seconds``).
    fields : sequence of str
        The fields of a row compared (default :data:`VALUE_FIELDS`; notes are not compared).

    Returns
    -------
    list of dict
        One per difference, sorted by file and key: ``file``, ``key``, ``field`` (``None`` for a key
        recorded in one folder only), ``a`` and ``b`` (the values; ``None`` where absent). Empty
        when the folders agree.

    Raises
    ------
    FileNotFoundError
        If a folder does not exist.
    ValueError
        If a results file is damaged.
    """
    folders = [Path(d) for d in (dir_a, dir_b)]
    for d in folders:
        if not d.is_dir():
            raise FileNotFoundError(f"results folder {d} does not exist")
    a, b = (_recorded(d) for d in folders)
    out = []
    for file, key in sorted(set(a) | set(b)):
        if any(fnmatch.fnmatchcase(key, p) for p in ignore):
            continue
        ra, rb = a.get((file, key)), b.get((file, key))
        if ra is None or rb is None:
            out.append(
                dict(
                    file=file, key=key, field=None, a=ra and ra.get("ours"), b=rb and rb.get("ours")
                )
            )
            continue
        out += [
            dict(file=file, key=key, field=f, a=ra.get(f), b=rb.get(f))
            for f in fields
            if not _same(ra.get(f), rb.get(f), rtol, atol)
        ]
    return out


def main(argv=None) -> int:
    """The command line ``python -m lib.results compare A B [--rtol R] [--atol T] [--ignore GLOB
    ...]``.

    Prints one line per difference of :func:`compare_results` and a summary.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when the folders agree, 1 when they differ.
    """
    parser = argparse.ArgumentParser(
        prog="python -m lib.results", description="Compare recorded results."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "compare", help="list every recorded value that differs between two results folders"
    )
    c.add_argument(
        "a", help="a results folder ($SYMMETRIES_RESULTS of one run, or one of its scale folders)"
    )
    c.add_argument("b", help="the results folder to compare it with")
    c.add_argument(
        "--rtol", type=float, default=1e-9, help="relative tolerance of numbers (default 1e-9)"
    )
    c.add_argument(
        "--atol", type=float, default=0.0, help="absolute tolerance of numbers (default 0)"
    )
    c.add_argument(
        "--ignore",
        nargs="*",
        default=["*_seconds"],
        help="glob patterns of keys to skip (default: *_seconds)",
    )
    args = parser.parse_args(argv)
    diffs = compare_results(args.a, args.b, args.rtol, args.atol, tuple(args.ignore))
    for d in diffs:
        what = "recorded in one folder only" if d["field"] is None else d["field"]
        print(f"{d['file']}  {d['key']}  {what}: {d['a']!r} != {d['b']!r}")
    n = len({(d["file"], d["key"]) for d in diffs})
    print(
        f"{n} key(s) differ between {args.a} and {args.b}"
        if diffs
        else f"no differences between {args.a} and "
        f"{args.b} (rtol {args.rtol:g}, atol {args.atol:g}, "
        f"ignoring {', '.join(args.ignore) or 'nothing'})"
    )
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
