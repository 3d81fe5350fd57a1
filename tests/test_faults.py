"""Faults a user meets without looking for them (issue 13): shared and read-only caches, full disks,
bit flips, damaged files, wrong data and settings, tiny samples, hung downloads, and two processes
training the same model. Each test checks that the result is correct or the error clear, and that
nothing is lost. Permissions are simulated where the tests run as root (which ignores them)."""

import errno
import hashlib
import io
import json
import os
import pickle
import re
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
from lib.config import atomic_path
from lib.zoo import store as zoo_store


@pytest.fixture()
def get(tiny_arch, tiny_recipe):
    """``get(d, root, recipe=None, seed=0, **kw)``: the tiny model from the zoo in ``root`` (trained
    if missing)."""

    def get(d, root, **kw):
        return zoo.get(
            tiny_arch,
            kw.pop("recipe", tiny_recipe()),
            kw.pop("seed", 0),
            data=d,
            root=root,
            progress=False,
            **kw,
        )

    return get


@pytest.fixture()
def entry(tiny_arch, tiny_recipe):
    """``entry(d, root, recipe=None, seed=0)``: the zoo folder of the tiny model."""

    def entry(d, root, recipe=None, seed=0) -> Path:
        return Path(root) / zoo.model_key(tiny_arch, recipe or tiny_recipe(), seed, d.identity)

    return entry


_MKDIR = Path.mkdir


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


def test_concept_dataset_folder_gets_the_users_umask(tmp_path):
    # Issue 26: the folder came from mkdtemp, 0700 whatever the umask, unlike every other entry.
    from lib.dissection import make_concept_dataset

    old = os.umask(0o027)
    try:
        root = make_concept_dataset(tmp_path / "broden" / "tiny", 2, size=16)
    finally:
        os.umask(old)
    modes = {
        p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777
        for p in [root, *root.rglob("*")]
    }
    assert modes["broden/tiny"] == modes["broden/tiny/images"] == 0o750
    assert {m for p, m in modes.items() if p.endswith((".csv", ".png", ".json"))} == {0o640}


@pytest.mark.parametrize("name", ["meta.json", "weights.pt"])
def test_unreadable_zoo_entry_is_an_error_and_never_deleted(
    tmp_path, tiny_data, monkeypatch, name, get, entry
):
    get(tiny_data, tmp_path)
    folder = entry(tiny_data, tmp_path)
    before = snapshot(folder)
    fail_for(
        monkeypatch,
        Path,
        "read_text" if name == "meta.json" else "read_bytes",
        [folder / name],
        errno.EACCES,
    )
    with pytest.raises(
        PermissionError, match=f"cannot read the cache file .*{name}.*left untouched"
    ):
        get(tiny_data, tmp_path)
    monkeypatch.undo()
    assert snapshot(folder) == before


def test_unreadable_checkpoint_and_memo_are_errors_and_kept(
    tmp_path, tiny_data, monkeypatch, get, entry
):
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


def test_non_finite_loss_stops_training_and_caches_nothing(
    tmp_path, tiny_data, get, entry, tiny_recipe
):
    r = tiny_recipe(lr=1e30)
    for _ in range(2):  # and the second call does not serve it
        with pytest.raises(
            FloatingPointError, match="recipe 'fast' .*lr 1e\\+30.*diverged in epoch 1"
        ):
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
            assert cache.memo(
                "k", {"a": 1}, lambda: calls.append(1) or {"x": 0.125}, root=root
            ) == {"x": 0.125}
        assert len(caught) == 1 and "could not be cached" in str(caught[0].message)
        assert "read-only" in str(caught[0].message)
    assert len(calls) == 2 and not root.exists()


def test_full_disk_says_disk_space(tmp_path, tiny_data, monkeypatch, get):
    fail_for(monkeypatch, Path, "write_bytes", [tmp_path], errno.ENOSPC)
    fail_for(monkeypatch, Path, "write_text", [tmp_path], errno.ENOSPC)
    with pytest.warns(UserWarning, match="could not be cached.*no disk space left") as caught:
        assert cache.memo("k", {"a": 1}, lambda: 7, root=tmp_path / "memo") == 7
    assert len(caught) == 1
    with pytest.raises(
        OSError, match=f"cannot write {tmp_path}.*no disk space left.*free disk space"
    ) as info:
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
    assert d.x_train.shape == (20, 32, 32, 3) and d.source == str(
        (tmp_path / "data" / data.FILENAME).resolve()
    )
    with pytest.warns(UserWarning, match="could not be cached"):
        assert cache.memo("k", {"a": 1}, lambda: 3) == 3


# -- 4. bit flips are detected, reported and recomputed --------------------------------------------


def test_changed_checkpoint_bytes_are_not_resumed(
    tmp_path, tiny_data, capsys, get, tiny_recipe, interrupted_checkpoint
):
    r = tiny_recipe(epochs=2)
    ckpt = interrupted_checkpoint(tiny_data, tmp_path / "b", r)
    flip_byte(ckpt, ckpt.stat().st_size // 2)
    with pytest.warns(
        UserWarning, match=f"checkpoint {ckpt} is corrupted .*sha256.*training from scratch"
    ):
        model = get(tiny_data, tmp_path / "b", recipe=r)
    assert "resuming" not in capsys.readouterr().out
    assert len(model.zoo_meta["history"]) == 2 and not ckpt.exists()


def test_changed_memo_entry_is_recomputed_not_served(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": 0.125}

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
    with pytest.warns(
        UserWarning, match="corrupted .*does not match the sha256 in meta.json.*retraining"
    ):
        again = get(tiny_data, tmp_path)
    for a, b in zip(good.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def _edit_meta(raw: bytes, damage: str) -> bytes:
    """``raw`` (a meta.json) damaged as issue 26 found it served."""
    if damage == "truncated":
        return raw[: len(raw) // 2]
    if damage == "not utf-8":
        return raw.replace(b'"device"', b'"\xffevice"')
    meta = json.loads(raw)
    if damage == "accuracy":  # 0.109375 -> 0.909375 was reported as the accuracy
        meta["test_acc"] = min(1.0, meta["test_acc"] + 0.8)
    elif damage == "seed":
        meta["seed"] = 1
    elif damage == "renamed key":  # was served, then a KeyError later on
        meta["test_acd"] = meta.pop("test_acc")
    elif damage == "renamed checksum":  # must not pass for a meta.json of the old format
        meta["sha257"] = meta.pop("sha256")
    return json.dumps(meta, indent=1).encode()


@pytest.mark.parametrize(
    "damage", ["accuracy", "seed", "renamed key", "renamed checksum", "not utf-8", "truncated"]
)
def test_damaged_meta_json_is_reported_by_name_and_retrained(
    tmp_path, tiny_data, get, entry, damage, tiny_arch, tiny_recipe
):
    good = get(tiny_data, tmp_path)
    meta = entry(tiny_data, tmp_path) / "meta.json"
    meta.write_bytes(_edit_meta(meta.read_bytes(), damage))
    with pytest.warns(UserWarning, match=f"corrupted \\({meta} .*; retraining it"):
        again = get(tiny_data, tmp_path)
    assert again.zoo_meta["test_acc"] == good.zoo_meta["test_acc"] and again.zoo_meta["seed"] == 0
    assert zoo.info(tiny_arch, tiny_recipe(), 0, root=tmp_path, data=tiny_data) == again.zoo_meta


def test_info_verifies_meta_json(tmp_path, tiny_data, get, entry, tiny_arch, tiny_recipe):
    good = get(tiny_data, tmp_path)
    assert zoo.info(tiny_arch, tiny_recipe(), 0, root=tmp_path, data=tiny_data) == good.zoo_meta
    meta = entry(tiny_data, tmp_path) / "meta.json"
    meta.write_bytes(_edit_meta(meta.read_bytes(), "accuracy"))
    message = f"{meta} does not match its sha256 checksum; the model will be retrained"
    with pytest.warns(UserWarning, match=message):
        assert zoo.info(tiny_arch, tiny_recipe(), 0, root=tmp_path, data=tiny_data) is None


def test_meta_json_of_the_old_format_is_loaded_and_given_a_checksum(
    tmp_path, tiny_data, get, entry, monkeypatch
):
    # Entries trained before meta.json carried a checksum stay valid (nothing is retrained); the
    # file is upgraded where the zoo is writable, and left as it is where it is not.
    good = get(tiny_data, tmp_path)
    meta = entry(tiny_data, tmp_path) / "meta.json"
    old = json.loads(meta.read_text())
    del old["sha256"]
    assert set(old) == set(zoo_store._LEGACY_META_FIELDS)
    monkeypatch.setattr(zoo_store, "train", lambda *a, **k: pytest.fail("retrained"))
    meta.write_text(json.dumps(old, indent=1))
    fail_for(monkeypatch, Path, "mkdir", [meta.parent], errno.EROFS)
    assert get(tiny_data, tmp_path).zoo_meta == good.zoo_meta
    assert json.loads(meta.read_text()) == old  # read-only: left as it was
    monkeypatch.setattr(Path, "mkdir", _MKDIR)
    assert get(tiny_data, tmp_path).zoo_meta == good.zoo_meta
    assert json.loads(meta.read_text()) == dict(old, sha256=cache.json_digest(old))  # upgraded
    # An old meta.json is still checked for what it can be: the model it describes, its fields.
    meta.write_text(json.dumps(dict(old, seed=1), indent=1))
    monkeypatch.setattr(zoo_store, "_train_and_store", lambda *a, **k: pytest.fail("retrained"))
    with pytest.warns(UserWarning, match=f"{meta} describes another model \\(its seed differ"):
        with pytest.raises(pytest.fail.Exception, match="retrained"):
            get(tiny_data, tmp_path)


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
        flip_byte(path, len(raw) // 3)  # inside x_train's stored bytes
    with pytest.raises(ValueError, match=f"data file {path.resolve()} is damaged.*SYMMETRIES_DATA"):
        data.load_cifar10(path.parent)


@pytest.mark.parametrize("text", ["{not json", '{"chapter": "zoo", "seed": 0}', "[1, 2]"])
def test_damaged_results_json_names_the_file(tmp_path, text):
    from lib.results import load_results

    good = dict(chapter="good", scale="smoke", seed=0, rows=[])
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "zoo-seed1.json").write_text(text)
    with pytest.raises(
        ValueError, match="results file .*zoo-seed1.json is damaged.*re-run the chapter .*zoo"
    ):
        load_results("smoke", tmp_path)


def test_results_json_carries_a_checksum_and_old_files_still_load(tmp_path, monkeypatch):
    from lib.results import Recorder, load_results

    monkeypatch.setenv("SYMMETRIES_RESULTS", str(tmp_path))
    rec = Recorder("zoo", "smoke", 1)
    rec.add("acc", 0.109375, paper=0.9)
    path = rec.save()
    good = load_results("smoke")
    assert [(r["chapter"], r["seed"], r["key"], r["ours"]) for r in good] == [
        ("zoo", 1, "acc", 0.109375)
    ]
    # A changed number is still valid JSON: only the checksum tells.
    path.write_text(path.read_text().replace("0.109375", "0.909375"))
    message = f"results file {path} is damaged .*sha256 checksum.*re-run .*zoo"
    with pytest.raises(ValueError, match=message):
        load_results("smoke")
    old = json.loads(path.read_text().replace("0.909375", "0.109375"))
    del old["sha256"]
    path.write_text(json.dumps(old))
    assert load_results("smoke") == good


@pytest.fixture()
def fake_papermill(monkeypatch):
    """Runs that record ``value = seed`` without starting a kernel (the sweep's logic is under
    test)."""
    import subprocess

    def run(cmd, env, **kw):
        params = json.loads(cmd[cmd.index("-y") + 1])
        Path(cmd[4]).write_text("{}")
        out = Path(env["SYMMETRIES_RESULTS"]) / "smoke"
        out.mkdir(parents=True, exist_ok=True)
        rows = [dict(key="value", ours=params["seed"], paper=None)]
        payload = dict(chapter="tiny", scale="smoke", seed=params["seed"], rows=rows)
        text = "{broken" if params["seed"] == 2 else cache.checked_json(payload)
        (out / "tiny.json").write_text(text)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sweep.subprocess, "run", run)
    v4 = __import__("nbformat").v4
    monkeypatch.setattr(
        sweep.jupytext,
        "read",
        lambda path, **kw: v4.new_notebook(
            cells=[v4.new_code_cell("seed = 0", metadata={"tags": ["parameters"]})]
        ),
    )
    monkeypatch.setattr(sweep.jupytext, "write", lambda nb, path, fmt: Path(path).write_text("{}"))


def test_damaged_done_json_reruns_that_run_only(tmp_path, fake_papermill):
    chapter = tmp_path / "tiny.md"
    chapter.write_text("# tiny\n\n```{code-cell} ipython3\n:tags: [parameters]\nseed = 0\n```\n")
    first = sweep.sweep(str(chapter), {"seed": [0, 1, 2]}, out=str(tmp_path / "runs"))
    assert [s["ok"] for s in first] == [True, True, False]
    damaged = r"results file \S*tiny.json is damaged .*\(this run wrote it\)"
    assert re.search(damaged, first[2]["error"])
    done = tmp_path / "runs" / "tiny" / "seed-1.done.json"
    done.write_text('{"params": {"seed": 1}, "rows": [tru')
    with pytest.warns(UserWarning, match=f"run marker {done} is damaged .*running seed-1 again"):
        second = sweep.sweep(str(chapter), {"seed": [0, 1, 2]}, out=str(tmp_path / "runs"))
    assert [(s["ok"], s.get("skipped")) for s in second] == [
        (True, True),
        (True, False),
        (False, None),
    ]
    table = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    assert sorted(r["ours"] for r in table) == [0, 1]


def _tiny_chapter(tmp_path) -> Path:
    chapter = tmp_path / "tiny.md"
    chapter.write_text("# tiny\n\n```{code-cell} ipython3\n:tags: [parameters]\nseed = 0\n```\n")
    return chapter


MALFORMED_MARKERS = {  # issue 26: each stopped the whole sweep, or skipped the run forever
    "ok renamed": lambda m: {("okay" if k == "ok" else k): v for k, v in m.items()},
    "params a string": lambda m: dict(m, params="seed-1"),
    "rows of numbers": lambda m: dict(m, rows=[1, 2]),
    "ok false without error": lambda m: dict(m, ok=False),
    "another run's params": lambda m: dict(m, params={"seed": 0}),
    "row without ours": lambda m: dict(m, rows=[dict(key="value", paper=None)]),
    "checksum renamed": lambda m: m,
}


@pytest.mark.parametrize(
    "damage, sealed",
    [(d, s) for d in MALFORMED_MARKERS for s in (True, False) if d != "checksum renamed" or s],
)
def test_malformed_done_json_is_not_done_and_the_sweep_goes_on(
    tmp_path, fake_papermill, capsys, damage, sealed
):
    chapter, out = _tiny_chapter(tmp_path), tmp_path / "runs"
    argv = [str(chapter), "-p", "seed", "0", "1", "--out", str(out)]
    assert sweep.main(argv) == 0 and capsys.readouterr()
    done = out / "tiny" / "seed-1.done.json"
    marker = json.loads(done.read_text())
    del marker["sha256"]
    marker = MALFORMED_MARKERS[damage](marker)
    if damage == "checksum renamed":
        done.write_text(json.dumps(dict(marker, sha257=cache.json_digest(marker))))
    else:
        done.write_text(cache.checked_json(marker) if sealed else json.dumps(marker))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sweep.main(argv) == 0
    naming = [str(w.message) for w in caught if str(done) in str(w.message)]
    assert len(naming) == 1
    expected = f"the run marker {re.escape(str(done))} is damaged .*running seed-1 again"
    assert re.match(expected, naming[0])
    printed = capsys.readouterr().out
    assert re.search(r"skipped \(done\) +\{'seed': 0\}", printed)
    assert re.search(r"\nok +\{'seed': 1\}", printed)
    table = json.loads((out / "tiny" / "results.json").read_text())
    assert [(r["ours"], r["param_seed"]) for r in table] == [(0, 0), (1, 1)]
    assert sweep._read_done(done, {"seed": 1})["rows"] == [dict(key="value", ours=1, paper=None)]


def test_unreadable_done_json_is_not_done(tmp_path, fake_papermill, monkeypatch):
    chapter, out = _tiny_chapter(tmp_path), tmp_path / "runs"
    sweep.sweep(str(chapter), {"seed": [0, 1]}, out=str(out))
    done = out / "tiny" / "seed-1.done.json"
    fail_for(monkeypatch, Path, "read_text", [done], errno.EACCES)
    message = f"run marker {done} cannot be read .*running seed-1 again"
    with pytest.warns(UserWarning, match=message):
        statuses = sweep.sweep(str(chapter), {"seed": [0, 1]}, out=str(out))
    assert [(s["ok"], s["skipped"]) for s in statuses] == [(True, True), (True, False)]


def test_results_json_collects_every_completed_run_of_the_folder(tmp_path, fake_papermill):
    # Issue 26: sweeping seeds 4, 5, 6 and then seed 4 again left seed 4 alone in results.json.
    chapter, out = _tiny_chapter(tmp_path), tmp_path / "runs"
    results = out / "tiny" / "results.json"

    def seeds():
        return sorted(r["param_seed"] for r in json.loads(results.read_text()))

    sweep.sweep(str(chapter), {"seed": [4, 5, 6]}, out=str(out))
    sweep.sweep(str(chapter), {"seed": [4]}, out=str(out))
    assert seeds() == [4, 5, 6]
    # A run done again replaces its own rows only; a failed one (seed 2) adds none.
    (out / "tiny" / "seed-5.done.json").write_text("{")
    with pytest.warns(UserWarning, match="seed-5.done.json is damaged"):
        sweep.sweep(str(chapter), {"seed": [5, 2]}, out=str(out))
    assert seeds() == [4, 5, 6]
    # A damaged marker of a run outside this sweep leaves that run out, with a warning naming it.
    (out / "tiny" / "seed-6.done.json").write_bytes(b"\xff")
    message = "seed-6.done.json is not UTF-8.*left out of .*results.json"
    with pytest.warns(UserWarning, match=message):
        sweep.sweep(str(chapter), {"seed": [4]}, out=str(out))
    assert seeds() == [4, 5]


# -- 6. wrong data formats
# --------------------------------------------------------------------------


def as_dataset(x, y):
    return data.Dataset(x, y, x[:4], y[:4], [f"c{i}" for i in range(10)], identity="test")


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda x, y: (x.float() / 255, y),
            "x_train must have dtype torch.uint8 .*got torch.float32.*\\* 255",
        ),
        (
            lambda x, y: (x.permute(0, 3, 1, 2), y),
            "x_train must be images of shape \\(n, height, width, 3\\).*channels-first",
        ),
        (lambda x, y: (x[..., 0], y), "got shape \\(16, 32, 32\\).*grayscale"),
        (lambda x, y: (x[..., :1], y), "got shape \\(16, 32, 32, 1\\).*grayscale"),
        (lambda x, y: (x, y + 1), "y_train must hold labels 0..9 .*got labels 1..10"),
        (
            lambda x, y: (x, y[:-1]),
            "y_train must hold one label per image: 16 images but 15 labels",
        ),
        (lambda x, y: (x, y.float()), "y_train must be a 1-d tensor of integer class labels"),
    ],
)
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


# -- 7. bad settings
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, accepted",
    [
        ("epochs", 0, "an integer >= 1"),
        ("epochs", -2, "an integer >= 1"),
        ("batch_size", 0, "an integer >= 1"),
        ("translate", -1, "an integer >= 0 \\(pixels\\)"),
        ("n_train", 0, "None \\(all images\\) or an integer >= 1"),
        ("warmup", 1.5, "a fraction in \\[0, 1\\]"),
        ("lr", -0.1, "a finite number > 0"),
    ],
)
def test_bad_recipe_settings_name_the_parameter(field, value, accepted):
    with pytest.raises(ValueError, match=f"recipe 'fast': {field} must be {accepted}; got {value}"):
        train.recipe("fast", **{field: value})


@pytest.mark.parametrize(
    "arch",
    [
        dict(arch="myrtle_cnn", width=0),
        dict(arch="resnet20", width=-0.5),
        dict(arch="myrtle_cnn", width=float("nan")),
    ],
)
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


@pytest.mark.parametrize("scale", [1e30, 1e-30])
@pytest.mark.parametrize("measure", list(metrics.MEASURES))
def test_extreme_feature_scales_in_float32(measure, scale):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, 3, 3, generator=g), torch.randn(40, 4, 3, 3, generator=g)
    f = metrics.MEASURES[measure].function
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


# -- 8. tiny samples
# ----------------------------------------------------------------------------------


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
        with pytest.raises(
            ValueError, match="unbiased HSIC estimator needs at least 4 samples; got 3"
        ):
            getattr(metrics, measure)(x[:3], y[:3], debiased=True)
        assert getattr(metrics, measure)(x[:3], y[:3]) < 1.0
    with pytest.raises(ValueError, match="at least 4 samples; got 3"):
        metrics.grelu_cka(x[:3], y[:3])


# -- 9. downloads time out
# ------------------------------------------------------------------------------


def test_download_times_out_with_the_offline_error(tmp_path, monkeypatch):
    import torchvision

    assert data.DOWNLOAD_TIMEOUT == 60.0
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts connections, never answers
    try:
        port = server.getsockname()[1]
        monkeypatch.setattr(
            torchvision.datasets.CIFAR10, "url", f"http://127.0.0.1:{port}/cifar-10.tar.gz"
        )
        monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT", 0.5)
        monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("SYMMETRIES_DATA", raising=False)
        t0 = time.perf_counter()
        with pytest.raises(
            FileNotFoundError, match="CIFAR-10 not found.*timed out.*Set SYMMETRIES_DATA"
        ):
            data.load_cifar10(tmp_path / "none")
        assert time.perf_counter() - t0 < 20
        assert socket.getdefaulttimeout() is None
    finally:
        server.close()


# -- 10. summarize with list-valued parameters
# ------------------------------------------------------------


def test_summarize_handles_list_valued_parameters():
    table = [
        dict(key="acc", ours=float(seed + i), paper=1.0, param_seed=seed, param_slopes=slopes)
        for i, slopes in enumerate([[0.0, 1.0], [0.5]])
        for seed in (0, 2)
    ]
    out = sweep.summarize(table)
    assert out[("acc", ("param_slopes", (0.0, 1.0)))] == dict(mean=1.0, std=1.0, n=2, paper=1.0)
    assert out[("acc", ("param_slopes", (0.5,)))] == dict(mean=2.0, std=1.0, n=2, paper=1.0)


# -- 11. identical runs give identical files
# ----------------------------------------------------------------


def test_weights_file_bytes_are_identical_between_runs(tmp_path, tiny_data, get):
    a, b = get(tiny_data, tmp_path / "a"), get(tiny_data, tmp_path / "b")
    wa, wb = (
        (tmp_path / r / m.zoo_key / "weights.pt").read_bytes() for r, m in (("a", a), ("b", b))
    )
    assert wa == wb
    assert hashlib.sha256(wa).hexdigest() == a.zoo_meta["weights_sha256"]


# -- two processes, one model
# ---------------------------------------------------------------------------------


def test_concurrent_requests_train_a_model_once(tmp_path, tiny_data, monkeypatch, capsys, get):
    calls = []
    real_train = zoo_store.train

    def slow_train(*args, **kwargs):
        calls.append(threading.current_thread().name)
        time.sleep(1.0)  # long enough for the other to arrive
        return real_train(*args, **kwargs)

    monkeypatch.setattr(zoo_store, "train", slow_train)
    models = {}
    threads = [
        threading.Thread(
            target=lambda n=n: models.__setitem__(n, get(tiny_data, tmp_path)), name=f"t{n}"
        )
        for n in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(models) == [0, 1]
    assert models[0].zoo_meta == models[1].zoo_meta
    assert "waiting for it to finish" in capsys.readouterr().out


# -- 12. fuzz: seeded random damage to every kind of cached file ------------------------------
# Each file is damaged in FUZZ_FLIPS single-bit flips and FUZZ_CUTS truncations at seeded random
# places. After each, loading it must give the original value back, or recompute (retrain, re-run)
# with a warning naming the file, or raise an error naming it: nothing damaged is ever served.

FUZZ_SEED, FUZZ_FLIPS, FUZZ_CUTS = 26, 40, 8


class Retrained(Exception):
    """Raised instead of training, to count a retraining without paying for it."""


def retrain(*args, **kwargs):
    raise Retrained


def damaged_versions(raw: bytes, rng: np.random.Generator) -> list:
    """``[(what, damaged bytes)]``: ``FUZZ_FLIPS`` bit flips and ``FUZZ_CUTS`` truncations."""
    out = []
    for _ in range(FUZZ_FLIPS):
        i, bit = int(rng.integers(len(raw))), int(rng.integers(8))
        flipped = bytearray(raw)
        flipped[i] ^= 1 << bit
        out.append((f"bit {bit} of byte {i}", bytes(flipped)))
    cuts = sorted(rng.choice(len(raw), FUZZ_CUTS, replace=False))
    out += [(f"cut to {n} bytes", raw[:n]) for n in cuts]
    return out


def same(a, b) -> bool:
    """Equality of nested containers of tensors, arrays and plain values (dtypes and shapes too)."""
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


def fuzz(target: Path, trial, folder: Path | None = None) -> dict:
    """Damage ``target`` in every way of :func:`damaged_versions` and call ``trial()`` after each.

    The files of ``folder`` (default: ``target``'s) are put back as they were before each damage.
    ``trial`` asserts that what it loaded is the original and returns ``"served"``, or ``"redone"``
    if it was recomputed; a ``ValueError`` is ``"refused"``. Returns how often each happened.
    """
    folder = folder or target.parent
    pristine = {p: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".lock"}
    counts = {"served": 0, "redone": 0, "refused": 0}
    for what, damaged in damaged_versions(pristine[target], np.random.default_rng(FUZZ_SEED)):
        for p in folder.iterdir():
            if p.is_file() and p not in pristine:
                p.unlink()
        for p, raw in pristine.items():
            p.write_bytes(raw)
        target.write_bytes(damaged)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome = trial()
            except ValueError as exc:
                assert str(target) in str(exc), (what, str(exc))
                outcome = "refused"
        if outcome == "redone":
            messages = [str(w.message) for w in caught]
            assert any(str(target) in m for m in messages), (what, messages)
        counts[outcome] += 1
    return counts


@pytest.mark.parametrize("kind", ["weights", "meta", "checkpoint", "memo", "results", "marker"])
def test_fuzzed_cache_files_are_never_served(
    kind, tmp_path, tiny_data, get, entry, monkeypatch, tiny_recipe, interrupted_checkpoint, request
):
    if kind in ("weights", "meta"):
        good = get(tiny_data, tmp_path)
        folder = entry(tiny_data, tmp_path)
        monkeypatch.setattr(zoo_store, "_train_and_store", retrain)

        def trial():
            try:
                model = get(tiny_data, tmp_path)
            except Retrained:
                return "redone"
            assert same(model.state_dict(), good.state_dict())
            assert same(model.zoo_meta, good.zoo_meta)
            return "served"

        counts = fuzz(folder / ("weights.pt" if kind == "weights" else "meta.json"), trial)
    elif kind == "checkpoint":
        r = tiny_recipe(epochs=2)
        ckpt = interrupted_checkpoint(tiny_data, tmp_path, r)
        original = torch.load(io.BytesIO(cache.read_checked(ckpt)), weights_only=False)
        seen = []

        def stop(model, data, recipe, seed, state=None, **kw):
            seen.append(state)
            raise Retrained

        monkeypatch.setattr(zoo_store, "train", stop)

        def trial():
            with pytest.raises(Retrained):
                get(tiny_data, tmp_path, recipe=r)
            state = seen.pop()
            if state is None:
                return "redone"
            assert same(state, original)
            return "served"

        counts = fuzz(ckpt, trial)
    elif kind == "memo":
        value, calls = {"x": np.linspace(0, 1, 7), "y": 0.125, "name": "act2"}, []

        def compute():
            calls.append(1)
            return value

        cache.memo("k", {"a": 1}, compute, root=tmp_path)

        def trial():
            calls.clear()
            assert same(cache.memo("k", {"a": 1}, compute, root=tmp_path), value)
            return "redone" if calls else "served"

        counts = fuzz(next((tmp_path / "k").glob("*.pkl")), trial)
    elif kind == "results":
        from lib.results import Recorder, load_results

        monkeypatch.setenv("SYMMETRIES_RESULTS", str(tmp_path))
        rec = Recorder("zoo", "smoke", 3)
        for i, v in enumerate([0.109375, 87.5, None, 12]):
            rec.add(f"key{i}", v, paper=0.9, unit="%", note="seed 3")
        good = load_results("smoke")

        def trial():
            assert same(load_results("smoke"), good)
            return "served"

        counts = fuzz(rec.save(), trial)
    else:
        request.getfixturevalue("fake_papermill")  # it replaces subprocess.run: sweeps only
        out, chapter = tmp_path / "runs", _tiny_chapter(tmp_path)
        first = sweep.sweep(str(chapter), {"seed": [0, 1]}, out=str(out))
        table = json.loads((out / "tiny" / "results.json").read_text())

        def trial():
            # Read as an earlier sweep's run (collected into results.json), then as this sweep's.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                sweep.sweep(str(chapter), {"seed": [0]}, out=str(out))
            collected = json.loads((out / "tiny" / "results.json").read_text())
            if collected != table:
                assert collected == table[:1]
                assert any("seed-1.done.json" in str(w.message) for w in caught)
            statuses = sweep.sweep(str(chapter), {"seed": [0, 1]}, out=str(out))
            assert [s["rows"] for s in statuses] == [s["rows"] for s in first]
            assert json.loads((out / "tiny" / "results.json").read_text()) == table
            return "served" if statuses[1]["skipped"] and collected == table else "redone"

        counts = fuzz(out / "tiny" / "seed-1.done.json", trial)
    assert sum(counts.values()) == FUZZ_FLIPS + FUZZ_CUTS
    # A file with a binary checksum has no harmless bit: every change is caught.
    if kind in ("weights", "checkpoint", "memo"):
        assert counts["served"] == 0, counts
