"""The shape of the code base that the design card asks for, checked on every run.

Functions stay short (at most 60 lines, at most 8 parameters), no module imports another module's
private name, subpackages list their public names, and no chapter code cell runs over 25 lines
(library logic lives in ``lib``). A module over 400 lines is only a warning: files are split by
what they hold, not to meet a count.
"""

import ast
import importlib
import re
import warnings
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
def test_module_length_is_only_a_soft_limit(path):
    # A soft check: a long module is reported, never failed (the hard limits are per function).
    n = len(path.read_text(encoding="utf-8").splitlines())
    if n > MODULE_LINES:
        warnings.warn(f"{path.relative_to(ROOT)} has {n} lines (soft limit {MODULE_LINES})")


# -- functions: at most FUNCTION_LINES lines and FUNCTION_PARAMETERS parameters -----------------
# A function's lines run from its ``def`` line to the last line of its body, the docstring, blank
# lines and comments included (decorators not). Its parameters are every name in its signature,
# ``*args`` and ``**kwargs`` included, except the ``self`` or ``cls`` of a method. A nested function
# is measured on its own, and its lines also count for the function around it.
MODULE_LINES = 400
FUNCTION_LINES = 60
FUNCTION_PARAMETERS = 8

# The only exceptions: functions in modules that other work owned while the limits were set
# (issue 25), each with its (lines, parameters) then. None may grow beyond them: split them, then
# drop them.
ALLOWED = {
    "lib.dissection.study.concept_dataset": (64, 7),  # 64 lines
    "lib.dissection.study.dissect_memo": (31, 10),  # 10 parameters
    "lib.dissection.study.unit_examples": (60, 9),  # 9 parameters
    "lib.metrics.layers.similarity_matrices": (69, 9),  # 69 lines, 9 parameters
    "lib.settings.lookup.model_families": (81, 1),  # 81 lines
    "lib.train.train": (50, 9),  # 9 parameters
}


def _functions(path: Path):
    """``(qualified name, lines, parameters)`` of every function and method defined in ``path``."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return _functions_in(path.read_text(encoding="utf-8"), module)


def _functions_in(source: str, module: str):
    def walk(node, prefix, in_class):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = child.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
                names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
                if in_class and names[:1] in (["self"], ["cls"]):
                    names = names[1:]
                yield f"{prefix}{child.name}", child.end_lineno - child.lineno + 1, len(names)
                yield from walk(child, f"{prefix}{child.name}.", False)
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.", True)
            else:
                yield from walk(child, prefix, in_class)

    return list(walk(ast.parse(source), f"{module}.", False))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_are_short_with_few_parameters(path):
    too_long = []
    for name, lines, params in _functions(path):
        limit = ALLOWED.get(name, (FUNCTION_LINES, FUNCTION_PARAMETERS))
        if lines > limit[0] or params > limit[1]:
            too_long.append(
                f"{name}: {lines} lines, {params} parameters (at most {limit[0]}, {limit[1]})"
            )
    assert too_long == []


def test_function_limits_are_measured_as_documented():
    # The measure itself, on a known source: a method's self is not a parameter, *args is one.
    src = (
        'class C:\n    def m(self, a, *args, b=1, **kw):\n        """Doc."""\n\n'
        "        return a\ndef f(x, /, y):\n    def g():\n        pass\n    return g\n"
    )
    got = sorted(_functions_in(src, "m"))
    assert got == [("m.C.m", 4, 4), ("m.f", 4, 2), ("m.f.g", 2, 0)]


def test_allowed_long_functions_are_in_modules_other_work_owns():
    owned = (
        "lib.metrics.",
        "lib.models.",
        "lib.data.",
        "lib.train.",
        "lib.config.",
        "lib.settings.",
        "lib.zoo.book.",
        "lib.dissection.study.",
    )
    assert all(name.startswith(owned) for name in ALLOWED)
    found = {name: (lines, params) for path in MODULES for name, lines, params in _functions(path)}
    for name in ALLOWED:
        lines, params = found.get(name, (0, 0))
        if lines <= FUNCTION_LINES and params <= FUNCTION_PARAMETERS:
            warnings.warn(f"{name} is within the limits now (or gone): drop it from ALLOWED")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_imported_from_another_module(path):
    private = [
        (n.module, a.name)
        for n in _imports(path)
        for a in n.names
        if a.name.startswith("_") and not a.name.startswith("__")
    ]
    assert private == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_lib_imports_sit_at_module_top(path):
    # An import of a lib module inside a function hides a dependency (usually a cycle).
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (
                    node.level > 0 or (node.module or "").startswith("lib")
                ):
                    nested.append((fn.name, node.module))
    assert nested == []


def test_no_forwarding_module():
    assert not (LIB / "_lazy.py").exists()
    for path in MODULES:
        assert "def __getattr__" not in path.read_text(encoding="utf-8"), path


@pytest.mark.parametrize(
    "package", sorted(p.parent for p in LIB.glob("*/__init__.py")), ids=lambda p: p.name
)
def test_subpackage_lists_its_public_names(package):
    mod = importlib.import_module(f"lib.{package.name}")
    assert mod.__all__, package
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert missing == []


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_chapter_code_cells_at_most_25_lines(chapter):
    cells = re.findall(
        r"```\{code-cell\}[^\n]*\n(.*?)```", chapter.read_text(encoding="utf-8"), flags=re.S
    )
    # Cell options (":tags:", figure metadata) are not code.
    lengths = [
        sum(1 for line in c.splitlines() if line.strip() and not line.startswith(":"))
        for c in cells
    ]
    assert max(lengths, default=0) <= 25


def test_chapter_code_cells_have_blank_lines_between_steps():
    # Issue 25: chapter cells were dense (1.8 % blank lines on main before ruff format); the guide
    # asks for blank lines between steps. The floor is the share measured after formatting (2.5 %),
    # rounded down, so that a chapter that packs its cells again fails here.
    lines = blank = 0
    for chapter in CHAPTERS:
        cells = re.findall(
            r"```\{code-cell\}[^\n]*\n(.*?)```", chapter.read_text(encoding="utf-8"), flags=re.S
        )
        for cell in cells:
            code = [line for line in cell.splitlines() if not line.startswith(":")]
            lines += len(code)
            blank += sum(1 for line in code if not line.strip())
    assert lines and blank / lines >= 0.024, f"{blank} blank of {lines} code-cell lines"


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
            base = ["lib", package][: 3 - node.level] if node.level <= 2 else []
            names.add(".".join(base + ([node.module] if node.module else [])))
    return names


@pytest.mark.parametrize("path", sorted((LIB / "metrics").glob("*.py")), ids=lambda p: p.name)
def test_metrics_take_arrays_and_depend_only_on_config(path):
    # Issue 25: the measures knew architectures (lib.models) and the cache; features of models and
    # cached comparisons live a layer above, in lib.similarity.
    outside = {
        n
        for n in _lib_imports(path, "metrics")
        if n != "lib.config" and n != "lib.metrics" and not n.startswith("lib.metrics.")
    }
    assert outside == set()
