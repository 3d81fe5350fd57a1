"""Tests of lib.metrics.psd (a PSD, G_ReLU-invariant kernel for CKA) and lib.metrics.indefinite (how
much the max kernel's indefiniteness matters): positive semi-definiteness on random and trained
features where the max kernel is indefinite, invariances, the limits, the "if and only if", the
signs of HSIC, the searches, and every error."""

import math

import numpy as np
import pytest
import torch
from reference import conv_features, grelu_act, haar, related, rotate_channels

import lib.metrics as M
from lib import data, train
from lib.models import build
from lib.similarity import layer_features

SEEDS = [0, 1, 2]
BETAS = [0.1, 1.0, 10.0]


def naive_psd_gram(X, beta):
    """``sum_c exp(beta <z_ic, z_jc> / m)`` via the full ``(n, n, c)`` tensor, over its maximum."""
    z = M.normalize_channels(X)
    s = torch.einsum("icp,jcp->ijc", z, z)
    s = s / s.diagonal().max()
    K = torch.exp(beta * s).sum(dim=-1)
    return K / K.max()


def min_eig_rel(K) -> float:
    e = torch.linalg.eigvalsh(torch.as_tensor(K, dtype=torch.float64))
    return float(e[0] / e[-1])


@pytest.fixture(scope="module")
def trained_features():
    """Hidden features of the smallest Myrtle CNN trained one epoch on synthetic images."""
    d = data.synthetic_dataset(n_train=256, n_test=64)
    model = build(dict(arch="myrtle_cnn", width=0.0625), seed=0)
    r = train.recipe("fast", epochs=1, batch_size=32, lr=0.05)
    train.train(model, d, r, seed=0, device="cpu", progress=False)
    model.eval()
    return layer_features(model, data.to_input(d.x_test, "cpu"))


# -- positive semi-definite where the max kernel is not ----------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", BETAS)
def test_gram_is_psd_on_random_features_where_the_max_kernel_is_not(seed, beta):
    flat = conv_features(seed, n=50, c=10, h=1, w=1)[:, :, 0, 0]
    for x in (conv_features(seed, n=60, c=8), flat):
        assert min_eig_rel(M.psd_grelu_gram(x, beta)) >= -1e-9
        assert min_eig_rel(M.max_kernel_gram(M.normalize_channels(x))) < -1e-3


def test_gram_is_psd_on_trained_features_where_the_max_kernel_is_not(trained_features):
    for name in ("act3", "act4"):
        f = trained_features[name]
        assert (
            M.spectrum_summary(M.max_kernel_gram(M.normalize_channels(f, zero_channels="keep")))[
                "min_rel"
            ]
            < -1e-3
        ), name
        for beta in BETAS:
            s = M.spectrum_summary(M.psd_grelu_gram(f, beta, zero_channels="keep"))
            assert s["min_rel"] >= -1e-9 and s["centred_min_rel"] >= -1e-9, (name, beta, s)


def test_the_lemma_5_5_counterexample_is_psd_under_the_new_kernel():
    pts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    r2 = math.sqrt(2)
    assert min_eig_rel(M.max_kernel_gram(pts)) == pytest.approx((1 - r2) / (1 + r2))
    for beta in BETAS:
        assert min_eig_rel(M.psd_grelu_gram(pts, beta)) >= -1e-12


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("beta", [0.5, 3.0])
def test_gram_matches_naive_formula_and_chunking(seed, beta):
    x = conv_features(seed, n=30, c=7)
    ref = naive_psd_gram(x, beta)
    assert torch.allclose(M.psd_grelu_gram(x, beta), ref, rtol=1e-12, atol=1e-14)
    # One channel per chunk (a tiny budget) gives the same matrix, exactly symmetric.
    K = M.psd_grelu_gram(x, beta, memory_budget=1)
    assert torch.allclose(K, ref, rtol=1e-12, atol=1e-14) and torch.equal(K, K.T)
    log_k = M.psd_grelu_gram(x, beta, log=True)
    assert torch.allclose(log_k - log_k.max(), torch.log(ref), atol=1e-12)


# -- invariance --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("conv", [True, False])
def test_invariant_under_grelu_and_translations(seed, conv):
    x = conv_features(seed) if conv else conv_features(seed, n=40, c=12, h=1, w=1)[:, :, 0, 0]
    y = grelu_act(x, seed, translate=True)
    z = related(x, seed)
    for beta in BETAS:
        kx, ky = M.psd_grelu_gram(x, beta), M.psd_grelu_gram(y, beta)
        assert torch.allclose(kx, ky, rtol=1e-8, atol=1e-12)
        assert M.psd_grelu_cka(x, y, beta) == pytest.approx(1.0, abs=1e-8)
        assert M.psd_grelu_cka(y, z, beta) == pytest.approx(M.psd_grelu_cka(x, z, beta), abs=1e-8)


@pytest.mark.parametrize("seed", SEEDS)
def test_negative_channel_scalings_leave_both_kernels_unchanged(seed):
    # Not a G_ReLU symmetry, but x_c y_c does not see the sign of channel c: both G_ReLU-CKA and the
    # new measure are invariant to all monomial matrices (signed permutations times scalings).
    x = conv_features(seed)
    sign = np.where(np.arange(x.shape[1]) % 2 == 0, -1.0, 1.0)[None, :, None, None]
    y = grelu_act(x * sign, seed, translate=True)
    assert M.psd_grelu_cka(x, y) == pytest.approx(1.0, abs=1e-8)
    assert M.grelu_cka(x, y) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("seed", SEEDS)
def test_drops_under_channel_rotation(seed):
    x = conv_features(seed)
    assert M.psd_grelu_cka(x, rotate_channels(x, haar(x.shape[1], seed))) < 0.99


# -- limits, bound, "if and only if" -----------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_log_kernel_over_beta_is_within_log_c_over_beta_of_the_max_kernel(seed):
    x = conv_features(seed, n=40, c=9)
    c = x.shape[1]
    k_max = M.max_kernel_gram(M.normalize_channels(x))
    k_max = k_max / k_max.diagonal().max()
    gaps = []
    for beta in (1.0, 10.0, 100.0, 1000.0):
        gap = M.psd_grelu_gram(x, beta, log=True) / beta - k_max
        assert float(gap.min()) >= -1e-12 and float(gap.max()) <= math.log(c) / beta + 1e-12
        gaps.append(float(gap.abs().max()))
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-2


@pytest.mark.parametrize("seed", SEEDS)
def test_small_beta_tends_to_orthogonal_cka(seed):
    x, y = conv_features(seed), related(conv_features(seed), seed)
    ref = M.orthogonal_cka(x, y)
    assert M.psd_grelu_cka(x, y, beta=1e-6) == pytest.approx(ref, abs=1e-5)
    assert abs(M.psd_grelu_cka(x, y, beta=20.0) - ref) > 1e-2


@pytest.mark.parametrize("seed", SEEDS)
def test_cka_is_one_iff_grams_agree_up_to_scale_and_row_terms(seed):
    g = torch.Generator().manual_seed(seed)
    K = M.psd_grelu_gram(conv_features(seed, n=20), 1.0)
    b = torch.randn(20, generator=g, dtype=torch.float64)
    diag = torch.diag(torch.rand(20, generator=g, dtype=torch.float64))
    L = 2.5 * K + b[:, None] + b[None, :] + diag
    assert M.cka_from_grams(K, L) == pytest.approx(1.0, abs=1e-12)
    # Anything outside that set is below 1: a perturbation of one off-diagonal pair.
    E = torch.zeros(20, 20, dtype=torch.float64)
    E[3, 7] = E[7, 3] = 0.05 * float(K.abs().max())
    assert M.cka_from_grams(K, L + E) < 1 - 1e-6
    # ... and so is a negative multiple.
    assert M.cka_from_grams(K, -L) == pytest.approx(-1.0, abs=1e-12)


def test_normalized_gram_inner_product_is_the_cka():
    x, y = conv_features(5), related(conv_features(5), 5)[:, :4]
    via = float((M.psd_normalized_gram(x, 2.0) * M.psd_normalized_gram(y, 2.0)).sum())
    assert via == pytest.approx(M.psd_grelu_cka(x, y, 2.0, zero_channels="keep"), abs=1e-12)


def test_entries_are_bounded_and_large_beta_stays_finite():
    x = conv_features(6, n=40, c=5, h=1, w=1)[:, :, 0, 0]
    x[0, 0] = 1e3
    for beta in (0.5, 10.0):
        K = M.psd_grelu_gram(x, beta)
        assert float(K.max()) == 1.0 and float(K.min()) >= math.exp(-2 * beta) * (1 - 1e-12)
    # Exponents up to 2000: computed in the log domain, no overflow, CKA defined.
    assert torch.isfinite(M.psd_grelu_gram(x, 2000.0)).all()
    assert -1 <= M.psd_grelu_cka(x, related(x, 6), 2000.0) <= 1


# -- input handling and errors -----------------------------------------------------------------


def test_torch_numpy_and_dtypes_agree_and_inputs_are_untouched():
    x, y = conv_features(1), related(conv_features(1), 1)
    ref = M.psd_grelu_cka(x, y)
    assert isinstance(ref, float) and 0 < ref < 1
    tx = torch.from_numpy(x)
    before = tx.clone()
    assert M.psd_grelu_cka(tx, torch.from_numpy(y)) == pytest.approx(ref, abs=1e-12)
    assert M.psd_grelu_cka(tx.float(), y.astype(np.float32)) == pytest.approx(ref, abs=1e-5)
    assert M.psd_grelu_cka(x, y, dtype=torch.float32) == pytest.approx(ref, abs=1e-5)
    assert M.psd_grelu_gram(x, dtype=torch.float32).dtype == torch.float32
    assert torch.equal(tx, before)


@pytest.mark.parametrize("beta", [0, -1.0, math.nan, math.inf, True, "1", None, 1j])
def test_beta_out_of_range_is_an_error_naming_it(beta):
    x = conv_features(0)
    msg = f"beta must be a positive finite number; got {beta!r}"
    for call in (
        lambda: M.psd_grelu_gram(x, beta),
        lambda: M.psd_grelu_cka(x, x, beta),
        lambda: M.psd_normalized_gram(x, beta),
    ):
        with pytest.raises(ValueError, match=f"^{msg.replace('(', '.').replace(')', '.')}$"):
            call()


def test_bad_inputs_raise_as_for_grelu_cka():
    x = conv_features(0)
    with pytest.raises(ValueError, match="same number of samples; got 48 and 47"):
        M.psd_grelu_cka(x, x[:47])
    with pytest.raises(ValueError, match="at least 4 samples; got 3"):
        M.psd_grelu_cka(x[:3], x[:3])
    z = x.copy()
    z[:, 2] = 0
    with pytest.raises(
        ValueError, match="1 channel\\(s\\) with zero norm after centring \\(e.g. channel 2\\)"
    ):
        M.psd_grelu_cka(z, x)
    # A kept zero channel adds a constant to the kernel, which CKA ignores.
    without = M.psd_grelu_cka(x[:, [0, 1, 3, 4, 5]], x)
    assert M.psd_grelu_cka(z, x, zero_channels="keep") == pytest.approx(without)
    with pytest.raises(ValueError, match="every channel of Y is constant"):
        M.psd_grelu_cka(x, np.ones_like(x))
    with pytest.raises(ValueError, match="Y contains NaN or infinite"):
        M.psd_grelu_cka(x, np.full_like(x, np.nan))
    with pytest.raises(ValueError, match="must have shape \\(n_samples, n_features\\)"):
        M.psd_grelu_cka(x[0, 0, 0], x[0, 0, 0])
    with pytest.raises(ValueError, match="unknown dtype"):
        M.psd_grelu_cka(x, x, dtype=torch.int64)
    with pytest.raises(ValueError, match="unknown zero_channels 'drop'"):
        M.psd_grelu_cka(x, x, zero_channels="drop")
    with pytest.raises(
        ValueError, match="memory_budget must be a positive number of bytes or None; got 0"
    ):
        M.psd_grelu_gram(x, memory_budget=0)


def test_degenerate_gram_is_an_error():
    # One-hot samples (the vertices of a regular simplex): every off-diagonal entry of the kernel is
    # the same, so the U-centred Gram matrix is zero.
    simplex = np.eye(6)
    with pytest.raises(ValueError, match="X gives a degenerate Gram matrix"):
        M.psd_grelu_cka(simplex, conv_features(0, n=6))
    with pytest.raises(ValueError, match="X gives a degenerate Gram matrix"):
        M.psd_normalized_gram(simplex)


# -- lib.metrics.indefinite: spectra, HSIC signs, searches -------------------------------------


def test_spectrum_summary_known_values():
    pts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    s = M.spectrum_summary(M.max_kernel_gram(pts))
    # Eigenvalues 1 - sqrt(2), 1, 1 + sqrt(2).
    assert s["min_rel"] == pytest.approx((1 - math.sqrt(2)) / (1 + math.sqrt(2)))
    assert s["negative_share"] == pytest.approx((math.sqrt(2) - 1) / (1 + 2 * math.sqrt(2)))
    assert s["n_negative"] == 1
    # HKH of the counterexample: still indefinite.
    assert s["centred_min_rel"] < -0.1 and s["centred_n_negative"] == 1
    psd = M.spectrum_summary(np.diag([3.0, 2.0, 0.0]))
    assert psd["min_rel"] == 0.0 and psd["n_negative"] == 0 and psd["centred_n_negative"] == 0


@pytest.mark.parametrize("seed", SEEDS)
def test_unbiased_hsic_of_a_matrix_with_itself_is_never_negative(seed):
    # It is a squared norm of the U-centred matrix, for any symmetric K, indefinite ones included.
    g = torch.Generator().manual_seed(seed)
    for _ in range(20):
        A = torch.randn(9, 9, generator=g, dtype=torch.float64)
        K, L = A + A.T, torch.randn(9, 9, generator=g, dtype=torch.float64)
        r = M.hsic_report(K, L + L.T)
        U = M.u_center(K.clone())
        assert r["hsic1_kk"] >= 0 and r["hsic1_kk"] == pytest.approx(float((U * U).sum()) / (9 * 6))
        assert r["hsic1_ll"] >= 0
    assert set(r) == {"hsic1_kk", "hsic1_ll", "hsic1_kl", "hsic0_kl", "cka1", "cka0"}


def test_hsic_share_is_zero_exactly_on_row_terms_and_ignores_scale():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(10, generator=g, dtype=torch.float64)
    R = b[:, None] + b[None, :] + 3.0 + torch.diag(torch.rand(10, generator=g, dtype=torch.float64))
    assert M.hsic_share(R) == pytest.approx(0.0, abs=1e-12)
    K = M.psd_grelu_gram(conv_features(0, n=10))
    assert 0 < M.hsic_share(K) <= 1
    # Scale, constants and the diagonal do not count (row terms do: variation that HSIC ignores).
    assert M.hsic_share(5 * K + 3.0 + torch.eye(10)) == pytest.approx(M.hsic_share(K), rel=1e-9)
    assert M.hsic_share(K + R) < M.hsic_share(K)
    with pytest.raises(ValueError, match="at least 4 samples; got 3"):
        M.hsic_share(np.eye(3))
    with pytest.raises(ValueError, match="K must be a square \\(n_samples, n_samples\\) matrix"):
        M.hsic_share(np.ones((3, 4)))


def test_max_kernel_makes_grelu_cka_undefined_where_orthogonal_cka_is_defined():
    # Exact: every off-diagonal max-kernel entry is 0 (one product is negative, the other zero).
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    y = conv_features(0, n=4, c=3, h=1, w=1)[:, :, 0, 0]
    assert M.hsic_share(M.kernel_gram(x, "max")) == 0.0
    assert M.hsic_share(M.kernel_gram(x, "linear")) > 0.5
    assert M.hsic_share(M.kernel_gram(x, "psd")) > 0.5
    with pytest.raises(ValueError, match="X gives a degenerate Gram matrix"):
        M.grelu_cka(x, y)
    assert math.isfinite(M.orthogonal_cka(x, y)) and math.isfinite(M.psd_grelu_cka(x, y))


@pytest.mark.parametrize("kernel", M.SEARCH_KERNELS)
def test_random_range_biased_cka_is_non_negative_for_psd_kernels(kernel):
    r = M.cka_random_range(kernel, n_samples=6, channels=3, trials=40, seed=1)
    assert r["unbiased_min"] < 0 < r["unbiased_max"] <= 1 and 0 < r["unbiased_negative_share"] < 1
    if kernel != "max":
        assert r["biased_min"] >= 0 and r["biased_negative_share"] == 0
    assert r == M.cka_random_range(kernel, n_samples=6, channels=3, trials=40, seed=1)


def test_search_finds_negative_biased_cka_for_the_max_kernel_only():
    found = {
        k: M.cka_range_search(k, "biased", n_samples=6, channels=2, restarts=2, steps=150, seed=0)
        for k in M.SEARCH_KERNELS
    }
    assert found["max"]["library_value"] < -0.3
    # For PSD kernels tr(HKH HLH) >= 0: the search cannot cross 0.
    assert found["linear"]["library_value"] >= -1e-12 and found["psd"]["library_value"] >= -1e-12
    for r in found.values():
        assert r["value"] == pytest.approx(r["library_value"], abs=1e-8)
        assert r["X"].shape == r["Y"].shape == (6, 2)
    x, y = found["max"]["X"], found["max"]["Y"]
    K, L = (M.max_kernel_gram(M.normalize_channels(a)) for a in (x, y))
    assert M.hsic_report(K, L)["hsic0_kl"] < 0


def test_search_reaches_minus_one_with_the_unbiased_estimator_and_nonnegative_inputs():
    r = M.cka_range_search(
        "max", "unbiased", n_samples=6, channels=2, restarts=1, steps=200, nonnegative=True, seed=0
    )
    assert r["library_value"] < -0.9 and (r["X"] >= 0).all() and (r["Y"] >= 0).all()
    again = M.grelu_cka(r["X"], r["Y"], zero_channels="keep")
    assert again == pytest.approx(r["library_value"], abs=1e-8)
    d = M.cka_range_search(
        "max", "degenerate", n_samples=6, channels=2, restarts=1, steps=200, seed=0
    )
    assert d["Y"] is None and 0 <= d["library_value"] < 0.1


def test_search_bad_inputs():
    with pytest.raises(
        ValueError, match="unknown kernel 'rbf'; accepted values: 'max', 'linear', 'psd'"
    ):
        M.cka_range_search("rbf")
    with pytest.raises(ValueError, match="unknown target 'cka'"):
        M.cka_range_search("max", "cka")
    with pytest.raises(ValueError, match="n_samples must be an integer >= 4; got 3"):
        M.cka_range_search(n_samples=3)
    with pytest.raises(ValueError, match="steps must be an integer >= 0; got 1.5"):
        M.cka_range_search(steps=1.5)
    with pytest.raises(ValueError, match="trials must be an integer >= 1; got 0"):
        M.cka_random_range(trials=0)
    with pytest.raises(ValueError, match="unknown kernel 'rbf'"):
        M.kernel_gram(np.eye(4), "rbf")
