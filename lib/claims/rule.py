"""The paper's empirical claims, each decided by one rule that was fixed before any data.

A claim about trained networks is stated here, not in a chapter, as an *effect* measured once per
replicate (an independent model pair, or network, with its own seeds) and signed so that a positive
effect is the paper's direction. A claim with a threshold folds it into the effect: "the G_ReLU
penalty is below 10 pp at most layers" is the effect ``10 - median penalty``, so that the same rule
decides every claim. Chapters compute the per-replicate effects and record them with :func:`record`
(which calls :func:`decide` and adds one row to the chapter's :class:`lib.results.Recorder`);
chapter 09 reads them back, verified, with :func:`load_claims` and shows them with
:func:`claims_table`.

The decision rule (:data:`RULE`) is a two-sided t-interval for the mean effect over ``n >= 2``
replicates at 95 %: the claim **holds** when the whole interval lies above 0, **fails** when it lies
below 0, and is **inconclusive** otherwise. With 3 replicates the t quantile is 4.30, so a claim
holds only when its effect is large against its spread between replicates; an inconclusive verdict
says that the replicates do not decide, not that the claim is false.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

from ..config import check_choice
from ..results import Recorder, load_results, table

__all__ = [
    "Claim",
    "CLAIMS",
    "Verdict",
    "VERDICTS",
    "LEVEL",
    "RULE",
    "decide",
    "record",
    "check_claim_row",
    "load_claims",
    "claims_table",
]

#: The three verdicts a claim can get, in the order tables show them.
VERDICTS = ("holds", "fails", "inconclusive")

#: The confidence level of the interval that decides a claim.
LEVEL = 0.95

#: The one decision rule of every claim, in words (recorded with each verdict).
RULE = (
    "holds when the two-sided 95 % t-interval of the mean effect over the replicates lies above 0 "
    "(the paper's direction), fails when it lies below 0, inconclusive otherwise"
)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One empirical claim of the paper, and the effect that tests it.

    Attributes
    ----------
    where : str
        The figure, table or section of the paper that makes the claim.
    statement : str
        The paper's claim, in its words where it has them.
    effect : str
        How one replicate's effect is computed, signed so that positive is the paper's direction.
    unit : str
        The effect's unit (``"pp"``: percentage points; ``""``: a similarity or a fraction).
    """

    where: str
    statement: str
    effect: str
    unit: str


#: Every claim the book decides, by the key its chapter records it under.
CLAIMS: dict[str, Claim] = {
    "claim_fig4_grelu_below_orthogonal": Claim(
        "Fig. 4",
        "after fine-tuning, a network recovers from a G_ReLU transform of a layer and not from a "
        "random orthogonal one: the G_ReLU rotation penalty is the smaller",
        "per network: orthogonal minus G_ReLU penalty after fine-tuning from the transformed "
        "start, final evaluation, mean over trials and layers",
        "pp",
    ),
    "claim_fig1_full_near_zero": Claim(
        "Fig. 1",
        "a full 1x1-convolution stitching layer stitches with a negligible penalty",
        "per pair: 2 pp minus the full layer's penalty, mean over layers (final evaluation)",
        "pp",
    ),
    "claim_fig1_grelu_below_rank1": Claim(
        "Fig. 1",
        "G_ReLU stitching layers come close to expressive linear ones: below rank-1 layers",
        "per pair: rank-1 minus G_ReLU penalty, mean over layers (final evaluation; the G_ReLU "
        "variant that ran is named in the note)",
        "pp",
    ),
    "claim_fig1_grelu_below_10pp": Claim(
        "Fig. 1, Section 1",
        "G_ReLU stitching costs less than about 10 % accuracy at most activation layers",
        "per pair: 10 pp minus the median over layers of the G_ReLU penalty (final evaluation)",
        "pp",
    ),
    "claim_fig1_depth_trend": Claim(
        "Fig. 1, Section 5",
        "stitching penalties increase with depth, only to decrease in the last layer",
        "per pair, G_ReLU penalties p_1..p_k over the stitched layers in depth order: "
        "min(p_(k-1) - p_1, p_(k-1) - p_k)",
        "pp",
    ),
    "claim_fig6_resnet_differs_from_myrtle": Claim(
        "appendix D.3, Fig. 6",
        "in ResNet20, intertwiner stitching depends more on the architecture than "
        "affine stitching: in-block layers are harder to stitch with G_ReLU",
        "per pair: the G_ReLU penalty's in-block minus block-output gap, "
        "minus the full layer's gap",
        "pp",
    ),
    "claim_d3_leaky_slope": Claim(
        "appendix D.3",
        "LeakyReLU networks stitch with similar G_ReLU penalties up to, but not including, "
        "a negative slope of 1",
        "per pair index: G_ReLU penalty at slope 1 minus the mean over slopes below 1",
        "pp",
    ),
    "claim_table2_grelu_below_orthogonal": Claim(
        "Table 2",
        "distinct representations register less similarity in G_ReLU-Procrustes than in "
        "orthogonal Procrustes",
        "per pair: orthogonal minus G_ReLU-Procrustes similarity, mean over the compared layers",
        "",
    ),
    "claim_fig5_same_depth_most_similar": Claim(
        "Fig. 5",
        "layers at the same depth of two Myrtle CNNs are the most similar",
        "per pair, G_ReLU-CKA matrix S: mean over layers i of S[i, i] - max over j != i of S[i, j]",
        "",
    ),
    "claim_fig2_block_structure": Claim(
        "Fig. 2, Remark 3.6",
        "ResNet20's block structure is visible: layers inside residual blocks are "
        "less similar between seeds",
        "per pair, G_ReLU-CKA: mean diagonal of block-output layers minus that of in-block layers",
        "",
    ),
    "claim_fig3_relu_falls": Claim(
        "Fig. 3, Section 6",
        "interpretability falls as the basis of a ReLU network's residual output is "
        "rotated away from the neurons",
        "per network: fraction of units that detect a concept at alpha = 0 minus at alpha = 1",
        "",
    ),
    "claim_fig3_no_residual_relu_does_not_fall": Claim(
        "Fig. 3, Section 6",
        "without an activation on the residual output, interpretability does not drop "
        "with rotation",
        "per network: 0.05 minus the fall (fraction of detectors at alpha = 0 minus at alpha = 1), "
        "so a fall below 5 % of the units counts as no drop",
        "",
    ),
}


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A claim decided by :func:`decide`.

    Attributes
    ----------
    verdict : str
        One of :data:`VERDICTS`.
    n : int
        Replicates.
    effect : float
        Mean effect over the replicates, in the claim's unit.
    std : float
        Standard deviation of the effect over the replicates (``ddof=1``).
    low, high : float
        The :data:`LEVEL` t-interval of the mean effect.
    effects : tuple of float
        The per-replicate effects it was decided from.
    """

    verdict: str
    n: int
    effect: float
    std: float
    low: float
    high: float
    effects: tuple


def decide(effects, *, key: str) -> Verdict:
    """Decide a claim from its per-replicate effects with the one rule (:data:`RULE`).

    Parameters
    ----------
    effects : sequence of float, shape (n,)
        One effect per independent replicate, signed so that positive is the paper's direction.
    key : str
        The claim's key, a key of :data:`CLAIMS` (named in errors).

    Returns
    -------
    Verdict

    Raises
    ------
    ValueError
        If ``key`` is not a claim, fewer than 2 effects are given, or an effect is not finite; the
        message names the key.
    """
    check_choice("claim", key, CLAIMS)
    x = np.asarray(effects, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError(
            f"claim {key!r} needs at least 2 replicates to be decided, got n = {x.size}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"claim {key!r} has a non-finite effect among {x.tolist()}")
    mean, std = float(x.mean()), float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, x.size - 1)) * std / math.sqrt(x.size)
    low, high = mean - half, mean + half
    verdict = "holds" if low > 0 else "fails" if high < 0 else "inconclusive"
    return Verdict(
        verdict=verdict,
        n=int(x.size),
        effect=mean,
        std=std,
        low=low,
        high=high,
        effects=tuple(x.tolist()),
    )


def check_claim_row(row: dict) -> None:
    """Check a recorded claim row (from a results file) before it is shown.

    Parameters
    ----------
    row : dict
        A row written by :func:`record`: ``key``, ``verdict``, ``n``, ``ours`` (the mean
        effect), ``low`` and ``high``.

    Raises
    ------
    ValueError
        Naming the key, if the verdict is unknown, ``n < 2``, the effect or its interval is not
        finite, or the verdict is not the one the rule gives for the recorded interval.
    """
    key = row.get("key")
    if row.get("verdict") not in VERDICTS:
        raise ValueError(
            f"claim {key!r} has an unknown verdict {row.get('verdict')!r}; expected one of "
            f"{', '.join(VERDICTS)}"
        )
    n = row.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(
            f"claim {key!r} rests on n = {n!r} replicates; a claim needs an integer n >= 2"
        )
    values = [row.get(f) for f in ("ours", "low", "high")]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ValueError(f"claim {key!r} has a missing or non-finite effect or interval: {values}")
    low, high = values[1], values[2]
    expected = "holds" if low > 0 else "fails" if high < 0 else "inconclusive"
    if row["verdict"] != expected:
        raise ValueError(
            f"claim {key!r} is recorded as {row['verdict']!r} but its interval "
            f"[{low:.4g}, {high:.4g}] gives {expected!r} under the rule: {RULE}"
        )


def record(rec: Recorder, key: str, effects, note: str = "") -> Verdict:
    """Decide one claim from its per-replicate effects and record it as a row of ``rec``.

    The row holds the mean effect as ``ours`` (with its ``std`` and the claim's unit) and the fields
    ``verdict``, ``n``, ``low``, ``high`` (the interval), ``rule``, ``where``, ``statement`` and
    ``effects`` (the per-replicate values).

    Parameters
    ----------
    rec : lib.results.Recorder
        The chapter's recorder.
    key : str
        A key of :data:`CLAIMS`, e.g. ``"claim_fig4_grelu_below_orthogonal"``.
    effects : sequence of float, shape (n,)
        One effect per replicate, in the claim's unit, positive in the paper's direction.
    note : str
        What the reader needs beyond the claim's effect definition (replicates, variant, scale).

    Returns
    -------
    Verdict
        As :func:`decide` gives it (which raises ``ValueError`` naming the key on bad input).
    """
    v = decide(effects, key=key)
    claim = CLAIMS[key]
    rec.add(key, v.effect, unit=claim.unit, note=note or claim.effect, std=v.std)
    rec.rows[-1].update(
        verdict=v.verdict,
        n=v.n,
        low=v.low,
        high=v.high,
        rule=RULE,
        where=claim.where,
        statement=claim.statement,
        effects=list(v.effects),
    )
    return v


def load_claims(scale: str, directory=None) -> list[dict]:
    """Every claim recorded at a scale, each row checked by :func:`check_claim_row`.

    Parameters
    ----------
    scale : str
        A key of :data:`lib.settings.SCALES`.
    directory : path-like, optional
        As for :func:`lib.results.load_results`.

    Returns
    -------
    list of dict
        The rows of :func:`lib.results.load_results` that hold a verdict.

    Raises
    ------
    ValueError
        Naming the key (and the chapter that recorded it) if a claim row is malformed, and as
        :func:`lib.results.load_results` for a damaged file.
    """
    rows = [r for r in load_results(scale, directory) if "verdict" in r]
    for r in rows:
        try:
            check_claim_row(r)
        except ValueError as exc:
            raise ValueError(
                f"{exc} (recorded by chapter {r['chapter']!r}, seed {r['seed']}; re-run it)"
            ) from exc
    return rows


def claims_table(rows: list[dict]) -> str:
    """Recorded claims as a Markdown table, one row per claim (via :func:`lib.results.table`).

    Parameters
    ----------
    rows : list of dict
        From :func:`load_claims`; rows without a verdict are left out.

    Returns
    -------
    str
        Columns: claim key, where the paper makes it, its statement, replicates ``n``, the mean
        effect with its 95 % interval, and the verdict (``fails`` in bold), ordered as
        :data:`CLAIMS`.
    """
    order = list(CLAIMS)
    claims = sorted(
        (r for r in rows if "verdict" in r),
        key=lambda r: (order.index(r["key"]) if r["key"] in order else len(order), r["key"]),
    )
    shown = {v: v for v in VERDICTS} | {"fails": "**fails**"}
    return table(
        ["claim", "paper", "statement", "n", "effect [95 % interval]", "verdict"],
        [
            [
                f"`{r['key']}`",
                r.get("where", ""),
                r.get("statement", ""),
                r["n"],
                f"{r['ours']:+.3g} [{r['low']:+.3g}, {r['high']:+.3g}]"
                + (f" {r['unit']}" if r["unit"] else ""),
                shown[r["verdict"]],
            ]
            for r in claims
        ],
        align="lllrrl",
    )
