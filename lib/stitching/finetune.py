"""Fine-tuning the layers after a transformed pre-activation (the sanity test of Fig. 4).

The tail trains on cached pre-activations with Adam, under one of :data:`SCHEDULES`: a linear decay to
0 for the few epochs of small scales, or the authors' StepLR(12, 0.5) at ``paper`` scale (the fields
of ``lib.settings.Scale.finetune``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import PRECISIONS, autocast, check_choice
from .curves import eval_steps

__all__ = ["SCHEDULES", "lr_schedule", "tail_accuracy", "finetune_tail"]

SCHEDULES = ("linear", "constant", "step")
"""tuple of str: learning-rate schedules of the fine-tuning: linear decay to 0 over all steps, constant, or
the authors' StepLR (times ``gamma`` every ``step_size`` epochs)."""


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
    check_choice("schedule", schedule, SCHEDULES)
    if schedule == "step" and not (isinstance(step_size, int) and step_size >= 1):
        raise ValueError(f"step_size must be an integer >= 1 (epochs) for schedule 'step', got {step_size!r}")
    total = max(1, epochs * steps_per_epoch)
    factor = {"linear": lambda step: 1 - step / total, "constant": lambda step: 1.0,
              "step": lambda step: gamma ** ((step // steps_per_epoch) // step_size)}[schedule]
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def finetune_tail(net: nn.Module, train_z: torch.Tensor, y_train: torch.Tensor, test_z: torch.Tensor,
                  y_test: torch.Tensor, epochs: int, batch_size: int = 256, lr: float = 1e-3,
                  weight_decay: float = 1e-4, seed: int = 0, precision: str = "bulk",
                  schedule: str = "linear", step_size: int = 12, gamma: float = 0.5,
                  evals_per_epoch: int = 1) -> list[dict]:
    """Train ``net`` (the transform and the layers after it) in place on cached pre-activations.

    Adam with ``weight_decay`` on parameters named ``weight``; no augmentation.

    Parameters
    ----------
    net : nn.Module
        Maps pre-activations ``(N, C, h, w)`` to outputs ``(N, classes)``.
    train_z, test_z : torch.Tensor
        Cached pre-activations ``(n, C, h, w)``.
    y_train, y_test : torch.Tensor
        Labels ``(n,)``.
    epochs : int
        Passes over ``train_z`` (0 evaluates the start only).
    batch_size, lr, weight_decay : int, float, float
        Adam's batch, peak learning rate and L2 coefficient.
    seed : int
        Seed of the batch order.
    precision : str
        ``lib.config`` precision.
    schedule, step_size, gamma : str, int, float
        The learning-rate schedule (:func:`lr_schedule`): ``"linear"`` decay to 0 (so the last of a
        few epochs settle), ``"constant"``, or the authors' ``"step"`` (StepLR(12, 0.5)).
    evals_per_epoch : int
        Test evaluations per epoch, evenly spaced in steps (``lib.stitching.eval_steps``).

    Returns
    -------
    list of dict
        One row per evaluation, the start as epoch 0: ``epoch`` (fractional between epochs' ends),
        ``loss`` (training cross-entropy since the previous row, nats), ``test_acc`` (fraction).
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0 (0 evaluates the start only), got {epochs!r}")
    if len(train_z) != len(y_train) or len(test_z) != len(y_test):
        raise ValueError(f"pre-activations and labels must have equal counts, got {len(train_z)} and "
                         f"{len(y_train)} (train), {len(test_z)} and {len(y_test)} (test)")
    check_choice("precision", precision, PRECISIONS)
    dev = next(net.parameters()).device
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    opt = torch.optim.Adam([dict(params=[p for n, p in params if n.endswith("weight")], weight_decay=weight_decay),
                            dict(params=[p for n, p in params if not n.endswith("weight")], weight_decay=0.0)], lr=lr)
    n_batches = -(-len(y_train) // batch_size)
    sched = lr_schedule(opt, schedule, epochs, n_batches, step_size, gamma)
    checkpoints = eval_steps(n_batches, evals_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    history = [dict(epoch=0, loss=float("nan"), test_acc=tail_accuracy(net, test_z, y_test, precision))]
    for epoch in range(epochs):
        net.train()
        tot, seen = 0.0, 0
        for step, idx in enumerate(torch.randperm(len(y_train), generator=gen).split(batch_size)):
            with autocast(dev, precision):
                loss = F.cross_entropy(net(train_z[idx].to(dev).float()).float(), y_train[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot, seen = tot + loss.item() * len(idx), seen + len(idx)
            if step in checkpoints:
                history.append(dict(epoch=epoch + checkpoints[step], loss=tot / seen,
                                    test_acc=tail_accuracy(net, test_z, y_test, precision)))
                tot, seen = 0.0, 0
    net.eval()
    return history
