"""The project's own device check: ``python -m lib.devicecheck``.

On a machine with CUDA it runs the unit tests with CUDA as the default device, then every chapter
at ``smoke`` scale as a plain Python script in ``book/`` (a machine lent for a short GPU check has
PyTorch, NumPy, SciPy, Matplotlib and pytest, but no Jupyter stack and no IPython), then times the
zoo's training recipes on full-width models, and prints one summary table. On a machine without
CUDA it says so in one line and exits 0, unless ``--device cpu`` asks for the same run on the CPU
(how the check itself is tested).

Chapters are Jupytext MyST files; :func:`chapter_script` turns one into a script: the code cells in
order, cell options and ``%matplotlib`` lines dropped, other IPython magics refused, and a stand-in
for ``IPython.display`` when IPython is missing (a displayed table or figure is then simply not
shown).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .data import load_cifar10
from .models import build
from .train import recipe, train

__all__ = ["chapter_files", "chapter_script", "run_chapter", "recipe_timings", "main"]

ROOT = Path(__file__).resolve().parent.parent
_CELL = re.compile(r"^```\{code-cell\}[^\n]*\n(.*?)^```\s*$", re.S | re.M)

# Executed before a chapter when IPython is missing: ``Markdown`` and ``display`` become no-ops.
_IPYTHON_STANDIN = """
import sys, types
try:
    import IPython.display  # noqa: F401
except ImportError:
    _d = types.ModuleType("IPython.display")
    class Markdown(str):
        pass
    _d.Markdown, _d.HTML, _d.display = Markdown, Markdown, (lambda *a, **k: None)
    _i = types.ModuleType("IPython")
    _i.display = _d
    sys.modules["IPython"], sys.modules["IPython.display"] = _i, _d
import matplotlib
matplotlib.use("Agg")
"""


def _split_cell(cell: str) -> tuple[str, str]:
    """A code cell's option header (``:tags: [...]`` lines or a ``---`` YAML block), its source."""
    lines = cell.splitlines()
    head = 0
    if lines and lines[0].strip() == "---":
        head = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---") + 1
    while head < len(lines) and re.match(r"^:\w+:", lines[head]):
        head += 1
    return "\n".join(lines[:head]), "\n".join(lines[head:])


def chapter_files(book_dir) -> list[Path]:
    """The executable chapters of a book folder: its ``*.md`` files that are Jupytext notebooks.

    Reference pages (the API reference, the bibliography) are plain MyST pages without a
    ``kernelspec`` in their front matter; they have no cells to run and no parameters.

    Parameters
    ----------
    book_dir : str or os.PathLike
        The folder of the chapters (``book/``).

    Returns
    -------
    list of pathlib.Path
        Sorted by name.
    """
    files = sorted(Path(book_dir).glob("*.md"))
    return [f for f in files if "kernelspec:" in f.read_text(encoding="utf-8").split("\n---", 1)[0]]


def chapter_script(chapter: str | os.PathLike, parameters: dict | None = None) -> str:
    """The code of a MyST chapter as one Python script.

    Parameters
    ----------
    chapter : path-like
        A ``book/*.md`` file.
    parameters : dict, optional
        Values assigned right after the cell tagged ``parameters``, as papermill injects them (e.g.
        ``{"scale": "smoke"}``).

    Returns
    -------
    str
        The script: an IPython stand-in, then every code cell in order, each preceded by a comment
        with its number.
    """
    text = Path(chapter).read_text()
    cells = _CELL.findall(text)
    if not cells:
        raise ValueError(f"{chapter} has no code cells (expected MyST ```{{code-cell}} blocks)")
    parts = [_IPYTHON_STANDIN]
    injected = False
    for i, cell in enumerate(cells):
        header, body = _split_cell(cell)
        # The backend magic has no meaning in a script (the stand-in selects Agg); others are
        # refused.
        body = re.sub(r"^%matplotlib.*$", "", body, flags=re.M)
        if re.search(r"^\s*[%!]", body, re.M):
            raise ValueError(
                f"{chapter}: cell {i} uses an IPython magic or shell escape, "
                "which a script cannot run"
            )
        parts.append(f"# -- cell {i}\n{body}")
        if not injected and re.search(r"tags:.*\bparameters\b", header):
            parts.append(
                "# -- injected parameters\n"
                + "\n".join(f"{k} = {v!r}" for k, v in (parameters or {}).items())
            )
            injected = True
    if parameters and not injected:
        raise ValueError(
            f"{chapter} has no cell tagged 'parameters' to inject {sorted(parameters)} after"
        )
    return "\n\n".join(parts) + "\n"


def run_chapter(
    chapter: str | os.PathLike,
    parameters: dict | None = None,
    env: dict | None = None,
    timeout: float = 900,
) -> dict:
    """Run :func:`chapter_script` of ``chapter`` in a subprocess in ``book/``.

    Parameters
    ----------
    chapter, parameters
        As for :func:`chapter_script`.
    env : dict, optional
        The subprocess's environment (default: this one's).
    timeout : float
        Seconds.

    Returns
    -------
    dict
        ``chapter``, ``ok`` (bool), ``seconds`` (wall time) and ``error`` (the last lines of stderr,
        or ``""``).
    """
    script = chapter_script(chapter, parameters)
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(script)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, f.name],
            cwd=Path(chapter).resolve().parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        ok, err = proc.returncode == 0, "\n".join(proc.stderr.strip().splitlines()[-8:])
    except subprocess.TimeoutExpired:
        ok, err = False, f"timed out after {timeout} s"
    finally:
        os.unlink(f.name)
    return dict(
        chapter=Path(chapter).stem, ok=ok, seconds=time.perf_counter() - t0, error="" if ok else err
    )


def recipe_timings(device, epochs: int = 1, n_train: int | None = None) -> list[dict]:
    """Train the full-width Myrtle CNN and ResNet20 with each recipe, timed.

    Parameters
    ----------
    device : str or torch.device
    epochs : int
    n_train : int, optional
        Training images (default: all).

    Returns
    -------
    list of dict
        ``arch``, ``recipe``, ``epochs``, ``seconds``, ``images_per_second`` and ``test_acc`` (a
        fraction), one per architecture and recipe.
    """
    data = load_cifar10()
    rows = []
    for arch in (dict(arch="myrtle_cnn", width=1.0), dict(arch="resnet20", width=1.0)):
        for name in ("fast", "paper"):
            r = recipe(name, epochs=epochs, n_train=n_train)
            model = build(arch, seed=0)
            t0 = time.perf_counter()
            hist = train(model, data, r, seed=0, device=device, progress=False)
            seconds = time.perf_counter() - t0
            rows.append(
                dict(
                    arch=arch["arch"],
                    recipe=name,
                    epochs=epochs,
                    seconds=seconds,
                    images_per_second=epochs * (r.n_train or len(data.x_train)) / seconds,
                    test_acc=hist[-1]["test_acc"],
                )
            )
    return rows


def _parser() -> argparse.ArgumentParser:
    """The argument parser of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="python -m lib.devicecheck", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="device to check (cpu: the same run on the CPU, to test the check itself)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=("tests", "chapters", "timings"),
        help="parts to leave out",
    )
    parser.add_argument(
        "--chapters", nargs="*", default=None, help="chapter files (default: book/*.md)"
    )
    return parser


def _unit_tests(device: str, env: dict, summary: list) -> int:
    """Run the unit tests but the browser test on ``device``; a line to ``summary``; 1 if failed."""
    t0 = time.perf_counter()
    flags = ["-q", "-p", "no:nbval", "-p", "no:cacheprovider"]
    browser = str(ROOT / "tests" / "test_browser.py")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *flags, str(ROOT / "tests"), "--ignore", browser],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]
    summary.append(f"unit tests on {device}: {tail} ({time.perf_counter() - t0:.0f} s)")
    if proc.returncode:
        print("\n".join(proc.stdout.splitlines()[-40:]))
    return int(proc.returncode != 0)


def _chapters(chapters: list, device: str, env: dict, summary: list) -> int:
    """Run ``chapters`` at smoke on ``device``; a line each to ``summary``; the number failed."""
    failed = 0
    for ch in chapters:
        res = run_chapter(ch, {"scale": "smoke"}, env)
        summary.append(
            f"chapter {res['chapter']} at smoke on {device}: "
            f"{'ok' if res['ok'] else 'FAILED'} ({res['seconds']:.0f} s)"
        )
        if not res["ok"]:
            failed += 1
            summary.append("    " + res["error"].replace("\n", "\n    "))
        print(summary[-1], flush=True)
    return failed


def main(argv=None) -> int:
    """The command line ``python -m lib.devicecheck [--device cuda|cpu] [--skip ...] [--chapters]``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 when every part passed (or there is no CUDA to check), else 1.
    """
    args = _parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "devicecheck: no CUDA device on this machine; nothing to check "
            "(use --device cpu to run it on the CPU)"
        )
        return 0
    env = dict(os.environ, SYMMETRIES_DEVICE=args.device, SYMMETRIES_SCALE="smoke")
    summary, failed = [], 0
    if "tests" not in args.skip:
        failed += _unit_tests(args.device, env, summary)
    if "chapters" not in args.skip:
        chapters = args.chapters or [str(p) for p in chapter_files(ROOT / "book")]
        failed += _chapters(chapters, args.device, env, summary)
    if "timings" not in args.skip:
        for row in recipe_timings(torch.device(args.device)):
            summary.append(json.dumps(row))
    print("\n".join(summary))
    print(f"devicecheck: {'all passed' if not failed else f'{failed} part(s) FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
