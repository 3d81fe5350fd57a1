"""The book-wide scale switch (``lib.settings.resolve_scale``), the one table helper
(``lib.results.table``) and the comparison of two results folders (``lib.results.compare_results``).
"""

import json

import pytest

from lib.results import Recorder, compare_results, table
from lib.results import main as results_main
from lib.settings import DEFAULT_SCALE, SCALES, resolve_scale


def test_resolve_scale_prefers_argument_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("SYMMETRIES_SCALE", raising=False)
    assert resolve_scale(None) == DEFAULT_SCALE == "cpu"
    monkeypatch.setenv("SYMMETRIES_SCALE", "")
    assert resolve_scale(None) == "cpu"
    monkeypatch.setenv("SYMMETRIES_SCALE", "smoke")
    assert resolve_scale(None) == "smoke"
    assert resolve_scale("paper") == "paper"  # papermill's -p scale wins over the environment


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_resolve_scale_rejects_unknown_names_listing_the_scales(monkeypatch, where):
    monkeypatch.setenv("SYMMETRIES_SCALE", "huge" if where == "environment" else "smoke")
    with pytest.raises(ValueError) as err:
        resolve_scale(None if where == "environment" else "huge")
    assert "'huge'" in str(err.value) and all(repr(s) in str(err.value) for s in SCALES)
    assert ("SYMMETRIES_SCALE" in str(err.value)) == (where == "environment")


def test_table_right_aligns_numeric_columns_and_escapes_pipes():
    md = table(
        ["model", "acc (%)", "change", "note"],
        [["ResNet20 |x|", "91.3 ± 0.2", "–", ""], ["Myrtle", 87, "-1.5 %", "n/a"]],
    )
    lines = md.splitlines()
    assert lines[0] == "| model | acc (%) | change | note |"
    assert lines[1] == "|---|---:|---:|---|"
    assert lines[2] == "| ResNet20 \\|x\\| | 91.3 ± 0.2 | – |  |"
    assert table(["a", "b"], [[1, 2]], align="lc").splitlines()[1] == "|---|:---:|"
    assert table(["a"], []).splitlines() == ["| a |", "|---|"]


def test_table_rejects_ragged_rows_and_bad_alignment():
    with pytest.raises(ValueError, match="row 0 has 1 cells but header has 2"):
        table(["a", "b"], [[1]])
    with pytest.raises(ValueError, match="align"):
        table(["a", "b"], [[1, 2]], align="x")


def _record(monkeypatch, folder, chapter, rows, seed=0):
    monkeypatch.setenv("SYMMETRIES_RESULTS", str(folder))
    rec = Recorder(chapter, "smoke", seed)
    for key, ours, kw in rows:
        rec.add(key, ours, **kw)
    return rec.save()


def test_compare_results_lists_changed_missing_and_added_keys(tmp_path, monkeypatch, capsys):
    rows = [
        ("acc", 91.25, dict(std=0.5, unit="%")),
        ("count", 6, {}),
        ("fit_seconds", 12.0, {}),
        ("gone", 1.0, {}),
    ]
    _record(monkeypatch, tmp_path / "a", "zoo", rows)
    _record(monkeypatch, tmp_path / "a", "zoo", [("acc", 1.0, {})], seed=1)
    assert compare_results(tmp_path / "a", tmp_path / "a") == []
    changed = [
        ("acc", 91.25 * (1 + 1e-12), dict(std=0.75, unit="%")),
        ("count", 7, {}),
        ("fit_seconds", 99.0, {}),
        ("new", None, {}),
    ]
    _record(monkeypatch, tmp_path / "b", "zoo", changed)
    _record(monkeypatch, tmp_path / "b", "zoo", [("acc", 1.0, {})], seed=1)
    diffs = compare_results(tmp_path / "a", tmp_path / "b")
    # A relative change of 1e-12 is within the default tolerance; the std, the count and the keys
    # are not.
    assert [(d["file"], d["key"], d["field"], d["a"], d["b"]) for d in diffs] == [
        ("smoke/zoo.json", "acc", "std", 0.5, 0.75),
        ("smoke/zoo.json", "count", "ours", 6, 7),
        ("smoke/zoo.json", "gone", None, 1.0, None),
        ("smoke/zoo.json", "new", None, None, None),
    ]
    assert (
        len(compare_results(tmp_path / "a", tmp_path / "b", rtol=0.0)) == 5
    )  # now acc's value too
    assert (
        len(compare_results(tmp_path / "a", tmp_path / "b", ignore=())) == 5
    )  # now the wall time too
    assert results_main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "4 key(s) differ" in capsys.readouterr().out
    assert (
        results_main(["compare", str(tmp_path / "a" / "smoke"), str(tmp_path / "a" / "smoke")]) == 0
    )


def test_compare_results_names_a_missing_folder_and_a_damaged_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        compare_results(tmp_path, tmp_path / "nowhere")
    (tmp_path / "x.json").write_text(json.dumps({"chapter": "x"}))
    with pytest.raises(ValueError, match="x.json is damaged"):
        compare_results(tmp_path, tmp_path)
