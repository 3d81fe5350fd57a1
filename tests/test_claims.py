"""The one decision rule of the paper's claims (lib.claims), their recording and the effects of each
claim."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from lib.cache import checked_json
from lib.claims import (
    CLAIMS,
    RULE,
    VERDICTS,
    block_structure_effect,
    check_claim_row,
    claims_table,
    decide,
    fig1_effects,
    fig3_effects,
    fig6_effect,
    leaky_slope_effect,
    load_claims,
    record,
    similarity_effects,
)
from lib.results import Recorder

KEY = "claim_fig4_grelu_below_orthogonal"


@pytest.mark.parametrize("key", sorted(CLAIMS))
@pytest.mark.parametrize(
    "effects, verdict",
    [
        ([2.0, 2.5, 3.1], "holds"),  # interval above 0
        ([-2.0, -2.5, -3.1], "fails"),  # interval below 0
        ([-1.0, 0.5, 2.0], "inconclusive"),  # interval straddles 0
        ([0.1, 9.0, 0.2], "inconclusive"),  # positive mean, too spread out for 3 replicates
    ],
)
def test_every_claim_can_get_every_verdict(key, effects, verdict):
    assert decide(effects, key=key).verdict == verdict


def test_interval_is_the_t_interval_of_the_mean():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    v = decide(x, key=KEY)
    half = stats.t.ppf(0.975, 3) * x.std(ddof=1) / math.sqrt(4)
    assert v.n == 4 and v.effect == pytest.approx(3.5) and v.std == pytest.approx(x.std(ddof=1))
    assert (v.low, v.high) == pytest.approx((3.5 - half, 3.5 + half))
    assert v.effects == (1.0, 2.0, 4.0, 7.0)
    # With 3 replicates the interval is wide: a mean of 1 with a spread of 1 does not decide.
    assert decide([0.0, 1.0, 2.0], key=KEY).verdict == "inconclusive"
    assert decide([0.9, 1.0, 1.1], key=KEY).verdict == "holds"


@pytest.mark.parametrize(
    "effects, message",
    [
        ([1.0], "needs at least 2 replicates"),
        ([], "needs at least 2 replicates"),
        ([1.0, float("nan"), 2.0], "non-finite effect"),
        ([1.0, float("inf")], "non-finite effect"),
    ],
)
def test_bad_effects_are_value_errors_naming_the_key(effects, message):
    with pytest.raises(ValueError, match=message) as err:
        decide(effects, key=KEY)
    assert KEY in str(err.value)


def test_unknown_claim_lists_the_claims():
    with pytest.raises(ValueError, match="unknown claim 'claim_nope'") as err:
        decide([1.0, 2.0], key="claim_nope")
    assert all(repr(k) in str(err.value) for k in CLAIMS)


def test_recorder_writes_the_verdict_and_load_results_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMMETRIES_RESULTS", str(tmp_path))
    rec = Recorder("sanity_test", "smoke")
    rec.add("clean_accuracy", 87.0)
    v = record(rec, KEY, [1.5, 2.0, 2.5], note="3 networks")
    rec.save()
    (row,) = load_claims("smoke")
    assert row["verdict"] == v.verdict == "holds" and row["n"] == 3 and row["rule"] == RULE
    assert row["ours"] == pytest.approx(2.0) and (row["low"], row["high"]) == pytest.approx(
        (v.low, v.high)
    )
    assert (
        row["statement"] == CLAIMS[KEY].statement
        and row["unit"] == "pp"
        and row["effects"] == [1.5, 2.0, 2.5]
    )
    md = claims_table(load_claims("smoke"))
    assert f"`{KEY}`" in md and "| 3 |" in md and md.rstrip().endswith("| holds |")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(verdict="maybe"), "unknown verdict 'maybe'"),
        (dict(n=1), "n = 1"),
        (dict(n=True), "n = True"),
        (dict(ours=None), "non-finite"),
        (
            dict(low=-5.0),
            "gives 'inconclusive'",
        ),  # the recorded verdict no longer follows from its interval
    ],
)
def test_a_malformed_claim_row_is_rejected_naming_key_and_chapter(
    tmp_path, monkeypatch, change, message
):
    # A row written with a valid file checksum (so not damage, but a wrong claim) is still refused.
    monkeypatch.setenv("SYMMETRIES_RESULTS", str(tmp_path))
    rec = Recorder("sanity_test", "smoke")
    record(rec, KEY, [1.5, 2.0, 2.5])
    path = rec.save()
    payload = json.loads(path.read_text())
    payload.pop("sha256")
    payload["rows"][0].update(change)
    path.write_text(checked_json(payload))
    with pytest.raises(ValueError, match=message) as err:
        load_claims("smoke")
    assert KEY in str(err.value) and "'sanity_test'" in str(err.value)


def test_check_claim_row_accepts_each_verdict():
    for low, high, verdict in [
        (0.5, 2.0, "holds"),
        (-2.0, -0.5, "fails"),
        (-1.0, 1.0, "inconclusive"),
    ]:
        check_claim_row(
            dict(key=KEY, verdict=verdict, n=3, ours=(low + high) / 2, low=low, high=high)
        )
    assert set(VERDICTS) == {"holds", "fails", "inconclusive"}


def test_claims_table_bolds_failures_and_follows_the_registry_order():
    rows = [
        dict(
            key=k,
            verdict=v,
            n=3,
            ours=e,
            low=e - 1,
            high=e + 1,
            unit="pp",
            where="w",
            statement="s",
        )
        for k, v, e in [
            ("claim_fig3_relu_falls", "fails", -2.0),
            ("claim_fig1_full_near_zero", "holds", 2.0),
        ]
    ]
    lines = claims_table(rows + [dict(key="x", ours=1.0)]).splitlines()
    assert len(lines) == 4
    assert "claim_fig1_full_near_zero" in lines[2] and "claim_fig3_relu_falls" in lines[3]
    assert lines[3].endswith("| **fails** |") and "-2 [-3, -1] pp" in lines[3]


def test_fig1_effects_follow_the_claims_definitions():
    # 2 pairs, 4 layers: penalties in pp, chosen so that every effect is easy to check by hand.
    final = {
        "full": [[1, 1, 1, 1], [3, 3, 3, 3]],
        "rank1": [[20, 20, 20, 20], [10, 10, 10, 10]],
        "grelu": [[5, 8, 12, 6], [4, 3, 2, 1]],
    }
    e = fig1_effects(final)
    assert e["claim_fig1_full_near_zero"].tolist() == [1.0, -1.0]
    assert e["claim_fig1_grelu_below_rank1"].tolist() == [20 - 31 / 4, 10 - 10 / 4]
    assert e["claim_fig1_grelu_below_10pp"].tolist() == [10 - 7.0, 10 - 2.5]
    # pair 0 rises to the third layer (12 - 5) and falls at the last (12 - 6); pair 1 falls
    # throughout.
    assert e["claim_fig1_depth_trend"].tolist() == [6.0, -2.0]
    assert "claim_fig1_depth_trend" not in fig1_effects(
        {k: [r[:2] for r in v] for k, v in final.items()}
    )


def test_similarity_effects_by_hand():
    t2 = {
        "grelu_procrustes": [[0.5, 0.6], [0.7, 0.7]],
        "orthogonal_procrustes": [[0.7, 0.8], [0.6, 0.6]],
    }
    S_diag = np.array(
        [[1.0, 0.5, 0.2], [0.4, 0.9, 0.8], [0.1, 0.3, 0.6]]
    )  # row margins 0.5, 0.1, 0.3
    S_off = np.array([[0.2, 0.9], [0.8, 0.1]])  # every row prefers another layer
    e = similarity_effects(t2, [S_diag, S_off])
    assert e["claim_table2_grelu_below_orthogonal"] == pytest.approx([0.2, -0.1])
    assert e["claim_fig5_same_depth_most_similar"] == pytest.approx(
        [(0.5 + 0.1 + 0.3) / 3, (-0.7 - 0.7) / 2]
    )


def test_block_fig6_slope_and_fig3_effects_by_hand():
    S = np.diag([0.9, 0.5, 0.8, 0.4])
    assert block_structure_effect([S, S], [False, True, False, True]).tolist() == pytest.approx(
        [0.4, 0.4]
    )
    grelu = np.array([[10.0, 20.0], [5.0, 5.0]])
    full = np.array([[1.0, 2.0], [1.0, 3.0]])
    assert fig6_effect(grelu, full, [False, True]).tolist() == pytest.approx([10 - 1, 0 - 2])
    assert leaky_slope_effect({0.0: [5.0, 6.0], 0.9: [7.0, 6.0], 1.0: [20.0, 5.0]}).tolist() == [
        14.0,
        -1.0,
    ]
    with pytest.raises(ValueError, match="slope 1.0"):
        leaky_slope_effect({0.0: [1.0], 0.9: [2.0]})
    e = fig3_effects(
        np.array([[0.5, 0.3, 0.1], [0.4, 0.4, 0.4]]), np.array([[0.2, 0.2, 0.3], [0.3, 0.2, 0.1]])
    )
    assert e["claim_fig3_relu_falls"] == pytest.approx([0.4, 0.0])
    assert e["claim_fig3_no_residual_relu_does_not_fall"] == pytest.approx([0.05 + 0.1, 0.05 - 0.2])
