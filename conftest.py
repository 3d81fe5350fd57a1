"""Collect every book chapter as an nbval notebook executed at ``smoke`` scale.

Each ``book/*.md`` (a Jupytext MyST notebook) is converted to a notebook in memory, and its
parameters are injected exactly as papermill injects them (a cell after the ``parameters`` cell);
nbval then runs it cell by cell in ``book/``, as the book build does. So ``pytest`` alone checks that
the whole book runs and that every claim a chapter asserts still holds.
"""
import os
from pathlib import Path

import jupytext
import pytest
from nbval import plugin
from papermill.parameterize import parameterize_notebook

ROOT = Path(__file__).parent
BOOK = ROOT / "book"
SMOKE = {"scale": "smoke"}

# Tests never read or write the user's own caches (trained models, results): unless the caller
# chose a cache, they use one inside the checkout, which chapter kernels inherit.
os.environ.setdefault("SYMMETRIES_CACHE", str(ROOT / ".cache" / "tests"))
# Chapter kernels run in book/, so a relative data path given on the command line must be made absolute.
for _var in ("SYMMETRIES_DATA", "SYMMETRIES_CACHE"):
    if os.environ.get(_var):
        os.environ[_var] = str(Path(os.environ[_var]).resolve())


def smoke_notebook(chapter: Path):
    """The notebook of ``chapter`` with ``scale = "smoke"`` injected after its parameters cell."""
    nb = jupytext.read(chapter)
    # papermill's own loader adds these defaults; jupytext's reader does not.
    nb.metadata.setdefault("papermill", {})
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    if not any("parameters" in c.metadata.tags for c in nb.cells):
        raise pytest.UsageError(f"{chapter} has no cell tagged 'parameters'")
    return parameterize_notebook(nb, SMOKE, kernel_name="python3", language="python")


class ChapterNotebook(plugin.IPyNbFile):
    """nbval's notebook collector, fed the parameterised notebook instead of reading a file."""

    def collect(self):
        nb = smoke_notebook(self.path)
        read = plugin.nbformat.read
        plugin.nbformat.read = lambda *args, **kwargs: nb
        try:
            yield from super().collect()
        finally:
            plugin.nbformat.read = read


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".md" and file_path.parent == BOOK:
        return ChapterNotebook.from_parent(parent, path=file_path)
    return None
