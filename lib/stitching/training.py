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
           "augmented_front", "hard_rounding", "bn_epoch_stats", "train_stitch"]

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
def hard_rounding(layer):
    """Inside the ``with`` block a G_ReLU layer's P is rounded to a permutation (Hungarian).

    Evaluations and the final matrix use the rounded layer; training uses the soft one. Other kinds
    are left as they are. On leaving the block the layer is soft again, whatever happened inside.

    Parameters
    ----------
    layer : lib.stitching.StitchLayer
        The stitching layer.

    Yields
    ------
    lib.stitching.StitchLayer
        ``layer``.
    """
    layer.hard = layer.kind == "grelu"
    try:
        yield layer
    finally:
        layer.hard = False


@contextlib.contextmanager
def bn_epoch_stats(model: Stitched, states):
    """The authors' ``--bn_epoch`` pass: B's BatchNorm statistics re-estimated for one evaluation.

    Inside the ``with`` block B's running statistics are those left by a no-grad pass over ``states``
    with B in train mode and the stitching layer as evaluated (a G_ReLU layer's P rounded to a
    permutation, :func:`hard_rounding`); on leaving it they are restored, so training goes on from
    the statistics it had. (The authors run this pass, over a whole augmented epoch, before each
    test of their G_ReLU runs.)

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
    try:
        with hard_rounding(model.stitch):
            with torch.no_grad():
                for state in states:
                    model.tail(state)
            yield model
    finally:
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
    correct = 0
    try:
        with hard_rounding(model.stitch), autocast(dev, precision):
            for s in range(0, len(y), batch_size):
                out = model.tail(tuple(t[s:s + batch_size].to(dev) for t in state))
                correct += (out.argmax(1).cpu() == y[s:s + batch_size].cpu()).sum().item()
    finally:
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


def _train_source(model: Stitched, train_state, y_train: torch.Tensor, settings: StitchSettings,
                  seed: int, train_images):
    # The function from a batch's indices to A's state on it: cached fronts, or augmented images
    # run through A's front (their flips and shifts drawn from seed + 1).
    dev = next(model.stitch.parameters()).device
    if settings.fronts == "augmented":
        if train_images is None:
            raise ValueError("fronts='augmented' needs train_images (uint8 (n, H, W, 3)); "
                             "accepted: train_images with one image per label, or fronts='cached' "
                             "with train_state")
        _check_state("train_images", (train_images,), y_train)
        images, aug_gen = train_images.to(dev), torch.Generator().manual_seed(seed + 1)

        def augmented_state(idx):
            return augmented_front(model, images[idx.to(dev)], aug_gen)
        return augmented_state
    _check_state("train_state", train_state, y_train)

    def cached_state(idx):
        return tuple(t[idx].to(dev) for t in train_state)
    return cached_state


def _optimizer(layer, settings: StitchSettings, *, birkhoff: bool, total_steps: int) -> tuple:
    # (optimiser, schedule) of the stitching layer's parameters; a fixed P is not among them.
    if layer.kind == "grelu":
        lr = settings.lr if settings.grelu_lr is None else settings.grelu_lr
        groups = ([dict(params=[layer.p], weight_decay=0.0, lr=lr)] if birkhoff else []) + \
                 [dict(params=[layer.d], weight_decay=settings.weight_decay, lr=lr)]
    else:
        groups = [dict(params=list(layer.parameters()), weight_decay=settings.weight_decay)]
    opt = (torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum)
           if settings.optimizer == "sgd" else torch.optim.Adam(groups, lr=settings.lr))

    def factor(step):
        return 1 - step / total_steps if settings.lr_decay else 1.0
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class _StitchRun:
    """One run of :func:`train_stitch`: its optimiser, batch orders, steps and evaluations."""

    def __init__(self, model: Stitched, settings: StitchSettings, state_of, y_train, test: tuple,
                 seed: int):
        layer = model.stitch
        self.model, self.layer, self.settings = model, layer, settings
        self.state_of, self.y_train, self.test = state_of, y_train, test
        self.dev = next(layer.parameters()).device
        # A fixed permutation trains D alone; the Birkhoff optimiser trains P too (P first, see
        # p_only).
        self.birkhoff = layer.kind == "grelu" and settings.grelu_p == "birkhoff"
        self.p_only = round(settings.epochs * settings.p_only_fraction) if self.birkhoff else 0
        self.n_batches = -(-len(y_train) // settings.batch_size)
        self.opt, self.sched = _optimizer(layer, settings, birkhoff=self.birkhoff,
                                          total_steps=max(1, settings.epochs * self.n_batches))
        self.checkpoints = eval_steps(self.n_batches, settings.evals_per_epoch)
        self.bn_pass = settings.bn_epoch in ("all", layer.kind)
        self.gen = torch.Generator().manual_seed(seed)
        self.bn_gen = torch.Generator().manual_seed(seed + 2)

    def batches(self, generator: torch.Generator) -> tuple:
        order = torch.randperm(len(self.y_train), generator=generator)
        return order.split(self.settings.batch_size)

    def adapt_bn(self) -> None:
        self.model.train(True)
        with torch.no_grad(), autocast(self.dev, self.settings.precision):
            for idx in self.batches(self.gen)[:_ADAPT_BATCHES]:
                self.model.tail(self.state_of(idx))

    def evaluate(self, *, bn_pass: bool = False) -> float:
        precision = self.settings.precision
        if not bn_pass:
            return _accuracy(self.model, *self.test, precision=precision)
        states = (self.state_of(i) for i in self.batches(self.bn_gen))
        with autocast(self.dev, precision), bn_epoch_stats(self.model, states):
            return _accuracy(self.model, *self.test, precision=precision)

    def step(self, idx: torch.Tensor, epoch: int) -> float:
        s, layer = self.settings, self.layer
        with autocast(self.dev, s.precision):
            out = self.model.tail(self.state_of(idx))
            loss = F.cross_entropy(out.float(), self.y_train[idx].to(self.dev))
        summed = loss.item() * len(idx)
        if self.birkhoff:
            # The vertex penalty: the Frobenius norm is largest (sqrt C) exactly at permutations.
            loss = loss - s.alpha * layer.p.norm()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if epoch < self.p_only:
            layer.d.grad = None
        self.opt.step()
        self.sched.step()
        if self.birkhoff:
            layer.project(s.sinkhorn_rounds)
        elif layer.kind == "grelu":
            with torch.no_grad():
                layer.d.clamp_(min=0)
        return summed

    def epoch(self, epoch: int) -> list[dict]:
        self.model.train(self.settings.bn_adapt)
        rows, tot, seen = [], 0.0, 0
        for step, idx in enumerate(self.batches(self.gen)):
            tot, seen = tot + self.step(idx, epoch), seen + len(idx)
            if step in self.checkpoints:
                # An evaluation: the loss column is the mean over the steps since the previous one.
                acc = self.evaluate(bn_pass=self.bn_pass)
                at = epoch + self.checkpoints[step]
                rows.append(dict(epoch=at, loss=tot / seen, test_acc=acc))
                tot, seen = 0.0, 0
        return rows


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
    state_of = _train_source(model, train_state, y_train, settings, seed, train_images)
    _check_state("test_state", test_state, y_test)
    t0 = time.perf_counter()
    run = _StitchRun(model, settings, state_of, y_train, (test_state, y_test), seed)
    if settings.bn_adapt:
        run.adapt_bn()
    history = [dict(epoch=0, loss=float("nan"), test_acc=run.evaluate())]
    for epoch in range(settings.epochs):
        history += run.epoch(epoch)
    model.eval()
    with hard_rounding(model.stitch):
        final = model.stitch.matrix().detach().cpu()
    return dict(best_acc=max(h["test_acc"] for h in history), final_acc=history[-1]["test_acc"],
                history=history, matrix=final, seconds=time.perf_counter() - t0)
