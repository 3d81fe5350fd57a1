"""Data loading, batch augmentation, training determinism, the zoo cache and its keys (synthetic data only)."""
import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from lib import cache, data, settings, train, zoo
from lib.models import build
from lib.results import Recorder, load_results, markdown_table


def test_load_cifar10_finds_file_in_data_dir(tmp_path, monkeypatch, cifar_npz):
    monkeypatch.delenv("SYMMETRIES_DATA", raising=False)
    monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path / "cache"))
    cifar_npz(tmp_path)
    d = data.load_cifar10(tmp_path)
    assert d.x_train.shape == (20, 32, 32, 3) and d.x_train.dtype == torch.uint8
    assert d.y_test.dtype == torch.int64 and d.classes[3] == "c3"
    assert d.identity.startswith("cifar10:") and len(d.identity) == len("cifar10:") + 16


def test_load_cifar10_env_variable_and_missing_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMMETRIES_DATA", str(tmp_path))
    np.savez(tmp_path / "cifar10.npz", x_train=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="lacks the keys"):
        data.load_cifar10()


def test_offline_and_absent_gives_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMMETRIES_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path / "cache"))

    def offline(*a, **k):
        raise OSError("no network")
    import torchvision
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(FileNotFoundError, match="SYMMETRIES_DATA"):
        data.load_cifar10()
    assert not list((tmp_path / "cache" / "data").glob("*.npz"))


def test_to_input_normalises_and_uses_channels_last():
    x = torch.full((2, 32, 32, 3), 125, dtype=torch.uint8)
    out = data.to_input(x, "cpu")
    assert out.shape == (2, 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = (125 - torch.tensor(data.MEAN)) / torch.tensor(data.STD)
    torch.testing.assert_close(out[0, :, 5, 5], expected)


def test_subset_is_fixed_shuffle_and_balanced():
    x = torch.arange(1000)
    y = torch.arange(1000) // 100                      # sorted by class, like the npz
    xs, ys = data.subset(x, y, 200)
    xs2, _ = data.subset(x, y, 200)
    assert torch.equal(xs, xs2) and len(torch.unique(ys)) == 10
    assert data.subset(x, y, None)[0] is x
    with pytest.raises(ValueError, match="subset size"):
        data.subset(x, y, 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_augment_flips_and_translates_each_image_exactly(seed):
    x = torch.randn(64, 3, 8, 8)
    out = data.augment(x, torch.Generator().manual_seed(seed), flip=True, translate=2)
    assert out.shape == x.shape
    # Every output equals its input flipped or not, shifted by at most 2 pixels with zero fill.
    for i in range(len(x)):
        ok = False
        for img in (x[i], x[i].flip(2)):
            p = torch.nn.functional.pad(img, (2, 2, 2, 2))
            ok |= any(torch.equal(out[i], p[:, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))
        assert ok
    again = data.augment(x, torch.Generator().manual_seed(seed), flip=True, translate=2)
    assert torch.equal(out, again)


def test_batches_cover_every_item_once():
    x, y = torch.arange(103), torch.arange(103)
    seen = torch.cat([xb for xb, _ in data.batches(x, y, 10, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(103))


def test_recipes_and_bad_names():
    assert train.recipe("paper").epochs == 50 and train.recipe("paper").batch_size == 32
    assert settings.RECIPES["paper"]["epochs"] == 50
    assert train.recipe("fast", epochs=3).epochs == 3
    with pytest.raises(ValueError, match="accepted values: 'paper', 'fast'"):
        train.recipe("slow")
    with pytest.raises(ValueError, match="unknown recipe fields"):
        train.recipe("fast", epoch=3)
    with pytest.raises(ValueError, match="scale"):
        train.recipe_for_scale("huge")
    assert train.recipe_for_scale("smoke").n_train == settings.scale_settings("smoke").zoo.n_train


def test_onecycle_and_step_schedules():
    model = torch.nn.Linear(2, 2)
    opt, sched = train.make_optimizer(model, train.recipe("fast", epochs=2, warmup=0.25), steps_per_epoch=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(0.2) and lrs[0] < lrs[1] and lrs[-1] < lrs[3]
    opt, sched = train.make_optimizer(model, train.recipe("paper", step_size=1), steps_per_epoch=2)
    for _ in range(2):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_training_learns_and_is_deterministic(tiny_arch, tiny_recipe):
    d = data.synthetic_dataset(n_train=256, n_test=128, seed=0)
    r = tiny_recipe(epochs=2, batch_size=64)
    m1, m2 = build(tiny_arch, seed=3), build(tiny_arch, seed=3)
    h1 = train.train(m1, d, r, seed=3, device="cpu", progress=False)
    train.train(m2, d, r, seed=3, device="cpu", progress=False)
    assert [k for k in h1[0]] == ["epoch", "loss", "train_acc", "test_acc", "lr", "seconds"]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert h1[-1]["loss"] < h1[0]["loss"]
    assert train.evaluate(m1, d.x_test, d.y_test, "cpu") == h1[-1]["test_acc"]


def test_zoo_caches_and_keys(tmp_path, tiny_arch, tiny_recipe):
    d = data.synthetic_dataset(n_train=128, n_test=64)
    r = tiny_recipe(epochs=1)
    m = zoo.get(tiny_arch, r, seed=0, data=d, root=tmp_path, progress=False)
    folder = tmp_path / zoo.model_key(tiny_arch, r, 0, d.identity)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["test_acc"] == m.zoo_meta["test_acc"] and meta["seed"] == 0 and len(meta["history"]) == 1
    assert not (folder / "checkpoint.pt").exists()
    mtime = (folder / "weights.pt").stat().st_mtime
    again = zoo.get(tiny_arch, r, seed=0, data=d, root=tmp_path, progress=False)
    assert (folder / "weights.pt").stat().st_mtime == mtime
    for a, b in zip(m.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # Defaults filled in give the same key; anything that changes weights gives another.
    assert zoo.model_key(tiny_arch, r, 0, d.identity) == zoo.model_key(dict(tiny_arch, batchnorm=True), r, 0, d.identity)
    assert zoo.model_key(tiny_arch, r, 1, d.identity) != zoo.model_key(tiny_arch, r, 0, d.identity)
    assert zoo.model_key(tiny_arch, tiny_recipe(epochs=2), 0, d.identity) != zoo.model_key(tiny_arch, r, 0, d.identity)


def test_zoo_detects_corruption_and_retrains(tmp_path, tiny_arch, tiny_recipe):
    d = data.synthetic_dataset(n_train=128, n_test=64)
    r = tiny_recipe(epochs=1)
    zoo.get(tiny_arch, r, seed=0, data=d, root=tmp_path, progress=False)
    weights = tmp_path / zoo.model_key(tiny_arch, r, 0, d.identity) / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])          # truncated
    with pytest.warns(UserWarning, match="corrupted"):
        m = zoo.get(tiny_arch, r, seed=0, data=d, root=tmp_path, progress=False)
    assert weights.stat().st_size > 100 and m.zoo_meta["test_acc"] >= 0


def test_zoo_resumes_from_checkpoint(tmp_path, capsys, tiny_arch, tiny_recipe, interrupted_checkpoint):
    d = data.synthetic_dataset(n_train=128, n_test=64)
    r = tiny_recipe(epochs=2)
    full = zoo.get(tiny_arch, r, seed=5, data=d, root=tmp_path / "a", progress=False)
    # Interrupt a second run after its first epoch, then resume it: same weights bit for bit.
    interrupted_checkpoint(d, tmp_path / "b", r, seed=5, arch=tiny_arch)
    resumed = zoo.get(tiny_arch, r, seed=5, data=d, root=tmp_path / "b", progress=False)
    assert "from epoch 1" in capsys.readouterr().out
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_unwritable_zoo_fails_before_training(tmp_path, tiny_arch, tiny_recipe, tiny_data):
    d = tiny_data
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    import os
    if os.access(ro, os.W_OK):                                    # root ignores permissions
        ro.chmod(0o700)
        blocker = tmp_path / "ro" / "file"
        blocker.write_text("x")
        ro = blocker                                              # a file is never a folder
    with pytest.raises((PermissionError, FileExistsError, NotADirectoryError)):
        zoo.get(tiny_arch, tiny_recipe(), 0, data=d, root=ro, progress=False)


def test_memo_computes_once_per_config(tmp_path):
    calls = []
    f = lambda: calls.append(1) or {"x": 1.5}
    assert cache.memo("t", {"a": 1}, f, root=tmp_path) == {"x": 1.5}
    assert cache.memo("t", {"a": 1}, f, root=tmp_path) == {"x": 1.5} and len(calls) == 1
    cache.memo("t", {"a": 2}, f, root=tmp_path)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="dataset"):
        data.load_data("imagenet")


# Keys computed before the redesign of issue 14 (lib.zoo, lib.config and zoo.book_models of commit 4abcb08):
# moving the settings must not retrain a model nor invalidate a cached result. Issue 12 changed one family on
# purpose: "convnext" at smoke/cpu/gpu is lib.models.convnext20 with the ResNets' recipe (its paper-scale key
# and every other family's keys are unchanged).
SMOKE_KEYS = {
    "myrtle": ["77469450007012321f28", "e1f79c20c77ffc9d20da"],
    "myrtle_narrow": ["a9604d3e5aa983df58c1", "81fc9c80f35bf3d6226b"],
    "myrtle_nobn": ["d6d197b13f6da56c2080"],
    "resnet20": ["3c241f81606d24990f0e", "fd20562ac49a45cd2bf6"],
    "resnet20_dissection": ["3c241f81606d24990f0e"],
    "resnet20_noresrelu": ["6e6d309507772159742f"],
    "convnext": ["5173cd0b5ad38022345f"],
    "resnet20_slope0": ["3c241f81606d24990f0e", "fd20562ac49a45cd2bf6"],
    "resnet20_slope1": ["95f0f0164815496c7603", "27d613300ec92207cb4e"],
}
# The sha256 of every key of every scale at replicate 0, as JSON {"<scale>/0": {family: keys}}:
# unchanged since the redesign. Replicate 1's changed on purpose in issue 26 (each replicate k of
# every family starts at seed k*S, S the most models a family has at the scale, so that replicates
# share no model across families).
SEED0_KEYS_SHA256 = "4ba617b0aca553a4d2219384ff72ce5edbd6789b58a2233de51dd06b8763a8ce"
SEED1_KEYS_SHA256 = "63b7e97a01bcf8303b2eec7830587ff86461d0c21b2b076c5d12763fecfc5a69"


def _book_keys(scale, seed):
    return {name: [zoo.model_key(e["arch"], e["recipe"], s, "data") for s in e["seeds"]]
            for name, e in zoo.book_models(scale, seed).items()}


def test_model_and_memo_keys_are_those_before_the_redesign(monkeypatch):
    assert _book_keys("smoke", 0) == SMOKE_KEYS and list(_book_keys("smoke", 0)) == list(SMOKE_KEYS)
    for seed, digest in ((0, SEED0_KEYS_SHA256), (1, SEED1_KEYS_SHA256)):
        every = {f"{scale}/{seed}": _book_keys(scale, seed) for scale in settings.SCALES}
        assert hashlib.sha256(json.dumps(every, sort_keys=True).encode()).hexdigest() == digest
    # Memo keys hash the config with the memo version: the same config in another order is the same
    # key, and a new version (results whose meaning changed) gives new keys.
    config = dict(kind="x", fingerprints=["abc", "def"], settings=dict(lr=1e-3, epochs=4), n=None)
    key = cache.memo_key(config)
    assert key == cache.memo_key(dict(reversed(list(config.items())))) and len(key) == 20
    monkeypatch.setattr(cache, "MEMO_VERSION", cache.MEMO_VERSION + 1)
    assert cache.memo_key(config) != key
    assert cache.fingerprint(build(dict(arch="myrtle_cnn", width=0.0625), seed=0)) == "9fbd995946bfa2390cd8"
    assert cache.fingerprint(build(dict(arch="resnet20", width=0.25), seed=1)) == "585d958c9570197accba"


@pytest.mark.parametrize("scale", list(settings.SCALES))
def test_replicates_share_no_model_even_across_families(scale):
    # Replicate 1's dissection ResNet20 was replicate 0's second ResNet20 (seed 1) at every scale.
    keys = [{k for ks in _book_keys(scale, seed).values() for k in ks} for seed in range(3)]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


@pytest.mark.parametrize("scale", list(settings.SCALES))
def test_every_replicate_plans_and_records_the_same_families(scale, tmp_path, tiny_data):
    # Chapter 03 recorded 9 keys at seed 0 and 10 at seed 1 (smoke), as the plan listed a shared
    # model under another family at one seed only; the families that share models are now the same
    # at every replicate.
    plans = [zoo.book_plan(scale, seed, data=tiny_data, root=tmp_path) for seed in range(3)]
    families = [[p["family"] for p in plan] for plan in plans]
    assert families[1] == families[0] == families[2]


def test_stitching_protocol_per_scale_is_the_one_before_the_redesign():
    fast = dict(optimizer="adam", lr=1e-3, lr_decay=True, momentum=0.0, weight_decay=1e-4, batch_size=128, alpha=0.1,
                sinkhorn_rounds=16, p_only_fraction=0.5, bn_adapt=True, init="closed_form", precision="bulk",
                fronts="cached", bn_epoch="none", random_bias=False, grelu_p="birkhoff", grelu_lr=None, evals_per_epoch=1)
    protocol = {s: dataclasses.asdict(settings.SCALES[s].stitching.protocol) for s in settings.SCALES}
    assert {s: protocol[s] for s in ("smoke", "cpu", "gpu")} == {
        "smoke": dict(fast, epochs=1), "cpu": dict(fast, epochs=4), "gpu": dict(fast, epochs=5)}
    # The authors' protocol (issue 11): augmented fronts and the BatchNorm pass for G_ReLU layers.
    assert protocol["paper"] == dict(fast, optimizer="sgd", lr_decay=False, epochs=20, batch_size=32,
                                     init="random", fronts="augmented", bn_epoch="grelu")


def test_load_pairs_pairs_consecutive_seeds_of_a_family(tmp_path, monkeypatch, tiny_data):
    monkeypatch.setenv("SYMMETRIES_ZOO", str(tmp_path))
    d = tiny_data
    # At smoke scale the slope families have one pair; the ReLU one is a 1-epoch ResNet20 on 512 images.
    (a, b), = zoo.load_pairs("resnet20_slope1", "smoke", seed=2, data=d)
    assert (a.zoo_meta["seed"], b.zoo_meta["seed"]) == (4, 5) and not a.training
    entry = zoo.book_models("smoke", seed=2)["resnet20_slope1"]
    assert [m.zoo_key for m in (a, b)] == [zoo.model_key(entry["arch"], entry["recipe"], s, d.identity) for s in (4, 5)]
    with pytest.raises(ValueError, match="n_pairs must be between 1 and 1"):
        zoo.load_pairs("myrtle", "smoke", n_pairs=2, data=d)
    with pytest.raises(ValueError, match="n_pairs must be between 1 and 0"):
        zoo.load_pairs("myrtle_nobn", "smoke", data=d)
    with pytest.raises(ValueError, match="accepted values"):
        zoo.load_pairs("vgg", "smoke", data=d)
    assert len(zoo.load_family("resnet20_slope1", "smoke", seed=2, n_models=1, data=d)) == 1


def test_recorder_roundtrip_and_table(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMMETRIES_RESULTS", str(tmp_path))
    rec = Recorder("stitching", "smoke", seed=2)
    rec.add("penalty", np.float64(1.5), std=0.25, paper=2.0, unit="%")
    rec.add("penalty", 1.25, paper=2.0, unit="%")            # a key recorded twice keeps the last value
    rec.add("nan", float("nan"))
    assert rec.save() == tmp_path / "smoke" / "stitching-seed2.json"
    rows = load_results("smoke")
    assert [(r["key"], r["ours"], r["seed"]) for r in rows] == [("penalty", 1.25, 2), ("nan", None, 2)]
    table = markdown_table(rows)
    assert "| stitching | 2 | `penalty` | 1.25% | 2% |" in table
    with pytest.raises(ValueError, match="scale"):
        Recorder("x", "big")
