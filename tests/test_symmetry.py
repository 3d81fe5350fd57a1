"""The generic weight-space action (Proposition 3.4, eq. 3.5, Remark 3.6) on every architecture."""

import pytest
import torch
from torch import nn

from lib import groups as G
from lib import models as M
from lib import symmetry as S

CASES = (
    [
        ("mlp", dict(activation=a), a)
        for a in ("relu", "leaky_relu", "tanh", "sigmoid", "rbf", "identity", "gelu")
    ]
    + [("mlp", dict(activation="polynomial", degree=d), f"polynomial{d}") for d in (2, 3)]
    + [("mlp", dict(activation="leaky_relu", negative_slope=-1.0), "abs")]
    + [("myrtle_cnn", dict(activation=a, width=0.125), a) for a in ("relu", "leaky_relu", "tanh")]
    + [
        ("myrtle_cnn", dict(activation=a, width=0.125, batchnorm=False), f"{a}-nobn")
        for a in ("relu", "leaky_relu", "tanh")
    ]
    + [
        (
            "myrtle_cnn",
            dict(activation="polynomial", width=0.125, batchnorm=False),
            "polynomial2-nobn",
        )
    ]
    + [("resnet20", dict(activation=a, width=0.25), a) for a in ("relu", "leaky_relu", "tanh")]
)
IDS = [f"{arch}-{label}" for arch, _, label in CASES]


@pytest.fixture()
def double_model(randomize_batchnorm):
    """``double_model(arch, kwargs, seed)``: ``arch`` built after ``torch.manual_seed(seed)``, in
    float64 and eval mode, with BatchNorm statistics and affine parameters as after training
    (conftest's ``randomize_batchnorm`` with spread 1 and signed weights, seeded ``seed``)."""

    def make(arch, kwargs, seed):
        torch.manual_seed(seed)
        model = M.build(dict(arch=arch, **kwargs)).double()
        return randomize_batchnorm(model, seed, spread=1.0, signed=True)

    return make


def _inputs(arch, seed, n=6):
    shape = (n, 8) if arch == "mlp" else (n, 3, 32, 32)
    return torch.randn(
        *shape, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64
    )


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("arch,kwargs,label", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_transform_preserves_function_and_moves_features(
    arch, kwargs, label, seed, double_model
):
    model = double_model(arch, kwargs, seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _inputs(arch, seed)
    new, elements = S.random_transform(model, torch.Generator().manual_seed(seed))
    assert set(elements) == set(M.symmetry_spec(model).sites)
    # The input model is untouched; the new weights differ (the transform is not the identity).
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.allclose(before[k], v) for k, v in new.state_dict().items())
    y, y_new = model(x), new(x)
    assert (y_new - y).abs().max() < 1e-8 * max(1.0, y.abs().max().item())
    # Eq. 3.5: every hidden layer's features move by phi(A) of its site.
    f, f_new = M.features(model, x), M.features(new, x)
    for layer in M.hidden_layers(model):
        expected = S.transform_features(f[layer], S.feature_transform(model, layer, elements))
        assert (f_new[layer] - expected).abs().max() <= 1e-8 * max(
            1.0, f[layer].abs().max().item()
        ), layer


@pytest.mark.parametrize("activation", ["relu", "polynomial"])
def test_eq_3_5_second_half_on_an_mlp(activation, double_model):
    # f_{>m}(x, W') = f_{>m}(x, W) o phi(A_m)^-1: feed phi(A_m) h to the transformed tail.
    model = double_model("mlp", dict(activation=activation, sizes=(5, 7, 6, 3)), 0)
    new, elements = S.random_transform(model, torch.Generator().manual_seed(3))
    # Sequential layout: fc1, act1, fc2, act2, fc3; the tail after act_m starts at index 2m.
    for layer, idx in [("act1", 2), ("act2", 4)]:
        h = torch.randn(9, model[idx].in_features, dtype=torch.float64)
        phi = S.feature_transform(model, layer, elements)
        torch.testing.assert_close(
            new[idx:](S.transform_features(h, phi)), model[idx:](h), rtol=1e-10, atol=1e-10
        )


@pytest.mark.parametrize(
    "arch,kwargs,group",
    [
        ("mlp", dict(activation="relu"), "gl"),
        ("mlp", dict(activation="relu"), "orthogonal"),
        ("mlp", dict(activation="tanh"), "orthogonal"),
        ("mlp", dict(activation="polynomial", degree=2), "gl"),
        ("myrtle_cnn", dict(width=0.125, batchnorm=False), "orthogonal"),
        ("myrtle_cnn", dict(width=0.125, batchnorm=False), "gl"),
        ("myrtle_cnn", dict(width=0.125), "gl"),
        ("resnet20", dict(width=0.25), "gl"),
        ("resnet20", dict(width=0.25, activation="tanh"), "monomial"),
    ],
)
def test_symmetry_breaking_groups_change_the_function(arch, kwargs, group, double_model):
    model = double_model(arch, kwargs, 0)
    x = _inputs(arch, 0, n=8)
    new, elements = S.random_transform(model, torch.Generator().manual_seed(0), group=group)
    assert _rel(new(x), model(x)) > 1e-2
    if any(s.monomial for s in M.symmetry_spec(model).sites.values()):
        # BatchNorm sites can only absorb monomial elements, whatever group was asked for.
        assert all(G.MatrixGroup("monomial", len(A)).contains(A) for A in elements.values())


@pytest.mark.parametrize(
    "arch,kwargs,group",
    [
        ("mlp", dict(activation="identity"), "gl"),
        ("mlp", dict(activation="sigmoid"), "permutation"),
        ("resnet20", dict(width=0.25, activation="tanh"), "signed_permutation"),
        ("myrtle_cnn", dict(width=0.125, activation="tanh"), "permutation"),
    ],
)
def test_subgroups_of_the_intertwiner_group_preserve_the_function(
    arch, kwargs, group, double_model
):
    model = double_model(arch, kwargs, 1)
    x = _inputs(arch, 1)
    new, _ = S.random_transform(model, torch.Generator().manual_seed(1), group=group)
    assert _rel(new(x), model(x)) < 1e-10


def test_resnet_streams_share_elements_and_shortcuts_tie_channels(double_model):
    model = double_model("resnet20", dict(width=0.25), 0)
    spec = M.symmetry_spec(model)
    _, el = S.random_transform(model, torch.Generator().manual_seed(2))
    for name, site in spec.sites.items():
        if site.parent:
            e = list(site.embed)
            torch.testing.assert_close(el[name][e][:, e], el[site.parent])
    # Every block output of a stage transforms by the same matrix; in-block layers by their own.
    f = {layer: S.feature_transform(model, layer, el) for layer in M.hidden_layers(model)}
    torch.testing.assert_close(f["layer2.0.act2"], f["layer2.2.act2"])
    assert not torch.allclose(f["layer2.0.act1"], f["layer2.1.act1"])
    # Untying the padded shortcut (a free element on stream2) is rejected, and breaks the function.
    bad = dict(
        el,
        stream2=G.MatrixGroup("positive_monomial", el["stream2"].shape[0]).sample(
            torch.Generator().manual_seed(9), device="cpu"
        ),
    )
    with pytest.raises(ValueError, match="stream1"):
        S.apply_elements(model, bad)
    x = _inputs("resnet20", 0)
    assert _rel(S.apply_elements(model, bad, strict=False)(x), model(x)) > 1e-2


def test_site_groups_table():
    rows = {r["site"]: r for r in S.site_groups(M.myrtle_cnn(width=0.125, activation="tanh"))}
    assert rows["act1"]["free"] == rows["act1"]["group"] == "PD, D in {±1}"
    assert rows["act2"]["group"] == "Σ_n (permutations)" and "max-pool" in rows["act2"]["reasons"]
    rows = {r["site"]: r for r in S.site_groups(M.resnet20(width=0.25))}
    assert (
        "residual stream" in rows["stream2"]["reasons"] and "stream1" in rows["stream2"]["reasons"]
    )
    assert rows["stream3"]["layers"] == "layer3.0.act2, layer3.1.act2, layer3.2.act2"
    rows = {r["site"]: r for r in S.site_groups(M.mlp(activation="identity"))}
    assert rows["act1"]["group"] == "GL_n" and rows["act1"]["reasons"] == "none"


def test_apply_elements_errors():
    model = M.mlp(activation="relu")
    with pytest.raises(ValueError, match="sites: act1, act2"):
        S.apply_elements(model, {"act9": torch.eye(16)})
    with pytest.raises(ValueError, match="16x16"):
        S.apply_elements(model, {"act1": torch.eye(4)})
    with pytest.raises(ValueError, match="singular"):
        S.apply_elements(model, {"act1": torch.zeros(16, 16)})
    with pytest.raises(ValueError, match="not in the group.*PD, D > 0"):
        S.apply_elements(model, {"act1": -torch.eye(16)})
    bn = M.myrtle_cnn(width=0.125)
    with pytest.raises(ValueError, match="not monomial"):
        S.apply_elements(
            bn,
            {"act1": G.MatrixGroup("orthogonal", 8).sample(torch.Generator(), device="cpu")},
            strict=False,
        )
    with pytest.raises(ValueError, match="accepted values.*'orthogonal'"):
        S.random_transform(model, torch.Generator(), group="rotation")
    with pytest.raises(ValueError, match="unknown layer"):
        S.feature_transform(model, "fc1", {})
    with pytest.raises(ValueError, match="supported architectures.*myrtle_cnn, resnet20, mlp"):
        S.random_transform(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), torch.Generator())


def test_partial_elements_and_reproducibility(double_model):
    model = double_model("myrtle_cnn", dict(width=0.125, batchnorm=False), 0)
    x = _inputs("myrtle_cnn", 0)
    # A single site (as in Section 3.3's one-layer transform) is a symmetry on its own.
    A = S.site_group(M.symmetry_spec(model).sites["act2"]).sample(
        torch.Generator().manual_seed(0), device="cpu"
    )
    assert _rel(S.apply_elements(model, {"act2": A})(x), model(x)) < 1e-10
    a, ea = S.random_transform(model, torch.Generator().manual_seed(4))
    b, eb = S.random_transform(model, torch.Generator().manual_seed(4))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_float32_models_keep_their_dtype():
    model = M.myrtle_cnn(width=0.125).eval()
    x = torch.randn(4, 3, 32, 32)
    new, el = S.random_transform(model, torch.Generator().manual_seed(0))
    assert next(new.parameters()).dtype == torch.float32 and el["act1"].dtype == torch.float64
    assert _rel(new(x), model(x)) < 1e-4


@pytest.mark.parametrize("arch,kwargs,label", CASES, ids=IDS)
def test_eq35_second_half_where_f_after_m_is_defined(arch, kwargs, label, double_model):
    """f_{>m}(x, W') = f_{>m}(x, W) o phi(A_m)^{-1} at every layer where f_{>m} exists; inside a
    ResNet block ``forward_from`` refuses, since the rest of the network also reads the block's
    input."""
    model, x = double_model(arch, kwargs, 0), _inputs(arch, 0)
    new, elements = S.random_transform(model, torch.Generator().manual_seed(7))
    feats, y = M.features(model, x), model(x)
    for layer in M.hidden_layers(model):
        if arch == "resnet20" and layer != "act1" and layer.endswith(".act1"):
            with pytest.raises(ValueError, match="inside a residual block"):
                M.forward_from(model, layer, feats[layer])
            continue
        assert torch.allclose(
            M.forward_from(model, layer, feats[layer]), y, rtol=1e-10, atol=1e-12
        ), layer
        h_new = S.transform_features(feats[layer], S.feature_transform(model, layer, elements))
        assert torch.allclose(M.forward_from(new, layer, h_new), y, rtol=1e-9, atol=1e-10), layer


def test_transform_errors_and_second_half_errors(double_model):
    model = double_model("resnet20", dict(width=0.25), 0)
    x = _inputs("resnet20", 0)
    r = S.transform_errors(model, x, torch.Generator().manual_seed(0))
    assert (
        r["out"] < 1e-10
        and r["eq35"] < 1e-10
        and r["moved"] > 0.1
        and r["gl"] > 1e-2
        and r["orth"] > 1e-2
    )
    # The same draws as random_transform itself: the first element set is reproduced.
    new, _ = S.random_transform(model, torch.Generator().manual_seed(0))
    assert r["out"] == _rel(new(x), model(x))
    worst, undefined = S.second_half_errors(model, x, torch.Generator().manual_seed(1))
    assert worst < 1e-10 and undefined == 9  # the in-block layer of each of ResNet20's 9 blocks
    assert S.relative_change(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 2.0])) == 0.5
