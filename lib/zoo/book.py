"""The book's models: its families at each scale, loading them, and training them all beforehand.

``python -m lib.zoo train`` (:func:`main`) trains every model the book needs at a scale
(:func:`train_book`), so that no notebook cell holds hours of training; chapters then load their
models from the cache (:func:`load_family`, :func:`load_pairs`).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from torch.nn import functional as F

from ..config import autocast, check_choice, get_device
from ..data import Dataset, load_data
from ..models import build
from ..settings import SCALES, model_families, resolve_scale, scale_settings
from ..train import Recipe, recipe_for_scale
from .store import canonical_arch, get, model_key, zoo_dir

__all__ = ["replicate_seeds", "book_models", "load_family", "load_pairs", "book_plan", "throughput",
           "estimate_seconds", "estimate_book_seconds", "train_book", "main"]


def replicate_seeds(n_models: int, replicate: int, stride: int | None = None) -> list[int]:
    """The model seeds of replicate ``replicate`` for a family that uses ``n_models`` models.

    This is the one place where a chapter's ``seed`` parameter becomes model seeds: replicate ``k``
    trains seeds ``stride*k, ..., stride*k + n_models - 1``. :func:`book_models` passes the same
    ``stride`` to every family of a scale, the most models any of them uses, so that replicate
    ``k``'s seeds of *every* family lie in ``[stride*k, stride*(k+1))``: different replicates never
    share a model, not even across families (a one-model family's replicate 1 is not replicate 0's
    second model of another family), and a sweep over ``seed`` measures the spread between
    independently trained networks. Replicate 0 is seeds ``0 .. n_models - 1`` whatever the stride.

    Parameters
    ----------
    n_models : int
        Models per replicate (>= 1).
    replicate : int
        The chapter's ``seed`` (>= 0).
    stride : int, optional
        Seeds per replicate, at least ``n_models`` (default ``n_models``: replicate 3 of a pair is
        ``[6, 7]``).

    Returns
    -------
    list of int
        ``n_models`` distinct seeds.
    """
    if n_models < 1:
        raise ValueError(f"n_models must be at least 1, got {n_models}")
    if isinstance(replicate, bool) or int(replicate) != replicate or replicate < 0:
        raise ValueError(f"seed (the replicate) must be an integer >= 0, got {replicate!r}")
    stride = n_models if stride is None else stride
    if stride < n_models:
        raise ValueError(f"stride must be at least n_models ({n_models}), got {stride}")
    return [stride * int(replicate) + i for i in range(n_models)]


def book_models(scale: str, seed: int = 0) -> dict:
    """Every model family the book uses at ``scale``, for replicate ``seed``.

    The zoo step (``python -m lib.zoo train``) and the zoo chapter train all of them; later chapters
    ask for the same entries (:func:`load_family`, :func:`load_pairs`), so each model is trained once.
    The families are the data of :func:`lib.settings.model_families`.

    Parameters
    ----------
    scale : str
        A key of :data:`lib.settings.SCALES`.
    seed : int
        The replicate (the chapters' ``seed`` parameter, >= 0).

    Returns
    -------
    dict
        ``{name: dict(arch, recipe, seeds, paper_acc)}``: ``arch`` for :func:`lib.models.build`, a
        :class:`lib.train.Recipe`, the model seeds (:func:`replicate_seeds`, with one stride for all
        families: the most models any family uses at this scale) and the clean accuracy the paper
        reports, ``(mean, std)`` in percent (``None`` where it reports none).
    """
    families = model_families(scale_settings(scale))
    stride = max(f["models"] for f in families.values())
    out = {}
    for name, f in families.items():
        out[name] = dict(arch=f["arch"], recipe=recipe_for_scale(scale, **f["recipe"]),
                         seeds=replicate_seeds(f["models"], seed, stride), paper_acc=f["paper_acc"])
    return out


def load_family(family: str, scale: str, seed: int = 0, n_models: int | None = None, *, data: Dataset | None = None,
                device=None, progress: bool = False) -> list[torch.nn.Module]:
    """The trained models of one of the book's families, from the zoo (trained now if missing).

    Parameters
    ----------
    family : str
        A key of :func:`book_models` (``"myrtle"``, ``"resnet20"``, ``"myrtle_nobn"``, ...).
    scale : str
        A key of :data:`lib.settings.SCALES`.
    seed : int
        The replicate (the chapters' ``seed`` parameter).
    n_models : int, optional
        Only the first ``n_models`` (default: all; the others are neither loaded nor trained).
    data : lib.data.Dataset, optional
        Default :func:`lib.data.load_data`.
    device : optional
        For :func:`lib.config.get_device`.
    progress : bool
        Show training progress for a model that is not cached yet.

    Returns
    -------
    list of torch.nn.Module
        In eval mode, in the order of the family's seeds; each carries ``zoo_meta`` (with its
        ``seed`` and ``test_acc``, a fraction) and ``zoo_key`` (:func:`model_key`).
    """
    book = book_models(scale, seed)
    check_choice("family", family, book)
    entry, data = book[family], data or load_data()
    return [get(entry["arch"], entry["recipe"], s, data=data, device=device, progress=progress)
            for s in entry["seeds"][:n_models]]


def load_pairs(family: str, scale: str, seed: int = 0, n_pairs: int | None = None, **kwargs) -> list[tuple]:
    """Pairs of models of one family trained from different seeds: what Sections 4 and 5 compare.

    Pair ``i`` holds the family's models ``2i`` and ``2i + 1`` of the replicate
    (:func:`replicate_seeds`).

    Parameters
    ----------
    family, scale, seed
        As for :func:`load_family`.
    n_pairs : int, optional
        How many pairs (default: all the family has at this scale, ``lib.settings.Zoo.n_pairs`` for
        the paired families).
    **kwargs
        ``data``, ``device``, ``progress``, as for :func:`load_family`.

    Returns
    -------
    list of (torch.nn.Module, torch.nn.Module)

    Raises
    ------
    ValueError
        If ``n_pairs`` is below 1 or above the number of pairs the family has.
    """
    book = book_models(scale, seed)
    check_choice("family", family, book)
    available = len(book[family]["seeds"]) // 2
    n_pairs = available if n_pairs is None else n_pairs
    if not 1 <= n_pairs <= available:
        raise ValueError(f"n_pairs must be between 1 and {available} (the pairs of family {family!r} at scale "
                         f"{scale!r}), got {n_pairs!r}")
    models = load_family(family, scale, seed, 2 * n_pairs, **kwargs)
    return [(models[2 * i], models[2 * i + 1]) for i in range(n_pairs)]


def book_plan(scale: str, seed: int = 0, families=None, data: Dataset | None = None, root=None) -> list[dict]:
    """The models of :func:`book_models` in training order, each model once.

    Parameters
    ----------
    scale : str
        A key of :data:`lib.settings.SCALES`.
    seed : int
        The replicate.
    families : list of str, optional
        Only these families (default: all).
    data : lib.data.Dataset, optional
        Default :func:`lib.data.load_data`.
    root : path-like, optional
        The zoo folder (:func:`lib.zoo.zoo_dir`).

    Returns
    -------
    list of dict
        ``family``, ``arch``, ``recipe``, ``seed``, ``key`` (:func:`lib.zoo.model_key`) and
        ``cached`` (whether the zoo already holds the model). Families may share a model; it is
        listed under the first.
    """
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


def throughput(model: nn.Module, batch_size: int = 512, precision: str = "bulk", steps: int = 3,
               device=None, image_size: int = 32) -> float:
    """Measured training throughput of ``model``, in images per second.

    Times ``steps`` optimiser steps (SGD, cross-entropy on random inputs of shape
    ``(batch_size, 3, image_size, image_size)``) after one warm-up step, with the training loop's
    memory format and autocast. A short calibration for time budgets
    (:func:`estimate_seconds`); the model's weights change.

    Parameters
    ----------
    model : torch.nn.Module
    batch_size, steps, image_size : int
    precision : str
        A :data:`lib.config.PRECISIONS` mode.
    device : optional
        For :func:`lib.config.get_device`.

    Returns
    -------
    float
        ``batch_size`` divided by the fastest step's seconds (images per second).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be at least 1, got steps={steps}, "
                         f"batch_size={batch_size}")
    device = get_device(device)
    model.to(device).to(memory_format=torch.channels_last).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), generator=gen).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    best = float("inf")
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with autocast(device, precision):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i > 0:
            best = min(best, time.perf_counter() - t0)
    return batch_size / best


def estimate_seconds(r: Recipe, images_per_second: float) -> float:
    """The estimated training time of one model.

    ``epochs`` passes over the training images at ``images_per_second``, plus one evaluation of the
    test images per epoch, counted at three times that throughput (a forward pass only).

    Parameters
    ----------
    r : lib.train.Recipe
    images_per_second : float
        A measured training throughput (:func:`throughput`).

    Returns
    -------
    float
        Seconds.
    """
    n_train = r.n_train or 50_000
    n_test = r.n_test or 10_000
    return r.epochs * (n_train + n_test / 3) / images_per_second


def estimate_book_seconds(scale: str, seed: int = 0, steps: int = 3, device=None) -> dict:
    """The estimated training time of every model of :func:`book_models` at ``scale``.

    From a short calibration of each distinct architecture (:func:`throughput`).

    Parameters
    ----------
    scale : str
    seed : int
        The replicate.
    steps : int
        Timed optimiser steps per calibration.
    device : optional
        For :func:`lib.config.get_device`.

    Returns
    -------
    dict
        ``{family: dict(models, images_per_second, seconds)}``, ``seconds`` for all the family's
        models; a model shared between families is counted once, under the first family.
    """
    out, seen, speed = {}, set(), {}
    for name, entry in book_models(scale, seed).items():
        r = entry["recipe"]
        # The zoo's own key (without the data, which every model shares) decides what is shared.
        keys = {model_key(entry["arch"], r, s, "") for s in entry["seeds"]} - seen
        seen |= keys
        cal = json.dumps([canonical_arch(entry["arch"]), r.batch_size, r.precision], sort_keys=True)
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
    and skips every model already finished.

    Parameters
    ----------
    scale, seed, families, data, root
        As for :func:`book_plan`.
    device : optional
        For :func:`lib.config.get_device`.

    Returns
    -------
    list of dict
        The metadata (``zoo_meta``) of every planned model.
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
    """The command line ``python -m lib.zoo train [--scale S] [--seed K] [--families ...]``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status, 0; see :func:`train_book`.
    """
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
