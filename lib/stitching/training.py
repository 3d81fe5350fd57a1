"""Training a stitching layer on A's cached state, and the protocol it follows (:class:`StitchSettings`)."""
from __future__ import annotations

import dataclasses
import time

import torch
from torch.nn import functional as F

from ..config import PRECISIONS, autocast, check_choice
from ..settings import SCALES, scale_settings
from .surgery import Stitched

__all__ = ["INITS", "GRELU_P", "StitchSettings", "settings_for_scale", "check_settings", "train_stitch", "last_quarter_change"]

INITS = ("closed_form", "random")
GRELU_P = ("birkhoff", "fixed")
"""tuple of str: how G_ReLU's permutation trains: on the Birkhoff polytope, or fixed at its start."""
"""tuple of str: the starts of a stitching layer: at a closed-form optimum, or the paper's random one."""


# The defaults are the cpu-scale protocol; its values live in lib.settings (one home for settings).
_CPU = SCALES["cpu"].stitch


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
    grelu_p : str
        ``"birkhoff"``: G_ReLU's permutation P is trained on the Birkhoff polytope (the paper's
        optimiser); ``"fixed"``: P stays at its start (activation matching) and only the scales D
        train. A random start always uses the Birkhoff optimiser.
    grelu_lr : float or None
        Learning rate of the G_ReLU layer (None: ``lr``).
    precision : str
        ``lib.config`` precision of training and evaluation (``"float32"``: exact).
    """

    optimizer: str = _CPU["optimizer"]
    lr: float = _CPU["lr"]
    lr_decay: bool = _CPU["lr_decay"]
    momentum: float = _CPU["momentum"]
    weight_decay: float = _CPU["weight_decay"]
    epochs: int = _CPU["epochs"]
    batch_size: int = _CPU["batch_size"]
    alpha: float = _CPU["alpha"]
    sinkhorn_rounds: int = _CPU["sinkhorn_rounds"]
    p_only_fraction: float = _CPU["p_only_fraction"]
    bn_adapt: bool = _CPU["bn_adapt"]
    init: str = _CPU["init"]
    grelu_p: str = _CPU["grelu_p"]
    grelu_lr: float | None = _CPU["grelu_lr"]
    precision: str = _CPU["precision"]

    @classmethod
    def paper(cls) -> "StitchSettings":
        """The authors' protocol: plain SGD, lr 1e-3, 20 epochs, batch 32, random starts."""
        return cls(**SCALES["paper"].stitch)


def settings_for_scale(scale: str, **overrides) -> StitchSettings:
    """The stitching protocol of a scale.

    Parameters
    ----------
    scale : str
        A key of ``lib.settings.SCALES``; the protocol is that scale's ``stitch`` literal.
    **overrides
        Fields to replace.

    Returns
    -------
    StitchSettings
    """
    return dataclasses.replace(StitchSettings(**scale_settings(scale).stitch), **overrides)


def check_settings(settings: StitchSettings) -> None:
    """Check a protocol before any work is done.

    Parameters
    ----------
    settings : StitchSettings
        The protocol.

    Raises
    ------
    ValueError
        Naming the field and its accepted values (optimizer, init, precision, epochs, batch size).
    """
    check_choice("optimizer", settings.optimizer, ("sgd", "adam"))
    check_choice("init", settings.init, INITS)
    check_choice("grelu_p", settings.grelu_p, GRELU_P)
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
    check_settings(settings)
    _check_state("train_state", train_state, y_train)
    _check_state("test_state", test_state, y_test)
    layer = model.stitch
    dev = next(layer.parameters()).device
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
                model.tail(tuple(t[idx].to(dev) for t in train_state))
    evaluate = lambda: _accuracy(model, test_state, y_test, precision=settings.precision)   # noqa: E731
    history = [dict(epoch=0, loss=float("nan"), test_acc=evaluate())]
    for epoch in range(settings.epochs):
        model.train(settings.bn_adapt)
        tot, seen = 0.0, 0
        for idx in torch.randperm(len(y_train), generator=gen).split(settings.batch_size):
            with autocast(dev, settings.precision):
                out = model.tail(tuple(t[idx].to(dev) for t in train_state))
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
        history.append(dict(epoch=epoch + 1, loss=tot / seen, test_acc=evaluate()))
    model.eval()
    layer.hard = layer.kind == "grelu"
    final = layer.matrix().detach().cpu()
    layer.hard = False
    return dict(best_acc=max(h["test_acc"] for h in history), final_acc=history[-1]["test_acc"],
                history=history, matrix=final, seconds=time.perf_counter() - t0)


def last_quarter_change(history: list) -> float:
    """How much the test penalty still moves at the end of training.

    Parameters
    ----------
    history : list of dict
        Rows with ``penalty`` (a fraction), the start as row 0 (:func:`train_stitch` with penalties
        added by ``stitch_experiment``, or :func:`lib.stitching.sanity.rotation_penalty`).

    Returns
    -------
    float
        ``|penalty(last epoch) - penalty(k - max(1, round(k / 4)))|`` for ``k`` epochs trained, in
        percentage points; 0 when nothing was trained.
    """
    pens = [100 * h["penalty"] for h in history]
    k = len(pens) - 1                                   # epochs trained
    return abs(pens[-1] - pens[k - max(1, round(k / 4))]) if k else 0.0
