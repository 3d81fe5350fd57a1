"""The stitching experiment: every variant of a (pair, layer) trained from one shared front of A,
memoised on disk.

Every layer can start where the optimum of a closed-form problem is (``init="closed_form"``, the
default): the full layer at the least-squares map of B's features on A's, a rank-r layer at the
reduced-rank regression, and the G_ReLU layer at activation matching, all from one streaming pass
(``lib.stitching.feature_moments``). ``init="random"`` is the paper's start (Kaiming-uniform full and
rank layers without bias, Sinkhorn noise for G_ReLU).
"""
from __future__ import annotations

import dataclasses
import time

import torch

from ..config import check_choice, get_device
from ..data import subset
from ..train import evaluate
from ..cache import fingerprint, memo
from ..settings import StitchSettings
from .matching import least_squares, matching_from_moments, matching_matrix
from .surgery import channels_at, feature_moments, front_features, stitch
from .training import INITS, check_settings, train_stitch

__all__ = ["VARIANT_HELP", "parse_variant", "stitch_experiment", "experiment_config", "cached_experiment"]


VARIANT_HELP = ("'full', 'rank<r>' (r in 1..C, e.g. 'rank1'), 'grelu', each optionally with the suffix "
                "'_random' (the paper's random start), and 'matching' (activation matching, not trained)")
"""str: the accepted variant names, as error messages state them."""


def parse_variant(name: str, channels: int, init: str = "closed_form") -> tuple:
    """Read a variant name (see :func:`stitch_experiment`).

    Parameters
    ----------
    name : str
        E.g. ``"full"``, ``"rank4_random"``, ``"matching"``.
    channels : int
        C, the bound of a rank.
    init : str
        The start when the name has no ``_random`` suffix (:data:`INITS`).

    Returns
    -------
    tuple
        ``(kind, rank, init)``: the :class:`StitchLayer` kind, the rank (None unless ``"rank"``) and
        the start (``"closed_form"``, ``"random"`` or ``"matching"``).
    """
    check_choice("init", init, INITS)
    base, _, suffix = str(name).partition("_")
    if suffix not in ("", "random") or (suffix and base == "matching"):
        raise ValueError(f"unknown variant {name!r}; accepted: {VARIANT_HELP}")
    start = "random" if suffix else init
    if base in ("full", "grelu"):
        return base, None, start
    if base == "matching":
        return "grelu", None, "matching"
    if base.startswith("rank") and base[4:].isdigit():
        r = int(base[4:])
        if not 1 <= r <= channels:
            raise ValueError(f"variant {name!r}: rank must be in 1..{channels} (the layer's channels); "
                             f"accepted: {VARIANT_HELP}")
        return "rank", r, start
    raise ValueError(f"unknown variant {name!r}; accepted: {VARIANT_HELP}")


def stitch_experiment(model_a, model_b, layer: str, variants, data, n_train: int | None,
                      n_test: int | None, settings: StitchSettings, seed: int = 0,
                      feature_dtype=torch.float16, device=None) -> dict:
    """Stitch A into B at ``layer`` with each of ``variants``, sharing A's front.

    With ``settings.fronts == "cached"`` A's training front is computed once (as ``feature_dtype``);
    with ``"augmented"`` it is computed per batch from augmented images (``lib.stitching.train_stitch``).
    A's test front is always computed once, on clean images.

    Parameters
    ----------
    model_a, model_b : nn.Module
        Two models of the same architecture (A frozen; B copied per variant).
    layer : str
        A hidden layer of both (``lib.models.hidden_layers``).
    variants : str or list of str
        Names among ``full``, ``rank<r>`` (``1 <= r <= C``), ``grelu`` (Birkhoff optimiser), each
        optionally suffixed ``_random`` (the paper's random start instead of ``settings.init``), and
        ``matching`` (activation matching, evaluated untrained). Closed-form starts: ``full`` at
        least squares with a bias, ``rank<r>`` at reduced-rank regression with a bias, ``grelu`` at
        activation matching (``lib.stitching.least_squares``, ``matching_from_moments``), all from
        one streaming pass over the training images (``lib.stitching.feature_moments``).
    data : lib.data.Dataset
        ``n_train`` training and ``n_test`` test images are taken with ``lib.data.subset`` (None:
        all); a scale's are ``lib.settings.Scale.stitching``'s ``images`` and ``eval_images``.
    settings : StitchSettings
        The training protocol (a scale's: ``lib.stitching.settings_for_scale``).
    seed : int
        Seed of the random starts (``seed + i`` for the i-th variant) and of the batch order.
    feature_dtype : torch.dtype
        Storage of A's fronts (float16 halves the memory of early conv layers).
    device : str or torch.device, optional
        Where to compute.

    Returns
    -------
    dict
        ``clean`` (A's and B's test accuracies, fractions), ``layer``, ``n_train``, ``n_test``,
        ``moments_seconds`` (A's fronts and the feature sums, one pass) and ``variants[name]``:
        ``best_acc``, ``final_acc`` (fractions), ``penalty`` (eq. 4.3 with the best accuracy, a
        fraction), ``final_penalty``, ``history`` (per evaluation, the start as epoch 0, each row with its
        ``penalty``), ``matrix``, ``seconds``, ``kind``, ``rank``, ``init``, and for
        ``grelu``/``matching`` closed-form starts ``perm``/``scales``.
    """
    variants = [variants] if isinstance(variants, str) else list(variants)
    check_settings(settings)
    C = channels_at(model_a, layer)
    parsed = {v: parse_variant(v, C, settings.init) for v in variants}
    device = get_device(device)
    x_tr, y_tr = subset(data.x_train, data.y_train, n_train)
    x_te, y_te = subset(data.x_test, data.y_test, n_test)
    clean = [evaluate(m, x_te, y_te, device, precision=settings.precision) for m in (model_a, model_b)]
    out = dict(clean=clean, layer=layer, n_train=len(y_tr), n_test=len(y_te), variants={})
    tm = time.perf_counter()
    moments, match, train_front = None, None, None
    cached = settings.fronts == "cached"
    if any(init != "random" for _, _, init in parsed.values()):
        moments = feature_moments(model_a, model_b, layer, x_tr, device=device,
                                  front_dtype=feature_dtype if cached else None)
        moments, train_front = moments if cached else (moments, None)
    elif cached:
        train_front = front_features(model_a, layer, x_tr, dtype=feature_dtype, device=device)
    fronts = dict(train=train_front, test=front_features(model_a, layer, x_te, dtype=feature_dtype, device=device))
    out["moments_seconds"] = time.perf_counter() - tm
    for i, name in enumerate(variants):
        kind, rank, init = parsed[name]
        t0 = time.perf_counter()
        closed = init != "random"
        model = stitch(model_a, model_b, layer, kind, rank, generator=torch.Generator().manual_seed(seed + i),
                       bias=(closed or settings.random_bias) and kind != "grelu")
        row = {}
        if closed and kind == "grelu":
            if match is None:
                match = matching_from_moments(moments)
            perm, scales = match
            model.stitch.set_matrix(matching_matrix(perm, scales).to(device))
            row.update(perm=perm.cpu(), scales=scales.cpu())
        elif closed:
            W, b = least_squares(moments, rank)
            model.stitch.set_affine(W.float().to(device), b.float().to(device))
        s = dataclasses.replace(settings, epochs=0) if init == "matching" else settings
        if init == "random":
            # A random P has nothing to keep fixed: the paper's start goes with the paper's optimiser.
            s = dataclasses.replace(s, grelu_p="birkhoff")
        row.update(train_stitch(model, fronts["train"], y_tr, fronts["test"], y_te, s, seed,
                                train_images=None if cached else x_tr))
        row["seconds"] = time.perf_counter() - t0
        mean_clean = sum(clean) / 2
        for h in row["history"]:
            h["penalty"] = mean_clean - h["test_acc"]
        row["penalty"] = mean_clean - row["best_acc"]
        row["final_penalty"] = mean_clean - row["final_acc"]
        row.update(kind=kind, rank=rank, init=init)
        out["variants"][name] = row
    return out


def experiment_config(model_a, model_b, layer: str, variants, data, n_train: int | None,
                      n_test: int | None, settings: StitchSettings, seed: int = 0,
                      feature_dtype=torch.float16) -> dict:
    """What :func:`cached_experiment`'s memo key is a hash of (``lib.cache.memo_key``).

    Both models' weight fingerprints (``lib.cache.fingerprint``), the data, the layer, the variants,
    the image counts, every field of the stitching settings (``dataclasses.asdict``), the seed and
    the dtype of the stored fronts (the key's version is ``lib.cache.MEMO_VERSION``).

    Parameters
    ----------
    model_a, model_b, layer, variants, data, n_train, n_test, settings, seed, feature_dtype
        As for :func:`stitch_experiment`.

    Returns
    -------
    dict
        JSON-serialisable.
    """
    variants = [variants] if isinstance(variants, str) else list(variants)
    config = dict(a=fingerprint(model_a), b=fingerprint(model_b), data=data.identity, layer=layer,
                  variants=variants, n_train=n_train, n_test=n_test, settings=dataclasses.asdict(settings),
                  seed=seed, feature_dtype=str(feature_dtype))
    return config


def cached_experiment(model_a, model_b, layer: str, variants, data, n_train: int | None,
                      n_test: int | None, settings: StitchSettings, seed: int = 0,
                      feature_dtype=torch.float16) -> dict:
    """:func:`stitch_experiment`, memoised on disk (``lib.cache.memo``) so a warm rebuild recomputes nothing.

    The memo key is a hash of :func:`experiment_config` (float16 fronts save memory; exactness
    checks such as Theorem 4.2 want float32).

    Parameters
    ----------
    model_a, model_b, layer, variants, data, n_train, n_test, settings, seed, feature_dtype
        As for :func:`stitch_experiment` (on the default device).

    Returns
    -------
    dict
        :func:`stitch_experiment`'s result.
    """
    variants = [variants] if isinstance(variants, str) else list(variants)
    config = experiment_config(model_a, model_b, layer, variants, data, n_train, n_test, settings, seed, feature_dtype)
    return memo("stitching", config, lambda: stitch_experiment(
        model_a, model_b, layer, variants, data, n_train, n_test, settings, seed, feature_dtype=feature_dtype))
