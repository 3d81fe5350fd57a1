"""The paper's empirical claims, each decided by one rule that was fixed before any data.

``rule`` states the claims (:data:`CLAIMS`), the decision rule (:func:`decide`) and how a chapter
records a verdict and chapter 09 reads it back (:func:`record`, :func:`load_claims`,
:func:`claims_table`); ``effects`` turns a chapter's measurements into each claim's per-replicate
effects.
"""

from .effects import (
    block_structure_effect,
    fig1_effects,
    fig3_effects,
    fig6_effect,
    leaky_slope_effect,
    similarity_effects,
)
from .rule import (
    CLAIMS,
    LEVEL,
    RULE,
    VERDICTS,
    Claim,
    Verdict,
    check_claim_row,
    claims_table,
    decide,
    load_claims,
    record,
)

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
    "fig1_effects",
    "similarity_effects",
    "block_structure_effect",
    "fig6_effect",
    "leaky_slope_effect",
    "fig3_effects",
]
