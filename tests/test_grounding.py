"""Tests of lib.grounding (the tests of Ding et al. 2021): the rank correlation and its interval,
the PCA probe against a direct ridge solve, component deletion, the three tests' bookkeeping, and
errors."""

import numpy as np
import pytest
import torch
from reference import conv_features, related
from scipy.stats import spearmanr

import lib.grounding as G
import lib.metrics as M
from lib import data
from lib.models import build, layer_info


def labelled_features(seed, n=200, c=4, h=3, w=3, classes=3):
    """Conv features whose class shifts a few channels: a linear probe separates them well."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.standard_normal((n, c, h, w))
    x[np.arange(n), y % c] += 3.0
    return x, y


# -- Spearman with a bootstrap interval ------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_and_interval_contains_it(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(60)
    y = x + rng.standard_normal(60)
    y[::7] = y[3]  # ties
    r = G.spearman_interval(x, y, n_boot=300, seed=seed)
    assert r["rho"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12) and r["n"] == 60
    assert r["low"] < r["rho"] < r["high"] and r == G.spearman_interval(x, y, n_boot=300, seed=seed)


def test_spearman_known_values_and_missing_points():
    x = np.arange(10.0)
    assert G.spearman_interval(x, x**3, n_boot=50) == dict(rho=1.0, low=1.0, high=1.0, n=10)
    assert G.spearman_interval(x, -x, n_boot=50)["rho"] == -1.0
    y = x.copy()
    y[[2, 5]] = np.nan
    assert G.spearman_interval(x, y, n_boot=50)["n"] == 8
    r = G.spearman_interval([1.0, 2.0], [2.0, 1.0])
    assert np.isnan(r["rho"]) and r["n"] == 2
    assert np.isnan(G.spearman_interval(x, np.ones(10), n_boot=20)["rho"])


def test_spearman_bad_inputs():
    with pytest.raises(ValueError, match="level must lie in \\(0, 1\\); got 95"):
        G.spearman_interval([1, 2, 3], [1, 2, 3], level=95)
    with pytest.raises(ValueError, match="n_boot must be a positive integer; got 0"):
        G.spearman_interval([1, 2, 3], [1, 2, 3], n_boot=0)
    with pytest.raises(ValueError, match="x and y must have the same length; got 3 and 2"):
        G.spearman_interval([1, 2, 3], [1, 2])


# -- the probe -------------------------------------------------------------------------------------


def test_probe_equals_a_direct_ridge_solve_and_separates_classes():
    x, y = labelled_features(0)
    p = G.fit_probe(x, y, ridge=0.1, num_classes=3)
    r = p["components"].shape[0]
    V = p["components"].double()
    assert torch.allclose(V @ V.T, torch.eye(r, dtype=torch.float64), atol=1e-5)
    assert bool((p["variances"][:-1] >= p["variances"][1:]).all())
    # Ridge regression on the centred features, with the penalty the probe uses.
    f = torch.from_numpy(x.reshape(len(x), -1))
    fc = f - f.mean(dim=0)
    t = torch.nn.functional.one_hot(torch.from_numpy(y), 3).double()
    lam = 0.1 * float(p["variances"].double().mean()) * len(x)
    eye = torch.eye(fc.shape[1], dtype=torch.float64)
    W = torch.linalg.solve(fc.T @ fc + lam * eye, fc.T @ (t - t.mean(0)))
    xt, yt = labelled_features(1)
    ft = torch.from_numpy(xt.reshape(len(xt), -1))
    direct = float((((ft - f.mean(0)) @ W).argmax(1) == torch.from_numpy(yt)).double().mean())
    assert G.probe_accuracy(p, xt, yt) == pytest.approx(direct, abs=1 / len(xt)) and direct > 0.9
    assert G.probe_accuracy(p, xt, yt, keep=np.ones(r, dtype=bool)) == G.probe_accuracy(p, xt, yt)


def test_deleting_components_removes_exactly_their_coordinates():
    x, y = labelled_features(2)
    p = G.fit_probe(x, y, num_classes=3)
    d = G.delete_components(p, x, [0, 3])
    assert d.shape == x.shape
    coords = (d.reshape(len(x), -1) - p["mean"]) @ p["components"].T
    assert float(coords[:, [0, 3]].abs().max()) < 1e-4
    full = (torch.from_numpy(x).float().reshape(len(x), -1) - p["mean"]) @ p["components"].T
    assert torch.allclose(coords[:, [1, 2, 4]], full[:, [1, 2, 4]], atol=1e-4)
    # Deleting every component leaves the training mean.
    everything = G.delete_components(p, x, np.arange(p["components"].shape[0]))
    assert torch.allclose(everything.reshape(len(x), -1), p["mean"].expand(len(x), -1), atol=1e-4)


def test_deletion_counts():
    assert G.deletion_counts(1000, 4) == [1, 10, 100, 999]
    assert G.deletion_counts(3, 5) == [1, 2]
    with pytest.raises(
        ValueError, match="rank must be an integer >= 2 and steps >= 1; got 1 and 3"
    ):
        G.deletion_counts(1, 3)
    with pytest.raises(ValueError, match="ridge must be a positive number; got 0"):
        G.fit_probe(*labelled_features(0), ridge=0)


# -- the tests -------------------------------------------------------------------------------------


def test_similarities_to_matches_the_measures():
    x, y = conv_features(0), related(conv_features(0), 0)
    other = y[:, :4, :2, :2]
    got = G.similarities_to(x, [y, other], dtype=torch.float64)
    direct = [
        M.grelu_cka(x, y),
        M.psd_grelu_cka(x, y),
        M.orthogonal_cka(x, y),
        M.linear_cka(x, y),
        M.grelu_procrustes(x, y),
        M.orthogonal_procrustes(x, y),
    ]
    assert got.shape == (2, 6) and np.allclose(got[0], direct, atol=1e-10)
    # Procrustes compares same-shaped layers only.
    assert np.isnan(got[1, 4:]).all() and np.isfinite(got[1, :4]).all()
    with pytest.raises(ValueError, match="unknown measure 'rbf_cka'"):
        G.similarities_to(x, [y], ["rbf_cka"])


def test_pair_matrices_match_the_measures():
    fa = {"a": conv_features(0), "b": conv_features(1)[:, :4]}
    fb = {"c": related(conv_features(0), 0), "d": conv_features(2, c=3, h=2, w=2)}
    S = G.pair_matrices(fa, fb, dtype=torch.float64)
    assert set(S) == set(G.MEASURES) and all(v.shape == (2, 2) for v in S.values())
    assert S["psd_grelu_cka"][1, 1] == pytest.approx(M.psd_grelu_cka(fa["b"], fb["d"]), abs=1e-10)
    assert S["grelu_cka"][0, 0] == pytest.approx(M.grelu_cka(fa["a"], fb["c"]), abs=1e-10)
    assert np.isnan(S["grelu_procrustes"][0, 1])


def test_sensitivity_rows_bookkeeping():
    x, y = labelled_features(3, n=120)
    xt, yt = labelled_features(4, n=80)
    p = G.fit_probe(x, y, num_classes=3)
    r = p["components"].shape[0]
    rows = G.sensitivity_rows(p, xt, yt, [1, 5, r - 1], measures=("linear_cka", "grelu_cka"))
    plan = [(o, k) for o in G.DELETION_ORDERS for k in (1, 5, r - 1)]
    assert [(w["order"], w["deleted"]) for w in rows] == plan
    low = {w["deleted"]: w for w in rows if w["order"] == "lowest"}
    high = {w["deleted"]: w for w in rows if w["order"] == "highest"}
    # The lowest r - 1 and the highest 1 together are all the variance.
    total = low[r - 1]["variance_deleted"] + high[1]["variance_deleted"]
    assert total == pytest.approx(1.0, abs=1e-5)
    base = G.probe_accuracy(p, xt, yt)
    assert all(w["drop"] == pytest.approx(base - w["accuracy"]) for w in rows)
    # Deleting the one lowest-variance component changes nothing visible; the top ones do.
    assert low[1]["linear_cka"] > 0.999 and high[5]["linear_cka"] < low[5]["linear_cka"]
    assert high[r - 1]["drop"] > 0.3
    with pytest.raises(ValueError, match=f"counts must lie in \\[1, {r - 1}\\]"):
        G.sensitivity_rows(p, xt, yt, [r])


def test_specificity_points():
    S = {"grelu_cka": np.array([[1.0, 0.5], [0.25, 0.0]])}
    func, dis = G.specificity_points(S, [0.9, 0.5], [0.8, 0.6])
    assert np.allclose(func, [0.1, 0.3, 0.3, 0.1])
    assert np.allclose(dis["grelu_cka"], [0.0, 0.5, 0.75, 1.0])
    with pytest.raises(
        ValueError, match="matrix of grelu_cka has shape \\(2, 2\\); expected \\(3, 2\\)"
    ):
        G.specificity_points(S, [0.9, 0.5, 0.1], [0.8, 0.6])


def test_corrupt_and_shift_rows():
    x = torch.zeros(500, 3, 4, 4)
    assert torch.equal(G.corrupt(x, 0.0), x)
    noisy = G.corrupt(x, 0.5, seed=3)
    assert torch.equal(noisy, G.corrupt(x, 0.5, seed=3))
    assert float(noisy.std()) == pytest.approx(0.5, rel=0.05)
    with pytest.raises(ValueError, match="level must be a non-negative number; got -1"):
        G.corrupt(x, -1)
    xs, ys = labelled_features(5, n=150)
    xt, yt = labelled_features(6, n=100)
    p = G.fit_probe(xs, ys, num_classes=3)
    noise = np.random.default_rng(0).standard_normal(xt.shape)
    rows = G.shift_rows(p, xt, {0.0: xt, 2.0: xt + 2.0 * noise}, yt, measures=("orthogonal_cka",))
    assert rows[0]["level"] == 0.0 and rows[0]["drop"] == 0.0
    assert rows[0]["orthogonal_cka"] > 1 - 1e-5
    assert rows[1]["drop"] > 0 and rows[1]["orthogonal_cka"] < 0.9


# -- the studies on models ------------------------------------------------------------------


def test_ding_study_on_two_tiny_models():
    d = data.synthetic_dataset(n_train=60, n_test=40)
    nets = [build(dict(arch="myrtle_cnn", width=0.0625), seed=s).eval() for s in (0, 1)]
    train = (data.to_input(d.x_train, "cpu"), d.y_train)
    test = (data.to_input(d.x_test, "cpu"), d.y_test)
    names = [i["name"] for i in layer_info(nets[0])]
    r = G.ding_study(*nets, train, test, names[-2:], steps=2, levels=(0.5,))
    assert r["layers_a"] == r["layers_b"] == names and len(r["acc_a"]) == len(names)
    assert all(v.shape == (len(names), len(names)) for v in r["matrices"].values())
    # Two layers x two orders x two counts; one noise level per layer.
    assert len(r["sensitivity"]) == 2 * 2 * 2
    assert [w["layer"] for w in r["shift"]] == names[-2:]
    with pytest.raises(ValueError, match="model_a has no zoo_key"):
        G.cached_ding_study(*nets, train, test, names[-1:])
    K = G.layer_grams({"x": conv_features(0)}, "max")["x"]
    assert G.layer_spectra({"x": K})[0]["layer"] == "x"
    with pytest.raises(ValueError, match="unknown kernel 'linear'; accepted values: 'max', 'psd'"):
        G.layer_grams({"x": conv_features(0)}, "linear")
