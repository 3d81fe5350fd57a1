"""Tests of lib.metrics.layers: all layer pairs of two models' features, the U-centred Gram matrices
they are built on and the summaries the similarity chapter reads off the matrices (the features of
models and the cached comparison: test_similarity.py)."""

import numpy as np
import pytest
import torch
from reference import conv_features, grelu_act, related

import lib.metrics as M

SEEDS = [0, 1, 2]


def layered(seed, n=40):
    """Features of three 'layers' of different shapes; the third is a noisy G_ReLU image of the
    first."""
    a = conv_features(seed, n=n, c=5, h=4, w=4)
    b = conv_features(seed + 20, n=n, c=7, h=2, w=2)
    return {"a": a, "b": b, "c": related(grelu_act(a, seed, translate=False), seed, 0.3)}


def one_measure(fa, fb, measure, **kw):
    return M.similarity_matrices(fa, fb, (measure,), **kw)[measure]


@pytest.mark.parametrize("seed", SEEDS)
def test_u_centered_grams_give_the_unbiased_hsic(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((30, 6))
    K, L = torch.as_tensor(x @ x.T), torch.as_tensor(np.abs(y) @ np.abs(y).T)
    expected = M.hsic(K, L)
    got = float((M.u_center(K.clone()) * M.u_center(L.clone())).sum()) / (30 * 27)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


# Each measure's function, named here rather than read from the registry, so that a registry entry
# pointing at another function fails.
PAIRWISE = dict(
    grelu_cka=M.grelu_cka,
    psd_grelu_cka=M.psd_grelu_cka,
    orthogonal_cka=M.orthogonal_cka,
    linear_cka=M.linear_cka,
    grelu_procrustes=M.grelu_procrustes,
    orthogonal_procrustes=M.orthogonal_procrustes,
)


@pytest.mark.parametrize("seed", SEEDS)
def test_similarity_matrices_match_the_pairwise_measures(seed):
    fa, fb = layered(seed), layered(seed + 100)
    fb["c"] = fa["c"]
    assert set(M.MATRIX_MEASURES) == set(PAIRWISE)
    out = M.similarity_matrices(fa, fb, M.MATRIX_MEASURES, dtype=torch.float64)
    for m, S in out.items():
        assert S.shape == (3, 3)
        for i, a in enumerate(fa):
            for j, b in enumerate(fb):
                if M.MEASURES[m].kind == "cka" or fa[a].shape[2:] == fb[b].shape[2:]:
                    assert S[i, j] == pytest.approx(PAIRWISE[m](fa[a], fb[b]), abs=1e-10), (m, a, b)
                else:
                    assert np.isnan(S[i, j]), (m, a, b)
    # Same layer: every measure is 1 (layer "c" is shared by both models).
    for m in M.MATRIX_MEASURES:
        assert out[m][2, 2] == pytest.approx(1.0, abs=1e-10)


def test_a_measure_without_a_matrix_form_is_refused_not_computed_as_another():
    # Before the registry, every name outside the CKAs was computed as orthogonal_procrustes.
    fa = layered(0)
    accepted = ", ".join(map(repr, M.MATRIX_MEASURES))
    for name in ("rbf_cka", "cca"):
        with pytest.raises(
            ValueError, match=f"^unknown measure '{name}'; accepted values: {accepted}$"
        ):
            one_measure(fa, fa, name)
        with pytest.raises(ValueError, match=f"^unknown measure '{name}'; accepted values: "):
            M.normalized_gram(fa["a"], name)


def test_similarity_matrices_float32_and_diagonal():
    fa, fb = layered(3), layered(4)
    full = M.similarity_matrices(fa, fb, M.MATRIX_MEASURES, dtype=torch.float64)
    diag = M.similarity_matrices(fa, fb, M.MATRIX_MEASURES, pairs="diagonal")
    for m in M.MATRIX_MEASURES:
        assert np.isnan(diag[m][~np.eye(3, dtype=bool)]).all()
        np.testing.assert_allclose(np.diag(diag[m]), np.diag(full[m]), atol=1e-5)
    assert one_measure(fa, fb, "grelu_cka")[0, 2] == pytest.approx(
        full["grelu_cka"][0, 2], abs=1e-5
    )


def test_normalized_gram_inner_product_is_cka():
    x, y = conv_features(1), related(conv_features(1), 1)
    for m, fn in PAIRWISE.items():
        if M.MEASURES[m].kind != "cka":
            continue
        K, L = (M.normalized_gram(a, m, dtype=torch.float64) for a in (x, y))
        assert float(torch.linalg.matrix_norm(K)) == pytest.approx(1.0)
        assert float((K * L).sum()) == pytest.approx(fn(x, y), abs=1e-10)


def test_similarity_matrix_errors():
    fa = layered(0)
    with pytest.raises(ValueError, match="measure"):
        one_measure(fa, fa, "cca")
    with pytest.raises(ValueError, match="pairs"):
        one_measure(fa, fa, "grelu_cka", pairs="upper")
    with pytest.raises(ValueError, match="as many layers"):
        one_measure(fa, {"a": fa["a"]}, "grelu_cka", pairs="diagonal")
    with pytest.raises(ValueError, match="same number of samples"):
        one_measure(fa, {"a": fa["a"][:10]}, "grelu_cka")
    with pytest.raises(ValueError, match="at least one layer"):
        one_measure({}, fa, "grelu_cka")
    with pytest.raises(ValueError, match="channel"):
        one_measure({"z": np.zeros_like(fa["a"])}, fa, "grelu_cka")


def test_best_matches():
    S = np.array([[0.9, 0.1, 0.2], [0.3, 0.2, np.nan], [np.nan, np.nan, np.nan]])
    np.testing.assert_array_equal(M.best_matches(S), [0, 0, -1])
    with pytest.raises(ValueError, match="2-D"):
        M.best_matches(np.ones(3))


def test_same_layer_rate_and_diagonal_summary():
    # Row 2 has a single compared entry (as a Procrustes row with one same-shaped layer): not
    # counted.
    assert M.same_layer_rate([[0.9, 0.2, np.nan], [0.3, 0.8, np.nan], [np.nan, np.nan, 0.5]]) == 1.0
    S = np.array([[0.9, 0.95, 0.1], [0.3, 0.8, 0.2], [0.1, 0.2, 0.7]])
    summary = M.diagonal_summary(S, in_block=[False, True, False])
    assert summary["same_layer"] == pytest.approx(2 / 3)
    assert (summary["early"], summary["late"]) == (0.9, 0.7)
    assert summary["in_block"] == 0.8 and summary["other"] == pytest.approx(0.8)
    assert M.diagonal_summary(S)["in_block"] is None and M.diagonal_summary(S)["other"] is None
