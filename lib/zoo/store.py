"""The cache of trained models: one folder per model, keyed by everything that changes its weights.

:func:`get` returns a trained model, training it only when it is not cached. The key
(:func:`model_key`) is a hash of the architecture config, every recipe field, the seed and the
dataset's identity (which includes the data file's checksum). A model folder holds ``weights.pt`` (a
state_dict), ``meta.json`` (history, accuracy, wall time, device, versions, the weights' sha256
and, in ``"sha256"``, the sha256 of its own fields: :func:`lib.cache.checked_json`) and, while
training, ``checkpoint.pt`` (one per epoch, for resuming, checked by
:func:`lib.cache.read_checked`) and ``.lock`` (a second process asking for the same model waits on
it, then loads the model). Every file is written atomically with the user's umask. A damaged entry
is reported and retrained; one that cannot be read (permissions) is an error and is never deleted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # no flock (Windows): concurrent processes may both train
    fcntl = None

from .. import __version__
from ..cache import (CorruptedError, checked_json, read_checked, read_checked_json, torch_bytes,
                     unreadable_error, write_checked)
from ..config import atomic_path, cache_dir, check_seed, get_device
from ..data import Dataset, check_training_data, load_data
from ..models import build
from ..train import Recipe, recipe as make_recipe, train

__all__ = ["zoo_dir", "canonical_arch", "model_key", "info", "get"]


def zoo_dir(root: str | os.PathLike | None = None) -> Path:
    """The zoo folder, created on demand.

    Parameters
    ----------
    root : path-like, optional
        The folder; default ``$SYMMETRIES_ZOO``, else the cache's ``zoo`` subfolder
        (:func:`lib.config.cache_dir`).

    Returns
    -------
    pathlib.Path
    """
    if root is None and os.environ.get("SYMMETRIES_ZOO"):
        root = os.environ["SYMMETRIES_ZOO"]
    path = Path(root) if root is not None else cache_dir("zoo")
    path.mkdir(parents=True, exist_ok=True)
    return path


# canonical_arch's answers by config.
_CANONICAL: dict = {}


def canonical_arch(arch: dict) -> dict:
    """An architecture config with every default filled in, keys sorted.

    So ``{"arch": "resnet20"}`` and ``{"arch": "resnet20", "width": 1.0}`` share one zoo key.

    Parameters
    ----------
    arch : dict
        A config for :func:`lib.models.build`.

    Returns
    -------
    dict
    """
    # Built on the meta device, which allocates nothing and draws no random numbers (the caller's
    # random state is left alone), and once per config: a key costs microseconds after the first.
    known = json.dumps(arch, sort_keys=True, default=repr)
    if known not in _CANONICAL:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            _CANONICAL[known] = dict(sorted(build(arch).arch.items()))
    return dict(_CANONICAL[known])


def model_key(arch: dict, r: Recipe, seed: int, data_identity: str) -> str:
    """The zoo key of a model: a hash of everything that changes its trained weights.

    Parameters
    ----------
    arch : dict
        A config for :func:`lib.models.build` (defaults filled in by :func:`canonical_arch`).
    r : lib.train.Recipe
        Every field counts.
    seed : int
    data_identity : str
        The ``identity`` of a :class:`lib.data.Dataset` (holds the data file's checksum).

    Returns
    -------
    str
        20 hexadecimal digits, the name of the model's folder in the zoo.
    """
    payload = json.dumps(dict(arch=canonical_arch(arch), recipe=dataclasses.asdict(r), seed=int(seed),
                              data=data_identity), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(f"the zoo folder {folder} is not writable ({exc}); pass root= or set "
                              f"SYMMETRIES_ZOO to a writable folder") from exc


# The fields of a meta.json written before it carried its own checksum ("sha256").
_LEGACY_META_FIELDS = ("arch", "recipe", "seed", "data", "history", "test_acc", "seconds", "device",
                       "device_name", "torch", "lib", "weights_sha256")


def _identity(arch: dict, r: Recipe, seed: int, data_identity: str) -> dict:
    """What a ``meta.json`` must say about its model (what :func:`model_key` hashes), as JSON
    reads it."""
    identity = dict(arch=canonical_arch(arch), recipe=dataclasses.asdict(r), seed=int(seed),
                    data=data_identity)
    return json.loads(json.dumps(identity))


def _read_meta(meta_path: Path, identity: dict) -> dict:
    """The verified metadata in ``meta_path``: its checksum, its fields, and that it describes the
    model of ``identity``. An old file without a checksum is given one (where the zoo is writable).

    Raises ``CorruptedError`` naming the file; ``FileNotFoundError`` (or another ``OSError``)
    unchanged."""
    meta, verified = read_checked_json(meta_path, _LEGACY_META_FIELDS)
    wrong = [k for k in identity if meta.get(k) != identity[k]]
    history = meta.get("history")
    if wrong:
        raise CorruptedError(f"{meta_path} describes another model (its {', '.join(wrong)} differ)")
    if not (isinstance(history, list) and history and all(isinstance(h, dict) for h in history)):
        raise CorruptedError(f"{meta_path} has no training history")
    if not (isinstance(meta.get("test_acc"), float) and 0.0 <= meta["test_acc"] <= 1.0):
        raise CorruptedError(f"{meta_path} has no test accuracy in [0, 1]")
    digest = meta.get("weights_sha256")
    if not (isinstance(digest, str) and len(digest) == 64):
        raise CorruptedError(f"{meta_path} has no sha256 of the weights")
    if not verified:
        # Entries trained before meta.json had a checksum keep working; from now on, checked.
        with contextlib.suppress(OSError):
            with atomic_path(meta_path) as tmp:
                tmp.write_text(checked_json(meta))
    return meta


def _load_cached(folder: Path, model: torch.nn.Module, identity: dict):
    """The metadata of the entry in ``folder`` with its weights loaded into ``model``; ``None`` if
    there is no entry. A damaged entry raises ``CorruptedError`` naming the damaged file; an
    unreadable one ``OSError``."""
    meta_path, weights = folder / "meta.json", folder / "weights.pt"
    try:
        meta = _read_meta(meta_path, identity)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise unreadable_error(meta_path, exc) from exc
    try:
        payload = weights.read_bytes()
    except FileNotFoundError as exc:
        raise CorruptedError(f"{weights} is missing (its {meta_path.name} is there)") from exc
    except OSError as exc:
        raise unreadable_error(weights, exc) from exc
    if hashlib.sha256(payload).hexdigest() != meta["weights_sha256"]:
        raise CorruptedError(f"{weights} does not match the sha256 in {meta_path.name}")
    try:
        model.load_state_dict(torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True))
    except Exception as exc:  # the checksum matched: weights saved for another architecture
        reason = f"{type(exc).__name__}: {exc}"
        raise CorruptedError(f"{weights} does not fit the model ({reason})") from exc
    return meta


def _open_lock(path: Path):
    """``path`` opened for flock: for writing, else (another user's lock file) for reading, which
    flock takes as well; a ``PermissionError`` with advice if neither is allowed."""
    try:
        return path.open("a")
    except PermissionError:
        pass
    try:
        return path.open("r")
    except PermissionError as exc:
        raise PermissionError(
            f"cannot open the training lock {path} ({exc.strerror or exc}): it belongs to another "
            f"user who trains into this shared zoo. Ask them to make it readable by your group (a "
            f"umask of 002 or 007 and a shared group), or use a zoo of your own (root=, "
            f"SYMMETRIES_ZOO or SYMMETRIES_CACHE)") from exc


@contextlib.contextmanager
def _training_lock(folder: Path):
    """Hold an exclusive lock on ``folder/.lock`` (flock: released by the OS if the process dies)."""
    if fcntl is None:
        yield
        return
    with _open_lock(folder / ".lock") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another process is training zoo entry {folder}; waiting for it to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def info(arch: dict, recipe: str | Recipe = "fast", seed: int = 0, dataset: str = "cifar10",
         root=None, data: Dataset | None = None) -> dict | None:
    """The metadata of a cached model.

    Parameters
    ----------
    arch, recipe, seed, dataset, root, data
        As for :func:`get`.

    Returns
    -------
    dict or None
        The model's ``meta.json`` (verified, without its own checksum), or ``None`` if it is not in
        the zoo or its ``meta.json`` is damaged (then with a warning naming the file).
    """
    seed = check_seed(seed)
    r = make_recipe(recipe)
    data = data or load_data(dataset)
    meta_path = zoo_dir(root) / model_key(arch, r, seed, data.identity) / "meta.json"
    try:
        return _read_meta(meta_path, _identity(arch, r, seed, data.identity))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise unreadable_error(meta_path, exc) from exc
    except CorruptedError as exc:
        warnings.warn(f"{exc}; the model will be retrained when it is asked for")
        return None


def _load_or_train(folder: Path, model, identity: dict, train) -> tuple:
    # (model, meta) from the entry, or from train() when it is missing or corrupted (then removed).
    try:
        meta = _load_cached(folder, model, identity)
    except CorruptedError:
        meta = None
    if meta is not None:
        return model, meta
    _check_writable(folder)
    # Another process may be training this entry: wait for it, then look again, so that a model
    # is trained once however many processes ask for it.
    with _training_lock(folder):
        try:
            meta = _load_cached(folder, model, identity)
        except CorruptedError as exc:
            meta = None
            msg = f"zoo entry {folder.name} is corrupted ({exc}); retraining it"
            warnings.warn(msg)
            print(msg)
            for f in (folder / "meta.json", folder / "weights.pt"):
                f.unlink(missing_ok=True)
        if meta is None:
            return train()
    return model, meta


def get(arch: dict, recipe: str | Recipe = "fast", seed: int = 0, dataset: str = "cifar10", *,
        data: Dataset | None = None, root=None, device=None, progress: bool = True) -> torch.nn.Module:
    """A model trained with ``recipe`` from ``seed``, from the zoo or trained now (then cached).

    Parameters
    ----------
    arch : dict
        A config for :func:`lib.models.build`.
    recipe : str or lib.train.Recipe
        A recipe or the name of one (:func:`lib.train.recipe`).
    seed : int
        Seeds the initial weights and the training.
    dataset : str
        For :func:`lib.data.load_data` when ``data`` is not given.
    data : lib.data.Dataset, optional
    root : path-like, optional
        The zoo folder (:func:`zoo_dir`).
    device : optional
        For :func:`lib.config.get_device`.
    progress : bool
        Show training progress.

    Returns
    -------
    torch.nn.Module
        In eval mode on ``device``, with its metadata as ``zoo_meta`` (``test_acc`` a fraction) and
        its cache key as ``zoo_key``. The caller's torch random state is the same after the call
        whether the model was trained or loaded.

    Raises
    ------
    ValueError
        Before any folder is made, for a bad seed (:func:`lib.config.check_seed`), recipe or
        architecture, or data it cannot train on (:func:`lib.data.check_training_data`).
    PermissionError
        If the model must be trained and the zoo folder is not writable (before any training), or
        another user's lock file cannot be opened.
    OSError
        If an entry exists but cannot be read; it is left untouched.
    """
    seed = check_seed(seed)
    r = make_recipe(recipe)
    device = get_device(device)
    data = data or load_data(dataset)
    check_training_data(data, arch)
    key = model_key(arch, r, seed, data.identity)
    identity = _identity(arch, r, seed, data.identity)
    folder = zoo_dir(root) / key

    def train_new():
        # A failed load may have copied part of a state_dict: start from the seed's init.
        fresh = build(arch, seed=seed)
        return fresh, _train_and_store(fresh, arch, r, seed, data, folder, device, progress)
    model, meta = _load_or_train(folder, build(arch, seed=seed), identity, train_new)
    model.zoo_meta = meta
    model.zoo_key = key
    return model.to(device).eval()


def _train_and_store(model, arch, r, seed, data, folder, device, progress) -> dict:
    ckpt_path = folder / "checkpoint.pt"
    state = None
    try:
        state = torch.load(io.BytesIO(read_checked(ckpt_path)), map_location="cpu", weights_only=False)
        print(f"resuming {folder.name} from epoch {state['epoch']}")
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise unreadable_error(ckpt_path, exc) from exc
    except Exception as exc:  # damaged: a wrong checkpoint must never be resumed from
        msg = f"checkpoint {ckpt_path} is corrupted ({type(exc).__name__}: {exc}); training from scratch"
        warnings.warn(msg)
        print(msg)
        state = None
    prior_seconds = state.get("seconds", 0.0) if state else 0.0
    t0 = time.perf_counter()

    def save_checkpoint(s):
        s["seconds"] = prior_seconds + time.perf_counter() - t0
        write_checked(ckpt_path, torch_bytes(s))

    name = f"{arch.get('arch')} seed {seed}"
    history = train(model, data, r, seed=seed, device=device, progress=progress, state=state,
                    on_epoch=save_checkpoint, desc=name)
    seconds = prior_seconds + time.perf_counter() - t0
    payload = torch_bytes({k: v.detach().cpu() for k, v in model.state_dict().items()})
    with atomic_path(folder / "weights.pt") as tmp:
        tmp.write_bytes(payload)
    meta = dict(arch=canonical_arch(arch), recipe=dataclasses.asdict(r), seed=seed, data=data.identity,
                history=history, test_acc=max(h["test_acc"] for h in history) if r.keep_best
                else history[-1]["test_acc"], seconds=seconds, device=str(device),
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                torch=torch.__version__, lib=__version__, weights_sha256=hashlib.sha256(payload).hexdigest())
    with atomic_path(folder / "meta.json") as tmp:
        tmp.write_text(checked_json(meta))
    ckpt_path.unlink(missing_ok=True)
    return meta
