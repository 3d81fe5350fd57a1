"""Run a chapter once per parameter combination with papermill, locally or on a Dask cluster.

    python -m lib.sweep book/05_stitching.md -p seed 0 1 2 3 -p scale cpu --workers 2
    python -m lib.sweep book/05_stitching.md -p seed 0 1 2 3 --scheduler tcp://host:8786

Each run executes ``runs/<chapter>/<name>.ipynb`` (``name`` spells the parameters, e.g.
``scale-cpu_seed-0``) in a fresh papermill subprocess whose ``SYMMETRIES_RESULTS`` points at
``runs/<chapter>/<name>.results/``, so the numbers the chapter records land beside its notebook.
A run whose ``<name>.done.json`` marker (checksummed, :func:`lib.cache.checked_json`) is intact is
skipped on re-run; a marker that cannot be read or is damaged only means that run is done again (one
warning naming it). Failures are listed with the path of their notebook and the error, and do not
stop the other runs. The recorded rows of every completed run in ``runs/<chapter>/``, this sweep's
and earlier ones', one per run and key, are collected into ``runs/<chapter>/results.json``;
:func:`summarize` turns them into mean ± std.
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import itertools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jupytext
import numpy as np

from .cache import CorruptedError, checked_json, read_checked_json
from .config import atomic_path
from .results import read_results_file

__all__ = ["chapter_parameters", "expand", "run_name", "run_one", "sweep", "summarize", "main"]


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def expand(grid: dict) -> list[dict]:
    """All combinations of a parameter grid, in a stable order.

    Parameters
    ----------
    grid : dict
        ``{name: [values]}``.

    Returns
    -------
    list of dict
        One ``{name: value}`` per combination, names sorted.
    """
    names = sorted(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def run_name(params: dict) -> str:
    """A file-name-safe spelling of one run's parameters.

    Parameters
    ----------
    params : dict

    Returns
    -------
    str
        Such as ``scale-cpu_seed-0`` (``"default"`` for no parameters).
    """
    return "_".join(f"{k}-{_safe(params[k])}" for k in sorted(params)) or "default"


def _safe(value) -> str:
    # Letters, digits, dots and dashes are kept; anything else becomes a dash.
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in str(value))


def run_one(chapter: str, params: dict, out_dir: str, timeout: float | None = None) -> dict:
    """Execute one run (in a papermill subprocess) and return its status and recorded rows.

    Safe to call from threads and from Dask workers: everything run-specific goes through the
    subprocess's environment and files, never through this process's global state.

    Parameters
    ----------
    chapter : str
        A chapter file.
    params : dict
        Its parameters for this run.
    out_dir : str
        The chapter's runs folder.
    timeout : float, optional
        Seconds per run.

    Returns
    -------
    dict
        ``params``, ``ok``, ``notebook``, ``error``, the recorded ``rows`` and ``skipped`` (whether a
        finished run was found).
    """
    out_dir = Path(out_dir)
    name = run_name(params)
    notebook = out_dir / f"{name}.ipynb"
    done = out_dir / f"{name}.done.json"
    finished = _finished_run(done, params, name)
    if finished is not None:
        return dict(finished, notebook=str(notebook), skipped=True)
    results = out_dir / f"{name}.results"
    source = out_dir / f"{name}.input.ipynb"
    ok, err = _papermill(chapter, params, source, notebook, results, timeout)
    status = dict(params=params, notebook=str(notebook), ok=ok)
    if not ok:
        return dict(status, error="\n".join(err))
    rows = []
    for f in sorted(results.glob("*/*.json")):
        try:
            rows.extend(read_results_file(f)["rows"])
        except ValueError as exc:
            return dict(status, ok=False, error=f"{exc} (this run wrote it)")
    status["rows"] = rows
    with atomic_path(done) as tmp:
        tmp.write_text(checked_json(status))
    return dict(status, skipped=False)


def _finished_run(done: Path, params: dict, name: str) -> dict | None:
    # The marker of a finished run, or None: absent, or unreadable (then it is only run again).
    try:
        return _read_done(done, params)
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = exc.strerror or exc
        warnings.warn(f"the run marker {done} cannot be read ({reason}); running {name} again")
    except ValueError as exc:
        warnings.warn(f"{exc}; running {name} again")
    return None


def _papermill(chapter: str, params: dict, source: Path, notebook: Path, results: Path,
               timeout) -> tuple:
    # Run the chapter's notebook form in a papermill subprocess that records into ``results``:
    # (ok, the last lines of its stderr).
    source.parent.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(chapter)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    jupytext.write(nb, source, fmt="ipynb")
    env = dict(os.environ, SYMMETRIES_RESULTS=str(results.resolve()))
    cmd = [sys.executable, "-m", "papermill", str(source), str(notebook), "-y", json.dumps(params),
           "--cwd", str(Path(chapter).resolve().parent), "--no-progress-bar"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        ok, err = proc.returncode == 0, proc.stderr.strip().splitlines()[-12:]
    except subprocess.TimeoutExpired:
        ok, err = False, [f"timed out after {timeout} s"]
    source.unlink(missing_ok=True)
    return ok, err


# The fields of a run marker written before markers carried their own checksum ("sha256").
_LEGACY_MARKER_FIELDS = ("params", "notebook", "ok", "rows")


def _read_done(done: Path, params: dict | None = None) -> dict:
    """The status of the completed run that the marker ``done`` records: ``params``, ``notebook``,
    ``ok`` (True) and ``rows``.

    ``params`` are the run's parameters (default: those the marker holds, which must spell its
    name). ``ValueError`` naming the file if the marker is damaged or does not record a completed
    run of ``params``; ``OSError`` (``FileNotFoundError``: no marker) if it cannot be read."""
    name = done.name.removesuffix(".done.json")
    try:
        status, _ = read_checked_json(done, _LEGACY_MARKER_FIELDS)
        problem = _marker_problem(status, params, name)
    except CorruptedError as exc:
        problem = str(exc)
    if problem:
        raise ValueError(f"the run marker {done} is damaged ({problem}); delete it to run that "
                         f"combination again")
    return dict(params=status["params"], notebook=status["notebook"], ok=True, rows=status["rows"])


def _marker_problem(status: dict, params: dict | None, name: str) -> str | None:
    """What is wrong with the content of the marker of run ``name``, or None."""
    if status.get("ok") is not True:
        return f"'ok' is {status.get('ok')!r}, not true: it does not record a completed run"
    if not isinstance(status.get("params"), dict) or not isinstance(status.get("notebook"), str):
        return "'params' is not an object or 'notebook' not a path"
    if params is not None and status["params"] != json.loads(json.dumps(params)):
        return f"it records the parameters {status['params']!r}, not this run's {params!r}"
    if params is None and run_name(status["params"]) != name:
        return f"its parameters {status['params']!r} are not those its name spells"
    rows = status.get("rows")
    if not isinstance(rows, list):
        return "'rows' is not a list"
    for i, r in enumerate(rows):
        ours = r.get("ours", "") if isinstance(r, dict) else ""
        if not (isinstance(r, dict) and isinstance(r.get("key"), str)
                and (ours is None or isinstance(ours, (int, float)))):
            return f"row {i} is not a recorded number (a 'key' and a numeric or null 'ours')"
    return None


def _completed_runs(out_dir: Path, statuses: list[dict]) -> list[dict]:
    """This sweep's completed runs, then those of earlier sweeps in ``out_dir`` (by marker name)
    that this sweep did not run; a damaged earlier marker is left out with one warning."""
    runs = [s for s in statuses if s["ok"]]
    ran = {run_name(s["params"]) for s in statuses}
    for done in sorted(out_dir.glob("*.done.json")):
        if done.name.removesuffix(".done.json") in ran:
            continue
        try:
            runs.append(_read_done(done))
        except OSError as exc:
            warnings.warn(f"the run marker {done} cannot be read ({exc.strerror or exc}); its rows "
                          f"are left out of {out_dir / 'results.json'}")
        except ValueError as exc:
            warnings.warn(f"{exc}; its rows are left out of {out_dir / 'results.json'}")
    return runs


def _run_safely(chapter: str, params: dict, out_dir: str, timeout: float | None) -> dict:
    """:func:`run_one`, with any exception turned into a failed status so that the other runs go on."""
    try:
        return run_one(chapter, params, out_dir, timeout)
    except Exception as exc:
        return dict(params=params, notebook=str(Path(out_dir) / f"{run_name(params)}.ipynb"), ok=False,
                    error=f"{type(exc).__name__}: {exc}")


def chapter_parameters(chapter: str) -> list[str]:
    """The names that ``chapter``'s cell tagged ``parameters`` assigns, in order.

    Parameters
    ----------
    chapter : str
        A chapter file.

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        Naming the file, when the chapter has no such cell.
    """
    # Chapters are MyST files; say so, so that one without a Jupytext header is read the same way.
    nb = jupytext.read(chapter, fmt="md:myst" if str(chapter).endswith(".md") else None)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            names = []
            for node in ast.parse(cell.source).body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) else [])
                names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
            return names
    raise ValueError(f"{chapter} has no cell tagged 'parameters'; a sweep can only set the names such a cell defines")


def sweep(chapter: str, grid: dict, out: str = "runs", workers: int = 1, scheduler: str | None = None,
          timeout: float | None = None) -> list[dict]:
    """Run ``chapter`` for every combination of ``grid``; return one status dict per run.

    ``workers`` runs execute at a time in a local pool; with ``scheduler`` (a Dask distributed
    address, e.g. of a SLURM or Kubernetes deployment) the runs go to that cluster instead.
    The rows of every completed run in ``<out>/<chapter>/`` (this sweep's, then earlier sweeps'
    other runs, from their markers) are written to ``<out>/<chapter>/results.json``.

    Parameters
    ----------
    chapter : str
        A chapter file, e.g. ``book/05_stitching.md``.
    grid : dict
        ``{parameter: [values]}``; every name must be set by the chapter's parameters cell.
    out : str
        The output folder.
    workers : int
        Runs at a time in the local pool.
    scheduler : str, optional
        The address of a Dask distributed scheduler.
    timeout : float, optional
        Seconds per run.

    Returns
    -------
    list of dict
        One status per run (:func:`run_one`).
    """
    if not Path(chapter).is_file():
        raise ValueError(f"chapter {chapter!r} does not exist; pass a path such as book/03_model_zoo.md")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    # papermill would inject a misspelt name as a new variable and run the chapter with its default.
    defined = chapter_parameters(chapter)
    unknown = [name for name in grid if name not in defined]
    if unknown:
        raise ValueError(f"{chapter} has no parameter {', '.join(map(repr, unknown))}; its parameters cell "
                         f"defines: {', '.join(map(repr, defined))}")
    out_dir = Path(out) / Path(chapter).stem
    combos = expand(grid)
    if scheduler:
        from distributed import Client

        with Client(scheduler) as client:
            futures = client.map(_run_safely, [chapter] * len(combos), combos, [str(out_dir)] * len(combos),
                                 [timeout] * len(combos), pure=False)
            statuses = client.gather(futures)
    else:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            statuses = list(pool.map(lambda p: _run_safely(chapter, p, str(out_dir), timeout), combos))
    table = [dict(r, **{f"param_{k}": v for k, v in s["params"].items()})
             for s in _completed_runs(out_dir, statuses) for r in s["rows"]]
    with atomic_path(out_dir / "results.json") as tmp:
        tmp.write_text(json.dumps(table, indent=1))
    return statuses


def _hashable(value):
    # Parameters such as -p slopes "[0.0, 1.0]" are lists (JSON has no tuples).
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def summarize(table: list[dict], over: str = "seed") -> dict:
    """Mean and std of ``ours`` for each key over the runs that differ only in parameter ``over``.

    Parameters
    ----------
    table : list of dict
        The rows of a sweep's ``results.json``: ``key``, ``ours``, ``paper`` and ``param_<name>``.
    over : str
        The parameter averaged over.

    Returns
    -------
    dict
        ``{(key, other parameters...): dict(mean, std, n, paper)}``; list-valued parameters appear
        as tuples (so that they can be part of the key).
    """
    groups: dict = {}
    for row in table:
        others = tuple(sorted((k, _hashable(v)) for k, v in row.items()
                              if k.startswith("param_") and k != f"param_{over}"))
        groups.setdefault((row["key"],) + others, []).append(row)
    out = {}
    for gkey, rows in groups.items():
        values = np.array([r["ours"] for r in rows if r["ours"] is not None], dtype=float)
        out[gkey] = dict(mean=float(values.mean()) if len(values) else None,
                         std=float(values.std()) if len(values) else None, n=len(values), paper=rows[0].get("paper"))
    return out


def main(argv=None) -> int:
    """The command line ``python -m lib.sweep CHAPTER -p NAME VALUE... [--workers N] [--scheduler ADDRESS]``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when every run succeeded, else 1.
    """
    parser = argparse.ArgumentParser(prog="python -m lib.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("chapter", help="a chapter file, e.g. book/05_stitching.md")
    parser.add_argument("-p", "--param", nargs="+", action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter and its values, e.g. -p seed 0 1 2 3 (repeatable)")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time in the local pool")
    parser.add_argument("--scheduler", default=None, help="address of a Dask distributed scheduler")
    parser.add_argument("--out", default="runs", help="output folder (default: runs)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run")
    args = parser.parse_args(argv)
    grid = {}
    for item in args.param:
        if len(item) < 2:
            parser.error(f"-p {item[0]} needs at least one value")
        grid[item[0]] = [_literal(v) for v in item[1:]]
    statuses = sweep(args.chapter, grid, args.out, args.workers, args.scheduler, args.timeout)
    failed = [s for s in statuses if not s["ok"]]
    for s in statuses:
        state = "skipped (done)" if s.get("skipped") else ("ok" if s["ok"] else "FAILED")
        print(f"{state:15s} {s['params']} -> {s['notebook']}")
    for s in failed:
        print(f"\n{s['notebook']} failed:\n{s['error']}")
    print(f"\n{len(statuses) - len(failed)} runs ok, {len(failed)} failed; table: "
          f"{Path(args.out) / Path(args.chapter).stem / 'results.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
