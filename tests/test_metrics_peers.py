"""Our measures against the peers' definitions, re-typed from their papers and documentation (not
copied from their code):

- netrep (Williams et al. 2021, "Generalized shape metrics on neural representations";
  ``ahwillia/netrep``): representations are ``(observations, neurons)`` matrices, here the channel
  view with positions as further observations. Its angular shape distance with ``alpha = 1`` and
  no centring is ``theta = arccos(max_Q <X Q, Y> / (|X| |Y|))`` over orthogonal ``Q`` (the smaller
  matrix zero-padded), i.e. ``arccos(||X^T Y||_* / (|X| |Y|))``; its permutation metric is the
  same with ``Q`` a permutation (``score_method="angular"``) or the residual ``|X P - Y|``
  (``"euclidean"``); its ``LinearCKA`` is the angle between the centred Gram matrices ``X X^T``
  and ``Y Y^T``.
- Song et al. 2012 ("Feature selection via dependence maximization", JMLR): the unbiased HSIC is
  the U-statistic of ``h(i, j, q, r) = K_ij L_ij + K_ij L_qr - 2 K_ij L_iq`` over ordered 4-tuples
  of distinct samples.

The relations: orthogonal Procrustes similarity = ``1 - sin(theta / 2)`` (because
``|X - Y Q|^2 = 2 - 2 cos(theta) = 4 sin^2(theta / 2)`` for unit-norm ``X``, ``Y``);
G_ReLU-Procrustes the same with the permutation metric on channel-normalised features (and
``1 - e / (2 sqrt(max(cx, cy)))`` with the euclidean score ``e`` when the channel counts differ);
linear CKA = ``cos`` of the ``LinearCKA`` angle; debiased CKAs = the U-statistic's cosine.
netrep's angles are metrics, so the angles recovered from our measures satisfy the triangle
inequality.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import channel_normalized, conv_features, max_kernel_np, related
from scipy.optimize import linear_sum_assignment

import lib.metrics as M

F32, F64 = torch.float32, torch.float64
DTYPES = [pytest.param(F64, id="float64"), pytest.param(F32, id="float32")]
TOL = {F64: 1e-10, F32: 1e-4}
SEEDS = range(4)


# -- the peers' definitions, in numpy float64 ---------------------------------------------------


def as_matrix(x) -> np.ndarray:
    """``x`` ``(n, c[, h, w])`` as netrep's ``(observations, neurons)``: ``(n * positions, c)``."""
    f = np.asarray(x, dtype=np.float64).reshape(len(x), x.shape[1], -1)
    return np.moveaxis(f, 1, 2).reshape(-1, x.shape[1])


def zero_pad(a, b):
    """Both matrices with as many columns as the wider one (zero columns appended)."""
    c = max(a.shape[1], b.shape[1])
    return (np.pad(a, ((0, 0), (0, c - a.shape[1]))), np.pad(b, ((0, 0), (0, c - b.shape[1]))))


def angular_distance(a, b) -> float:
    """``arccos`` of the cosine of two arrays in the Frobenius inner product."""
    cos = (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.arccos(np.clip(cos, -1.0, 1.0)))


def angular_shape_distance(x, y) -> float:
    """netrep's shape metric with alpha = 1 and no centring: the angle after the best rotation."""
    a, b = zero_pad(as_matrix(x), as_matrix(y))
    u, _, vt = np.linalg.svd(a.T @ b)
    return angular_distance(a @ (u @ vt), b)


def permutation_metric(a, b, score="angular") -> float:
    """netrep's permutation metric without centring, on ``(observations, neurons)`` matrices."""
    a, b = zero_pad(a, b)
    rows, cols = linear_sum_assignment(a.T @ b, maximize=True)
    if score == "angular":
        return angular_distance(a[:, rows], b[:, cols])
    return float(np.linalg.norm(a[:, rows] - b[:, cols]))


def linear_cka_angle(x, y) -> float:
    """netrep's ``LinearCKA``: the angle between the Gram matrices of the centred features."""
    a, b = (np.reshape(v, (len(v), -1)) for v in (x, y))
    a, b = a - a.mean(0), b - b.mean(0)
    return angular_distance(a @ a.T, b @ b.T)


def song_unbiased_hsic(K, L) -> float:
    """Song et al.'s unbiased HSIC as the mean of ``K_ij L_ij + K_ij L_qr - 2 K_ij L_iq`` over every
    ordered 4-tuple ``(i, j, q, r)`` of distinct samples (no diagonal entry is ever read)."""
    i, j, q, r = np.array(list(itertools.permutations(range(len(K)), 4))).T
    return float(np.mean(K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]))


def song_cka(K, L) -> float:
    return song_unbiased_hsic(K, L) / math.sqrt(song_unbiased_hsic(K, K) * song_unbiased_hsic(L, L))


# -- netrep ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("conv", [True, False], ids=["conv", "flat"])
def test_orthogonal_procrustes_is_one_minus_sin_half_the_angular_shape_distance(seed, conv, dtype):
    x = conv_features(seed, relu=False, h=3 if conv else 1, w=3 if conv else 1)
    x = x if conv else x[..., 0, 0]
    # Related, noisier, and with fewer channels (zero-padded by netrep, by us too).
    for y in (related(x, seed, 0.5), related(x, seed, 3.0), related(x, seed + 9, 1.0)[:, :4]):
        theta = angular_shape_distance(x, y)
        assert M.orthogonal_procrustes(x, y, dtype=dtype) == pytest.approx(
            1 - math.sin(theta / 2), abs=TOL[dtype]
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_grelu_procrustes_is_the_permutation_metric_on_normalised_channels(seed, dtype):
    x = conv_features(seed)
    y = related(x, seed, 0.8)[:, np.random.default_rng(seed).permutation(6)]
    a, b = (as_matrix(channel_normalized(v, center=False)) for v in (x, y))
    theta = permutation_metric(a, b)
    expected = 1 - math.sin(theta / 2)
    assert M.grelu_procrustes(x, y, dtype=dtype) == pytest.approx(expected, abs=TOL[dtype])
    # Unequal channel counts: netrep pads with zero channels; the authors' divisor is 4 max(cx, cy).
    for z in (y[:, :4], np.concatenate([y, related(y, seed + 1)[:, :3]], axis=1)):
        c = as_matrix(channel_normalized(z, center=False))
        e = permutation_metric(a, c, score="euclidean")
        expected = 1 - e / (2 * math.sqrt(max(a.shape[1], c.shape[1])))
        assert M.grelu_procrustes(x, z, dtype=dtype) == pytest.approx(expected, abs=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_linear_cka_is_the_cosine_of_netreps_linear_cka_angle(seed, dtype):
    x = conv_features(seed)
    for y in (related(x, seed, 0.5), conv_features(seed + 5, c=3), 5.0 * x + 3.0):
        expected = math.cos(linear_cka_angle(x, y))
        assert M.linear_cka(x, y, dtype=dtype) == pytest.approx(expected, abs=TOL[dtype])


# -- Song et al.'s unbiased HSIC ----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_hsic_is_songs_u_statistic(seed):
    """For any symmetric K and L (not PSD, with a diagonal, which the U-statistic never reads)."""
    rng = np.random.default_rng(seed)
    n = 7 + seed % 3
    K, L = rng.standard_normal((2, n, n)) + rng.uniform(-3, 3, 2)[:, None, None]
    K, L = K + K.T, L + L.T
    assert M.hsic(K, L) == pytest.approx(song_unbiased_hsic(K, L), rel=1e-10, abs=1e-12)
    assert M.hsic(torch.from_numpy(K).float(), torch.from_numpy(L).float()) == pytest.approx(
        song_unbiased_hsic(K, L), rel=1e-5, abs=1e-5
    )
    assert M.cka_from_grams(K, L) == pytest.approx(song_cka(K, L), abs=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_debiased_ckas_are_songs_cosines(seed, dtype):
    """G_ReLU-CKA (max kernel), orthogonal CKA (linear kernel) on channel-normalised features, and
    debiased linear CKA on the raw features (the U-statistic ignores the centring's row terms)."""
    x = conv_features(seed, n=9)
    y = related(x, seed, 0.6)
    nx, ny = channel_normalized(x), channel_normalized(y)
    expected = {
        "grelu_cka": song_cka(max_kernel_np(nx), max_kernel_np(ny)),
        "orthogonal_cka": song_cka(*(f.reshape(9, -1) @ f.reshape(9, -1).T for f in (nx, ny))),
        "linear_cka": song_cka(*(f.reshape(9, -1) @ f.reshape(9, -1).T for f in (x, y))),
    }
    got = {
        "grelu_cka": M.grelu_cka(x, y, dtype=dtype),
        "orthogonal_cka": M.orthogonal_cka(x, y, dtype=dtype),
        "linear_cka": M.linear_cka(x, y, debiased=True, dtype=dtype),
    }
    assert got == pytest.approx(expected, abs=TOL[dtype])


# -- netrep's angles are metrics -------------------------------------------------------------------


def angles(x, y):
    """The three angles recovered from our measures: orthogonal and G_ReLU-Procrustes (2 arcsin(1 -
    s)) and linear CKA (arccos)."""
    return np.array(
        [
            2 * math.asin(1 - M.orthogonal_procrustes(x, y)),
            2 * math.asin(1 - M.grelu_procrustes(x, y)),
            math.acos(M.linear_cka(x, y)),
        ]
    )


@settings(
    derandomize=True,
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**20), noise=st.sampled_from([0.1, 1.0, 10.0]))
def test_recovered_angles_satisfy_the_triangle_inequality(seed, noise):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, 4, 2, 2))
    y = x + noise * rng.standard_normal(x.shape)
    z = y[:, rng.permutation(4)] * rng.uniform(0.5, 2.0, (1, 4, 1, 1))
    z = z + noise * rng.standard_normal(x.shape)
    xy, yz, xz = angles(x, y), angles(y, z), angles(x, z)
    assert (xz <= xy + yz + 1e-12).all()
    assert np.allclose(angles(y, x), xy, atol=1e-12)
