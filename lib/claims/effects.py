"""The per-replicate effects of each claim of :data:`lib.claims.CLAIMS`, from a chapter's arrays.

Each function turns what a chapter measured (penalties, similarities, detector fractions, one row
per replicate) into the signed effects that :func:`lib.claims.decide` reads: positive is the paper's
direction, as each claim's ``effect`` field says in words.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "fig1_effects",
    "similarity_effects",
    "block_structure_effect",
    "fig6_effect",
    "leaky_slope_effect",
    "fig3_effects",
]


def fig1_effects(final: dict) -> dict:
    """The per-pair effects of Fig. 1's claims, from final-evaluation stitching penalties.

    Parameters
    ----------
    final : dict
        ``{"full": P, "rank1": P, "grelu": P}``, each ``P`` an array of shape (pairs, layers): the
        stitching penalty (pp) of that variant at the last evaluation, layers in depth order.

    Returns
    -------
    dict
        ``{claim key: effects of shape (pairs,)}`` for the four ``claim_fig1_*`` claims; the depth
        trend only when at least 3 layers were stitched.
    """
    full, rank1, grelu = (
        np.asarray(final[v], dtype=np.float64) for v in ("full", "rank1", "grelu")
    )
    out = {
        "claim_fig1_full_near_zero": 2.0 - full.mean(axis=1),
        "claim_fig1_grelu_below_rank1": (rank1 - grelu).mean(axis=1),
        "claim_fig1_grelu_below_10pp": 10.0 - np.median(grelu, axis=1),
    }
    if grelu.shape[1] >= 3:
        out["claim_fig1_depth_trend"] = np.minimum(
            grelu[:, -2] - grelu[:, 0], grelu[:, -2] - grelu[:, -1]
        )
    return out


def _diagonal_margin(S: np.ndarray) -> float:
    # Mean over rows of (the diagonal entry minus the largest other entry of its row).
    S = np.asarray(S, dtype=np.float64)
    off = np.where(np.eye(len(S), dtype=bool), -np.inf, S)
    return float(np.mean(np.diag(S) - off.max(axis=1)))


def similarity_effects(table2: dict, cka: list) -> dict:
    """The per-pair effects of Table 2's and Fig. 5's claims.

    Parameters
    ----------
    table2 : dict
        ``{"grelu_procrustes": P, "orthogonal_procrustes": P}``, each ``P`` of shape (pairs,
        layers): the similarity of the same layer in the two networks of a pair.
    cka : list of numpy.ndarray
        One G_ReLU-CKA matrix per pair, shape (layers, layers) (rows: network A's layers).

    Returns
    -------
    dict
        ``claim_table2_grelu_below_orthogonal`` and ``claim_fig5_same_depth_most_similar``, each of
        shape (pairs,).
    """
    g, o = (
        np.asarray(table2[m], dtype=np.float64)
        for m in ("grelu_procrustes", "orthogonal_procrustes")
    )
    return {
        "claim_table2_grelu_below_orthogonal": (o - g).mean(axis=1),
        "claim_fig5_same_depth_most_similar": np.array([_diagonal_margin(S) for S in cka]),
    }


def block_structure_effect(cka: list, in_block) -> np.ndarray:
    """The per-pair effect of Fig. 2's block-structure claim.

    Parameters
    ----------
    cka : list of numpy.ndarray
        One G_ReLU-CKA matrix per ResNet20 pair, shape (layers, layers).
    in_block : sequence of bool, shape (layers,)
        Whether each layer lies inside a residual block (Remark 3.6).

    Returns
    -------
    numpy.ndarray
        Shape (pairs,): mean diagonal over block-output layers minus mean diagonal over in-block
        layers.
    """
    inside = np.asarray(in_block, dtype=bool)
    diag = np.array([np.diag(np.asarray(S, dtype=np.float64)) for S in cka])
    return diag[:, ~inside].mean(axis=1) - diag[:, inside].mean(axis=1)


def fig6_effect(grelu: np.ndarray, full: np.ndarray, in_block) -> np.ndarray:
    """The per-pair effect of Fig. 6's claim: G_ReLU's in-block gap minus the full layer's.

    Parameters
    ----------
    grelu, full : numpy.ndarray
        Stitching penalties (pp) of shape (pairs, layers).
    in_block : sequence of bool, shape (layers,)

    Returns
    -------
    numpy.ndarray
        Shape (pairs,), in pp.
    """
    inside = np.asarray(in_block, dtype=bool)

    def gap(p):
        p = np.asarray(p, dtype=np.float64)
        return p[:, inside].mean(axis=1) - p[:, ~inside].mean(axis=1)

    return gap(grelu) - gap(full)


def leaky_slope_effect(penalties: dict) -> np.ndarray:
    """The per-pair effect of appendix D.3's claim: the G_ReLU penalty at slope 1 minus below 1.

    Parameters
    ----------
    penalties : dict
        ``{slope: array of shape (pairs,)}``, G_ReLU stitching penalties (pp, mean over the sweep's
        layers); it must hold slope 1.0 and at least one slope below 1.

    Returns
    -------
    numpy.ndarray
        Shape (pairs,): penalty at slope 1 minus the mean over the slopes below 1, pair by pair.
    """
    below = [np.asarray(v, dtype=np.float64) for s, v in penalties.items() if s < 1]
    if 1.0 not in penalties or not below:
        raise ValueError(
            f"penalties must hold slope 1.0 and a slope below 1; got slopes {sorted(penalties)}"
        )
    return np.asarray(penalties[1.0], dtype=np.float64) - np.mean(below, axis=0)


def fig3_effects(relu: np.ndarray, noresrelu: np.ndarray) -> dict:
    """The per-network effects of Fig. 3's two claims.

    Parameters
    ----------
    relu, noresrelu : numpy.ndarray
        Shape (networks, alphas): the fraction of units that detect a concept at each rotation
        ``alpha`` (the first column alpha = 0, the last alpha = 1), for the networks with and
        without an activation on the residual output.

    Returns
    -------
    dict
        ``claim_fig3_relu_falls`` (the fall from alpha = 0 to 1) and
        ``claim_fig3_no_residual_relu_does_not_fall`` (0.05 minus that fall), each of shape
        (networks,).
    """

    def fall(f):
        f = np.asarray(f, dtype=np.float64)
        return f[:, 0] - f[:, -1]

    return {
        "claim_fig3_relu_falls": fall(relu),
        "claim_fig3_no_residual_relu_does_not_fall": 0.05 - fall(noresrelu),
    }
