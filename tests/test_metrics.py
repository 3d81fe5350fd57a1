"""Tests of the measures of lib.metrics: invariances (Section 5), fast paths against slow
references, known values, errors. The all-layer comparisons are tested in test_metrics_layers.py."""

import math

import numpy as np
import pytest
import torch
from reference import (
    conv_features,
    grelu_act,
    haar,
    kornblith_gram_rbf,
    kornblith_unbiased_center,
    max_kernel_naive,
    max_kernel_rows,
    related,
    rotate_channels,
)

import lib.metrics as M
from lib.metrics.gram import block_plan

SEEDS = [0, 1, 2]
GRELU_ALL = [M.grelu_cka, M.orthogonal_cka, M.grelu_procrustes]


# -- G_ReLU invariance and alignment
# ----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("measure", GRELU_ALL)
@pytest.mark.parametrize("conv", [True, False])
def test_grelu_measures_are_one_on_grelu_orbit(seed, measure, conv):
    x = conv_features(seed) if conv else conv_features(seed, n=40, c=12, h=1, w=1)[:, :, 0, 0]
    # Procrustes does no centring, so only the CKAs are translation invariant (Lemma 5.1 needs
    # centring).
    y = grelu_act(x, seed, translate=measure is not M.grelu_procrustes)
    assert measure(x, y) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("measure", GRELU_ALL)
def test_grelu_measures_are_invariant(seed, measure):
    x = conv_features(seed)
    y = related(x, seed)
    translate = measure is not M.grelu_procrustes
    base = measure(x, y)
    assert 0.05 < base < 0.999
    assert measure(
        grelu_act(x, seed, translate), grelu_act(y, seed + 7, translate)
    ) == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("measure", [M.grelu_cka, M.grelu_procrustes])
def test_grelu_measures_drop_under_channel_rotation(seed, measure):
    x = conv_features(seed, relu=False)
    assert measure(x, rotate_channels(x, haar(x.shape[1], seed))) < 0.99


def test_procrustes_with_unequal_channel_counts_pads_with_zero_channels():
    x = conv_features(5, relu=False)
    extra = np.concatenate([x, np.zeros_like(x[:, :2])], axis=1)
    assert M.grelu_procrustes(x, extra, zero_channels="keep") == pytest.approx(1.0, abs=1e-10)
    assert M.orthogonal_procrustes(x, rotate_channels(extra, haar(8, 5))) == pytest.approx(
        1.0, abs=1e-10
    )
    # Dropping a channel: d^2 = (c - 1 + c - 2 (c - 1)) / (4 c) = 1 / (4 c) for the authors' G_ReLU
    # form.
    assert M.grelu_procrustes(x, x[:, :5]) == pytest.approx(1 - math.sqrt(1 / 24), abs=1e-10)


def test_grelu_procrustes_is_not_translation_invariant():
    x = conv_features(0)
    assert M.grelu_procrustes(x, x + 5.0) < 0.99
    # Property (i) of Section 5 asks for invariance to X -> X + 1 v^T (one constant per channel):
    # G_ReLU-CKA centres the channels and keeps it, G_ReLU-Procrustes does not centre and loses it.
    v = np.sqrt((x**2).mean(axis=(0, 2, 3), keepdims=True))
    assert M.grelu_procrustes(x, x + v) < 0.99
    assert M.grelu_cka(x, x + v) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
def test_orthogonal_procrustes_is_rotation_invariant(seed):
    x, q = conv_features(seed, relu=False), haar(6, seed)
    y = related(x, seed)
    assert M.orthogonal_procrustes(x, 2.5 * rotate_channels(x, q)) == pytest.approx(1.0, abs=1e-10)
    assert M.orthogonal_procrustes(x, rotate_channels(y, q)) == pytest.approx(
        M.orthogonal_procrustes(x, y), abs=1e-12
    )
    assert M.grelu_procrustes(x, y) < M.orthogonal_procrustes(x, y)


@pytest.mark.parametrize("seed", SEEDS)
def test_orthogonal_cka_rotation_behaviour(seed):
    """The authors' orthogonal CKA rescales each channel: rotations of whitened channels leave it at
    1, other rotations do not (it is linear CKA of the per-channel normalised features)."""
    x = conv_features(seed, relu=False)
    q = haar(6, seed)
    flat = np.moveaxis(x, 1, -1).reshape(-1, 6)
    flat = flat - flat.mean(0)
    evals, evecs = np.linalg.eigh(flat.T @ flat)
    white = np.moveaxis((flat @ evecs / np.sqrt(evals)).reshape(48, 3, 3, 6), -1, 1)
    assert M.orthogonal_cka(white, rotate_channels(white, q)) == pytest.approx(1.0, abs=1e-10)
    assert M.orthogonal_cka(x, rotate_channels(x, q)) < 0.999
    y = related(x, seed)
    assert M.orthogonal_cka(x, y) == pytest.approx(
        M.linear_cka(M.normalize_channels(x), M.normalize_channels(y), debiased=True), abs=1e-12
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_linear_and_rbf_cka_orthogonal_and_isotropic_invariance(seed):
    x, y = conv_features(seed), related(conv_features(seed), seed)
    rng = np.random.default_rng(seed)
    q = haar(y[0].size, seed)
    y2 = (y.reshape(48, -1) @ q * 3.0 + rng.standard_normal(y[0].size)).reshape(y.shape)
    for measure in (M.linear_cka, M.rbf_cka):
        for debiased in (False, True):
            assert measure(x, y2, debiased=debiased) == pytest.approx(
                measure(x, y, debiased=debiased), abs=1e-10
            )


@pytest.mark.parametrize("seed", SEEDS)
def test_values_lie_in_their_ranges(seed):
    x = conv_features(seed)
    for y in (related(x, seed, 0.3), related(x, seed, 3.0), conv_features(seed + 10)):
        for measure in (M.grelu_procrustes, M.orthogonal_procrustes):
            assert 0.0 <= measure(x, y) <= 1.0
        # Non-negative features and the authors' divisor: never below 1 - 1/sqrt(2).
        assert M.orthogonal_procrustes(x, y) >= 1 - 1 / math.sqrt(2) - 1e-12
        for measure in (M.grelu_cka, M.orthogonal_cka, M.linear_cka, M.rbf_cka):
            assert -1.0 <= measure(x, y) <= 1.0
    assert M.grelu_procrustes(x[:, :1], -x[:, :1]) == pytest.approx(0.0, abs=1e-12)
    assert M.orthogonal_procrustes(x, x) == pytest.approx(1.0, abs=1e-12)


# -- the max kernel
# ---------------------------------------------------------------------------------


def test_max_kernel_is_not_psd_contrary_to_lemma_5_5():
    K = M.max_kernel_gram(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    assert torch.equal(K, torch.tensor([[1.0, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.float64))
    assert float(torch.linalg.eigvalsh(K)[0]) == pytest.approx(1 - math.sqrt(2))
    # Random post-ReLU features are no exception: clearly negative eigenvalues.
    K = M.max_kernel_gram(M.normalize_channels(conv_features(0, n=120)))
    evals = torch.linalg.eigvalsh(K)
    assert float(evals[0]) < -1e-3 * float(evals[-1])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(37, 5, 4, 3), (29, 9), (16, 3, 5)])
def test_blocked_max_kernel_matches_references(seed, shape):
    x = np.random.default_rng(seed).standard_normal(shape)
    flat = x.reshape(shape[0], shape[1], -1)
    obvious = np.array(
        [
            [max(flat[i, c] @ flat[j, c] for c in range(shape[1])) for j in range(shape[0])]
            for i in range(shape[0])
        ]
    )
    for ref in (max_kernel_rows(x), max_kernel_rows(x, "matvec"), max_kernel_naive(x)):
        np.testing.assert_allclose(ref.numpy(), obvious, rtol=1e-12, atol=1e-12)
    for block_size, budget in [
        (None, None),
        (1, None),
        (7, 8 * 7 * 7 * 2),
        (10, 1),
        (shape[0], None),
        (1000, 1e9),
    ]:
        K = M.max_kernel_gram(x, block_size=block_size, memory_budget=budget)
        np.testing.assert_allclose(K.numpy(), obvious, rtol=1e-12, atol=1e-12)
        assert torch.equal(K, K.T)


@pytest.mark.parametrize(
    "n, c, budget", [(1000, 64, 2**20), (37, 5, 100), (5000, 3, None), (10, 4, 1e9)]
)
def test_block_plan_fits_the_budget(n, c, budget):
    block, chunk = block_plan(n, c, 8, torch.device("cpu"), None, budget)
    assert 1 <= block <= n and 1 <= chunk <= c
    # One chunk's products fit the budget unless even one channel does not (then one channel per
    # chunk).
    assert chunk == 1 or chunk * block * block * 8 <= (budget or 32 * 2**20)
    assert block_plan(n, c, 8, torch.device("cpu"), 3, budget)[0] == min(3, n)


def test_grelu_cka_does_not_depend_on_blocking():
    x, y = conv_features(3, n=41), related(conv_features(3, n=41), 3)
    base = M.grelu_cka(x, y)
    for block_size, budget in [(1, None), (6, 300), (41, 10**9)]:
        assert M.grelu_cka(x, y, block_size=block_size, memory_budget=budget) == pytest.approx(
            base, abs=1e-13
        )


# -- HSIC and CKA against textbook formulas
# ----------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_hsic_matches_textbook_forms(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((30, 4)), rng.standard_normal((30, 7))
    K, L = a @ a.T + 2.0, np.exp(-((b[:, None] - b[None]) ** 2).sum(-1) / 10)
    n = 30
    H = np.eye(n) - 1 / n
    assert M.hsic(K, L, unbiased=False) == pytest.approx(
        np.trace(K @ H @ L @ H) / (n - 1) ** 2, rel=1e-12
    )
    expected = (kornblith_unbiased_center(K) * kornblith_unbiased_center(L)).sum() / (n * (n - 3))
    assert M.hsic(K, L) == pytest.approx(expected, rel=1e-10)
    # The unbiased estimator ignores the diagonal and additive row/column terms (feature
    # translations).
    v = rng.standard_normal(n)
    K2 = K + v[:, None] + v[None, :] + 5.0 + np.diag(rng.standard_normal(n))
    assert M.hsic(K2, L) == pytest.approx(M.hsic(K, L), rel=1e-10)
    assert M.cka_from_grams(K, L) == pytest.approx(
        M.hsic(K, L) / math.sqrt(M.hsic(K, K) * M.hsic(L, L)), rel=1e-12
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [20, 200])
def test_linear_cka_matches_textbook(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2, 3, 3))
    y = x.reshape(n, -1)[:, :10] @ rng.standard_normal((10, 25)) + rng.standard_normal((n, 25))
    xc, yc = x.reshape(n, -1) - x.reshape(n, -1).mean(0), y - y.mean(0)
    expected = np.linalg.norm(yc.T @ xc) ** 2 / (
        np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    )
    assert M.linear_cka(x, y) == pytest.approx(expected, rel=1e-12)
    ku, lu = kornblith_unbiased_center(xc @ xc.T), kornblith_unbiased_center(yc @ yc.T)
    debiased = (ku * lu).sum() / np.sqrt((ku * ku).sum() * (lu * lu).sum())
    assert M.linear_cka(x, y, debiased=True) == pytest.approx(debiased, rel=1e-10)


def test_rbf_cka_matches_kornblith():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 5)), rng.standard_normal((40, 3))
    y[:, 0] += x[:, 0]

    H = np.eye(40) - 1 / 40
    for threshold in (0.5, 1.0, 2.0):
        kc, lc = H @ kornblith_gram_rbf(x, threshold) @ H, H @ kornblith_gram_rbf(y, threshold) @ H
        expected = (kc * lc).sum() / (np.linalg.norm(kc) * np.linalg.norm(lc))
        assert M.rbf_cka(x, y, threshold=threshold) == pytest.approx(expected, rel=1e-10)
        np.testing.assert_allclose(
            M.rbf_gram(x, threshold).numpy(),
            kornblith_gram_rbf(x, threshold),
            rtol=1e-12,
            atol=1e-14,
        )


def test_known_values():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 30))
    for debiased in (False, True):
        assert M.linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
        assert M.linear_cka(x, -4.0 * x + 1.0, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
        assert M.rbf_cka(x, 7.0 * x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    # Independent high-dimensional Gaussians: biased CKA is far from 0, debiased CKA is near 0.
    a, b = rng.standard_normal((200, 2000)), rng.standard_normal((200, 2000))
    assert M.linear_cka(a, b) > 0.5
    assert abs(M.linear_cka(a, b, debiased=True)) < 0.02
    assert abs(M.grelu_cka(a[:, :300], b[:, :300])) < 0.05


# -- input handling
# ---------------------------------------------------------------------------------


def test_torch_numpy_and_dtypes_agree():
    x, y = conv_features(1), related(conv_features(1), 1)
    for measure in (
        M.linear_cka,
        M.rbf_cka,
        M.grelu_cka,
        M.orthogonal_cka,
        M.grelu_procrustes,
        M.orthogonal_procrustes,
    ):
        ref = measure(x, y)
        assert isinstance(ref, float)
        assert measure(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(ref, abs=1e-12)
        # float32 costs precision (most for the RBF kernel, whose squared distances cancel).
        tol = 1e-4 if measure is M.rbf_cka else 1e-5
        assert measure(torch.from_numpy(x).float(), y.astype(np.float32)) == pytest.approx(
            ref, abs=tol
        )
        assert measure(x, y, dtype=torch.float32) == pytest.approx(ref, abs=tol)
    # Inputs are never modified in place.
    tx = torch.from_numpy(x)
    before = tx.clone()
    for measure in (
        M.linear_cka,
        M.rbf_cka,
        M.grelu_cka,
        M.orthogonal_cka,
        M.grelu_procrustes,
        M.orthogonal_procrustes,
    ):
        measure(tx, tx)
    assert torch.equal(tx, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = conv_features(2, n=300), related(conv_features(2, n=300), 2)
    for measure in (
        M.linear_cka,
        M.rbf_cka,
        M.grelu_cka,
        M.orthogonal_cka,
        M.grelu_procrustes,
        M.orthogonal_procrustes,
    ):
        assert measure(torch.from_numpy(x).cuda(), y) == pytest.approx(measure(x, y), abs=1e-10)


def test_conv_versus_flattened_handling():
    x, y = conv_features(4), related(conv_features(4), 4)
    fx, fy = x.reshape(48, -1), y.reshape(48, -1)
    for measure in (M.linear_cka, M.rbf_cka):
        assert measure(x, y) == pytest.approx(measure(fx, fy), abs=1e-12)
    # Plain features are channels with one position; channel-wise measures see the difference.
    for measure in (M.grelu_cka, M.orthogonal_cka, M.grelu_procrustes, M.orthogonal_procrustes):
        assert measure(fx, fy) == pytest.approx(
            measure(fx[:, :, None, None], fy[:, :, None, None]), abs=1e-12
        )
    assert abs(M.grelu_cka(x, y) - M.grelu_cka(fx, fy)) > 1e-3
    # Different channel counts and spatial sizes are fine for CKA.
    assert 0 < M.grelu_cka(x, y[:, :4, :2, :2]) < 1


def test_memory_estimate_and_max_samples():
    shape = (64, 16, 16)
    n = M.grelu_cka_max_samples(2**30, shape)
    assert M.grelu_cka_memory(n, shape) <= 2**30 < M.grelu_cka_memory(n + 1, shape)
    assert M.grelu_cka_max_samples(2**30, shape, dtype=torch.float32) > n
    assert M.grelu_cka_memory(2000, shape) > 2 * 2000**2 * 8 + 2000 * 64 * 256 * 8


def test_degenerate_inputs_raise():
    x = conv_features(0)
    with pytest.raises(ValueError, match="same number of samples; got 48 and 47"):
        M.grelu_cka(x, x[:47])
    with pytest.raises(ValueError, match="at least 4 samples; got 3"):
        M.grelu_cka(x[:3], x[:3])
    with pytest.raises(ValueError, match="at least 4 samples"):
        M.linear_cka(x[:3], x[:3], debiased=True)
    const = x.copy()
    const[:, 2] = 1.5
    with pytest.raises(
        ValueError, match="1 channel\\(s\\) with zero norm after centring \\(e.g. channel 2\\)"
    ):
        M.grelu_cka(const, x)
    with pytest.raises(ValueError, match="zero_channels='keep'"):
        M.orthogonal_cka(x, const)
    dead = x.copy()
    dead[:, 3] = 0.0
    with pytest.raises(ValueError, match="zero norm \\(e.g. channel 3\\)"):
        M.grelu_procrustes(dead, x)
    assert 0 < M.grelu_cka(const, x, zero_channels="keep") < 1
    assert M.grelu_procrustes(dead, dead, zero_channels="keep") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="every channel of Y is constant"):
        M.grelu_cka(x, np.ones_like(x))
    with pytest.raises(ValueError, match="Y is constant across samples"):
        M.linear_cka(x.reshape(48, -1)[:, :3], np.ones((48, 2)))
    with pytest.raises(ValueError, match="Y gives a degenerate Gram matrix"):
        M.linear_cka(x, np.ones((48, 2)), debiased=True)
    with pytest.raises(ValueError, match="X is identically zero"):
        M.orthogonal_procrustes(np.zeros_like(x), x)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or infinite"):
        M.linear_cka(bad, x)
    with pytest.raises(ValueError, match="Y contains NaN or infinite"):
        M.grelu_procrustes(x, np.where(x > 1, np.inf, x))
    with pytest.raises(ValueError, match="must have shape \\(n_samples, n_features\\)"):
        M.grelu_cka(x[0, 0, 0], x[0, 0, 0])
    with pytest.raises(ValueError, match="same spatial shape"):
        M.orthogonal_procrustes(x, x[:, :, :2, :2])
    with pytest.raises(ValueError, match="unknown dtype"):
        M.linear_cka(x, x, dtype=torch.float16)
    with pytest.raises(ValueError, match="unknown zero_channels 'drop'"):
        M.grelu_cka(x, x, zero_channels="drop")
    with pytest.raises(ValueError, match="threshold must be a positive number"):
        M.rbf_cka(x, x, threshold=0)
    with pytest.raises(ValueError, match="median squared distance between samples is zero"):
        M.rbf_cka(np.repeat(x[:1], 48, axis=0), x)
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        M.max_kernel_gram(x, block_size=0)
    with pytest.raises(ValueError, match="memory_budget must be a positive"):
        M.max_kernel_gram(x, memory_budget=-1)
    with pytest.raises(ValueError, match="K must be a square"):
        M.hsic(np.ones((4, 5)), np.ones((4, 4)))
