"""Fine-tuning the layers after a transformed pre-activation (the sanity test of Fig. 4).

The tail trains on cached pre-activations with Adam, under one of :data:`SCHEDULES`: a linear decay to
0 for the few epochs of small scales, or the authors' StepLR(12, 0.5) at ``paper`` scale (the fields
of ``lib.settings.Scale.finetune``, a ``lib.settings.FinetuneSettings``, which holds the whole
protocol).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import PRECISIONS, autocast, check_choice
from ..settings import FinetuneSettings
from .curves import check_evals_per_epoch, eval_steps

__all__ = ["SCHEDULES", "ROTATION_STARTS", "check_finetune", "lr_schedule", "tail_accuracy",
           "finetune_tail"]

SCHEDULES = ("linear", "constant", "step")
"""tuple of str: learning-rate schedules of the fine-tuning: linear decay to 0 over all steps, constant, or
the authors' StepLR (times ``gamma`` every ``step_size`` epochs)."""
ROTATION_STARTS = ("refit", "transformed")
"""tuple of str: the starts of the fine-tuning: after a least-squares refit of the next conv, or the
paper's (the trained weights)."""


def check_finetune(settings: FinetuneSettings) -> None:
    """Check a fine-tuning protocol before any work is done.

    Parameters
    ----------
    settings : lib.settings.FinetuneSettings
        The protocol.

    Raises
    ------
    ValueError
        Naming the field and its accepted values (epochs, batch size, start, precision, schedule,
        step size, evaluations per epoch).
    """
    if not _is_int(settings.epochs) or settings.epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0 (0 evaluates the start only), "
                         f"got {settings.epochs!r}")
    if not _is_int(settings.batch_size) or settings.batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {settings.batch_size!r}")
    check_choice("start", settings.start, ROTATION_STARTS)
    check_choice("precision", settings.precision, PRECISIONS)
    _check_schedule(settings.schedule, settings.step_size)
    check_evals_per_epoch(settings.evals_per_epoch)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_schedule(schedule: str, step_size) -> None:
    check_choice("schedule", schedule, SCHEDULES)
    if schedule == "step" and not (isinstance(step_size, int) and step_size >= 1):
        raise ValueError(f"step_size must be an integer >= 1 (epochs) for schedule 'step', "
                         f"got {step_size!r}")


@torch.no_grad()
def tail_accuracy(net: nn.Module, z: torch.Tensor, y: torch.Tensor, precision: str, batch_size: int = 1000) -> float:
    """Accuracy (a fraction) of ``net`` in eval mode on cached pre-activations ``z`` ``(n, C, h, w)``."""
    dev = next(net.parameters()).device
    was = net.training
    net.eval()
    correct = 0
    with autocast(dev, precision):
        for s in range(0, len(y), batch_size):
            correct += (net(z[s:s + batch_size].to(dev).float()).argmax(1).cpu() == y[s:s + batch_size]).sum().item()
    net.train(was)
    return correct / max(1, len(y))


def lr_schedule(opt: torch.optim.Optimizer, schedule: str, epochs: int, steps_per_epoch: int, step_size: int = 12,
                gamma: float = 0.5) -> torch.optim.lr_scheduler.LambdaLR:
    """The fine-tuning's learning-rate schedule, stepped once per optimiser step.

    Parameters
    ----------
    opt : torch.optim.Optimizer
    schedule : str
        ``"linear"`` (from the rate to 0 over ``epochs * steps_per_epoch`` steps), ``"constant"`` or
        ``"step"`` (the authors' ``StepLR(step_size, gamma)``: times ``gamma`` every ``step_size`` epochs).
    epochs, steps_per_epoch : int
        The length of the fine-tuning.
    step_size : int
        Epochs between decays (``"step"``).
    gamma : float
        Factor per decay (``"step"``).

    Returns
    -------
    torch.optim.lr_scheduler.LambdaLR
    """
    _check_schedule(schedule, step_size)
    total = max(1, epochs * steps_per_epoch)
    factor = {"linear": lambda step: 1 - step / total, "constant": lambda step: 1.0,
              "step": lambda step: gamma ** ((step // steps_per_epoch) // step_size)}[schedule]
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _adam(net: nn.Module, settings: FinetuneSettings) -> torch.optim.Adam:
    # Weight decay on weights only: biases are not pulled towards 0.
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    decayed = dict(params=[p for n, p in params if n.endswith("weight")],
                   weight_decay=settings.weight_decay)
    plain = dict(params=[p for n, p in params if not n.endswith("weight")], weight_decay=0.0)
    return torch.optim.Adam([decayed, plain], lr=settings.lr)


def finetune_tail(net: nn.Module, train_z: torch.Tensor, y_train: torch.Tensor,
                  test_z: torch.Tensor, y_test: torch.Tensor, settings: FinetuneSettings, *,
                  seed: int = 0) -> list[dict]:
    """Train ``net`` (the transform and the layers after it) in place on cached pre-activations.

    Adam with ``settings.weight_decay`` on parameters named ``weight``; no augmentation.

    Parameters
    ----------
    net : nn.Module
        Maps pre-activations ``(N, C, h, w)`` to outputs ``(N, classes)``.
    train_z, test_z : torch.Tensor
        Cached pre-activations ``(n, C, h, w)``.
    y_train, y_test : torch.Tensor
        Labels ``(n,)``.
    settings : lib.settings.FinetuneSettings
        The protocol (:func:`check_finetune`): epochs (0 evaluates the start only), batch, learning
        rate and its schedule, weight decay, precision, evaluations per epoch (the trials, image
        counts and start are read by ``lib.stitching.sanity.rotation_penalty``, not here).
    seed : int
        Seed of the batch order.

    Returns
    -------
    list of dict
        One row per evaluation, the start as epoch 0: ``epoch`` (fractional between epochs' ends),
        ``loss`` (training cross-entropy since the previous row, nats), ``test_acc`` (fraction).
    """
    check_finetune(settings)
    if len(train_z) != len(y_train) or len(test_z) != len(y_test):
        raise ValueError(f"pre-activations and labels must have equal counts, got {len(train_z)} "
                         f"and {len(y_train)} (train), {len(test_z)} and {len(y_test)} (test)")
    s = settings
    dev = next(net.parameters()).device
    opt = _adam(net, s)
    n_batches = -(-len(y_train) // s.batch_size)
    sched = lr_schedule(opt, s.schedule, s.epochs, n_batches, s.step_size, s.gamma)
    checkpoints = eval_steps(n_batches, s.evals_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    start_acc = tail_accuracy(net, test_z, y_test, s.precision)
    history = [dict(epoch=0, loss=float("nan"), test_acc=start_acc)]
    for epoch in range(s.epochs):
        net.train()
        tot, seen = 0.0, 0
        batches = torch.randperm(len(y_train), generator=gen).split(s.batch_size)
        for step, idx in enumerate(batches):
            with autocast(dev, s.precision):
                out = net(train_z[idx].to(dev).float())
                loss = F.cross_entropy(out.float(), y_train[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot, seen = tot + loss.item() * len(idx), seen + len(idx)
            if step in checkpoints:
                history.append(dict(epoch=epoch + checkpoints[step], loss=tot / seen,
                                    test_acc=tail_accuracy(net, test_z, y_test, s.precision)))
                tot, seen = 0.0, 0
    net.eval()
    return history
