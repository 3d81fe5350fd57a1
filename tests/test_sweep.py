"""Sweeps: papermill runs in a local pool and on a local Dask cluster give the same table."""

import json

import pytest

from lib import sweep

CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A tiny chapter

```{code-cell} ipython3
:tags: [parameters]
seed = 0
scale = "smoke"
offset = 1.0
```

```{code-cell} ipython3
from lib.results import Recorder
assert seed >= 0, "seeds are non-negative"
rec = Recorder("tiny", scale, seed)
rec.add("value", 2 * seed + offset, paper=3.0)
rec.save()
```
"""


@pytest.fixture()
def chapter(tmp_path):
    path = tmp_path / "tiny.md"
    path.write_text(CHAPTER)
    return path


def test_expand_and_names():
    combos = sweep.expand({"seed": [0, 1], "scale": ["cpu"]})
    assert combos == [{"scale": "cpu", "seed": 0}, {"scale": "cpu", "seed": 1}]
    assert sweep.run_name({"seed": 0, "scale": "cpu", "x": "a/b"}) == "scale-cpu_seed-0_x-a-b"


def test_local_pool_runs_skips_and_reports_failures(chapter, tmp_path, capsys):
    out = tmp_path / "runs"
    code = sweep.main(
        [
            str(chapter),
            "-p",
            "seed",
            "0",
            "1",
            "2",
            "-1",
            "-p",
            "offset",
            "0.5",
            "--workers",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 1  # the seed -1 run fails, the others finish
    text = capsys.readouterr().out
    assert "3 runs ok, 1 failed" in text and "seeds are non-negative" in text
    assert (out / "tiny" / "offset-0.5_seed--1.ipynb").exists()
    table = json.loads((out / "tiny" / "results.json").read_text())
    assert sorted(r["ours"] for r in table) == [0.5, 2.5, 4.5]
    summary = sweep.summarize(table)
    ((key, stats),) = summary.items()
    assert (
        key[0] == "value"
        and stats["n"] == 3
        and stats["mean"] == pytest.approx(2.5)
        and stats["paper"] == 3.0
    )
    # Completed runs are skipped on re-run.
    statuses = sweep.sweep(str(chapter), {"seed": [0, 1], "offset": [0.5]}, out=str(out))
    assert all(s["skipped"] for s in statuses)


def test_dask_cluster_matches_local_pool(chapter, tmp_path):
    distributed = pytest.importorskip("distributed")
    grid = {"seed": [0, 1]}
    local = sweep.sweep(str(chapter), grid, out=str(tmp_path / "local"), workers=2)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        remote = sweep.sweep(
            str(chapter), grid, out=str(tmp_path / "dask"), scheduler=cluster.scheduler_address
        )

    def key(s):
        return s["params"]["seed"]

    assert [s["rows"] for s in sorted(local, key=key)] == [
        s["rows"] for s in sorted(remote, key=key)
    ]
    assert all(s["ok"] for s in remote)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sweep.sweep(str(tmp_path / "nope.md"), {"seed": [0]})
    with pytest.raises(ValueError, match="workers"):
        sweep.sweep(__file__, {"seed": [0]}, workers=0)


def test_a_misspelt_parameter_is_an_error_listing_the_chapters_parameters(tmp_path):
    from lib.sweep import chapter_parameters, sweep

    assert chapter_parameters("book/03_model_zoo.md")[:2] == ["seed", "scale"]
    with pytest.raises(ValueError, match=r"no parameter 'sede'.*defines: 'seed', 'scale'"):
        sweep("book/03_model_zoo.md", {"sede": [0, 1]}, out=str(tmp_path))
    assert not any(tmp_path.iterdir())  # nothing ran


def test_replicate_seeds_give_different_models_per_sweep_seed():
    from lib import zoo

    a, b = (zoo.book_models("smoke", k) for k in (0, 1))
    for family in a:
        assert not set(a[family]["seeds"]) & set(b[family]["seeds"]), family
