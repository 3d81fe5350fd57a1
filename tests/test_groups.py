"""Intertwiner groups: Table 1, Lemma 3.1, Theorem 3.3 and the numerical group finder
(lib.activations, lib.groups, lib.intertwining)."""

import pytest
import torch

from lib import activations
from lib import groups as G
from lib import intertwining as I

# (activation, params, expected kind, expected phi) -- the closed forms of Table 1 and their
# extension.
CASES = [
    ("identity", {}, "gl", "A"),
    ("sigmoid", {}, "permutation", "A"),
    ("relu", {}, "positive_monomial", "A"),
    ("leaky_relu", {"negative_slope": 0.01}, "positive_monomial", "A"),
    ("leaky_relu", {"negative_slope": 0.5}, "positive_monomial", "A"),
    ("leaky_relu", {"negative_slope": 1.0}, "gl", "A"),
    ("leaky_relu", {"negative_slope": -1.0}, "monomial", "abs(A)"),
    ("rbf", {}, "signed_permutation", "abs(A)"),
    ("polynomial", {"degree": 2}, "monomial", "A^⊙2"),
    ("polynomial", {"degree": 3}, "monomial", "A^⊙3"),
    ("tanh", {}, "signed_permutation", "A"),
    ("gelu", {}, "permutation", "A"),
    ("silu", {}, "permutation", "A"),
    ("softplus", {}, "permutation", "A"),
    ("elu", {}, "permutation", "A"),
]
IDS = [f"{a}-{'-'.join(map(str, p.values()))}" if p else a for a, p, *_ in CASES]
SEEDS = [0, 1, 2]


def _x(n, seed, m=200):
    return 2.0 * torch.randn(
        m, n, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64
    )


@pytest.mark.parametrize("name,params,kind,phi", CASES, ids=IDS)
def test_closed_forms(name, params, kind, phi):
    g = G.intertwiner_group(name, 5, **params)
    assert g.kind == kind and g.phi_description == phi


@pytest.mark.parametrize("name,params,kind,phi", CASES, ids=IDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_members_intertwine_and_non_members_do_not(name, params, kind, phi, seed):
    n = 5
    g = G.intertwiner_group(name, n, **params)
    gen = torch.Generator().manual_seed(seed)
    x = _x(n, seed)
    A = g.sample(gen, device="cpu")
    assert g.contains(A)
    # sigma(A x) = phi(A) sigma(x) to float precision, and phi matches Lemma 3.1's
    # sigma(A)sigma(I)^-1.
    assert I.intertwining_error(g.sigma, A, g.phi(A), x) < 1e-12
    torch.testing.assert_close(g.phi_lemma(A), g.phi(A), rtol=1e-10, atol=1e-10)
    if kind != "gl":
        M = G.MatrixGroup("gl", n).sample(gen, device="cpu")
        assert not g.contains(M)
        # No B at all intertwines a generic invertible matrix: the least-squares residual is large.
        assert I.best_intertwiner(g.sigma, M, x)[1] > 1e-2
        assert I.intertwining_error(g.sigma, M, g.phi_lemma(M), x) > 1e-2


@pytest.mark.parametrize("name,params,kind,phi", CASES, ids=IDS)
def test_phi_is_a_homomorphism_on_the_group(name, params, kind, phi):
    g = G.intertwiner_group(name, 4, **params)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        A, B = g.sample(gen, device="cpu"), g.sample(gen, device="cpu")
        assert g.contains(A @ B) and g.contains(torch.linalg.inv(A))
        torch.testing.assert_close(g.phi(A @ B), g.phi(A) @ g.phi(B), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            g.phi(torch.linalg.inv(A)), torch.linalg.inv(g.phi(A)), rtol=1e-10, atol=1e-10
        )


def test_phi_is_not_a_homomorphism_off_the_group():
    # Table 1's remark: abs and entrywise powers are homomorphisms only on their groups.
    gen = torch.Generator().manual_seed(3)
    gl = G.MatrixGroup("gl", 4)
    for name, params in [("rbf", {}), ("polynomial", {"degree": 2})]:
        g = G.intertwiner_group(name, 4, **params)
        A, B = gl.sample(gen, device="cpu"), gl.sample(gen, device="cpu")
        assert (g.phi(A @ B) - g.phi(A) @ g.phi(B)).abs().max() > 1e-2


@pytest.mark.parametrize("kind", G.GROUP_KINDS)
def test_contains_on_members_and_other_kinds(kind):
    gen = torch.Generator().manual_seed(11)
    group = G.MatrixGroup(kind, 6)
    for other in G.GROUP_KINDS:
        for _ in range(3):
            A = G.MatrixGroup(other, 6).sample(gen, device="cpu")
            # A generic element of a kind lies in ``group`` exactly when that kind is a subgroup.
            assert group.contains(A) == G.MatrixGroup(other, 6).subgroup_of(kind), (other, A)


def test_lognormal_scales_have_mean_one_and_sigma_controls_spread():
    gen = torch.Generator().manual_seed(0)
    g = G.intertwiner_group("relu", 500)
    d = torch.cat([g.sample(gen, device="cpu").sum(0) for _ in range(40)])
    assert abs(d.mean().item() - 1) < 0.05
    assert abs(d.log().std().item() - 1) < 0.05
    d2 = g.sample(gen, sigma=0.1, device="cpu").sum(0)
    assert abs(d2.log().std().item() - 0.1) < 0.02


def test_sampling_is_reproducible():
    g = G.intertwiner_group("tanh", 7)
    A = g.sample(torch.Generator().manual_seed(5), device="cpu")
    B = g.sample(torch.Generator().manual_seed(5), device="cpu")
    assert torch.equal(A, B)


def test_meet_and_restrictions():
    assert G.meet("orthogonal", "monomial") == "signed_permutation"
    assert G.meet("positive_monomial", "signed_permutation") == "permutation"
    assert G.meet("gl", "monomial") == "monomial"

    def r(name, **kw):
        return G.intertwiner_group(name, 4).restrict(**kw).kind

    assert r("identity", monomial=True) == "monomial"
    assert r("identity", positive_phi=True) == "positive_monomial"
    assert r("relu", monomial=True, positive_phi=True, phi_fixed=True) == "positive_monomial"
    assert r("tanh", positive_phi=True) == "permutation"
    assert r("tanh", phi_fixed=True) == "signed_permutation"
    assert r("rbf", positive_phi=True) == "signed_permutation"
    assert r("rbf", phi_fixed=True) == "permutation"
    assert (
        G.intertwiner_group("polynomial", 4, degree=2).restrict(positive_phi=True).kind
        == "monomial"
    )
    assert (
        G.intertwiner_group("polynomial", 4, degree=3).restrict(positive_phi=True).kind
        == "positive_monomial"
    )
    assert (
        G.intertwiner_group("polynomial", 4, degree=2).restrict(phi_fixed=True).kind
        == "permutation"
    )
    assert (
        G.intertwiner_group("polynomial", 4, degree=3).restrict(phi_fixed=True).kind
        == "signed_permutation"
    )


@pytest.mark.parametrize("name,params,kind,phi", CASES, ids=IDS)
def test_identify_group_recovers_every_activation(name, params, kind, phi):
    res = I.identify_group(name, n=4, **params)
    assert (res.kind, res.phi_name) == (kind, phi)
    assert res.residuals[kind] < 1e-12 and res.phi_residual < 1e-10
    # Every strictly larger candidate was rejected by a wide margin.
    assert all(r > 1e-3 for r in res.larger_residuals.values())
    assert set(res.larger_residuals) == {
        k for k in res.residuals if G.MatrixGroup(kind, 4).subgroup_of(k) and k != kind
    }
    A = G.MatrixGroup(kind, 4).sample(torch.Generator().manual_seed(1), device="cpu")
    torch.testing.assert_close(res.phi(A), G.intertwiner_group(name, 4, **params).phi(A))


def test_identify_group_on_a_callable_not_in_the_table():
    # x|x| is odd and homogeneous of degree 2: any non-zero scaling and sign passes through.
    res = I.identify_group(lambda t: t * t.abs(), n=3)
    assert res.kind == "monomial" and res.phi_name == "σ(A)σ(I)^-1"
    A = torch.tensor([[0.0, -2.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(res.phi(A), A * A.abs())
    # An affine function commutes only with permutations.
    assert I.identify_group(lambda t: 2 * t + 1, n=3).kind == "permutation"


def test_paper_table_1_rows():
    paper = {
        "identity": ("gl", "A"),
        "sigmoid": ("permutation", "A"),
        "relu": ("positive_monomial", "A"),
        "leaky_relu": ("positive_monomial", "A"),
        "rbf": ("signed_permutation", "abs(A)"),
        "polynomial": ("monomial", "A^⊙2"),
    }
    for name, expected in paper.items():
        res = I.identify_group(name, n=4)
        assert (res.kind, res.phi_name) == expected


def test_theorem_3_3_stabiliser_of_coordinate_rays():
    gen = torch.Generator().manual_seed(4)
    relu = G.intertwiner_group("relu", 5)
    for kind in G.GROUP_KINDS:
        for _ in range(4):
            A = G.MatrixGroup(kind, 5).sample(gen, device="cpu")
            # G_ReLU is exactly the stabiliser of {R>=0 e_i}.
            assert I.maps_coordinate_rays(A) == relu.contains(A)
    # Finite orbits only for rays along +-e_j; a generic ray has an infinite orbit.
    assert I.ray_orbit_size(torch.tensor([0.0, 0, 1, 0, 0]), relu, gen, 50) <= 5
    assert I.ray_orbit_size(torch.tensor([0.0, 0, -1, 0, 0]), relu, gen, 50) <= 5
    assert I.ray_orbit_size(torch.tensor([0.0, 1, 1, 0, 0]), relu, gen, 50) == 51


def test_bad_input_errors():
    with pytest.raises(ValueError, match="accepted values.*'relu'"):
        G.intertwiner_group("relux", 3)
    with pytest.raises(ValueError, match="accepted values.*'orthogonal'"):
        G.MatrixGroup("unitary", 3)
    with pytest.raises(ValueError, match="negative_slope"):
        G.intertwiner_group("relu", 3, negative_slope=0.1)
    with pytest.raises(ValueError, match="degree"):
        G.intertwiner_group("polynomial", 3, degree=0)
    g = G.intertwiner_group("relu", 3)
    with pytest.raises(ValueError, match="square"):
        g.phi(torch.ones(3, 2))
    with pytest.raises(ValueError, match="3x3"):
        g.contains(torch.eye(4))
    with pytest.raises(ValueError, match="singular"):
        g.phi(torch.zeros(3, 3))
    assert not G.MatrixGroup("gl", 3).contains(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="elementwise"):
        I.identify_group(lambda t: t.flip(-1) + t.roll(1, -1) ** 2, n=3)
    with pytest.raises(ValueError, match="sigma\\(I\\) invertible"):
        G.IntertwinerGroup("gl", 3, "polynomial", (("degree", 0),)).phi_lemma(torch.eye(3))


def test_activation_module_still_works():
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(activations.Activation("swish")(x), torch.nn.functional.silu(x))
    torch.testing.assert_close(
        activations.Activation("leaky_relu", negative_slope=0.2)(x),
        torch.nn.functional.leaky_relu(x, 0.2),
    )
    assert G.intertwiner_group("swish", 3).kind == "permutation"


def test_matrix_helpers():
    A = torch.tensor([[0.0, -2.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 3.0]])
    P = G.monomial_pattern(A)
    assert torch.equal(P, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    # A = P D with D diagonal: P^T A has A's non-zeros on the diagonal.
    assert torch.count_nonzero(P.T @ A - torch.diag(torch.diagonal(P.T @ A))) == 0
    assert G.monomial_pattern(A + 0.1) is None
    assert G.check_square([[1.0, 2.0], [3.0, 4.0]]).shape == (2, 2)
    with pytest.raises(ValueError, match="W must be a square matrix"):
        G.check_square(torch.ones(2, 3), name="W")
    with pytest.raises(ValueError, match="B is singular"):
        G.check_invertible(torch.tensor([[1.0, 2.0], [2.0, 4.0]]), "B")
    G.check_invertible(A)
    assert (
        activations.canonical_name("swish") == "silu"
        and activations.canonical_name("relu") == "relu"
    )
