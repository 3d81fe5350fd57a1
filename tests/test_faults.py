"""Faults a user meets without looking for them (issue 13): shared and read-only caches, full disks,
bit flips, damaged files, wrong data and settings, tiny samples, hung downloads, and two processes
training the same model. Each test checks that the result is correct or the error clear, and that
nothing is lost. Permissions are simulated where the tests run as root (which ignores them)."""
import errno
import hashlib
import json
import os
import pickle
import socket
import struct
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lib import cache, data, metrics, sweep, train, zoo
from lib.zoo import store as zoo_store
from lib.config import atomic_path

@pytest.fixture()
def get(tiny_arch, tiny_recipe):
    """``get(d, root, recipe=None, seed=0, **kw)``: the tiny model from the zoo in ``root`` (trained if missing)."""
    def get(d, root, **kw):
        return zoo.get(tiny_arch, kw.pop("recipe", tiny_recipe()), kw.pop("seed", 0), data=d, root=root,
                       progress=False, **kw)
    return get


@pytest.fixture()
def entry(tiny_arch, tiny_recipe):
    """``entry(d, root, recipe=None, seed=0)``: the zoo folder of the tiny model."""
    def entry(d, root, recipe=None, seed=0) -> Path:
        return Path(root) / zoo.model_key(tiny_arch, recipe or tiny_recipe(), seed, d.identity)
    return entry


def fail_for(monkeypatch, cls, method, paths, err):
    """Make ``cls.method`` raise ``OSError(err)`` for files inside ``paths`` (permissions cannot be
    taken away from root, and a disk cannot be filled in a test)."""
    real = getattr(cls, method)
    paths = [Path(p) for p in paths]

    def fake(self, *args, **kwargs):
        if any(Path(self) == p or p in Path(self).parents for p in paths):
            raise OSError(err, os.strerror(err), str(self))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(cls, method, fake)


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- 1. a shared zoo: the user's umask, and no deletion on read errors ----------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_files_get_the_users_umask(tmp_path, tiny_data, umask, mode, get):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
        assert (tmp_path / "f.json").stat().st_mode & 0o777 == mode
        if umask == 0o022:
            folder = get(tiny_data, tmp_path / "zoo").zoo_key
            for name in ("weights.pt", "meta.json", ".lock"):
                assert (tmp_path / "zoo" / folder / name).stat().st_mode & 0o777 == mode, name
    finally:
        os.umask(old)


@pytest.mark.parametrize("name", ["meta.json", "weights.pt"])
def test_unreadable_zoo_entry_is_an_error_and_never_deleted(tmp_path, tiny_data, monkeypatch, name, get, entry):
    get(tiny_data, tmp_path)
    folder = entry(tiny_data, tmp_path)
    before = snapshot(folder)
    fail_for(monkeypatch, Path, "read_text" if name == "meta.json" else "read_bytes", [folder / name], errno.EACCES)
    with pytest.raises(PermissionError, match=f"cannot read the cache file .*{name}.*left untouched"):
        get(tiny_data, tmp_path)
    monkeypatch.undo()
    assert snapshot(folder) == before


def test_unreadable_checkpoint_and_memo_are_errors_and_kept(tmp_path, tiny_data, monkeypatch, get, entry):
    folder = entry(tiny_data, tmp_path)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"someone else's checkpoint")
    assert cache.memo("k", {"a": 1}, lambda: 0.125, root=tmp_path / "memo") == 0.125
    memo_file = next((tmp_path / "memo" / "k").glob("*.pkl"))
    fail_for(monkeypatch, Path, "read_bytes", [folder / "checkpoint.pt", memo_file], errno.EACCES)
    with pytest.raises(PermissionError, match="checkpoint.pt.*left untouched"):
        get(tiny_data, tmp_path)
    with pytest.raises(PermissionError, match=f"{memo_file.name}.*left untouched"):
        cache.memo("k", {"a": 1}, lambda: pytest.fail("recomputed"), root=tmp_path / "memo")
    monkeypatch.undo()
    assert (folder / "checkpoint.pt").read_bytes() == b"someone else's checkpoint"
    assert not (folder / "weights.pt").exists() and memo_file.exists()


# -- 2. a diverged model is never cached -----------------------------------------------------------

def test_non_finite_loss_stops_training_and_caches_nothing(tmp_path, tiny_data, get, entry, tiny_recipe):
    r = tiny_recipe(lr=1e30)
    for _ in range(2):                                            # and the second call does not serve it
        with pytest.raises(FloatingPointError, match="recipe 'fast' .*lr 1e\\+30.*diverged in epoch 1"):
            get(tiny_data, tmp_path, recipe=r)
        folder = entry(tiny_data, tmp_path, r)
        assert not (folder / "weights.pt").exists() and not (folder / "meta.json").exists()
        assert not (folder / "checkpoint.pt").exists()


def test_nan_learning_rate_is_refused_before_training(tiny_recipe):
    with pytest.raises(ValueError, match="lr must be a finite number > 0; got nan"):
        tiny_recipe(lr=float("nan"))


# -- 3. memo values are never lost; read-only caches and full disks --------------------------------

def test_memo_value_that_cannot_be_stored_is_returned_with_one_warning(tmp_path, monkeypatch):
    root = tmp_path / "memo"
    fail_for(monkeypatch, Path, "mkdir", [root], errno.EROFS)
    calls = []
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert cache.memo("k", {"a": 1}, lambda: calls.append(1) or {"x": 0.125}, root=root) == {"x": 0.125}
        assert len(caught) == 1 and "could not be cached" in str(caught[0].message)
        assert "read-only" in str(caught[0].message)
    assert len(calls) == 2 and not root.exists()


def test_full_disk_says_disk_space(tmp_path, tiny_data, monkeypatch, get):
    fail_for(monkeypatch, Path, "write_bytes", [tmp_path], errno.ENOSPC)
    fail_for(monkeypatch, Path, "write_text", [tmp_path], errno.ENOSPC)
    with pytest.warns(UserWarning, match="could not be cached.*no disk space left") as caught:
        assert cache.memo("k", {"a": 1}, lambda: 7, root=tmp_path / "memo") == 7
    assert len(caught) == 1
    with pytest.raises(OSError, match=f"cannot write {tmp_path}.*no disk space left.*free disk space") as info:
        get(tiny_data, tmp_path / "zoo")
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match="results.json: no disk space"):
        with atomic_path(tmp_path / "results.json") as tmp:
            tmp.write_text("[]")
    monkeypatch.undo()
    assert not list(tmp_path.rglob("meta.json")) and not list(tmp_path.rglob("*.tmp*"))


def test_unwritable_empty_cache_does_not_break_load_data(tmp_path, monkeypatch, cifar_npz):
    cifar_npz(tmp_path / "data")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache would be")
    monkeypatch.setenv("SYMMETRIES_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SYMMETRIES_CACHE", str(blocker / "cache"))
    d = data.load_data()
    assert d.x_train.shape == (20, 32, 32, 3) and d.source == str((tmp_path / "data" / data.FILENAME).resolve())
    with pytest.warns(UserWarning, match="could not be cached"):
        assert cache.memo("k", {"a": 1}, lambda: 3) == 3


# -- 4. bit flips are detected, reported and recomputed --------------------------------------------

def test_changed_checkpoint_bytes_are_not_resumed(tmp_path, tiny_data, capsys, get, tiny_recipe, interrupted_checkpoint):
    r = tiny_recipe(epochs=2)
    ckpt = interrupted_checkpoint(tiny_data, tmp_path / "b", r)
    flip_byte(ckpt, ckpt.stat().st_size // 2)
    with pytest.warns(UserWarning, match=f"checkpoint {ckpt} is corrupted .*sha256.*training from scratch"):
        model = get(tiny_data, tmp_path / "b", recipe=r)
    assert "resuming" not in capsys.readouterr().out
    assert len(model.zoo_meta["history"]) == 2 and not ckpt.exists()


def test_changed_memo_entry_is_recomputed_not_served(tmp_path):
    calls = []
    compute = lambda: calls.append(1) or {"x": 0.125}
    cache.memo("k", {"a": 1}, compute, root=tmp_path)
    path = next((tmp_path / "k").glob("*.pkl"))
    raw = path.read_bytes()
    changed = raw.replace(struct.pack(">d", 0.125), struct.pack(">d", 0.625))
    assert changed != raw and pickle.loads(changed.split(b"\n", 2)[2]) == {"x": 0.625}
    path.write_bytes(changed)
    with pytest.warns(UserWarning, match=f"memo entry {path} is corrupted .*sha256.*recomputing"):
        assert cache.memo("k", {"a": 1}, compute, root=tmp_path) == {"x": 0.125}
    assert cache.memo("k", {"a": 1}, compute, root=tmp_path) == {"x": 0.125} and len(calls) == 2


def test_changed_weights_bytes_are_retrained(tmp_path, tiny_data, get, entry):
    good = get(tiny_data, tmp_path)
    weights = entry(tiny_data, tmp_path) / "weights.pt"
    flip_byte(weights, weights.stat().st_size - 200)
    with pytest.warns(UserWarning, match="corrupted .*does not match the sha256 in meta.json.*retraining"):
        again = get(tiny_data, tmp_path)
    for a, b in zip(good.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


# -- 5. damaged files: errors name the file and what to do -----------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "garbage", "bit flip", "empty"])
def test_damaged_data_npz_names_the_file(tmp_path, damage, cifar_npz):
    path = cifar_npz(tmp_path / damage.replace(" ", "_"))
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        flip_byte(path, len(raw) // 3)                          # inside x_train's stored bytes
    with pytest.raises(ValueError, match=f"data file {path.resolve()} is damaged.*SYMMETRIES_DATA"):
        data.load_cifar10(path.parent)


@pytest.mark.parametrize("text", ["{not json", '{"chapter": "zoo", "seed": 0}', "[1, 2]"])
def test_damaged_results_json_names_the_file(tmp_path, text):
    from lib.results import load_results
    (tmp_path / "good.json").write_text(json.dumps(dict(chapter="good", seed=0, rows=[])))
    (tmp_path / "zoo-seed1.json").write_text(text)
    with pytest.raises(ValueError, match="results file .*zoo-seed1.json is damaged.*re-run the chapter .*zoo"):
        load_results("smoke", tmp_path)


@pytest.fixture()
def fake_papermill(monkeypatch):
    """Runs that record ``value = seed`` without starting a kernel (the sweep's logic is under test)."""
    import subprocess

    def run(cmd, env, **kw):
        params = json.loads(cmd[cmd.index("-y") + 1])
        Path(cmd[4]).write_text("{}")
        out = Path(env["SYMMETRIES_RESULTS"]) / "smoke"
        out.mkdir(parents=True, exist_ok=True)
        rows = [dict(key="value", ours=params["seed"], paper=None)]
        (out / "tiny.json").write_text("{broken" if params["seed"] == 2 else json.dumps(dict(rows=rows)))
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(sweep.subprocess, "run", run)
    v4 = __import__("nbformat").v4
    monkeypatch.setattr(sweep.jupytext, "read", lambda path, **kw: v4.new_notebook(
        cells=[v4.new_code_cell("seed = 0", metadata={"tags": ["parameters"]})]))
    monkeypatch.setattr(sweep.jupytext, "write", lambda nb, path, fmt: Path(path).write_text("{}"))


def test_damaged_done_json_reruns_that_run_only(tmp_path, fake_papermill):
    chapter = tmp_path / "tiny.md"
    chapter.write_text("# tiny\n\n```{code-cell} ipython3\n:tags: [parameters]\nseed = 0\n```\n")
    first = sweep.sweep(str(chapter), {"seed": [0, 1, 2]}, out=str(tmp_path / "runs"))
    assert [s["ok"] for s in first] == [True, True, False]
    assert "tiny.json written by this run is damaged" in first[2]["error"]
    done = tmp_path / "runs" / "tiny" / "seed-1.done.json"
    done.write_text('{"params": {"seed": 1}, "rows": [tru')
    with pytest.warns(UserWarning, match=f"run marker {done} is damaged .*running seed-1 again"):
        second = sweep.sweep(str(chapter), {"seed": [0, 1, 2]}, out=str(tmp_path / "runs"))
    assert [(s["ok"], s.get("skipped")) for s in second] == [(True, True), (True, False), (False, None)]
    table = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    assert sorted(r["ours"] for r in table) == [0, 1]


# -- 6. wrong data formats --------------------------------------------------------------------------

def as_dataset(x, y):
    return data.Dataset(x, y, x[:4], y[:4], [f"c{i}" for i in range(10)], identity="test")


@pytest.mark.parametrize("change, message", [
    (lambda x, y: (x.float() / 255, y), "x_train must have dtype torch.uint8 .*got torch.float32.*\\* 255"),
    (lambda x, y: (x.permute(0, 3, 1, 2), y),
     "x_train must be images of shape \\(n, height, width, 3\\).*channels-first"),
    (lambda x, y: (x[..., 0], y), "got shape \\(16, 32, 32\\).*grayscale"),
    (lambda x, y: (x[..., :1], y), "got shape \\(16, 32, 32, 1\\).*grayscale"),
    (lambda x, y: (x, y + 1), "y_train must hold labels 0..9 .*got labels 1..10"),
    (lambda x, y: (x, y[:-1]), "y_train must hold one label per image: 16 images but 15 labels"),
    (lambda x, y: (x, y.float()), "y_train must be a 1-d tensor of integer class labels"),
])
def test_wrong_data_formats_are_refused(change, message):
    d = data.synthetic_dataset(n_train=16, n_test=4)
    y = torch.arange(16) % 10
    x, y = change(d.x_train, y)
    with pytest.raises(ValueError, match=message):
        as_dataset(x, y)


def test_wrong_layout_in_npz_names_the_file(tmp_path, cifar_npz):
    path = cifar_npz(tmp_path, y_train=np.arange(20) % 10 + 1)
    with pytest.raises(ValueError, match=f"data file {path.resolve()} is damaged .*labels 0..9"):
        data.load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="x must have dtype torch.uint8"):
        data.to_input(torch.rand(2, 32, 32, 3))


# -- 7. bad settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, accepted", [
    ("epochs", 0, "an integer >= 1"), ("epochs", -2, "an integer >= 1"), ("batch_size", 0, "an integer >= 1"),
    ("translate", -1, "an integer >= 0 \\(pixels\\)"), ("n_train", 0, "None \\(all images\\) or an integer >= 1"),
    ("warmup", 1.5, "a fraction in \\[0, 1\\]"), ("lr", -0.1, "a finite number > 0"),
])
def test_bad_recipe_settings_name_the_parameter(field, value, accepted):
    with pytest.raises(ValueError, match=f"recipe 'fast': {field} must be {accepted}; got {value}"):
        train.recipe("fast", **{field: value})


@pytest.mark.parametrize("arch", [dict(arch="myrtle_cnn", width=0), dict(arch="resnet20", width=-0.5),
                                  dict(arch="myrtle_cnn", width=float("nan"))])
def test_bad_width_fails_before_anything_is_written(tmp_path, tiny_data, arch, tiny_recipe):
    with pytest.raises(ValueError, match="width must be a finite number > 0.*got"):
        zoo.get(arch, tiny_recipe(), 0, data=tiny_data, root=tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_bad_batch_and_augment_arguments():
    x = torch.zeros(4, 3, 8, 8)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        next(data.batches(x, torch.zeros(4), 0))
    with pytest.raises(ValueError, match="same length; got 4 and 3"):
        next(data.batches(x, torch.zeros(3), 2))
    with pytest.raises(ValueError, match="translate must be an integer >= 0 \\(pixels\\); got -1"):
        data.augment(x, torch.Generator(), translate=-1)


MEASURES = ["linear_cka", "rbf_cka", "grelu_cka", "orthogonal_cka", "grelu_procrustes", "orthogonal_procrustes"]


@pytest.mark.parametrize("scale", [1e30, 1e-30])
@pytest.mark.parametrize("measure", MEASURES)
def test_extreme_feature_scales_in_float32(measure, scale):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, 3, 3, generator=g), torch.randn(40, 4, 3, 3, generator=g)
    f = getattr(metrics, measure)
    assert f(x * scale, y * scale, dtype=torch.float32) == pytest.approx(f(x, y), rel=1e-4)


def test_extreme_scale_in_one_channel_only():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, 9, generator=g)
    y = x + 0.5 * torch.randn(40, 4, 9, generator=g)
    scaled = x.clone()
    scaled[:, 0] *= 1e30
    expected = metrics.grelu_cka(x, y)
    assert expected > 0.3
    assert metrics.grelu_cka(scaled, y, dtype=torch.float32) == pytest.approx(expected, rel=1e-4)


# -- 8. tiny samples ----------------------------------------------------------------------------------

def test_too_few_samples_raise():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 4, 3, 3, generator=g), torch.randn(5, 4, 3, 3, generator=g)
    for measure in ("orthogonal_procrustes", "grelu_procrustes"):
        with pytest.raises(ValueError, match="need at least 2 samples; got 1"):
            getattr(metrics, measure)(x[:1], y[:1])
        assert getattr(metrics, measure)(x[:2], y[:2]) < 1.0
    for measure in ("linear_cka", "rbf_cka"):
        with pytest.raises(ValueError, match="at least 3 samples .*got 2"):
            getattr(metrics, measure)(x[:2], y[:2])
        with pytest.raises(ValueError, match="unbiased HSIC estimator needs at least 4 samples; got 3"):
            getattr(metrics, measure)(x[:3], y[:3], debiased=True)
        assert getattr(metrics, measure)(x[:3], y[:3]) < 1.0
    with pytest.raises(ValueError, match="at least 4 samples; got 3"):
        metrics.grelu_cka(x[:3], y[:3])


# -- 9. downloads time out ------------------------------------------------------------------------------

def test_download_times_out_with_the_offline_error(tmp_path, monkeypatch):
    import torchvision
    assert data.DOWNLOAD_TIMEOUT == 60.0
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)                                              # accepts connections, never answers
    try:
        port = server.getsockname()[1]
        monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", f"http://127.0.0.1:{port}/cifar-10.tar.gz")
        monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT", 0.5)
        monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("SYMMETRIES_DATA", raising=False)
        t0 = time.perf_counter()
        with pytest.raises(FileNotFoundError, match="CIFAR-10 not found.*timed out.*Set SYMMETRIES_DATA"):
            data.load_cifar10(tmp_path / "none")
        assert time.perf_counter() - t0 < 20
        assert socket.getdefaulttimeout() is None
    finally:
        server.close()


# -- 10. summarize with list-valued parameters ------------------------------------------------------------

def test_summarize_handles_list_valued_parameters():
    table = [dict(key="acc", ours=float(seed + i), paper=1.0, param_seed=seed, param_slopes=slopes)
             for i, slopes in enumerate([[0.0, 1.0], [0.5]]) for seed in (0, 2)]
    out = sweep.summarize(table)
    assert out[("acc", ("param_slopes", (0.0, 1.0)))] == dict(mean=1.0, std=1.0, n=2, paper=1.0)
    assert out[("acc", ("param_slopes", (0.5,)))] == dict(mean=2.0, std=1.0, n=2, paper=1.0)


# -- 11. identical runs give identical files ----------------------------------------------------------------

def test_weights_file_bytes_are_identical_between_runs(tmp_path, tiny_data, get):
    a, b = get(tiny_data, tmp_path / "a"), get(tiny_data, tmp_path / "b")
    wa, wb = ((tmp_path / r / m.zoo_key / "weights.pt").read_bytes() for r, m in (("a", a), ("b", b)))
    assert wa == wb
    assert hashlib.sha256(wa).hexdigest() == a.zoo_meta["weights_sha256"]


# -- two processes, one model ---------------------------------------------------------------------------------

def test_concurrent_requests_train_a_model_once(tmp_path, tiny_data, monkeypatch, capsys, get):
    calls = []
    real_train = zoo_store.train

    def slow_train(*args, **kwargs):
        calls.append(threading.current_thread().name)
        time.sleep(1.0)                                           # long enough for the other to arrive
        return real_train(*args, **kwargs)
    monkeypatch.setattr(zoo_store, "train", slow_train)
    models = {}
    threads = [threading.Thread(target=lambda n=n: models.__setitem__(n, get(tiny_data, tmp_path)), name=f"t{n}")
               for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(models) == [0, 1]
    assert models[0].zoo_meta == models[1].zoo_meta
    assert "waiting for it to finish" in capsys.readouterr().out
