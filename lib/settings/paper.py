"""The paper's reference numbers, in one table (:data:`PAPER`).

Every number a chapter compares ours with (and records with ``lib.results.Recorder.add(...,
paper=...)``) is read from here, each with where it comes from. Values that follow from a theorem
(zero penalty of a planted permutation, a PSD kernel) are the mathematics, not the paper's
measurements, and stay with the checks that state them.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Reported", "PAPER"]


@dataclasses.dataclass(frozen=True)
class Reported:
    """One number (or row of numbers) the paper reports, and where.

    Parameters
    ----------
    value : float, int, str or tuple
        The number in the chapter's unit (percent for accuracies; a count of layers for a statement
        that holds at some layers; a tuple for a table row; a word for a qualitative trend).
    std : float or tuple, optional
        The spread the paper gives with it (same shape as ``value``), or ``None``.
    source : str
        Where it is stated: a caption, a table, the text, or the implementation notes.
    """

    value: object
    std: object = None
    source: str = ""

    def __str__(self) -> str:
        """The value as the chapters print it: ``"91.3 ± 0.2"``, or the value alone without a
        spread."""
        return f"{self.value}" if self.std is None else f"{self.value} ± {self.std}"


#: The paper's reference numbers by name, each with its source (a :class:`Reported`).
PAPER: dict[str, Reported] = {
    # -- Table 1: activation -> (its intertwiner group G_sigma, phi_sigma), in lib.groups' names --
    "table1": Reported(
        {
            "identity": ("gl", "A"),
            "sigmoid": ("permutation", "A"),
            "relu": ("positive_monomial", "A"),
            "leaky_relu(0.01)": ("positive_monomial", "A"),
            "rbf": ("signed_permutation", "abs(A)"),
            "polynomial(2)": ("monomial", "A^⊙2"),
        },
        None,
        "Table 1: identity, sigmoid, ReLU, LeakyReLU, RBF and x^d (here d = 2)",
    ),
    # -- clean test accuracies (%) ----------------------------------------------------------------
    "myrtle_acc": Reported(
        91.3, 0.2, "Fig. 1 caption: 'The accuracy of the models was 91.3 ± 0.2%'"
    ),
    "resnet20_acc": Reported(89.9, None, "implementation notes; not in the paper's text"),
    # The Fig. 4 caption says "≈ 87%"; the implementation notes' 87.4 is not in the paper's text, so
    # the book compares with the paper's own number.
    "myrtle_nobn_acc": Reported(87.0, None, "Fig. 4 caption: 'baseline accuracy was ≈ 87%'"),
    # -- Fig. 4: layers (of the 3) where a statement holds -----------------------------------------
    "fig4_grelu_below_orthogonal": Reported(
        3, None, "Section 3.3: 'significantly smaller rotation penalties'"
    ),
    "fig4_gap_exceeds_spread": Reported(3, None, "Fig. 4: the confidence intervals do not overlap"),
    # -- Fig. 1: layers (of the 4) where a statement holds -----------------------------------------
    "fig1_full_below_grelu": Reported(
        4, None, "Section 4: full stitching nearly recovers the accuracy"
    ),
    "fig1_grelu_below_rank": Reported(
        4, None, "Section 4: reduced-rank layers 'incur significantly higher stitching penalties'"
    ),
    "fig1_grelu_below_10pp": Reported(
        3, None, "Section 4: within 10 points 'in all but one layer'"
    ),
    # -- Fig. 6 (appendix D.3): 1 where the paper states it ----------------------------------------
    "fig6_grelu_gap_exceeds_full_gap": Reported(
        1, None, "Fig. 6: intertwiner stitching more architecture-dependent than affine"
    ),
    # -- Table 2: Procrustes similarity at the Myrtle CNN's layers 3, 6, 10, 14 (32 pairs) ---------
    "table2_grelu_procrustes": Reported(
        (0.6208, 0.5106, 0.4432, 0.4899),
        (0.008, 0.005, 0.004, 0.002),
        "Table 2, G_ReLU-Procrustes, mean ± std over 32 pairs",
    ),
    "table2_orthogonal_procrustes": Reported(
        (0.7724, 0.5743, 0.5087, 0.5825),
        (0.028, 0.040, 0.016, 0.019),
        "Table 2, orthogonal Procrustes, mean ± std over 32 pairs",
    ),
    # -- Figs. 2 and 5: the CKA observations, 1 where the paper states it --------------------------
    "cka_early_above_late": Reported(
        1, None, "Section 5, observation (b): early layers are highly similar"
    ),
    "cka_in_block_below_other": Reported(
        1, None, "Section 5, observation (c): layers inside residual blocks are less similar"
    ),
    "cka_late_grelu_below_orthogonal": Reported(
        1, None, "Section 5, observation (d): later layers less similar under G_ReLU-CKA"
    ),
    # -- Fig. 3 and Fig. 19: interpretable units along the rotation path (qualitative) -------------
    "fig3_relu": Reported("falls", None, "Fig. 3: ResNet-50 with ReLU on the residual output"),
    "fig3_noresrelu": Reported("flat", None, "Fig. 3: ResNet-50 without residual ReLU"),
    "fig3_convnext": Reported("rises", None, "Fig. 3: ConvNeXt-T"),
    "fig19_inner": Reported(
        "rises", None, "Fig. 19: the conv layer inside the block, no residual ReLU"
    ),
}
