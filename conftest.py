"""Collect every book chapter as an nbval notebook executed at ``smoke`` scale.

Each ``book/*.md`` (a Jupytext MyST notebook) is converted to a notebook with its parameters
injected exactly as papermill injects them (a cell after the ``parameters`` cell), written to a
temporary folder of the test session, and read from there by nbval, which runs it cell by cell with
the kernel in ``book/``, as the book build does. Test ids stay the chapter's
(``book/05_stitching.md::Cell 3``). So ``pytest`` alone checks that the whole book runs and that
every claim a chapter asserts still holds.
"""

import os
import shutil
import tempfile
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbval import plugin
from papermill.parameterize import parameterize_notebook

from lib.devicecheck import chapter_files

ROOT = Path(__file__).parent
BOOK = ROOT / "book"
SMOKE = {"scale": "smoke"}

# Tests never read or write the user's own caches (trained models, results): unless the caller
# chose a cache, they use one inside the checkout, which chapter kernels inherit.
os.environ.setdefault("SYMMETRIES_CACHE", str(ROOT / ".cache" / "tests"))
# Chapter kernels run in book/, so a relative data path given on the command line must be made
# absolute.
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


def pytest_configure(config):
    config.notebook_dir = Path(tempfile.mkdtemp(prefix="symmetries-notebooks-"))


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "notebook_dir", ""), ignore_errors=True)


class ChapterNotebook(plugin.IPyNbFile):
    """nbval's collector for one chapter: the node is the chapter (its id, its folder for the
    kernel), the notebook nbval reads is the parameterised copy in the session's temporary folder.
    """

    def collect(self):
        notebook = self.config.notebook_dir / f"{self.path.stem}.ipynb"
        nbformat.write(smoke_notebook(self.path), notebook)
        # An nbval collector of the copy parses its cells (options, comment markers); they are
        # adopted here, so that they run in this node's kernel and report under the chapter's name.
        reader = plugin.IPyNbFile.from_parent(self, path=notebook, nodeid=f"{self.nodeid}::copy")
        for cell in reader.collect():
            yield plugin.IPyNbCell.from_parent(
                self, name=cell.name, cell_num=cell.cell_num, cell=cell.cell, options=cell.options
            )
        self.nb = reader.nb


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".md" and file_path.parent == BOOK and file_path in chapter_files(BOOK):
        return ChapterNotebook.from_parent(parent, path=file_path)
    return None
