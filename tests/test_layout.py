"""The shape of the code base that the design card asks for, checked on every run.

Modules stay under 400 lines, no module imports another module's private name, subpackages list
their public names, and no chapter code cell runs over 25 lines (library logic lives in ``lib``).
"""
import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
MODULES = sorted(LIB.rglob("*.py"))
CHAPTERS = sorted((ROOT / "book").glob("*.md"))


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_at_most_400_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 400


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_imported_from_another_module(path):
    private = [(n.module, a.name) for n in _imports(path) for a in n.names
               if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_lib_imports_sit_at_module_top(path):
    # An import of a lib module inside a function hides a dependency (usually a cycle).
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("lib")):
                    nested.append((fn.name, node.module))
    assert nested == []


def test_no_forwarding_module():
    assert not (LIB / "_lazy.py").exists()
    for path in MODULES:
        assert "def __getattr__" not in path.read_text(encoding="utf-8"), path


@pytest.mark.parametrize("package", sorted(p.parent for p in LIB.glob("*/__init__.py")), ids=lambda p: p.name)
def test_subpackage_lists_its_public_names(package):
    mod = importlib.import_module(f"lib.{package.name}")
    assert mod.__all__, package
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert missing == []


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_chapter_code_cells_at_most_25_lines(chapter):
    cells = re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", chapter.read_text(encoding="utf-8"), flags=re.S)
    # Cell options (":tags:", figure metadata) are not code.
    lengths = [sum(1 for l in c.splitlines() if l.strip() and not l.startswith(":")) for c in cells]
    assert max(lengths, default=0) <= 25


def _lib_imports(path: Path, package: str) -> set:
    """The ``lib`` modules that ``path``, a module of ``lib.<package>``, imports (dotted names)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "lib"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            if (node.module or "").split(".")[0] == "lib":
                names.add(node.module)
        elif isinstance(node, ast.ImportFrom):
            base = ["lib", package][:3 - node.level] if node.level <= 2 else []
            names.add(".".join(base + ([node.module] if node.module else [])))
    return names


@pytest.mark.parametrize("path", sorted((LIB / "metrics").glob("*.py")), ids=lambda p: p.name)
def test_metrics_take_arrays_and_depend_only_on_config(path):
    # Issue 25: the measures knew architectures (lib.models) and the cache; features of models and
    # cached comparisons live a layer above, in lib.similarity.
    outside = {n for n in _lib_imports(path, "metrics")
               if n != "lib.config" and n != "lib.metrics" and not n.startswith("lib.metrics.")}
    assert outside == set()
