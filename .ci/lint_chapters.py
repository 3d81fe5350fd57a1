"""Lint and format the code cells of the book's chapters with ruff.

Each ```` ```{code-cell} ```` block of ``book/*.md`` is checked on its own, without its option
header (``:tags:`` lines or a ``---`` YAML block), with IPython magics (``%...``, ``!...``) turned
into comments. Names flow from cell to cell, so undefined names (F821), unused imports (F401) and
imports below the top of a cell (E402) are not findings here; everything else of E, F and W at 100
columns is. ``ruff format`` must leave each cell unchanged; ``--fix`` writes the formatted cells
back.

Usage: ``python .ci/lint_chapters.py [--fix] [chapter.md ...]`` (exit status 1 on any finding).
"""

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUFF = [sys.executable, "-m", "ruff"]
CELL = re.compile(r"(```\{code-cell\}[^\n]*\n)(.*?)(```)", flags=re.S)
MAGIC = "# <magic> "
#: The layout test's cap on a cell's non-blank code lines (tests/test_layout.py).
MAX_LINES = 25
COMMON = ["--isolated", "--line-length", "100", "--target-version", "py311"]
# E741 too: `l` is the paper's symbol for a layer (the stitching layer $l$ of Section 4).
CHECK = ["--select", "E,F,W", "--ignore", "F821,F401,E402,E741"]


def split_cell(body: str) -> tuple[str, str]:
    """A cell's option header (``:key:`` lines or a ``---`` YAML block) and its code."""
    lines = body.splitlines(keepends=True)
    head = 0
    if lines and lines[0].strip() == "---":
        head = lines.index("---\n", 1) + 1 if "---\n" in lines[1:] else len(lines)
    else:
        while head < len(lines) and lines[head].startswith(":"):
            head += 1
    return "".join(lines[:head]), "".join(lines[head:])


def to_python(code: str) -> str:
    """The cell's code with IPython magics and shell escapes turned into marked comments."""
    return re.sub(r"^([%!])", MAGIC + r"\1", code, flags=re.M)


def from_python(code: str) -> str:
    """The inverse of :func:`to_python`."""
    return code.replace(MAGIC, "")


def ruff_format(code: str) -> str:
    """``code`` as ``ruff format`` writes it (a ``ValueError`` if ruff cannot parse it)."""
    out = subprocess.run(
        [*RUFF, "format", *COMMON, "-"], input=code, capture_output=True, text=True
    )
    if out.returncode:
        raise ValueError(out.stderr.strip())
    return out.stdout


def cell_lines(body: str) -> int:
    """A cell's lines as the layout test counts them: non-blank, not a ``:key:`` option."""
    return sum(1 for line in body.splitlines() if line.strip() and not line.startswith(":"))


def lint_chapter(path: Path, *, fix: bool, format_check: bool, ignore: str = "") -> list[str]:
    """Findings for one chapter (``path:line: message``).

    With ``fix``, cells are formatted first, except those that formatting would take over
    :data:`MAX_LINES` code lines (they must be split by hand); with ``format_check``, a cell that
    ``ruff format`` would change is a finding.
    """
    text = path.read_text(encoding="utf-8")
    findings, pieces, last = [], [], 0
    for m in CELL.finditer(text):
        head, code = split_cell(m.group(2))
        line0 = text.count("\n", 0, m.start(2)) + head.count("\n") + 1
        try:
            formatted = from_python(ruff_format(to_python(code)))
        except ValueError as exc:
            findings.append(f"{path}:{line0}: ruff cannot parse this cell: {exc}")
            continue
        if formatted != code:
            if fix and cell_lines(head + formatted) <= MAX_LINES:
                pieces.append(text[last : m.start(2)] + head + formatted)
                last = m.end(2)
                code = formatted
            elif format_check:
                findings.append(f"{path}:{line0}: cell not formatted (run {__file__} --fix)")
        findings += check_cell(path, line0, code, ignore)
    if fix and pieces:
        path.write_text("".join(pieces) + text[last:], encoding="utf-8")
    return findings


def check_cell(path: Path, line0: int, code: str, ignore: str = "") -> list[str]:
    """``ruff check`` findings of one cell whose code starts at line ``line0`` of ``path``."""
    with tempfile.TemporaryDirectory() as tmp:
        cell = Path(tmp) / "cell.py"
        cell.write_text(to_python(code), encoding="utf-8")
        out = subprocess.run(
            [
                *RUFF,
                "check",
                *COMMON,
                *CHECK,
                *(["--extend-ignore", ignore] if ignore else []),
                "--output-format",
                "concise",
                str(cell),
            ],
            capture_output=True,
            text=True,
        )
    findings = []
    for line in out.stdout.splitlines():
        m = re.match(r".*cell\.py:(\d+):(\d+): (.*)", line)
        if m:
            findings.append(f"{path}:{line0 + int(m.group(1)) - 1}:{m.group(2)}: {m.group(3)}")
    return findings


def main(argv=None) -> int:
    """Lint (and with ``--fix`` format) the chapters; 1 if anything was found, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fix", action="store_true", help="write the formatted cells back")
    parser.add_argument("--format", action="store_true", help="also require formatted cells")
    parser.add_argument("--ignore", default="", help="more rule codes to leave out, e.g. E501")
    parser.add_argument("chapters", nargs="*", type=Path)
    args = parser.parse_args(argv)
    chapters = args.chapters or sorted((ROOT / "book").glob("*.md"))
    findings = [
        f
        for c in chapters
        for f in lint_chapter(c, fix=args.fix, format_check=args.format, ignore=args.ignore)
    ]
    print("\n".join(findings) or f"{len(chapters)} chapters: all checks passed")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
