"""Model cuts, stitching layers, stitched models, Theorem 4.2 and the rotation penalty (random
models, synthetic data)."""

import copy
import dataclasses

import pytest
import torch

from lib import groups, models, stitching, symmetry
from lib.config import exact_mode
from lib.data import synthetic_dataset, to_input
from lib.settings import FinetuneSettings, StitchSettings
from lib.stitching import sanity

MYRTLE = dict(arch="myrtle_cnn", width=0.125)
RESNET = dict(arch="resnet20", width=0.25)
# The fast protocol for one epoch, where a test needs a protocol but not a particular one.
ONE_EPOCH = StitchSettings(epochs=1)


@pytest.fixture()
def bn_model(randomize_batchnorm):
    """``bn_model(arch, seed=0)``: ``arch`` built with ``seed``, its BatchNorm statistics randomised
    with the same seed (conftest's ``randomize_batchnorm``), in eval mode."""

    def make(arch, seed=0):
        return randomize_batchnorm(models.build(arch, seed=seed), seed)

    return make


def _front(model, layer, x):
    # A's state at ``layer``: (h,) or, inside a residual block, (h, block_input).
    with torch.no_grad():
        return models.split(model, layer)[0](x)


SPLIT_CASES = {
    "myrtle": dict(arch="myrtle_cnn", width=0.125),
    "myrtle_nobn": dict(arch="myrtle_cnn", width=0.125, batchnorm=False),
    "resnet20": RESNET,
    "resnet20_noresrelu": dict(arch="resnet20", width=0.25, residual_activation=False),
    "mlp": dict(arch="mlp", sizes=(8, 16, 12, 4), activation="leaky_relu"),
    "convnext": dict(arch="convnext_cifar", width=0.25, depths=(1, 2), kernel_size=3),
    "convnext_bn": dict(
        arch="convnext_cifar", width=0.25, depths=(2, 1), kernel_size=3, norm="batch"
    ),
}


def _split_inputs(arch, dtype, n=6):
    shape = (n, arch["sizes"][0]) if arch["arch"] == "mlp" else (n, 3, 32, 32)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("name", SPLIT_CASES)
def test_split_back_of_front_is_the_model_at_every_layer(name, dtype, tol, bn_model):
    model = bn_model(SPLIT_CASES[name], 2).to(dtype)
    x = _split_inputs(SPLIT_CASES[name], dtype)
    layers = models.hidden_layers(model)
    assert len(layers) >= 2
    with torch.no_grad(), exact_mode():
        y = model(x)
        feats = models.features(model, x)
        for layer in layers:
            front, back = models.split(model, layer)
            state = front(x)
            assert len(state) == len(back.inputs) and back.inputs[0] == "h"
            torch.testing.assert_close(state[0], feats[layer], rtol=tol, atol=tol)
            torch.testing.assert_close(back(state), y, rtol=tol, atol=tol)
            # The parts share the model's weights: nothing is copied.
            assert {id(p) for p in [*front.parameters(), *back.parameters()]} <= {
                id(p) for p in model.parameters()
            }


def test_split_passes_the_block_input_inside_residual_blocks(bn_model, random_images):
    model = bn_model(RESNET)
    x = random_images(4)
    inside = {"layer1.0.act1": "act1", "layer2.0.act1": "layer1.2", "layer3.2.act1": "layer3.1"}
    for layer, before in inside.items():
        front, back = models.split(model, layer)
        assert back.inputs == ("h", "block_input")
        h, block_in = front(x)
        torch.testing.assert_close(block_in, models.features(model, x, [before])[before])
        # The rest of the network really reads the block input (the shortcut), not h alone.
        assert not torch.allclose(back((h, block_in)), back((h, torch.zeros_like(block_in))))
    for layer in ("act1", "layer1.0.act2", "layer3.2.act2"):
        assert models.split(model, layer)[1].inputs == ("h",)
    with pytest.raises(
        ValueError, match="unknown layer 'layer1.0.conv1'; this model's hidden layers: act1, "
    ):
        models.split(model, "layer1.0.conv1")
    with pytest.raises(ValueError, match="unknown layer 'layer1.0.act2'"):
        models.split(models.resnet20(0.25, residual_activation=False), "layer1.0.act2")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layer", ["act1", "act2", "act4"])
def test_theorem_4_2_matching_recovers_planted_transform(seed, layer, bn_model, random_images):
    a = bn_model(MYRTLE, seed)
    b, elements = symmetry.random_transform(a, torch.Generator().manual_seed(100 + seed))
    x = random_images(seed=seed)
    fa = _front(a, layer, x)[0]
    fb = _front(b, layer, x)[0]
    M = symmetry.feature_transform(a, layer, elements).float()
    perm, scales = stitching.activation_matching(fa, fb)
    # Channels that never fire on these inputs (random weights, small late layers) are
    # interchangeable; every live channel must be matched exactly.
    alive = fa.amax(dim=(0, 2, 3)) > 0
    assert alive.float().mean() > 0.5
    assert torch.equal(perm[alive], M.abs().argmax(0)[alive])
    torch.testing.assert_close(
        stitching.matching_matrix(perm, scales)[:, alive], M[:, alive], rtol=1e-4, atol=1e-5
    )
    s = stitching.stitch(a, b, layer, "grelu")
    s.stitch.set_matrix(stitching.matching_matrix(perm, scales))
    s.stitch.hard = True
    torch.testing.assert_close(s.eval()(x), a(x), rtol=1e-3, atol=1e-4)


def test_theorem_4_2_low_rank_cannot_reproduce(bn_model):
    a = bn_model(MYRTLE)
    b, elements = symmetry.random_transform(a, torch.Generator().manual_seed(5))
    M = symmetry.feature_transform(a, "act2", elements).float()
    # The best rank-r approximation of a monomial matrix with distinct scales has error >= its
    # (r+1)-th singular value, which is positive for r < C: rank layers cannot hold phi(A).
    sv = torch.linalg.svdvals(M)
    assert sv[1] > 1e-3 * sv[0]


def test_sinkhorn_doubly_stochastic_and_hungarian_is_permutation():
    g = torch.Generator().manual_seed(0)
    for n in (3, 8, 17):
        P = stitching.sinkhorn(torch.rand(n, n, generator=g), 16)
        assert (P >= 0).all()
        torch.testing.assert_close(P.sum(0), torch.ones(n), atol=1e-6, rtol=0)
        torch.testing.assert_close(P.sum(1), torch.ones(n), atol=1e-2, rtol=0)
        H = stitching.hungarian(P)
        assert torch.equal(H.sum(0), torch.ones(n)) and torch.equal(H.sum(1), torch.ones(n))
        assert set(H.unique().tolist()) == {0.0, 1.0}
        Q = torch.eye(n)[torch.randperm(n, generator=g)]
        assert torch.equal(stitching.hungarian(0.7 * Q + 0.3 * P / n), Q)


@pytest.mark.parametrize("seed", range(20))
def test_projection_keeps_grelu_layer_in_constraint_set(seed):
    g = torch.Generator().manual_seed(seed)
    layer = stitching.StitchLayer("grelu", 6, generator=g)
    with torch.no_grad():
        layer.p.add_(2 * torch.randn(6, 6, generator=g))  # some columns end up all negative
        layer.d.sub_(2.0)
    layer.project(16)
    assert (layer.p >= 0).all() and (layer.d >= 0).all()
    torch.testing.assert_close(layer.p.sum(0), torch.ones(6), atol=1e-5, rtol=0)
    layer.hard = True
    assert ((layer.matrix() != 0).sum(0) <= 1).all() and ((layer.matrix() != 0).sum(1) <= 1).all()


@pytest.mark.parametrize("r", [1, 2, 4])
def test_rank_layer_has_rank_at_most_r(r):
    layer = stitching.StitchLayer("rank", 16, rank=r, generator=torch.Generator().manual_seed(r))
    assert torch.linalg.matrix_rank(layer.matrix().detach()) == r
    h = torch.randn(5, 16, 4, 4)
    out = layer(h).movedim(1, -1).reshape(-1, 16)
    assert torch.linalg.matrix_rank(out.detach()) <= r


@pytest.mark.parametrize(
    "arch,layer",
    [
        (MYRTLE, "act1"),
        (MYRTLE, "act3"),
        (MYRTLE, "act4"),
        (RESNET, "act1"),
        (RESNET, "layer1.0.act2"),
        (RESNET, "layer2.0.act1"),
        (RESNET, "layer3.2.act1"),
        (RESNET, "layer3.2.act2"),
    ],
)
def test_identity_stitch_of_model_with_itself_reproduces_it(arch, layer, bn_model, random_images):
    a = bn_model(arch)
    x = random_images()
    s = stitching.stitch(a, a, layer, "full", init="identity").eval()
    torch.testing.assert_close(s(x), a(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s.tail(s.front(x)), a(x), rtol=1e-4, atol=1e-5)


def test_in_block_stitch_uses_a_block_input_for_the_shortcut(bn_model, random_images):
    a, b = bn_model(RESNET, 0), bn_model(RESNET, 1)
    x = random_images()
    s = stitching.stitch(a, b, "layer2.0.act1", "full", init="identity").eval()
    h, block_in = s.front(x)
    assert (
        block_in.shape[1] == a.layer1[2].conv2.out_channels
        and h.shape[1] == a.layer2[0].conv1.out_channels
    )
    # Replacing A's block input changes the output: the shortcut really reads A's residual stream.
    assert not torch.allclose(s.tail((h, block_in)), s.tail((h, torch.zeros_like(block_in))))


def test_only_the_stitching_layer_trains(bn_model):
    data = synthetic_dataset(n_train=32, n_test=16)
    a, b = bn_model(MYRTLE, 0), bn_model(MYRTLE, 1)
    before_a = {k: v.clone() for k, v in a.state_dict().items()}
    before_b = {k: v.clone() for k, v in b.state_dict().items()}
    for kind, rank in (("grelu", None), ("rank", 2), ("full", None)):
        s = stitching.stitch(a, b, "act2", kind, rank)
        start = {k: v.clone() for k, v in s.stitch.state_dict().items()}
        tr = stitching.front_features(a, "act2", data.x_train, device="cpu")
        te = stitching.front_features(a, "act2", data.x_test, device="cpu")
        settings = StitchSettings(epochs=2, batch_size=16, lr=0.1)
        res = stitching.train_stitch(s, tr, data.y_train, te, data.y_test, settings)
        assert len(res["history"]) == 3 and 0 <= res["best_acc"] <= 1  # the start, then 2 epochs
        assert any(not torch.equal(v, s.stitch.state_dict()[k]) for k, v in start.items())
        for k, v in s.model_b.named_parameters():
            assert torch.equal(v, before_b[k]), k
    for k, v in a.state_dict().items():
        assert torch.equal(v, before_a[k]), k
    for k, v in b.state_dict().items():
        assert torch.equal(v, before_b[k]), k


def test_stitch_experiment_penalty_and_matching_on_self(bn_model, tiny_data):
    a = bn_model(MYRTLE, 0)
    b, _ = symmetry.random_transform(a, torch.Generator().manual_seed(3))
    exact = StitchSettings(epochs=1, bn_adapt=False, precision="float32")
    every = stitching.StitchData(tiny_data, None, None, torch.float32)
    res = stitching.stitch_experiment(
        a, b, "act3", ["matching", "rank1"], every, exact, device="cpu"
    )
    assert res["clean"][0] == res["clean"][1]
    assert res["variants"]["matching"]["penalty"] == 0.0
    assert set(res["variants"]) == {"matching", "rank1"}


EXACT = StitchSettings(epochs=0, bn_adapt=False, precision="float32")


@pytest.fixture()
def planted(bn_model):
    """``planted(seed=3)``: ``bn_model(MYRTLE, 0)``, a random symmetry transform of it seeded
    ``seed``, and that transform's elements."""

    def make(seed=3):
        a = bn_model(MYRTLE, 0)
        b, elements = symmetry.random_transform(a, torch.Generator().manual_seed(seed))
        return a, b, elements

    return make


@pytest.mark.parametrize("layer", ["act2", "act3"])
def test_closed_form_starts_are_exact_on_a_planted_pair(layer, planted):
    data = synthetic_dataset(n_train=96, n_test=64)
    a, b, elements = planted()
    C = stitching.channels_at(a, layer)
    res = stitching.stitch_experiment(
        a,
        b,
        layer,
        ["full", f"rank{C}", "matching", "rank1"],
        stitching.StitchData(data, None, None, torch.float32),
        EXACT,
        device="cpu",
    )
    assert res["clean"][0] == res["clean"][1]
    for v in ("full", f"rank{C}", "matching"):
        assert res["variants"][v]["penalty"] == 0.0, v
        assert [h["epoch"] for h in res["variants"][v]["history"]] == [0]
    # The least-squares map is the planted phi(A) on the channels that fire (dead ones get 0).
    M = symmetry.feature_transform(a, layer, elements).float()
    x = to_input(data.x_train, "cpu")
    alive = _front(a, layer, x)[0].amax(dim=(0, 2, 3)) > 0
    W = res["variants"]["full"]["matrix"]
    torch.testing.assert_close(W[:, alive], M[:, alive], rtol=1e-3, atol=1e-3)


def test_least_squares_streams_and_reduced_rank_is_optimal():
    g = torch.Generator().manual_seed(0)
    xa = torch.randn(500, 6, generator=g, dtype=torch.float64)
    xb = (
        xa @ torch.randn(6, 5, generator=g, dtype=torch.float64)
        + 0.3
        + 0.1 * torch.randn(500, 5, generator=g, dtype=torch.float64)
    )
    whole = stitching.moments_of(xa, xb)
    streamed = None
    for part in (slice(0, 123), slice(123, 400), slice(400, 500)):
        streamed = stitching.add_moments(streamed, stitching.moments_of(xa[part], xb[part]))
    for k in whole:
        torch.testing.assert_close(torch.as_tensor(streamed[k]), torch.as_tensor(whole[k]))
    W, b = stitching.least_squares(whole)
    X1 = torch.cat([xa, torch.ones(500, 1, dtype=torch.float64)], 1)
    ref = torch.linalg.lstsq(X1, xb).solution
    torch.testing.assert_close(W, ref[:6].T)
    torch.testing.assert_close(b, ref[6])

    def sse(W, b):
        return ((xa @ W.T + b - xb) ** 2).sum()

    for r in (1, 2, 4):
        Wr, br = stitching.least_squares(whole, rank=r)
        assert torch.linalg.matrix_rank(Wr) == r
        # No random rank-r map (with its best bias) does better than reduced-rank regression.
        for _ in range(20):
            R = torch.randn(5, r, generator=g, dtype=torch.float64) @ torch.randn(
                r, 6, generator=g, dtype=torch.float64
            )
            Rw = Wr + 0.05 * R
            Rw = torch.linalg.svd(Rw)[0][:, :r] @ torch.linalg.svd(Rw)[0][:, :r].T @ Rw
            assert sse(Wr, br) <= sse(Rw, xb.mean(0) - Rw @ xa.mean(0)) + 1e-9


def test_birkhoff_from_matching_keeps_the_planted_permutation(planted):
    data = synthetic_dataset(n_train=128, n_test=64)
    a, b, elements = planted()
    settings = StitchSettings(epochs=2, batch_size=32, bn_adapt=False, precision="float32")
    every = stitching.StitchData(data, None, None, torch.float32)
    res = stitching.stitch_experiment(a, b, "act3", ["grelu"], every, settings, device="cpu")
    true_perm = symmetry.feature_transform(a, "act3", elements).abs().argmax(0)
    got = res["variants"]["grelu"]["matrix"].abs().argmax(0)
    # Channels that never fire on these images (random weights) are interchangeable, so the
    # permutation is only defined on the live ones.
    alive = _front(a, "act3", to_input(data.x_train, "cpu"))[0].amax(dim=(0, 2, 3)) > 0
    assert alive.float().mean() > 0.75
    assert (got == true_perm)[alive].float().mean() >= 0.9
    assert len(res["variants"]["grelu"]["history"]) == 3


def test_bad_input_names_the_accepted_values(bn_model, tiny_data):
    a, b = bn_model(MYRTLE, 0), bn_model(MYRTLE, 1)
    s = stitching.stitch(a, b, "act2", "full")
    fronts = stitching.front_features(a, "act2", tiny_data.x_train, device="cpu")
    with pytest.raises(ValueError, match="64 images but 40 labels; accepted: one label per front"):
        stitching.train_stitch(
            s, fronts, tiny_data.y_train[:40], fronts, tiny_data.y_train, ONE_EPOCH
        )
    with pytest.raises(ValueError, match="epochs must be an integer >= 0"):
        stitching.train_stitch(
            s,
            fronts,
            tiny_data.y_train,
            fronts,
            tiny_data.y_train,
            StitchSettings(epochs=-1),
        )
    every = stitching.StitchData(tiny_data, None, None)
    with pytest.raises(ValueError, match="unknown variant 'affine'; accepted: 'full', 'rank<r>'"):
        stitching.stitch_experiment(a, b, "act2", ["affine"], every, ONE_EPOCH, device="cpu")
    for bad in ("rank0", "rank17"):
        with pytest.raises(ValueError, match=f"variant '{bad}': rank must be in 1..16"):
            stitching.stitch_experiment(a, b, "act2", [bad], every, ONE_EPOCH, device="cpu")
    with pytest.raises(
        ValueError, match="unknown init 'zeros'; accepted values: 'closed_form', 'random'"
    ):
        stitching.stitch_experiment(
            a, b, "act2", ["full"], every, dataclasses.replace(ONE_EPOCH, init="zeros")
        )


def test_errors(bn_model):
    a, b = bn_model(MYRTLE, 0), bn_model(MYRTLE, 1)
    with pytest.raises(ValueError, match="unknown layer 'conv9'.*act1, act2, act3, act4"):
        stitching.stitch(a, b, "conv9", "full")
    with pytest.raises(ValueError, match="rank must be an integer in 1..8"):
        stitching.stitch(a, b, "act1", "rank", rank=9)
    with pytest.raises(ValueError, match="rank must be an integer in 1..8"):
        stitching.stitch(a, b, "act1", "rank", rank=0)
    with pytest.raises(ValueError, match="layer_kind.*'full', 'rank', 'grelu'"):
        stitching.stitch(a, b, "act1", "affine")
    with pytest.raises(ValueError, match="same architecture"):
        stitching.stitch(a, bn_model(RESNET), "act1", "full")
    with pytest.raises(ValueError, match="same device"):
        stitching.stitch(a, models.build(MYRTLE).to("meta"), "act1", "full")
    with pytest.raises(ValueError, match="equal shapes"):
        stitching.activation_matching(torch.rand(4, 3), torch.rand(4, 5))


def test_rotated_model_applies_map_and_freezes_front(random_images):
    m = models.myrtle_cnn(0.125, batchnorm=False).eval()
    g = torch.Generator().manual_seed(0)
    A = sanity.random_channel_map("orthogonal", 16, g)
    torch.testing.assert_close(A.T @ A, torch.eye(16, dtype=A.dtype))
    P = sanity.random_channel_map("grelu", 16, g)
    assert groups.intertwiner_group("relu", 16).contains(P)
    new = sanity.rotated_model(m, "conv2", P)
    x = random_images(4)
    z = m.conv2(m.act1(m.conv1(x)))
    torch.testing.assert_close(
        new.conv2(new.act1(new.conv1(x))),
        torch.einsum("ij,njhw->nihw", P.float(), z),
        rtol=1e-4,
        atol=1e-5,
    )
    assert not any(p.requires_grad for p in new.conv1.parameters())
    assert not any(p.requires_grad for p in new.conv2.parameters())
    assert all(p.requires_grad for p in new.conv3.parameters())
    with pytest.raises(ValueError, match="must be a Conv2d"):
        sanity.rotated_model(m, "act1", P)
    with pytest.raises(ValueError, match="unknown layer 'conv7'"):
        sanity.rotated_model(m, "conv7", P)


def test_cached_experiment_memoises_under_zoo_keys(tmp_path, monkeypatch, tiny_data, tiny_recipe):
    from lib import zoo

    monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path))
    r = tiny_recipe()
    a, b = (zoo.get(MYRTLE, r, s, data=tiny_data, progress=False) for s in (0, 1))
    settings = StitchSettings(epochs=1, batch_size=32)
    some = stitching.StitchData(tiny_data, 64, 32)
    first = stitching.cached_experiment(a, b, "act2", ["matching"], some, settings)
    calls = []
    monkeypatch.setattr(
        stitching.experiment, "stitch_experiment", lambda *args, **kw: calls.append(1)
    )
    again = stitching.cached_experiment(a, b, "act2", ["matching"], some, settings)
    assert (
        not calls
        and again["variants"]["matching"]["penalty"] == first["variants"]["matching"]["penalty"]
    )
    stitching.cached_experiment(a, b, "act3", ["matching"], some, settings)
    assert calls == [1]  # another layer is another entry
    # A transformed copy of B has other weights, hence another entry (never B's cached result).
    copy, _ = symmetry.random_transform(b, torch.Generator().manual_seed(0))
    stitching.cached_experiment(a, copy, "act2", ["matching"], some, settings)
    assert calls == [1, 1]


def test_refit_undoes_a_grelu_transform_exactly_but_not_an_orthogonal_one(tiny_data):
    m = models.myrtle_cnn(0.125, batchnorm=False).eval()
    z_tr = sanity.pre_activations(m, "conv2", tiny_data.x_train, dtype=torch.float32, device="cpu")
    z_te = sanity.pre_activations(m, "conv2", tiny_data.x_test, dtype=torch.float32, device="cpu")
    tail = m[3:]  # after conv2 (16 channels at width 0.125)
    ref = tail(z_te)
    err = {}
    for kind in sanity.ROTATION_KINDS:
        A = sanity.random_channel_map(kind, 16, torch.Generator().manual_seed(1))
        t = copy.deepcopy(tail)
        sanity.refit_next_conv(t, A, z_tr)
        err[kind] = (
            (t(torch.einsum("ij,njhw->nihw", A.float(), z_te)) - ref).abs().max() / ref.abs().max()
        ).item()
    assert err["grelu"] < 1e-3 < err["orthogonal"]


def test_rotation_penalty_history_and_bad_input(tiny_data):
    m = models.myrtle_cnn(0.125, batchnorm=False).eval()
    ft = FinetuneSettings(
        trials=1, epochs=1, images=None, eval_images=None, batch_size=32, precision="float32"
    )
    gen = torch.Generator().manual_seed(0)
    res = sanity.rotation_penalty(m, "conv1", "grelu", gen, tiny_data, ft)
    assert [h["epoch"] for h in res["history"]] == [0, 1]
    # The refit start is the original function: penalty 0 before any fine-tuning.
    assert res["history"][0]["penalty"] == 0.0 and res["refit"] == res["clean"]
    # Bad settings are refused before any work, naming the field and its accepted values.
    for bad, message in (
        (dict(epochs=-1), "epochs must be an integer >= 0"),
        (dict(start="warm"), "unknown start 'warm'; accepted values: 'refit', 'transformed'"),
        (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (dict(precision="half"), "unknown precision 'half'"),
        (dict(schedule="step", step_size=0), "step_size must be an integer >= 1"),
        (dict(evals_per_epoch=0), "evals_per_epoch must be an integer >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            sanity.rotation_penalty(
                m, "conv1", "grelu", torch.Generator(), tiny_data, dataclasses.replace(ft, **bad)
            )
    with pytest.raises(
        ValueError, match="unknown kind 'gl'; accepted values: 'grelu', 'orthogonal'"
    ):
        sanity.rotation_penalty(m, "conv1", "gl", torch.Generator(), tiny_data, ft)
    with pytest.raises(ValueError, match="equal counts, got 64 and 40"):
        stitching.finetune.finetune_tail(
            m[2:],
            torch.zeros(64, 16, 32, 32),
            tiny_data.y_train[:40],
            torch.zeros(2, 16, 32, 32),
            tiny_data.y_test[:2],
            ft,
        )


def test_recovered_fraction_counts_live_channels_only():
    g = torch.Generator().manual_seed(0)
    true_perm = torch.randperm(8, generator=g)
    P = torch.eye(8)[:, true_perm]  # column i has its entry in row true_perm[i]
    M = P * (torch.rand(8, generator=g) + 0.5)[None, :]
    assert torch.equal(stitching.permutation_of(M), true_perm)
    assert torch.equal(stitching.permutation_of(-M), true_perm)  # signs do not matter
    wrong = true_perm.clone()
    wrong[[0, 1]] = wrong[[1, 0]]
    assert stitching.recovered_fraction(true_perm, true_perm) == 1.0
    assert stitching.recovered_fraction(wrong, true_perm) == 0.75
    alive = torch.ones(8, dtype=torch.bool)
    alive[[0, 1]] = False  # the swapped channels are dead: they do not count
    assert stitching.recovered_fraction(wrong, true_perm, alive) == 1.0


def test_last_quarter_change_reads_the_end_of_the_history():
    def rows(pens):
        return [dict(epoch=i, penalty=p) for i, p in enumerate(pens)]

    assert stitching.last_quarter_change(rows([0.3])) == 0.0  # nothing trained
    assert stitching.last_quarter_change(rows([0.5, 0.2])) == pytest.approx(
        30.0
    )  # pp, epoch 1 vs 0
    # 8 epochs: the last 2 (a quarter) moved the penalty from 0.10 to 0.04, i.e. 6 pp.
    assert stitching.last_quarter_change(
        rows([0.5, 0.4, 0.3, 0.2, 0.15, 0.12, 0.10, 0.07, 0.04])
    ) == pytest.approx(6.0)


def test_cached_rotation_penalty_memoises_and_computes_fronts_only_on_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path))
    data = synthetic_dataset(n_train=32, n_test=16)
    m = models.myrtle_cnn(0.125, batchnorm=False).eval()
    calls = []

    def fronts():
        calls.append(1)
        return tuple(
            sanity.pre_activations(m, "conv1", x, device="cpu") for x in (data.x_train, data.x_test)
        )

    ft = FinetuneSettings(trials=2, epochs=1, images=None, eval_images=None, batch_size=16)
    first = sanity.cached_rotation_penalty(m, "conv1", "grelu", 0, data, ft, fronts=fronts)
    again = sanity.cached_rotation_penalty(m, "conv1", "grelu", 0, data, ft, fronts=fronts)
    assert calls == [1] and [h["penalty"] for h in again["history"]] == [
        h["penalty"] for h in first["history"]
    ]
    sanity.cached_rotation_penalty(m, "conv1", "grelu", 1, data, ft, fronts=fronts)  # another trial
    assert calls == [1, 1]


def test_rotation_penalty_key_changes_with_every_finetune_field_the_weights_and_the_data():
    from lib.cache import memo_key

    data = synthetic_dataset(n_train=32, n_test=16)
    other = synthetic_dataset(n_train=32, n_test=16, seed=1)
    m = models.myrtle_cnn(0.125, batchnorm=False).eval()
    base = FinetuneSettings(trials=1, epochs=1, images=32, eval_images=16)
    # A different valid value of every field (None for the image counts: all images).
    changed = dict(
        trials=2,
        epochs=2,
        images=None,
        eval_images=None,
        start="transformed",
        batch_size=32,
        lr=2e-3,
        weight_decay=0.0,
        precision="float32",
        schedule="step",
        step_size=13,
        gamma=0.25,
        evals_per_epoch=2,
    )
    assert set(changed) == {f.name for f in dataclasses.fields(base)}

    def key(model=m, ds=data, ft=base, **kw):
        return memo_key(sanity.rotation_config(model, "conv1", "grelu", 0, ds, ft, **kw))

    keys = {f: key(ft=dataclasses.replace(base, **{f: v})) for f, v in changed.items()}
    assert len(set(keys.values()) | {key()}) == len(changed) + 1
    moved, _ = symmetry.random_transform(m, torch.Generator().manual_seed(0))
    assert len({key(), key(model=moved), key(ds=other), key(seed=1)}) == 4
    assert key() == key(ft=dataclasses.replace(base))  # equal settings, equal keys


# -- the authors' protocol at `paper` scale (issue 11 items 1-3)
# -------------------------------------


def test_paper_scale_has_the_authors_protocols():
    from lib.settings import FINETUNE_PAPER, SCALES

    paper = stitching.settings_for_scale("paper")
    assert paper == StitchSettings.paper()
    assert (
        paper.optimizer,
        paper.lr,
        paper.lr_decay,
        paper.momentum,
        paper.weight_decay,
        paper.batch_size,
        paper.epochs,
        paper.init,
    ) == ("sgd", 1e-3, False, 0.0, 1e-4, 32, 20, "random")
    assert (paper.fronts, paper.bn_epoch, paper.random_bias) == ("augmented", "grelu", False)
    assert (paper.alpha, paper.sinkhorn_rounds, paper.p_only_fraction, paper.bn_adapt) == (
        0.1,
        16,
        0.5,
        True,
    )
    assert (
        SCALES["paper"].finetune
        == FINETUNE_PAPER
        == FinetuneSettings(
            trials=10,
            epochs=50,
            images=None,
            eval_images=None,
            batch_size=32,
            lr=1e-3,
            schedule="step",
            step_size=12,
            gamma=0.5,
            evals_per_epoch=1,
        )
    )
    S = SCALES["paper"]
    assert (S.resnet.pairs, S.resnet.layers, S.slope.layers) == (
        16,
        "all",
        "all",
    ) and S.slope.pairs > 1
    assert set(S.resnet.variants) == {"full", "rank1", "rank2", "rank4", "grelu", "matching"}
    # The fine-tune keeps the fast schedule below paper scale; cpu runs it at a third of the rate
    # and evaluates four times per epoch on all test images (issue 10).
    fast = dict(
        batch_size=256, lr=1e-3, schedule="linear", step_size=0, gamma=1.0, evals_per_epoch=1
    )
    recipe = lambda f: {k: getattr(f, k) for k in fast}  # noqa: E731
    assert recipe(SCALES["smoke"].finetune) == recipe(SCALES["gpu"].finetune) == fast
    assert recipe(SCALES["cpu"].finetune) == dict(fast, lr=3e-4, evals_per_epoch=4)
    assert SCALES["cpu"].finetune.eval_images is None


def _changed(value):
    # A different valid-looking value of the same type, for every field type of StitchSettings.
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if value is None:
        return 1e-3
    return value + "_other"


def test_memo_key_changes_with_every_settings_field(tiny_data):
    from lib.cache import memo_key

    a, b = (models.build(MYRTLE, seed=s) for s in (0, 1))
    base = stitching.settings_for_scale("smoke")

    def key(s, dtype=torch.float16, **kw):
        data = stitching.StitchData(tiny_data, 64, 32, dtype)
        return memo_key(stitching.experiment_config(a, b, "act2", ["matching"], data, s, **kw))

    fields = [f.name for f in dataclasses.fields(base)]
    keys = {f: key(dataclasses.replace(base, **{f: _changed(getattr(base, f))})) for f in fields}
    assert len(set(keys.values()) | {key(base)}) == len(fields) + 1
    assert key(base, torch.float32) != key(base) and key(base, seed=1) != key(base)
    assert key(base) == key(dataclasses.replace(base))  # equal settings, equal keys


def test_augmented_fronts_differ_from_cached_ones_and_train(bn_model, tiny_data):
    a, b = bn_model(MYRTLE, 0), bn_model(MYRTLE, 1)
    before_a = {k: v.clone() for k, v in a.state_dict().items()}
    s = stitching.stitch(a, b, "act2", "full")
    cached = stitching.front_features(a, "act2", tiny_data.x_train, device="cpu")[0]
    aug = stitching.augmented_front(s, tiny_data.x_train, torch.Generator().manual_seed(0))[0]
    again = stitching.augmented_front(s, tiny_data.x_train, torch.Generator().manual_seed(0))[0]
    assert aug.shape == cached.shape and torch.equal(aug, again)  # seeded
    differs = (aug - cached).flatten(1).abs().amax(1) > 1e-4
    assert differs.float().mean() > 0.5  # most images are moved
    te = stitching.front_features(a, "act2", tiny_data.x_test, device="cpu")
    settings = StitchSettings(epochs=2, batch_size=16, lr=0.1, precision="float32")
    out = {}
    for fronts in stitching.FRONTS:
        m = stitching.stitch(a, b, "act2", "full")
        start = m.stitch.weight.detach().clone()
        kw = dict(train_images=tiny_data.x_train) if fronts == "augmented" else {}
        tr = (
            None
            if fronts == "augmented"
            else stitching.front_features(a, "act2", tiny_data.x_train, device="cpu")
        )
        out[fronts] = stitching.train_stitch(
            m,
            tr,
            tiny_data.y_train,
            te,
            tiny_data.y_test,
            dataclasses.replace(settings, fronts=fronts),
            **kw,
        )
        assert len(out[fronts]["history"]) == 3 and not torch.equal(m.stitch.weight, start)
    # Same start and batch order: only the fronts differ, and so does what the layer learns.
    assert not torch.allclose(out["cached"]["matrix"], out["augmented"]["matrix"])
    for k, v in a.state_dict().items():
        assert torch.equal(v, before_a[k]), k
    augmented = dataclasses.replace(settings, fronts="augmented", epochs=1)
    every = stitching.StitchData(tiny_data, None, None)
    res = stitching.stitch_experiment(
        a, b, "act2", ["full_random", "matching"], every, augmented, device="cpu"
    )
    assert set(res["variants"]) == {"full_random", "matching"}


def test_hard_rounding_rounds_grelu_only_inside_the_block_even_on_error(bn_model):
    a, b = bn_model(MYRTLE, 0), bn_model(MYRTLE, 1)
    gen = torch.Generator().manual_seed(0)
    grelu = stitching.stitch(a, b, "act1", "grelu", generator=gen).stitch
    full = stitching.stitch(a, b, "act1", "full").stitch
    soft = grelu.matrix().detach().clone()
    with stitching.hard_rounding(grelu) as layer, stitching.hard_rounding(full):
        assert layer is grelu and grelu.hard and not full.hard
        rounded = grelu.matrix().detach()
    # A permutation times the scales: one non-zero per column, unlike the soft P.
    assert ((rounded != 0).sum(0) == 1).all() and not ((soft != 0).sum(0) == 1).all()
    assert not grelu.hard and torch.equal(grelu.matrix().detach(), soft)
    with pytest.raises(RuntimeError, match="inside"):
        with stitching.hard_rounding(grelu):
            raise RuntimeError("inside")
    assert not grelu.hard


def test_bn_epoch_pass_reestimates_b_statistics_with_the_rounded_permutation(bn_model):
    data = synthetic_dataset(n_train=32, n_test=16)
    a, b = bn_model(MYRTLE, 0), bn_model(MYRTLE, 1)
    s = stitching.stitch(
        a, b, "act1", "grelu", generator=torch.Generator().manual_seed(0)
    )  # soft P
    for m in s.model_b.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0  # running statistics = those of the last batch
    h = stitching.front_features(a, "act1", data.x_train, device="cpu")[0]
    bn, conv = s.model_b.bn2, s.model_b.conv2  # the first BatchNorm after the stitch
    saved = {n: t.clone() for n, t in s.model_b.named_buffers()}
    s.eval()
    with torch.no_grad(), exact_mode():
        s.stitch.hard = True
        hard = conv(s.stitch(h)).mean((0, 2, 3))
        s.stitch.hard = False
        soft = conv(s.stitch(h)).mean((0, 2, 3))
        with stitching.bn_epoch_stats(s, [(h,)]):
            inside = bn.running_mean.clone()
    torch.testing.assert_close(inside, hard, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(inside, soft, atol=1e-3)
    # Left behind: the statistics from before the pass, the layer soft again, the mode as it was.
    for n, t in s.model_b.named_buffers():
        assert torch.equal(t, saved[n]), n
    assert not s.stitch.hard and not s.training and not bn.training
    # In training the pass changes what is evaluated, never what is trained.
    te = stitching.front_features(a, "act1", data.x_test, device="cpu")
    runs = {}
    for mode in ("none", "grelu"):
        m = stitching.stitch(a, b, "act1", "grelu", generator=torch.Generator().manual_seed(0))
        settings = StitchSettings(epochs=2, batch_size=8, precision="float32", bn_epoch=mode)
        runs[mode] = (stitching.train_stitch(m, (h,), data.y_train, te, data.y_test, settings), m)
    assert torch.equal(runs["none"][0]["matrix"], runs["grelu"][0]["matrix"])
    for (n, t), (_, u) in zip(
        runs["none"][1].model_b.named_buffers(), runs["grelu"][1].model_b.named_buffers()
    ):
        assert torch.equal(t, u), n


def test_paper_finetune_schedule_halves_the_rate_at_epoch_12():
    from lib.settings import SCALES

    cfg = SCALES["paper"].finetune
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = stitching.finetune.lr_schedule(opt, cfg.schedule, 50, 3, cfg.step_size, cfg.gamma)
    lrs = []
    for _ in range(50):  # the lr of each epoch, 3 steps each
        lrs.append(opt.param_groups[0]["lr"])
        for _ in range(3):
            opt.step()
            sched.step()
    assert lrs[0] == lrs[11] == 1e-3 and lrs[12] == lrs[23] == 5e-4
    assert lrs[24] == 2.5e-4 and lrs[49] == pytest.approx(1e-3 / 16)
    # Below paper scale: the linear decay to 0 the cached results were computed with.
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = stitching.finetune.lr_schedule(opt, SCALES["cpu"].finetune.schedule, 3, 4)
    for _ in range(6):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)


def test_unknown_protocol_values_name_the_accepted_ones(bn_model):
    data = synthetic_dataset(n_train=32, n_test=16)
    a, b = bn_model(MYRTLE, 0), bn_model(MYRTLE, 1)
    s = stitching.stitch(a, b, "act2", "full")
    fronts = stitching.front_features(a, "act2", data.x_train, device="cpu")
    y = data.y_train
    with pytest.raises(
        ValueError, match="unknown fronts 'precomputed'; accepted values: 'cached', 'augmented'"
    ):
        stitching.train_stitch(
            s, fronts, y, fronts, y, dataclasses.replace(ONE_EPOCH, fronts="precomputed")
        )
    with pytest.raises(
        ValueError, match="unknown fronts 'clean'; accepted values: 'cached', 'augmented'"
    ):
        stitching.stitch_experiment(
            a,
            b,
            "act2",
            ["full"],
            stitching.StitchData(data, None, None),
            dataclasses.replace(ONE_EPOCH, fronts="clean"),
        )
    with pytest.raises(
        ValueError, match="unknown bn_epoch 'full'; accepted values: 'none', 'grelu', 'all'"
    ):
        stitching.train_stitch(
            s, fronts, y, fronts, y, dataclasses.replace(ONE_EPOCH, bn_epoch="full")
        )
    with pytest.raises(ValueError, match="fronts='augmented' needs train_images"):
        stitching.train_stitch(
            s, None, y, fronts, y, dataclasses.replace(ONE_EPOCH, fronts="augmented")
        )
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(
        ValueError, match="unknown schedule 'cosine'; accepted values: 'linear', 'constant', 'step'"
    ):
        stitching.finetune.lr_schedule(opt, "cosine", 1, 1)


def test_random_bias_gives_random_starts_a_bias(monkeypatch, bn_model):
    data = synthetic_dataset(n_train=32, n_test=16)
    a, b = bn_model(MYRTLE, 0), bn_model(MYRTLE, 1)
    built, real = [], stitching.experiment.stitch
    monkeypatch.setattr(
        stitching.experiment,
        "stitch",
        lambda *args, **kw: built.append(real(*args, **kw)) or built[-1],
    )
    for random_bias in (False, True):
        settings = StitchSettings(epochs=0, random_bias=random_bias)
        stitching.stitch_experiment(
            a,
            b,
            "act2",
            ["full_random", "rank1_random", "grelu_random"],
            stitching.StitchData(data, 32, 16),
            settings,
            device="cpu",
        )
    assert [m.stitch.bias is not None for m in built] == [False, False, False, True, True, False]
