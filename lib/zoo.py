"""The trained-model cache ("zoo") and a memo for expensive experiment results.

``get(arch, recipe, seed)`` returns a trained model, training it only when it is not cached. The key
is a hash of everything that changes the weights: the architecture config, every recipe field, the
seed and the dataset's identity (which includes the data file's checksum). A model folder holds
``weights.pt`` (a state_dict), ``meta.json`` (history, accuracy, wall time, device, versions and the
weights' sha256) and, while training, ``checkpoint.pt`` (one per epoch, for resuming, with its own
sha256) and ``.lock`` (a second process asking for the same model waits on it, then loads the model).
Every file is written atomically with the user's umask. A damaged entry is reported and retrained; one
that cannot be read (permissions) is an error and is never deleted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import pickle
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

from . import __version__
from .config import SCALES, atomic_path, cache_dir, check_choice, get_device, resolve_scale, scale_settings
from .data import Dataset, load_cifar10, synthetic_dataset
from .models import build
from .train import Recipe, recipe as make_recipe, throughput, train

__all__ = ["get", "pairs", "info", "model_key", "zoo_dir", "recipe_for_scale", "load_data", "memo", "book_models",
           "fingerprint", "replicate_seeds", "book_plan", "estimate_seconds", "estimate_book_seconds", "train_book",
           "main", "DATASETS"]

DATASETS = ("cifar10", "synthetic")


def zoo_dir(root: str | os.PathLike | None = None) -> Path:
    """The zoo folder: ``root``, else ``$SYMMETRIES_ZOO``, else the cache's ``zoo`` subfolder."""
    if root is None and os.environ.get("SYMMETRIES_ZOO"):
        root = os.environ["SYMMETRIES_ZOO"]
    path = Path(root) if root is not None else cache_dir("zoo")
    path.mkdir(parents=True, exist_ok=True)
    return path


def recipe_for_scale(scale: str, name: str | None = None, **overrides) -> Recipe:
    """The training recipe a chapter uses at ``scale`` (epochs and data sizes from ``lib.config``),
    with any other recipe field overridden (e.g. ``lr=0.05`` for a network without BatchNorm)."""
    s = scale_settings(scale)
    fields = dict(epochs=s.epochs, n_train=s.n_train, n_test=s.n_test)
    return make_recipe(name or s.recipe, **{**fields, **overrides})


def load_data(dataset: str = "cifar10") -> Dataset:
    """The dataset called ``dataset`` (``"cifar10"`` or ``"synthetic"``, the latter for tests)."""
    check_choice("dataset", dataset, DATASETS)
    return load_cifar10() if dataset == "cifar10" else synthetic_dataset(n_train=512, n_test=256)


def _canonical_arch(arch: dict) -> dict:
    # Building the model fills in every default, so {"arch": "resnet20"} and
    # {"arch": "resnet20", "width": 1.0} share one key.
    return dict(sorted(build(arch).arch.items()))


def model_key(arch: dict, r: Recipe, seed: int, data_identity: str) -> str:
    """Hash of everything that changes the trained weights."""
    payload = json.dumps(dict(arch=_canonical_arch(arch), recipe=dataclasses.asdict(r), seed=int(seed),
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


class _Corrupted(ValueError):
    """A cache file whose content is damaged (as opposed to one that cannot be read at all)."""


# Checkpoints and memo entries start with this line and the sha256 of the rest (the payload).
_MAGIC = b"symmetries-checked-v1\n"


def _write_checked(path: Path, payload: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def _read_checked(path: Path) -> bytes:
    """The payload of a file written by :func:`_write_checked`; ``_Corrupted`` if its checksum fails.

    ``FileNotFoundError`` (or ``NotADirectoryError``) if there is none; other ``OSError``
    (permissions, I/O) propagate unchanged.
    """
    raw = path.read_bytes()
    head, digest = len(_MAGIC), len(_MAGIC) + 64
    if not raw.startswith(_MAGIC) or raw[digest:digest + 1] != b"\n":
        raise _Corrupted(f"{path} lacks its checksum header (damaged, or written by an older version)")
    payload = raw[digest + 1:]
    if hashlib.sha256(payload).hexdigest().encode() != raw[head:digest]:
        raise _Corrupted(f"{path} does not match its sha256 checksum")
    return payload


def _unreadable(path: Path, exc: OSError) -> OSError:
    # Not corruption: the file may be fine for its owner. Nothing is deleted; the user decides.
    return OSError(exc.errno, f"cannot read the cache file {path} ({exc.strerror or exc}); it was left "
                              f"untouched. Make it readable (a shared cache needs group read permission) "
                              f"or use your own cache (root=, SYMMETRIES_ZOO or SYMMETRIES_CACHE)")


def _load_cached(folder: Path, model: torch.nn.Module):
    """The metadata of the entry in ``folder`` with its weights loaded into ``model``; ``None`` if
    there is no entry. A damaged entry raises ``_Corrupted``; an unreadable one ``OSError``."""
    meta_path, weights = folder / "meta.json", folder / "weights.pt"
    try:
        text = meta_path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise _unreadable(meta_path, exc) from exc
    try:
        payload = weights.read_bytes()
    except FileNotFoundError as exc:
        raise _Corrupted(f"zoo entry {folder} has meta.json but no weights.pt") from exc
    except OSError as exc:
        raise _unreadable(weights, exc) from exc
    try:
        meta = json.loads(text)
        if hashlib.sha256(payload).hexdigest() != meta["weights_sha256"]:
            raise ValueError(f"{weights} does not match the sha256 in meta.json")
        model.load_state_dict(torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True))
        return meta
    except Exception as exc:  # any damage (truncation, bad JSON, wrong keys, changed bytes)
        raise _Corrupted(f"zoo entry {folder} is corrupted ({type(exc).__name__}: {exc})") from exc


@contextlib.contextmanager
def _training_lock(folder: Path):
    """Hold an exclusive lock on ``folder/.lock`` (flock: released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): concurrent processes may both train
        yield
        return
    with open(folder / ".lock", "a") as f:
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
    """The metadata of a cached model, or ``None`` if it is not in the zoo."""
    r = make_recipe(recipe)
    data = data or load_data(dataset)
    meta = zoo_dir(root) / model_key(arch, r, seed, data.identity) / "meta.json"
    return json.loads(meta.read_text()) if meta.exists() else None


def get(arch: dict, recipe: str | Recipe = "fast", seed: int = 0, dataset: str = "cifar10", *,
        data: Dataset | None = None, root=None, device=None, progress: bool = True) -> torch.nn.Module:
    """A model trained with ``recipe`` from ``seed``, from the zoo or trained now (then cached).

    ``arch`` is a dict for :func:`lib.models.build`. The model comes back in eval mode on ``device``
    with its metadata as ``model.zoo_meta`` and its cache key as ``model.zoo_key``.
    """
    r = make_recipe(recipe)
    device = get_device(device)
    data = data or load_data(dataset)
    key = model_key(arch, r, seed, data.identity)
    folder = zoo_dir(root) / key
    model = build(arch, seed=seed)
    try:
        meta = _load_cached(folder, model)
    except _Corrupted:
        meta = None
    if meta is None:
        _check_writable(folder)
        # Another process may be training this entry: wait for it, then look again, so that a model
        # is trained once however many processes ask for it.
        with _training_lock(folder):
            try:
                meta = _load_cached(folder, model)
            except _Corrupted as exc:
                msg = f"{exc}; retraining it"
                warnings.warn(msg)
                print(msg)
                for f in (folder / "meta.json", folder / "weights.pt"):
                    f.unlink(missing_ok=True)
            if meta is None:
                # A failed load may have copied part of a state_dict: start from the seed's init.
                model = build(arch, seed=seed)
                meta = _train_and_store(model, arch, r, seed, data, folder, device, progress)
    model.zoo_meta = meta
    model.zoo_key = key
    return model.to(device).eval()


def _torch_bytes(obj) -> bytes:
    # torch.save into a buffer: the archive is then always named "archive" (saved to a file it takes
    # the file's name, a random temporary one), so identical runs give identical bytes; writing the
    # bytes ourselves also turns a full disk into an OSError that says so.
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _train_and_store(model, arch, r, seed, data, folder, device, progress) -> dict:
    ckpt_path = folder / "checkpoint.pt"
    state = None
    try:
        state = torch.load(io.BytesIO(_read_checked(ckpt_path)), map_location="cpu", weights_only=False)
        print(f"resuming {folder.name} from epoch {state['epoch']}")
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _unreadable(ckpt_path, exc) from exc
    except Exception as exc:  # damaged: a wrong checkpoint must never be resumed from
        msg = f"checkpoint {ckpt_path} is corrupted ({type(exc).__name__}: {exc}); training from scratch"
        warnings.warn(msg)
        print(msg)
        state = None
    prior_seconds = state.get("seconds", 0.0) if state else 0.0
    t0 = time.perf_counter()

    def save_checkpoint(s):
        s["seconds"] = prior_seconds + time.perf_counter() - t0
        _write_checked(ckpt_path, _torch_bytes(s))

    name = f"{arch.get('arch')} seed {seed}"
    history = train(model, data, r, seed=seed, device=device, progress=progress, state=state,
                    on_epoch=save_checkpoint, desc=name)
    seconds = prior_seconds + time.perf_counter() - t0
    payload = _torch_bytes({k: v.detach().cpu() for k, v in model.state_dict().items()})
    with atomic_path(folder / "weights.pt") as tmp:
        tmp.write_bytes(payload)
    meta = dict(arch=_canonical_arch(arch), recipe=dataclasses.asdict(r), seed=seed, data=data.identity,
                history=history, test_acc=max(h["test_acc"] for h in history) if r.keep_best
                else history[-1]["test_acc"], seconds=seconds, device=str(device),
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                torch=torch.__version__, lib=__version__, weights_sha256=hashlib.sha256(payload).hexdigest())
    with atomic_path(folder / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    ckpt_path.unlink(missing_ok=True)
    return meta


def pairs(arch: dict, recipe: str | Recipe = "fast", n_pairs: int = 1, seed0: int = 0, **kwargs) -> list:
    """``n_pairs`` pairs of models with distinct seeds: ``(seed0, seed0+1), (seed0+2, seed0+3), ...``."""
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be at least 1, got {n_pairs}")
    return [(get(arch, recipe, seed0 + 2 * i, **kwargs), get(arch, recipe, seed0 + 2 * i + 1, **kwargs))
            for i in range(n_pairs)]


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 prefix of a model's weights and buffers: a cache key that follows the weights
    themselves, so a transformed copy of a zoo model can never be mistaken for the original."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def memo(kind: str, config: dict, compute, root=None):
    """``compute()``, cached on disk under a hash of ``(kind, config)``.

    For experiment results that are expensive to recompute (stitching penalties, features): a warm
    rebuild of the book reads them back. ``config`` must hold everything the result depends on
    (JSON-serialisable); the value must be picklable.

    Each entry carries the sha256 of its pickle: a damaged entry is reported (naming the file) and
    recomputed, never returned. An entry that exists but cannot be read (permissions) is an
    ``OSError`` and is left alone. A value that cannot be stored (read-only cache, full disk) is
    returned all the same, with one warning.
    """
    key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = (Path(root) if root is not None else cache_dir("memo", create=False)) / kind / f"{key}.pkl"
    try:
        return pickle.loads(_read_checked(path))
    except (FileNotFoundError, NotADirectoryError):  # no entry (NotADirectory: nor a cache folder)
        pass
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    except Exception as exc:  # damaged, or pickled by code that has changed since
        msg = f"memo entry {path} is corrupted ({type(exc).__name__}: {exc}); recomputing it"
        warnings.warn(msg)
        print(msg)
    value = compute()
    try:
        _write_checked(path, pickle.dumps(value))
    except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:
        warnings.warn(f"the result {kind}/{key} was computed but could not be cached ({exc}); it is returned, "
                      f"and will be computed again next time")
    return value


def replicate_seeds(n_models: int, replicate: int) -> list[int]:
    """The model seeds of replicate ``replicate`` for a family that uses ``n_models`` models.

    This is the one place where a chapter's ``seed`` parameter becomes model seeds: replicate ``k``
    of a family with ``n`` models per replicate trains seeds ``n*k, ..., n*k + n - 1`` (so seed 0
    gives the pair (0, 1), seed 1 the pair (2, 3), ...). Different replicates never share a model, so
    a sweep over ``seed`` measures the spread between independently trained networks.

    Parameters
    ----------
    n_models : models per replicate (>= 1).
    replicate : the chapter's ``seed`` (>= 0).

    Returns
    -------
    list of ``n_models`` distinct ints.
    """
    if n_models < 1:
        raise ValueError(f"n_models must be at least 1, got {n_models}")
    if int(replicate) != replicate or replicate < 0:
        raise ValueError(f"seed (the replicate) must be an integer >= 0, got {replicate!r}")
    return [n_models * int(replicate) + i for i in range(n_models)]


def book_models(scale: str, seed: int = 0) -> dict:
    """Every model family the book uses at ``scale``, for replicate ``seed``:
    ``{name: dict(arch, recipe, seeds, paper_acc)}``.

    The zoo step (``python -m lib.zoo train``) and the zoo chapter train all of them; later chapters
    ask for the same entries, so each model is trained once. ``seeds`` come from
    :func:`replicate_seeds`. ``paper_acc`` is ``(mean, std)`` of the clean accuracy the paper reports
    in percent (None where it reports none).
    """
    s = scale_settings(scale)
    r = recipe_for_scale(scale)
    # Networks without BatchNorm (the Myrtle CNN without it; LayerNorm ConvNeXt) barely move under
    # the fast recipe's Nesterov SGD in a few epochs (measured: chance accuracy after 2 epochs on
    # 10,000 images), while Adam trains them; the paper recipe is Adam already.
    r_nobn = r if s.recipe == "paper" else recipe_for_scale(scale, optimizer="adam", lr=2e-3, weight_decay=5e-5)
    pair = replicate_seeds(2 * s.n_pairs, seed)
    models = {
        "myrtle": dict(arch=dict(arch="myrtle_cnn", width=s.myrtle_width), recipe=r, seeds=pair,
                       paper_acc=(91.3, 0.2)),
        # Half the width, to report accuracy against width.
        "myrtle_narrow": dict(arch=dict(arch="myrtle_cnn", width=s.myrtle_width / 2), recipe=r, seeds=pair,
                              paper_acc=(None, None)),
        # Section 3.3 fine-tunes one network without BatchNorm.
        "myrtle_nobn": dict(arch=dict(arch="myrtle_cnn", width=s.myrtle_width, batchnorm=False),
                            recipe=r_nobn, seeds=replicate_seeds(1, seed), paper_acc=(87.4, None)),
        "resnet20": dict(arch=dict(arch="resnet20", width=s.resnet_width), recipe=r, seeds=pair,
                         paper_acc=(89.9, None)),
    }
    # Section 6's trio at small scale: ResNet20 with a ReLU after each residual addition, the same
    # without it, and ConvNeXt-style; one model each per replicate. The ResNets have their own width,
    # dissection_width: at `cpu` it is the slope sweep's 0.25, so the ReLU model is the slope sweep's
    # first model (one zoo entry, trained once); at gpu/paper it is resnet_width and the "resnet20" model.
    trio_seed = replicate_seeds(1, seed)
    models["resnet20_dissection"] = dict(arch=dict(arch="resnet20", width=s.dissection_width), recipe=r,
                                         seeds=trio_seed, paper_acc=(None, None))
    models["resnet20_noresrelu"] = dict(arch=dict(arch="resnet20", width=s.dissection_width,
                                                  residual_activation=False),
                                        recipe=r, seeds=trio_seed, paper_acc=(None, None))
    if s.recipe == "paper":
        convnext = dict(arch="convnext_cifar", width=s.convnext_width, layer_scale=0.1)
        r_convnext = r
    else:
        # BatchNorm and 3x3 depthwise kernels instead of LayerNorm and 7x7: on 2 CPU cores in 8 epochs
        # the LayerNorm/7x7 network (Adam) reached 54 % against the ResNets' 76 %, at half their speed;
        # with BatchNorm it trains with the ResNets' SGD recipe. No activation follows its residual
        # additions either way, which is what Section 6 compares. Float32: bfloat16 autocast measured
        # slower for its depthwise convolutions on the CPU.
        convnext = dict(arch="convnext_cifar", width=s.convnext_width, layer_scale=0.1, kernel_size=3, norm="batch")
        r_convnext = dataclasses.replace(r, precision="float32")
    models["convnext"] = dict(arch=convnext, recipe=r_convnext, seeds=trio_seed, paper_acc=(None, None))
    r_slope = recipe_for_scale(scale, epochs=s.slope_epochs)
    for slope in s.slopes:
        arch = (dict(arch="resnet20", width=s.slope_width) if slope == 0 else
                dict(arch="resnet20", width=s.slope_width, activation="leaky_relu", negative_slope=slope))
        models[f"resnet20_slope{slope:g}"] = dict(arch=arch, recipe=r_slope, seeds=replicate_seeds(2 * s.slope_pairs, seed),
                                                  paper_acc=(None, None))
    return models


def book_plan(scale: str, seed: int = 0, families=None, data: Dataset | None = None, root=None) -> list[dict]:
    """The models of :func:`book_models` in training order, one dict each: ``family``, ``arch``,
    ``recipe``, ``seed``, ``key`` and ``cached`` (whether the zoo already holds it)."""
    book = book_models(scale, seed)
    names = list(book) if families is None else list(families)
    for name in names:
        check_choice("family", name, book)
    data = data or load_data()
    plan, seen = [], set()
    for name in names:
        entry = book[name]
        for s in entry["seeds"]:
            key = model_key(entry["arch"], entry["recipe"], s, data.identity)
            if key in seen:         # families may share a model (e.g. ResNet20 in Sections 4-6)
                continue
            seen.add(key)
            cached = (zoo_dir(root) / key / "meta.json").exists()
            plan.append(dict(family=name, arch=entry["arch"], recipe=entry["recipe"], seed=s, key=key, cached=cached))
    return plan


def estimate_seconds(r: Recipe, images_per_second: float) -> float:
    """Estimated training time of one model, in seconds: ``epochs`` passes over the training images
    at ``images_per_second`` (a measured training throughput), plus one evaluation of the test
    images per epoch, counted at three times that throughput (a forward pass only)."""
    n_train = r.n_train or 50_000
    n_test = r.n_test or 10_000
    return r.epochs * (n_train + n_test / 3) / images_per_second


def estimate_book_seconds(scale: str, seed: int = 0, steps: int = 3, device=None) -> dict:
    """Estimated training time of every model of :func:`book_models` at ``scale``, in seconds,
    from a short calibration of each distinct architecture (:func:`lib.train.throughput`).

    Returns ``{family: dict(models, images_per_second, seconds)}`` (``seconds`` for all the family's
    models); models shared between families are counted once, under the first family.
    """
    out, seen, speed = {}, set(), {}
    for name, entry in book_models(scale, seed).items():
        r = entry["recipe"]
        # The zoo's own key (without the data, which every model shares) decides what is shared.
        keys = {model_key(entry["arch"], r, s, "") for s in entry["seeds"]} - seen
        seen |= keys
        cal = json.dumps([_canonical_arch(entry["arch"]), r.batch_size, r.precision], sort_keys=True)
        if cal not in speed:
            speed[cal] = throughput(build(entry["arch"], seed=0), r.batch_size, r.precision, steps, device)
        ips = speed[cal]
        out[name] = dict(models=len(keys), images_per_second=ips, seconds=len(keys) * estimate_seconds(r, ips))
    return out


def train_book(scale: str, seed: int = 0, families=None, data: Dataset | None = None, root=None,
               device=None) -> list[dict]:
    """Train every model the book needs at ``scale`` (replicate ``seed``) that the zoo lacks.

    The separate step before a book build (``python -m lib.zoo train``), so that no notebook cell
    holds hours of training. It prints one line per model before and after training and one line
    per epoch; an interrupted run resumes from the last finished epoch of the model it was training
    and skips every model already finished. Returns the metadata of every planned model.
    """
    data = data or load_data()
    plan = book_plan(scale, seed, families, data, root)
    todo = [p for p in plan if not p["cached"]]
    print(f"scale {scale!r}, replicate {seed}: {len(plan)} models, {len(plan) - len(todo)} cached, "
          f"{len(todo)} to train", flush=True)
    metas, t0 = [], time.perf_counter()
    for i, p in enumerate(plan, 1):
        label = f"[{i}/{len(plan)}] {p['family']} seed {p['seed']}"
        if not p["cached"]:
            print(f"{label}: training {p['recipe'].epochs} epochs ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        model = get(p["arch"], p["recipe"], p["seed"], data=data, root=root, device=device, progress=True)
        meta = model.zoo_meta
        print(f"{label}: test accuracy {100 * meta['test_acc']:.1f} %, trained in {meta['seconds']:.0f} s"
              + ("" if p["cached"] else " (now)"), flush=True)
        metas.append(meta)
    print(f"zoo ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return metas


def main(argv=None) -> int:
    """``python -m lib.zoo train [--scale S] [--seed K] [--families ...]``: see :func:`train_book`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lib.zoo", description="Train the book's models into the zoo.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train every model the book needs at a scale (resumable)")
    t.add_argument("--scale", default=None, choices=list(SCALES),
                   help="the scale (default: $SYMMETRIES_SCALE, else cpu)")
    t.add_argument("--seed", type=int, default=0, help="the replicate (the chapters' seed parameter)")
    t.add_argument("--families", nargs="+", default=None, help="only these families (default: all)")
    args = parser.parse_args(argv)
    train_book(resolve_scale(args.scale), args.seed, args.families)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
