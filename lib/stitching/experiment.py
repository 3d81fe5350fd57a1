"""The stitching experiment: train a stitching layer on A's cached state, every variant of a
(pair, layer) from one shared front, memoised on disk.

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
from torch.nn import functional as F

from ..config import PRECISIONS, autocast, check_choice, get_device, scale_settings
from ..data import subset
from ..train import evaluate
from ..zoo import fingerprint, memo
from .matching import least_squares, matching_from_moments, matching_matrix
from .surgery import Stitched, channels_at, feature_moments, front_features, stitch

__all__ = ["INITS", "VARIANT_HELP", "StitchSettings", "settings_for_scale", "train_stitch", "parse_variant",
           "stitch_experiment", "cached_experiment"]

INITS = ("closed_form", "random")
"""tuple of str: the starts of a stitching layer: at a closed-form optimum, or the paper's random one."""


@dataclasses.dataclass(frozen=True)
class StitchSettings:
    """How a stitching layer is trained. The defaults are the ``cpu``-scale protocol; the authors'
    protocol (implementation notes) is :meth:`paper`.

    Parameters
    ----------
    optimizer : str
        ``"adam"`` or ``"sgd"`` (plain, the authors').
    lr : float
        Peak learning rate per step.
    lr_decay : bool
        Decay linearly to 0 over all steps (the last epochs settle); False: constant (paper).
    momentum : float
        SGD momentum (authors: none).
    weight_decay : float
        L2 coefficient per step; for grelu on D only.
    epochs : int
        Passes over the stitching images (paper: 20); 0 evaluates the start.
    batch_size : int
        Images per step (authors: 32, 3-4x slower per image on CPUs).
    alpha : float
        Weight of the vertex penalty ``-alpha * ||P||_F`` (grelu).
    sinkhorn_rounds : int
        Row/column normalisations after every step (grelu).
    p_only_fraction : float
        Fraction of the epochs that train P alone (grelu).
    bn_adapt : bool
        B's BatchNorms after the stitch in train mode (running statistics adapt).
    init : str
        Default start of every variant: ``"closed_form"`` or ``"random"`` (paper).
    precision : str
        ``lib.config`` precision of training and evaluation (``"float32"``: exact).
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    lr_decay: bool = True
    momentum: float = 0.0
    weight_decay: float = 1e-4
    epochs: int = 4
    batch_size: int = 128
    alpha: float = 0.1
    sinkhorn_rounds: int = 16
    p_only_fraction: float = 0.5
    bn_adapt: bool = True
    init: str = "closed_form"
    precision: str = "bulk"

    @classmethod
    def paper(cls) -> "StitchSettings":
        """The authors' protocol: plain SGD, lr 1e-3, 20 epochs, batch 32, random starts."""
        return cls(optimizer="sgd", lr_decay=False, epochs=20, batch_size=32, init="random")


def settings_for_scale(scale: str, **overrides) -> StitchSettings:
    """The stitching protocol of a scale.

    Parameters
    ----------
    scale : str
        A key of ``lib.config.SCALES``: the paper's protocol at ``"paper"``, else the default
        :class:`StitchSettings` with the scale's ``stitch_epochs``.
    **overrides
        Fields to replace.

    Returns
    -------
    StitchSettings
    """
    s = scale_settings(scale)
    base = StitchSettings.paper() if scale == "paper" else StitchSettings(epochs=s.stitch_epochs)
    return dataclasses.replace(base, **overrides)


def _check_settings(settings: StitchSettings) -> None:
    check_choice("optimizer", settings.optimizer, ("sgd", "adam"))
    check_choice("init", settings.init, INITS)
    check_choice("precision", settings.precision, PRECISIONS)
    if not isinstance(settings.epochs, int) or settings.epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0 (0 evaluates the start only), got {settings.epochs!r}")
    if settings.batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {settings.batch_size!r}")


@torch.no_grad()
def _accuracy(model: Stitched, state: tuple, y: torch.Tensor, batch_size: int = 1000,
              precision: str = "bulk") -> float:
    dev = next(model.stitch.parameters()).device
    was = model.training
    model.eval()
    model.stitch.hard = model.stitch.kind == "grelu"
    correct = 0
    try:
        with autocast(dev, precision):
            for s in range(0, len(y), batch_size):
                out = model.tail(tuple(t[s:s + batch_size].to(dev) for t in state))
                correct += (out.argmax(1).cpu() == y[s:s + batch_size].cpu()).sum().item()
    finally:
        model.stitch.hard = False
        model.train(was)
    return correct / max(1, len(y))


def _check_state(name: str, state: tuple, y: torch.Tensor) -> None:
    counts = sorted({len(t) for t in state})
    if counts != [len(y)]:
        raise ValueError(f"{name} holds fronts of {', '.join(map(str, counts))} images but {len(y)} labels; "
                         f"accepted: one label per front (equal counts)")


# BatchNorm running statistics (momentum 0.1) forget all but the last ~20 batches, so adapting them
# on more batches than this before an evaluation changes nothing but the cost.
_ADAPT_BATCHES = 30


def train_stitch(model: Stitched, train_state: tuple, y_train: torch.Tensor, test_state: tuple,
                 y_test: torch.Tensor, settings: StitchSettings = StitchSettings(), seed: int = 0) -> dict:
    """Train ``model.stitch`` alone on A's precomputed state; evaluate on the test state every epoch.

    grelu: the first ``p_only_fraction`` of the epochs leave D fixed; after every step P is clipped
    and Sinkhorn-projected and D clipped; evaluation rounds P with the Hungarian algorithm. With
    ``bn_adapt`` B's BatchNorm statistics are re-estimated on the training fronts before the start
    is evaluated.

    Parameters
    ----------
    model : Stitched
        The stitched model, its stitching layer already at its start.
    train_state, test_state : tuple of torch.Tensor
        A's fronts (``lib.stitching.front_features``), each ``(n, C, h, w)``.
    y_train, y_test : torch.Tensor
        Labels ``(n,)``, one per front.
    settings : StitchSettings
        The protocol; ``settings.epochs = 0`` evaluates the start only. With ``lr_decay`` the
        learning rate falls linearly from ``lr`` to 0 over all steps.
    seed : int
        Seed of the batch order.

    Returns
    -------
    dict
        ``history`` (one row per epoch, the start as epoch 0: ``epoch``, ``loss`` (mean training
        cross-entropy, nats), ``test_acc`` (fraction)), ``best_acc`` (best test accuracy over the
        rows, the authors' choice, a fraction), ``final_acc`` (last row), ``matrix`` (final ``(C, C)``
        map, rounded for grelu) and ``seconds``.
    """
    _check_settings(settings)
    _check_state("train_state", train_state, y_train)
    _check_state("test_state", test_state, y_test)
    layer = model.stitch
    dev = next(layer.parameters()).device
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    if layer.kind == "grelu":
        groups = [dict(params=[layer.p], weight_decay=0.0),
                  dict(params=[layer.d], weight_decay=settings.weight_decay)]
    else:
        groups = [dict(params=list(layer.parameters()), weight_decay=settings.weight_decay)]
    opt = (torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum)
           if settings.optimizer == "sgd" else torch.optim.Adam(groups, lr=settings.lr))
    p_only = round(settings.epochs * settings.p_only_fraction) if layer.kind == "grelu" else 0
    total = max(1, settings.epochs * -(-len(y_train) // settings.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / total if settings.lr_decay else 1.0)
    if settings.bn_adapt:
        model.train(True)
        idx_all = torch.randperm(len(y_train), generator=gen).split(settings.batch_size)[:_ADAPT_BATCHES]
        with torch.no_grad(), autocast(dev, settings.precision):
            for idx in idx_all:
                model.tail(tuple(t[idx].to(dev) for t in train_state))
    evaluate_ = lambda: _accuracy(model, test_state, y_test, precision=settings.precision)   # noqa: E731
    history = [dict(epoch=0, loss=float("nan"), test_acc=evaluate_())]
    for epoch in range(settings.epochs):
        model.train(settings.bn_adapt)
        tot, seen = 0.0, 0
        for idx in torch.randperm(len(y_train), generator=gen).split(settings.batch_size):
            with autocast(dev, settings.precision):
                out = model.tail(tuple(t[idx].to(dev) for t in train_state))
                loss = F.cross_entropy(out.float(), y_train[idx].to(dev))
            tot, seen = tot + loss.item() * len(idx), seen + len(idx)
            if layer.kind == "grelu":
                # The vertex penalty: the Frobenius norm is largest (sqrt C) exactly at permutations.
                loss = loss - settings.alpha * layer.p.norm()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if epoch < p_only:
                layer.d.grad = None
            opt.step()
            sched.step()
            layer.project(settings.sinkhorn_rounds)
        history.append(dict(epoch=epoch + 1, loss=tot / seen, test_acc=evaluate_()))
    model.eval()
    layer.hard = layer.kind == "grelu"
    final = layer.matrix().detach().cpu()
    layer.hard = False
    return dict(best_acc=max(h["test_acc"] for h in history), final_acc=history[-1]["test_acc"],
                history=history, matrix=final, seconds=time.perf_counter() - t0)


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


def stitch_experiment(model_a, model_b, layer: str, variants, data, n_train: int | None = 10000,
                      n_test: int | None = 2000, settings: StitchSettings = StitchSettings(), seed: int = 0,
                      feature_dtype=torch.float16, device=None) -> dict:
    """Stitch A into B at ``layer`` with each of ``variants``, sharing A's precomputed front.

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
        all). The defaults are the ``cpu``-scale protocol.
    settings : StitchSettings
        The training protocol (defaults: ``cpu`` scale).
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
        fraction), ``final_penalty``, ``history`` (per epoch, the start as epoch 0, each row with its
        ``penalty``), ``matrix``, ``seconds``, ``kind``, ``rank``, ``init``, and for
        ``grelu``/``matching`` closed-form starts ``perm``/``scales``.
    """
    variants = [variants] if isinstance(variants, str) else list(variants)
    _check_settings(settings)
    C = channels_at(model_a, layer)
    parsed = {v: parse_variant(v, C, settings.init) for v in variants}
    device = get_device(device)
    x_tr, y_tr = subset(data.x_train, data.y_train, n_train)
    x_te, y_te = subset(data.x_test, data.y_test, n_test)
    clean = [evaluate(m, x_te, y_te, device, precision=settings.precision) for m in (model_a, model_b)]
    out = dict(clean=clean, layer=layer, n_train=len(y_tr), n_test=len(y_te), variants={})
    tm = time.perf_counter()
    moments, match = None, None
    if any(init != "random" for _, _, init in parsed.values()):
        moments, train_front = feature_moments(model_a, model_b, layer, x_tr, device=device, front_dtype=feature_dtype)
    else:
        train_front = front_features(model_a, layer, x_tr, dtype=feature_dtype, device=device)
    fronts = dict(train=train_front, test=front_features(model_a, layer, x_te, dtype=feature_dtype, device=device))
    out["moments_seconds"] = time.perf_counter() - tm
    for i, name in enumerate(variants):
        kind, rank, init = parsed[name]
        t0 = time.perf_counter()
        closed = init != "random"
        model = stitch(model_a, model_b, layer, kind, rank, generator=torch.Generator().manual_seed(seed + i),
                       bias=closed and kind != "grelu")
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
        row.update(train_stitch(model, fronts["train"], y_tr, fronts["test"], y_te, s, seed))
        row["seconds"] = time.perf_counter() - t0
        mean_clean = sum(clean) / 2
        for h in row["history"]:
            h["penalty"] = mean_clean - h["test_acc"]
        row["penalty"] = mean_clean - row["best_acc"]
        row["final_penalty"] = mean_clean - row["final_acc"]
        row.update(kind=kind, rank=rank, init=init)
        out["variants"][name] = row
    return out


def cached_experiment(model_a, model_b, layer: str, variants, data, n_train: int | None = 10000,
                      n_test: int | None = 2000, settings: StitchSettings = StitchSettings(), seed: int = 0,
                      feature_dtype=torch.float16) -> dict:
    """:func:`stitch_experiment`, memoised on disk (``lib.zoo.memo``) so a warm rebuild recomputes nothing.

    The memo key holds both models' weight fingerprints (``lib.zoo.fingerprint``), the data, the
    layer, the variants, the image counts, every stitching setting, the seed and the dtype of the
    stored fronts (float16 saves memory; exactness checks such as Theorem 4.2 want float32).

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
    config = dict(a=fingerprint(model_a), b=fingerprint(model_b), data=data.identity, layer=layer,
                  variants=variants, n_train=n_train, n_test=n_test, settings=dataclasses.asdict(settings), seed=seed,
                  version=2)
    if feature_dtype != torch.float16:
        config["feature_dtype"] = str(feature_dtype)
    return memo("stitching", config, lambda: stitch_experiment(
        model_a, model_b, layer, variants, data, n_train, n_test, settings, seed, feature_dtype=feature_dtype))
