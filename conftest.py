"""Collect every book chapter as an nbval notebook executed at ``smoke`` scale.

Each ``book/*.md`` (a Jupytext MyST notebook) is converted to a notebook, its parameters are
injected exactly as papermill injects them (a cell after the ``parameters`` cell), and the result is
written to ``.pytest-notebooks/`` where nbval runs it cell by cell. So ``pytest`` alone checks that
the whole book runs and that every claim a chapter asserts still holds.
"""
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbval.plugin import IPyNbFile
from papermill.parameterize import parameterize_notebook

ROOT = Path(__file__).parent
BOOK = ROOT / "book"
GENERATED = ROOT / ".pytest-notebooks"
SMOKE = {"scale": "smoke"}


def smoke_notebook(chapter: Path) -> Path:
    """Write the smoke-scale notebook of ``chapter`` and return its path."""
    nb = jupytext.read(chapter)
    if not any("parameters" in c.metadata.get("tags", []) for c in nb.cells):
        raise pytest.UsageError(f"{chapter} has no cell tagged 'parameters'")
    nb = parameterize_notebook(nb, SMOKE, kernel_name="python3", language="python")
    GENERATED.mkdir(exist_ok=True)
    out = GENERATED / f"{chapter.stem}.ipynb"
    nbformat.write(nb, out)
    return out


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".md" and file_path.parent == BOOK:
        return IPyNbFile.from_parent(parent, path=smoke_notebook(file_path))
    return None
