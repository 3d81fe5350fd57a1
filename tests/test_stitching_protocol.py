"""The Fig. 1 protocol's G_ReLU options: a permutation fixed at activation matching, and memo keys
that stay valid for results cached before the option existed."""
import dataclasses

import pytest
import torch

from lib import models, stitching
from lib.data import synthetic_dataset
from lib.settings import SCALES
from lib.stitching import experiment

MYRTLE = dict(arch="myrtle_cnn", width=0.125)
FIXED = stitching.StitchSettings(epochs=2, batch_size=32, bn_adapt=False, precision="float32", grelu_p="fixed",
                                 grelu_lr=3e-2)


def _pair():
    return models.build(MYRTLE, seed=0).eval(), models.build(MYRTLE, seed=1).eval()


def test_fixed_permutation_trains_only_the_scales():
    data = synthetic_dataset(n_train=128, n_test=64)
    a, b = _pair()
    res = stitching.stitch_experiment(a, b, "act3", ["grelu"], data, None, None, FIXED,
                                      feature_dtype=torch.float32, device="cpu")
    row = res["variants"]["grelu"]
    M = row["matrix"]
    # Each column holds one non-zero entry, in the row activation matching chose: P never moved.
    assert ((M != 0).sum(0) <= 1).all()
    assert torch.equal(stitching.permutation_of(M)[M.abs().sum(0) > 0], row["perm"][M.abs().sum(0) > 0])
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
        stitching.stitch_experiment(a, b, "act3", ["grelu", "grelu_random"], data, None, None, FIXED,
                                    feature_dtype=torch.float32, device="cpu")
    finally:
        experiment.train_stitch = real
    assert calls == ["fixed", "birkhoff"]


def test_unknown_grelu_p_names_the_accepted_values():
    with pytest.raises(ValueError, match="grelu_p.*'birkhoff', 'fixed'"):
        stitching.check_settings(dataclasses.replace(FIXED, grelu_p="soft"))


def test_memo_key_omits_new_fields_at_their_legacy_values(monkeypatch, tiny_data):
    a, b = _pair()
    configs = []
    monkeypatch.setattr(experiment, "memo", lambda kind, config, compute: configs.append(config))
    legacy = stitching.StitchSettings(epochs=1)
    for s in (legacy, dataclasses.replace(legacy, grelu_p="fixed"), dataclasses.replace(legacy, grelu_lr=3e-3)):
        experiment.cached_experiment(a, b, "act2", ["matching"], tiny_data, 64, 32, s)
    assert "grelu_p" not in configs[0]["settings"] and "grelu_lr" not in configs[0]["settings"]
    # The legacy key is exactly the one of the settings before these fields existed.
    before = {k: v for k, v in dataclasses.asdict(legacy).items() if k not in stitching.LEGACY_FIELDS}
    assert configs[0]["settings"] == before
    assert configs[1]["settings"]["grelu_p"] == "fixed" and configs[2]["settings"]["grelu_lr"] == 3e-3


def test_fig1_protocol_at_cpu_scale_reads_one_home():
    fig1 = dict(SCALES["cpu"].fig1)
    images = fig1.pop("stitch_images"), fig1.pop("eval_images")
    s = stitching.settings_for_scale("cpu", **fig1)
    assert images == (50000, None)
    assert (s.grelu_p, s.grelu_lr, s.lr, s.epochs, s.lr_decay) == ("fixed", 3e-3, 1e-2, 2, True)
    assert all(SCALES[k].fig1 == {} for k in ("smoke", "gpu", "paper"))
