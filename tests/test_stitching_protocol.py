"""The Fig. 1 protocol's G_ReLU options: a permutation fixed at activation matching, memo keys that
stay valid for results cached before the option existed, and evaluations within an epoch."""

import copy
import dataclasses

import pytest
import torch

from lib import models, stitching
from lib.data import synthetic_dataset
from lib.settings import SCALES, FinetuneSettings, StitchSettings
from lib.stitching import experiment, finetune

MYRTLE = dict(arch="myrtle_cnn", width=0.125)
FIXED = StitchSettings(
    epochs=2, batch_size=32, bn_adapt=False, precision="float32", grelu_p="fixed", grelu_lr=3e-2
)


def _pair():
    return models.build(MYRTLE, seed=0).eval(), models.build(MYRTLE, seed=1).eval()


def test_fixed_permutation_trains_only_the_scales():
    data = synthetic_dataset(n_train=128, n_test=64)
    a, b = _pair()
    res = stitching.stitch_experiment(
        a,
        b,
        "act3",
        ["grelu"],
        stitching.StitchData(data, None, None, torch.float32),
        FIXED,
        device="cpu",
    )
    row = res["variants"]["grelu"]
    M = row["matrix"]
    # Each column holds one non-zero entry, in the row activation matching chose: P never moved.
    assert ((M != 0).sum(0) <= 1).all()
    assert torch.equal(
        stitching.permutation_of(M)[M.abs().sum(0) > 0], row["perm"][M.abs().sum(0) > 0]
    )
    # ... while D did train away from the matching's scales, and stays non-negative.
    assert not torch.allclose(M.abs().sum(0), row["scales"].float())
    assert (M >= 0).all()
    assert len(row["history"]) == 3


def test_random_start_always_uses_the_birkhoff_optimiser():
    # A random P has nothing to keep fixed: with grelu_p="fixed" the random start still trains P, so
    # its rounded permutation is not frozen at the random start's rounding.
    data = synthetic_dataset(n_train=128, n_test=64)
    a, b = _pair()
    calls = []
    real = experiment.train_stitch

    def spy(model, *args, **kwargs):
        calls.append(args[4].grelu_p if len(args) > 4 else kwargs["settings"].grelu_p)
        return real(model, *args, **kwargs)

    experiment.train_stitch = spy
    try:
        stitching.stitch_experiment(
            a,
            b,
            "act3",
            ["grelu", "grelu_random"],
            stitching.StitchData(data, None, None, torch.float32),
            FIXED,
            device="cpu",
        )
    finally:
        experiment.train_stitch = real
    assert calls == ["fixed", "birkhoff"]


def test_unknown_grelu_p_names_the_accepted_values():
    with pytest.raises(ValueError, match="grelu_p.*'birkhoff', 'fixed'"):
        stitching.check_settings(dataclasses.replace(FIXED, grelu_p="soft"))


def test_memo_key_holds_every_settings_field(monkeypatch, tiny_data):
    a, b = _pair()
    configs = []
    monkeypatch.setattr(experiment, "memo", lambda kind, config, compute: configs.append(config))
    s = StitchSettings(epochs=1)
    for t in (s, dataclasses.replace(s, grelu_p="fixed"), dataclasses.replace(s, grelu_lr=3e-3)):
        some = stitching.StitchData(tiny_data, 64, 32)
        experiment.cached_experiment(a, b, "act2", ["matching"], some, t)
    assert configs[0]["settings"] == dataclasses.asdict(s)
    assert (
        configs[1]["settings"]["grelu_p"] == "fixed" and configs[2]["settings"]["grelu_lr"] == 3e-3
    )


def test_fig1_protocol_at_cpu_scale_reads_one_home():
    fig1 = SCALES["cpu"].fig1
    s = fig1.protocol
    assert (fig1.images, fig1.eval_images) == (50000, None)
    assert (s.grelu_p, s.grelu_lr, s.lr, s.epochs, s.lr_decay, s.evals_per_epoch) == (
        "fixed",
        3e-3,
        1e-2,
        2,
        True,
        2,
    )
    assert s == dataclasses.replace(
        stitching.settings_for_scale("cpu"),
        epochs=2,
        lr=1e-2,
        grelu_p="fixed",
        grelu_lr=3e-3,
        evals_per_epoch=2,
    )
    assert all(SCALES[k].fig1 == SCALES[k].stitching for k in ("smoke", "gpu", "paper"))


# -- evaluations within an epoch (the plateau over the last 25 % of a 2-epoch run) -----------------


def test_eval_steps_are_evenly_spaced_and_end_each_epoch():
    assert stitching.eval_steps(10, 1) == {9: 1.0}
    assert stitching.eval_steps(10, 2) == {4: 0.5, 9: 1.0}
    assert type(stitching.eval_steps(10, 2)[9]) is int  # an epoch's end is labelled by an integer
    assert stitching.eval_steps(391, 4) == {97: 0.25, 195: 0.5, 292: 0.75, 390: 1.0}
    assert stitching.eval_steps(2, 4) == {0: 0.5, 1: 1.0}  # at most one evaluation per step
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="evals_per_epoch must be an integer >= 1"):
            stitching.eval_steps(10, bad)
    with pytest.raises(ValueError, match="evals_per_epoch must be an integer >= 1"):
        stitching.check_settings(dataclasses.replace(FIXED, evals_per_epoch=0))


def test_last_quarter_change_reads_fractional_epochs():
    def rows(pts):
        return [dict(epoch=e, penalty=p) for e, p in pts]

    # 2 epochs evaluated twice each: the last 25 % runs from epoch 1.5 to 2.
    assert stitching.last_quarter_change(
        rows([(0, 0.5), (0.5, 0.3), (1, 0.2), (1.5, 0.12), (2, 0.11)])
    ) == pytest.approx(1.0)
    # Evaluated once per epoch the same run can only be read from epoch 1 (the last 50 %).
    assert stitching.last_quarter_change(rows([(0, 0.5), (1, 0.2), (2, 0.11)])) == pytest.approx(
        9.0
    )


def test_evaluations_within_an_epoch_do_not_change_the_training():
    data = synthetic_dataset(n_train=128, n_test=64)
    a, b = _pair()
    res = {
        k: stitching.stitch_experiment(
            a,
            b,
            "act2",
            ["full", "grelu"],
            stitching.StitchData(data, None, None, torch.float32),
            dataclasses.replace(FIXED, evals_per_epoch=k),
            device="cpu",
        )
        for k in (1, 2)
    }
    for v in ("full", "grelu"):
        once, twice = res[1]["variants"][v]["history"], res[2]["variants"][v]["history"]
        assert [h["epoch"] for h in once] == [0, 1, 2] and [h["epoch"] for h in twice] == [
            0,
            0.5,
            1,
            1.5,
            2,
        ]
        assert [h["test_acc"] for h in once] == [
            h["test_acc"] for h in twice if h["epoch"] in (0, 1, 2)
        ]
        assert torch.equal(res[1]["variants"][v]["matrix"], res[2]["variants"][v]["matrix"])


def test_finetune_evaluates_within_epochs_without_changing_the_training():
    m = models.myrtle_cnn(0.125, batchnorm=False).eval()
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(96, 8, 32, 32, generator=g), torch.randint(0, 10, (96,), generator=g)
    nets = {k: copy.deepcopy(m[2:]) for k in (1, 4)}
    base = FinetuneSettings(
        trials=1, epochs=2, images=None, eval_images=None, batch_size=16, precision="float32"
    )
    hist = {
        k: finetune.finetune_tail(
            nets[k], z[:64], y[:64], z[64:], y[64:], dataclasses.replace(base, evals_per_epoch=k)
        )
        for k in (1, 4)
    }
    # The same weights at the end, moved away from the start: evaluating leaves the training alone.
    final = [[p.detach() for p in nets[k].parameters()] for k in (1, 4)]
    assert all(torch.equal(p, q) for p, q in zip(*final))
    assert not all(torch.equal(p, q) for p, q in zip(final[0], m[2:].parameters()))
    assert [h["epoch"] for h in hist[4]] == [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2]
    assert [h["test_acc"] for h in hist[1]] == [
        h["test_acc"] for h in hist[4] if h["epoch"] in (0, 1, 2)
    ]
