"""Tests of lib.metrics.layers: all layer pairs of two models, the U-centred Gram matrices they are built
on, the cached pair similarities and the summaries the similarity chapter reads off the matrices."""
import copy

import numpy as np
import pytest
import torch

import lib.metrics as M
from lib.models import features, myrtle_cnn
from reference import conv_features, grelu_act, related

SEEDS = [0, 1, 2]


def layered(seed, n=40):
    """Features of three 'layers' of different shapes; the third is a noisy G_ReLU image of the first."""
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


@pytest.mark.parametrize("seed", SEEDS)
def test_similarity_matrices_match_the_pairwise_measures(seed):
    fa, fb = layered(seed), layered(seed + 100)
    fb["c"] = fa["c"]
    out = M.similarity_matrices(fa, fb, M.MATRIX_MEASURES, dtype=torch.float64)
    pairwise = dict(grelu_cka=lambda x, y: M.grelu_cka(x, y), orthogonal_cka=M.orthogonal_cka,
                    linear_cka=M.linear_cka, grelu_procrustes=M.grelu_procrustes,
                    orthogonal_procrustes=M.orthogonal_procrustes)
    for m, S in out.items():
        assert S.shape == (3, 3)
        for i, a in enumerate(fa):
            for j, b in enumerate(fb):
                if m in M.CKA_MEASURES or fa[a].shape[2:] == fb[b].shape[2:]:
                    assert S[i, j] == pytest.approx(pairwise[m](fa[a], fb[b]), abs=1e-10), (m, a, b)
                else:
                    assert np.isnan(S[i, j]), (m, a, b)
    # Same layer: every measure is 1 (layer "c" is shared by both models).
    for m in M.MATRIX_MEASURES:
        assert out[m][2, 2] == pytest.approx(1.0, abs=1e-10)


def test_similarity_matrices_float32_and_diagonal():
    fa, fb = layered(3), layered(4)
    full = M.similarity_matrices(fa, fb, M.MATRIX_MEASURES, dtype=torch.float64)
    diag = M.similarity_matrices(fa, fb, M.MATRIX_MEASURES, pairs="diagonal")
    for m in M.MATRIX_MEASURES:
        assert np.isnan(diag[m][~np.eye(3, dtype=bool)]).all()
        np.testing.assert_allclose(np.diag(diag[m]), np.diag(full[m]), atol=1e-5)
    assert one_measure(fa, fb, "grelu_cka")[0, 2] == pytest.approx(full["grelu_cka"][0, 2], abs=1e-5)


def test_normalized_gram_inner_product_is_cka():
    x, y = conv_features(1), related(conv_features(1), 1)
    for m, fn in (("grelu_cka", M.grelu_cka), ("orthogonal_cka", M.orthogonal_cka), ("linear_cka", M.linear_cka)):
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


def test_layer_features_match_model_features_in_any_batching(random_images):
    model = myrtle_cnn(width=0.0625)
    x = random_images(10, seed=0)
    ref = features(model, x)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-2)):
        got = M.layer_features(model, x, batch_size=3, dtype=dtype)
        assert list(got) == list(ref)
        for name in ref:
            assert got[name].dtype == dtype and got[name].device.type == "cpu"
            torch.testing.assert_close(got[name].float(), ref[name], atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="dtype"):
        M.layer_features(model, x, dtype=torch.float64)


def test_model_pair_similarities_takes_features_once_and_matches_similarity_matrices(random_images):
    a, b = myrtle_cnn(width=0.0625), myrtle_cnn(width=0.0625)
    x = random_images(12, seed=1)
    out = M.model_pair_similarities(a, b, x, ["act2", "act3"], ("grelu_cka", "grelu_procrustes"), dtype=torch.float64)
    assert out["layers"] == ["act2", "act3"] and out["n_samples"] == 12
    assert set(out["seconds"]) == {"features", "grelu_cka", "grelu_procrustes"}
    fa, fb = M.layer_features(a, x, ["act2", "act3"]), M.layer_features(b, x, ["act2", "act3"])
    ref = one_measure(fa, fb, "grelu_cka", dtype=torch.float64)
    np.testing.assert_allclose(out["matrices"]["grelu_cka"], ref, atol=1e-6)
    # act2 (32x32) and act3 (16x16) differ in spatial shape: Procrustes only on the diagonal.
    assert np.isnan(out["matrices"]["grelu_procrustes"][0, 1]) and np.isfinite(out["matrices"]["grelu_procrustes"][0, 0])


def test_same_layer_rate_and_diagonal_summary():
    # Row 2 has a single compared entry (as a Procrustes row with one same-shaped layer): not counted.
    assert M.same_layer_rate([[0.9, 0.2, np.nan], [0.3, 0.8, np.nan], [np.nan, np.nan, 0.5]]) == 1.0
    S = np.array([[0.9, 0.95, 0.1], [0.3, 0.8, 0.2], [0.1, 0.2, 0.7]])
    summary = M.diagonal_summary(S, in_block=[False, True, False])
    assert summary["same_layer"] == pytest.approx(2 / 3)
    assert (summary["early"], summary["late"]) == (0.9, 0.7)
    assert summary["in_block"] == 0.8 and summary["other"] == pytest.approx(0.8)
    assert M.diagonal_summary(S)["in_block"] is None and M.diagonal_summary(S)["other"] is None
    assert set(M.MEASURE_NAMES) == set(M.MATRIX_MEASURES)


def test_cached_pair_similarities_keys_on_weights_and_images(tmp_path, monkeypatch, random_images):
    # Issue 26: the key held the zoo key and the number of images only. random_transform keeps the
    # zoo key, so a G_ReLU-transformed copy's entry (diagonal 1) was served for a rotated copy.
    from lib.symmetry import random_transform

    monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path))
    base = myrtle_cnn(width=0.0625, batchnorm=False).eval()
    base.zoo_key = "key-a"
    gen = torch.Generator().manual_seed(0)
    grelu, _ = random_transform(base, gen, "intertwiner")
    rotated, _ = random_transform(base, gen, "orthogonal")
    assert grelu.zoo_key == rotated.zoo_key == "key-a"
    layers, x = ["act1", "act2", "act3"], random_images(12, seed=2)
    first = M.cached_pair_similarities(base, grelu, x, layers, ("grelu_cka",))
    np.testing.assert_allclose(np.diag(first["matrices"]["grelu_cka"]), 1.0, atol=1e-5)
    second = M.cached_pair_similarities(base, rotated, x, layers, ("grelu_cka",))
    truth = M.model_pair_similarities(base, rotated, x, layers, ("grelu_cka",))
    truth = truth["matrices"]["grelu_cka"]
    assert np.diag(truth).min() < 0.99
    np.testing.assert_allclose(second["matrices"]["grelu_cka"], truth, atol=1e-6)
    # Other images of the same count get their own entry.
    other_x = random_images(12, seed=3)
    other = M.cached_pair_similarities(base, rotated, other_x, layers, ("grelu_cka",))
    truth = M.model_pair_similarities(base, rotated, other_x, layers, ("grelu_cka",))
    truth = truth["matrices"]["grelu_cka"]
    assert not np.allclose(truth, second["matrices"]["grelu_cka"])
    np.testing.assert_allclose(other["matrices"]["grelu_cka"], truth, atol=1e-6)
    # The key is the content: a copy with the same weights reads the entry back, computing nothing;
    # the same model changed in place does not.
    fail = lambda *args, **kwargs: pytest.fail("recomputed")
    monkeypatch.setattr(M.layers, "model_pair_similarities", fail)
    again = M.cached_pair_similarities(copy.deepcopy(base), rotated, x, layers, ("grelu_cka",))
    np.testing.assert_array_equal(again["matrices"]["grelu_cka"], second["matrices"]["grelu_cka"])
    with torch.no_grad():
        next(rotated.parameters()).mul_(2.0)
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        M.cached_pair_similarities(base, rotated, x, layers, ("grelu_cka",))
    assert len(list((tmp_path / "memo" / "similarity").glob("*.pkl"))) == 3
