"""Tests of lib.similarity: the features of models and the all-layer comparison of two models,
cached on disk (the measures themselves take arrays: test_metrics_layers.py)."""

import copy

import numpy as np
import pytest
import torch

import lib.metrics as M
from lib import similarity
from lib.models import features, myrtle_cnn
from lib.symmetry import random_transform


def test_layer_features_match_model_features_in_any_batching(random_images):
    model = myrtle_cnn(width=0.0625)
    x = random_images(10, seed=0)
    ref = features(model, x)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-2)):
        got = similarity.layer_features(model, x, batch_size=3, dtype=dtype)
        assert list(got) == list(ref)
        for name in ref:
            assert got[name].dtype == dtype and got[name].device.type == "cpu"
            torch.testing.assert_close(got[name].float(), ref[name], atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="dtype"):
        similarity.layer_features(model, x, dtype=torch.float64)


def test_model_pair_similarities_takes_features_once_and_matches_similarity_matrices(random_images):
    a, b = myrtle_cnn(width=0.0625), myrtle_cnn(width=0.0625)
    x = random_images(12, seed=1)
    layers = ["act2", "act3"]
    out = similarity.model_pair_similarities(
        a, b, x, layers, ("grelu_cka", "grelu_procrustes"), dtype=torch.float64
    )
    assert out["layers"] == layers and out["n_samples"] == 12
    assert set(out["seconds"]) == {"features", "grelu_cka", "grelu_procrustes"}
    fa, fb = (similarity.layer_features(m, x, layers) for m in (a, b))
    ref = M.similarity_matrices(fa, fb, ("grelu_cka",), dtype=torch.float64)["grelu_cka"]
    np.testing.assert_allclose(out["matrices"]["grelu_cka"], ref, atol=1e-6)
    # act2 (32x32) and act3 (16x16) differ in spatial shape: Procrustes only on the diagonal.
    procrustes = out["matrices"]["grelu_procrustes"]
    assert np.isnan(procrustes[0, 1]) and np.isfinite(procrustes[0, 0])


def test_model_pair_similarities_default_to_the_papers_measures(random_images):
    a, b = myrtle_cnn(width=0.0625), myrtle_cnn(width=0.0625)
    out = similarity.model_pair_similarities(a, b, random_images(8, seed=4), ["act3"])
    assert list(out["matrices"]) == list(M.PAPER_MEASURES)


def test_cached_pair_similarities_keys_on_weights_and_images(tmp_path, monkeypatch, random_images):
    # Issue 26: the key held the zoo key and the number of images only. random_transform keeps the
    # zoo key, so a G_ReLU-transformed copy's entry (diagonal 1) was served for a rotated copy.
    monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path))
    base = myrtle_cnn(width=0.0625, batchnorm=False).eval()
    base.zoo_key = "key-a"
    gen = torch.Generator().manual_seed(0)
    grelu, _ = random_transform(base, gen, "intertwiner")
    rotated, _ = random_transform(base, gen, "orthogonal")
    assert grelu.zoo_key == rotated.zoo_key == "key-a"
    layers, x = ["act1", "act2", "act3"], random_images(12, seed=2)
    first = similarity.cached_pair_similarities(base, grelu, x, layers, ("grelu_cka",))
    np.testing.assert_allclose(np.diag(first["matrices"]["grelu_cka"]), 1.0, atol=1e-5)
    second = similarity.cached_pair_similarities(base, rotated, x, layers, ("grelu_cka",))
    truth = similarity.model_pair_similarities(base, rotated, x, layers, ("grelu_cka",))
    truth = truth["matrices"]["grelu_cka"]
    assert np.diag(truth).min() < 0.99
    np.testing.assert_allclose(second["matrices"]["grelu_cka"], truth, atol=1e-6)
    # Other images of the same count get their own entry.
    other_x = random_images(12, seed=3)
    other = similarity.cached_pair_similarities(base, rotated, other_x, layers, ("grelu_cka",))
    truth = similarity.model_pair_similarities(base, rotated, other_x, layers, ("grelu_cka",))
    truth = truth["matrices"]["grelu_cka"]
    assert not np.allclose(truth, second["matrices"]["grelu_cka"])
    np.testing.assert_allclose(other["matrices"]["grelu_cka"], truth, atol=1e-6)

    # The key is the content: a copy with the same weights reads the entry back, computing nothing;
    # the same model changed in place does not.
    def fail(*args, **kwargs):
        pytest.fail("recomputed")

    monkeypatch.setattr(similarity, "model_pair_similarities", fail)
    again = similarity.cached_pair_similarities(
        copy.deepcopy(base), rotated, x, layers, ("grelu_cka",)
    )
    np.testing.assert_array_equal(again["matrices"]["grelu_cka"], second["matrices"]["grelu_cka"])
    with torch.no_grad():
        next(rotated.parameters()).mul_(2.0)
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        similarity.cached_pair_similarities(base, rotated, x, layers, ("grelu_cka",))
    assert len(list((tmp_path / "memo" / "similarity").glob("*.pkl"))) == 3
