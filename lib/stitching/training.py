"""Training a stitching layer on A's state under a protocol (``lib.settings.StitchSettings``).

A's state is either cached (computed once on clean images) or computed per batch from augmented
images (the authors' data loader); before each evaluation B's BatchNorm statistics may be re-estimated
with the evaluated layer (the authors' ``--bn_epoch``, :func:`bn_epoch_stats`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time

import torch
from torch.nn import functional as F

from ..config import PRECISIONS, autocast, check_choice
from ..data import augment, to_input
from ..settings import RECIPES, StitchSettings, scale_settings
from .curves import check_evals_per_epoch, eval_steps
from .surgery import Stitched

__all__ = ["INITS", "GRELU_P", "FRONTS", "BN_EPOCH", "settings_for_scale", "check_settings",
           "augmented_front", "bn_epoch_stats", "train_stitch"]

INITS = ("closed_form", "random")
"""tuple of str: the starts of a stitching layer: at a closed-form optimum, or the paper's random one."""
GRELU_P = ("birkhoff", "fixed")
"""tuple of str: how G_ReLU's permutation trains: on the Birkhoff polytope, or fixed at its start."""
FRONTS = ("cached", "augmented")
"""tuple of str: A's front computed once on clean images, or per batch from augmented ones (the authors')."""
BN_EPOCH = ("none", "grelu", "all")
"""tuple of str: the layer kinds that get the BatchNorm pass before each evaluation (:func:`bn_epoch_stats`)."""


def settings_for_scale(scale: str, **overrides) -> StitchSettings:
    """The stitching protocol of a scale.

    Parameters
    ----------
    scale : str
        A key of ``lib.settings.SCALES``; the protocol is that scale's ``stitching.protocol``.
    **overrides
        Fields to replace.

    Returns
    -------
    StitchSettings
    """
    return dataclasses.replace(scale_settings(scale).stitching.protocol, **overrides)


def check_settings(settings: StitchSettings) -> None:
    """Check a protocol before any work is done.

    Parameters
    ----------
    settings : StitchSettings
        The protocol.

    Raises
    ------
    ValueError
        Naming the field and its accepted values (optimizer, init, precision, fronts, bn_epoch,
        epochs, batch size, evaluations per epoch).
    """
    check_choice("optimizer", settings.optimizer, ("sgd", "adam"))
    check_choice("init", settings.init, INITS)
    check_choice("grelu_p", settings.grelu_p, GRELU_P)
    check_choice("precision", settings.precision, PRECISIONS)
    check_choice("fronts", settings.fronts, FRONTS)
    check_choice("bn_epoch", settings.bn_epoch, BN_EPOCH)
    if not isinstance(settings.epochs, int) or settings.epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0 (0 evaluates the start only), got {settings.epochs!r}")
    if settings.batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {settings.batch_size!r}")
    check_evals_per_epoch(settings.evals_per_epoch)


@torch.no_grad()
def augmented_front(model: Stitched, x: torch.Tensor, generator: torch.Generator) -> tuple:
    """A's state for uint8 images after the paper recipe's augmentation (random flip, translate by 2).

    Parameters
    ----------
    model : Stitched
        The stitched model (A runs in eval mode, without gradient).
    x : torch.Tensor
        uint8 images ``(n, H, W, 3)``, ideally already on the model's device.
    generator : torch.Generator
        A CPU generator: the source of the flips and shifts.

    Returns
    -------
    tuple of torch.Tensor
        As :func:`lib.stitching.front_features`: ``(h,)`` or ``(h, block_input)``, each ``(n, C, h, w)``.
    """
    dev = next(model.stitch.parameters()).device
    recipe = RECIPES["paper"]
    return model.front(augment(to_input(x, dev), generator, recipe["flip"], recipe["translate"]))


@contextlib.contextmanager
def bn_epoch_stats(model: Stitched, states):
    """The authors' ``--bn_epoch`` pass: B's BatchNorm statistics re-estimated for one evaluation.

    Inside the ``with`` block B's running statistics are those left by a no-grad pass over ``states``
    with B in train mode and the stitching layer as evaluated (a G_ReLU layer's P rounded to a
    permutation); on leaving it they are restored, so training goes on from the statistics it had.
    (The authors run this pass, over a whole augmented epoch, before each test of their G_ReLU runs.)

    Parameters
    ----------
    model : Stitched
        The stitched model.
    states : iterable of tuple
        A's states, one per batch (as :meth:`Stitched.tail` takes them).
    """
    saved = {n: b.clone() for n, b in model.model_b.named_buffers()}
    was = model.training
    model.train(True)
    model.stitch.hard = model.stitch.kind == "grelu"
    try:
        with torch.no_grad():
            for state in states:
                model.tail(state)
        yield model
    finally:
        model.stitch.hard = False
        with torch.no_grad():
            for n, b in model.model_b.named_buffers():
                b.copy_(saved[n])
        model.train(was)


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


def train_stitch(model: Stitched, train_state: tuple | None, y_train: torch.Tensor, test_state: tuple,
                 y_test: torch.Tensor, settings: StitchSettings, seed: int = 0,
                 train_images: torch.Tensor | None = None) -> dict:
    """Train ``model.stitch`` alone on A's state; evaluate on the test state every epoch.

    grelu: the first ``p_only_fraction`` of the epochs leave D fixed; after every step P is clipped
    and Sinkhorn-projected and D clipped; evaluation rounds P with the Hungarian algorithm. With
    ``bn_adapt`` B's BatchNorm statistics are re-estimated on the training fronts before the start
    is evaluated; with ``bn_epoch`` covering the layer's kind, before every later evaluation too
    (:func:`bn_epoch_stats`, a whole epoch of training batches).

    Parameters
    ----------
    model : Stitched
        The stitched model, its stitching layer already at its start.
    train_state : tuple of torch.Tensor or None
        A's training fronts (``lib.stitching.front_features``), each ``(n, C, h, w)``; unused (may be
        None) with ``settings.fronts == "augmented"``.
    y_train, y_test : torch.Tensor
        Labels ``(n,)``, one per training image and per test front.
    test_state : tuple of torch.Tensor
        A's test fronts (never augmented).
    settings : StitchSettings
        The protocol (a scale's: :func:`settings_for_scale`); ``settings.epochs = 0`` evaluates the
        start only. With ``lr_decay`` the
        learning rate falls linearly from ``lr`` to 0 over all steps.
    seed : int
        Seed of the batch order (and, ``seed + 1``, of the augmentation; ``seed + 2``, of the batches
        of the BatchNorm pass).
    train_images : torch.Tensor, optional
        uint8 training images ``(n, H, W, 3)``, needed with ``settings.fronts == "augmented"``.

    Returns
    -------
    dict
        ``history`` (one row per evaluation, ``evals_per_epoch`` per epoch, the start as epoch 0: ``epoch``
        (fractional between epochs' ends), ``loss`` (mean training
        cross-entropy, nats), ``test_acc`` (fraction)), ``best_acc`` (best test accuracy over the
        rows, the authors' choice, a fraction), ``final_acc`` (last row), ``matrix`` (final ``(C, C)``
        map, rounded for grelu) and ``seconds``.
    """
    check_settings(settings)
    layer = model.stitch
    dev = next(layer.parameters()).device
    if settings.fronts == "augmented":
        if train_images is None:
            raise ValueError("fronts='augmented' needs train_images (uint8 (n, H, W, 3)); accepted: "
                             "train_images with one image per label, or fronts='cached' with train_state")
        _check_state("train_images", (train_images,), y_train)
        images, aug_gen = train_images.to(dev), torch.Generator().manual_seed(seed + 1)
        state_of = lambda idx: augmented_front(model, images[idx.to(dev)], aug_gen)   # noqa: E731
    else:
        _check_state("train_state", train_state, y_train)
        state_of = lambda idx: tuple(t[idx].to(dev) for t in train_state)                # noqa: E731
    _check_state("test_state", test_state, y_test)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    # A fixed permutation trains D alone; the Birkhoff optimiser trains P too (P first, see p_only).
    birkhoff = layer.kind == "grelu" and settings.grelu_p == "birkhoff"
    if layer.kind == "grelu":
        lr = settings.lr if settings.grelu_lr is None else settings.grelu_lr
        groups = ([dict(params=[layer.p], weight_decay=0.0, lr=lr)] if birkhoff else []) + \
                 [dict(params=[layer.d], weight_decay=settings.weight_decay, lr=lr)]
    else:
        groups = [dict(params=list(layer.parameters()), weight_decay=settings.weight_decay)]
    opt = (torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum)
           if settings.optimizer == "sgd" else torch.optim.Adam(groups, lr=settings.lr))
    p_only = round(settings.epochs * settings.p_only_fraction) if birkhoff else 0
    total = max(1, settings.epochs * -(-len(y_train) // settings.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / total if settings.lr_decay else 1.0)
    if settings.bn_adapt:
        model.train(True)
        idx_all = torch.randperm(len(y_train), generator=gen).split(settings.batch_size)[:_ADAPT_BATCHES]
        with torch.no_grad(), autocast(dev, settings.precision):
            for idx in idx_all:
                model.tail(state_of(idx))
    evaluate = lambda: _accuracy(model, test_state, y_test, precision=settings.precision)   # noqa: E731
    bn_pass = settings.bn_epoch == "all" or settings.bn_epoch == layer.kind
    bn_gen = torch.Generator().manual_seed(seed + 2)
    history = [dict(epoch=0, loss=float("nan"), test_acc=evaluate())]
    n_batches = -(-len(y_train) // settings.batch_size)
    checkpoints = eval_steps(n_batches, settings.evals_per_epoch)
    for epoch in range(settings.epochs):
        model.train(settings.bn_adapt)
        tot, seen = 0.0, 0
        for step, idx in enumerate(torch.randperm(len(y_train), generator=gen).split(settings.batch_size)):
            with autocast(dev, settings.precision):
                out = model.tail(state_of(idx))
                loss = F.cross_entropy(out.float(), y_train[idx].to(dev))
            tot, seen = tot + loss.item() * len(idx), seen + len(idx)
            if birkhoff:
                # The vertex penalty: the Frobenius norm is largest (sqrt C) exactly at permutations.
                loss = loss - settings.alpha * layer.p.norm()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if epoch < p_only:
                layer.d.grad = None
            opt.step()
            sched.step()
            if birkhoff:
                layer.project(settings.sinkhorn_rounds)
            elif layer.kind == "grelu":
                with torch.no_grad():
                    layer.d.clamp_(min=0)
            if step not in checkpoints:
                continue
            # An evaluation: the loss column is the mean over the steps since the previous one.
            if bn_pass:
                batches = torch.randperm(len(y_train), generator=bn_gen).split(settings.batch_size)
                with autocast(dev, settings.precision), bn_epoch_stats(model, (state_of(i) for i in batches)):
                    acc = evaluate()
            else:
                acc = evaluate()
            history.append(dict(epoch=epoch + checkpoints[step], loss=tot / seen, test_acc=acc))
            tot, seen = 0.0, 0
    model.eval()
    layer.hard = layer.kind == "grelu"
    final = layer.matrix().detach().cpu()
    layer.hard = False
    return dict(best_acc=max(h["test_acc"] for h in history), final_acc=history[-1]["test_acc"],
                history=history, matrix=final, seconds=time.perf_counter() - t0)
