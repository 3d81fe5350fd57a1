"""The book-wide scale switch (``lib.config.resolve_scale``) and the one table helper (``lib.results.table``)."""
import pytest

from lib.config import DEFAULT_SCALE, SCALES, resolve_scale
from lib.results import table


def test_resolve_scale_prefers_argument_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("SYMMETRIES_SCALE", raising=False)
    assert resolve_scale(None) == DEFAULT_SCALE == "cpu"
    monkeypatch.setenv("SYMMETRIES_SCALE", "")
    assert resolve_scale(None) == "cpu"
    monkeypatch.setenv("SYMMETRIES_SCALE", "smoke")
    assert resolve_scale(None) == "smoke"
    assert resolve_scale("paper") == "paper"          # papermill's -p scale wins over the environment


@pytest.mark.parametrize("where", ["argument", "environment"])
def test_resolve_scale_rejects_unknown_names_listing_the_scales(monkeypatch, where):
    monkeypatch.setenv("SYMMETRIES_SCALE", "huge" if where == "environment" else "smoke")
    with pytest.raises(ValueError) as err:
        resolve_scale(None if where == "environment" else "huge")
    assert "'huge'" in str(err.value) and all(repr(s) in str(err.value) for s in SCALES)
    assert ("SYMMETRIES_SCALE" in str(err.value)) == (where == "environment")


def test_table_right_aligns_numeric_columns_and_escapes_pipes():
    md = table(["model", "acc (%)", "change", "note"],
               [["ResNet20 |x|", "91.3 ± 0.2", "–", ""], ["Myrtle", 87, "-1.5 %", "n/a"]])
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
