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
from typing import Any

import torch

from ..cache import fingerprint, memo
from ..config import check_choice, get_device
from ..data import subset
from ..settings import StitchSettings
from ..train import evaluate
from .matching import least_squares, matching_from_moments, matching_matrix
from .surgery import channels_at, feature_moments, front_features, stitch
from .training import INITS, check_settings, train_stitch

__all__ = ["VARIANT_HELP", "parse_variant", "StitchData", "stitch_experiment", "experiment_config",
           "cached_experiment"]


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


@dataclasses.dataclass(frozen=True, eq=False)
class StitchData:
    """The images of a stitching experiment, and how A's fronts on them are stored.

    Parameters
    ----------
    dataset : lib.data.Dataset
        The images and labels.
    n_train, n_test : int or None
        Training and test images, taken with ``lib.data.subset`` (None: all); a scale's are
        ``lib.settings.Scale.stitching``'s ``images`` and ``eval_images``.
    feature_dtype : torch.dtype
        Storage of A's fronts (float16 halves the memory of early conv layers; exactness checks
        such as Theorem 4.2 want float32).
    """

    dataset: Any
    n_train: int | None
    n_test: int | None
    feature_dtype: torch.dtype = torch.float16


def _variant_settings(settings: StitchSettings, init: str) -> StitchSettings:
    # Activation matching is evaluated untrained; a random P has nothing to keep fixed, so the
    # paper's start goes with the paper's optimiser.
    s = dataclasses.replace(settings, epochs=0) if init == "matching" else settings
    return dataclasses.replace(s, grelu_p="birkhoff") if init == "random" else s


class _Experiment:
    """One :func:`stitch_experiment`: its images, A's shared fronts and the closed-form sums."""

    def __init__(self, model_a, model_b, layer: str, data: StitchData, settings: StitchSettings,
                 seed: int, device):
        self.a, self.b, self.layer = model_a, model_b, layer
        self.settings, self.seed = settings, seed
        self.device, self.dtype = device, data.feature_dtype
        ds = data.dataset
        self.x_tr, self.y_tr = subset(ds.x_train, ds.y_train, data.n_train)
        self.x_te, self.y_te = subset(ds.x_test, ds.y_test, data.n_test)
        self.cached = settings.fronts == "cached"
        self.moments, self.match, self.fronts = None, None, None

    def clean(self) -> list:
        """A's and B's test accuracies (fractions)."""
        return [evaluate(m, self.x_te, self.y_te, self.device, precision=self.settings.precision)
                for m in (self.a, self.b)]

    def prepare(self, *, moments: bool) -> None:
        """A's fronts (the training one only when cached) and, with ``moments``, the feature sums
        of the closed-form starts, from one pass over the training images."""
        train = None
        if moments:
            dtype = self.dtype if self.cached else None
            sums = feature_moments(self.a, self.b, self.layer, self.x_tr, device=self.device,
                                   front_dtype=dtype)
            self.moments, train = sums if self.cached else (sums, None)
        elif self.cached:
            train = front_features(self.a, self.layer, self.x_tr, dtype=self.dtype,
                                   device=self.device)
        test = front_features(self.a, self.layer, self.x_te, dtype=self.dtype, device=self.device)
        self.fronts = dict(train=train, test=test)

    def start(self, model, kind: str, rank) -> dict:
        """Put ``model``'s stitching layer at its closed-form start; returns the matching's P and
        D for grelu."""
        if kind != "grelu":
            W, b = least_squares(self.moments, rank)
            model.stitch.set_affine(W.float().to(self.device), b.float().to(self.device))
            return {}
        if self.match is None:
            self.match = matching_from_moments(self.moments)
        perm, scales = self.match
        model.stitch.set_matrix(matching_matrix(perm, scales).to(self.device))
        return dict(perm=perm.cpu(), scales=scales.cpu())

    def variant(self, i: int, parsed: tuple, mean_clean: float) -> dict:
        """Variant ``i`` (``parsed``: kind, rank, init) stitched, started, trained and scored."""
        kind, rank, init = parsed
        t0 = time.perf_counter()
        closed = init != "random"
        model = stitch(self.a, self.b, self.layer, kind, rank,
                       generator=torch.Generator().manual_seed(self.seed + i),
                       bias=(closed or self.settings.random_bias) and kind != "grelu")
        row = self.start(model, kind, rank) if closed else {}
        fronts = self.fronts
        row.update(train_stitch(model, fronts["train"], self.y_tr, fronts["test"], self.y_te,
                                _variant_settings(self.settings, init), self.seed,
                                train_images=None if self.cached else self.x_tr))
        row["seconds"] = time.perf_counter() - t0
        for h in row["history"]:
            h["penalty"] = mean_clean - h["test_acc"]
        row["penalty"] = mean_clean - row["best_acc"]
        row["final_penalty"] = mean_clean - row["final_acc"]
        row.update(kind=kind, rank=rank, init=init)
        return row


def stitch_experiment(model_a, model_b, layer: str, variants, data: StitchData,
                      settings: StitchSettings, *, seed: int = 0,
                      device=None) -> dict:
    """Stitch A into B at ``layer`` with each of ``variants``, sharing A's front.

    With ``settings.fronts == "cached"`` A's training front is computed once (as
    ``data.feature_dtype``); with ``"augmented"`` it is computed per batch from augmented images
    (``lib.stitching.train_stitch``). A's test front is always computed once, on clean images.

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
    data : StitchData
        The dataset, how many of its training and test images, and the fronts' dtype.
    settings : StitchSettings
        The training protocol (a scale's: ``lib.stitching.settings_for_scale``).
    seed : int
        Seed of the random starts (``seed + i`` for the i-th variant) and of the batch order.
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
    run = _Experiment(model_a, model_b, layer, data, settings, seed, get_device(device))
    clean = run.clean()
    out = dict(clean=clean, layer=layer, n_train=len(run.y_tr), n_test=len(run.y_te), variants={})
    tm = time.perf_counter()
    run.prepare(moments=any(init != "random" for _, _, init in parsed.values()))
    out["moments_seconds"] = time.perf_counter() - tm
    for i, name in enumerate(variants):
        out["variants"][name] = run.variant(i, parsed[name], sum(clean) / 2)
    return out


def experiment_config(model_a, model_b, layer: str, variants, data: StitchData,
                      settings: StitchSettings, *, seed: int = 0) -> dict:
    """What :func:`cached_experiment`'s memo key is a hash of (``lib.cache.memo_key``).

    Both models' weight fingerprints (``lib.cache.fingerprint``), the data, the layer, the variants,
    the image counts, every field of the stitching settings (``dataclasses.asdict``), the seed and
    the dtype of the stored fronts (the key's version is ``lib.cache.MEMO_VERSION``).

    Parameters
    ----------
    model_a, model_b, layer, variants, data, settings, seed
        As for :func:`stitch_experiment`.

    Returns
    -------
    dict
        JSON-serialisable.
    """
    variants = [variants] if isinstance(variants, str) else list(variants)
    return dict(a=fingerprint(model_a), b=fingerprint(model_b), data=data.dataset.identity,
                layer=layer, variants=variants, n_train=data.n_train, n_test=data.n_test,
                settings=dataclasses.asdict(settings), seed=seed,
                feature_dtype=str(data.feature_dtype))


def cached_experiment(model_a, model_b, layer: str, variants, data: StitchData,
                      settings: StitchSettings, *, seed: int = 0) -> dict:
    """:func:`stitch_experiment`, memoised on disk (``lib.cache.memo``) so a warm rebuild recomputes nothing.

    The memo key is a hash of :func:`experiment_config`.

    Parameters
    ----------
    model_a, model_b, layer, variants, data, settings, seed
        As for :func:`stitch_experiment` (on the default device).

    Returns
    -------
    dict
        :func:`stitch_experiment`'s result.
    """
    variants = [variants] if isinstance(variants, str) else list(variants)
    config = experiment_config(model_a, model_b, layer, variants, data, settings, seed=seed)
    return memo("stitching", config, lambda: stitch_experiment(
        model_a, model_b, layer, variants, data, settings, seed=seed))
