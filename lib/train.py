"""Training recipes (:class:`Recipe`; their values are :data:`lib.settings.RECIPES`) and a small, fast
training loop (in the spirit of airbench).

Data lives as tensors on the training device; augmentation is done on whole batches there. On CUDA
the loop uses channels_last and bfloat16 autocast; on the CPU it runs eagerly with channels_last
(measured 1.6-2x faster than contiguous for the Myrtle CNN), in bfloat16 autocast where the CPU has
fast bfloat16 units (the recipe's ``precision``, see ``lib.config.autocast``), and is deterministic:
the same seed gives the same weights bit for bit.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import time

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .config import PRECISIONS, autocast, check_choice, check_seed, get_device
from .data import Dataset, augment, batches, check_training_data, subset, to_input
from .settings import RECIPES, scale_settings

__all__ = ["Recipe", "recipe", "recipe_for_scale", "train", "evaluate", "make_optimizer"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A training recipe: everything besides the architecture and the seed that changes the weights.

    Every field is part of the zoo's cache key (:func:`lib.zoo.model_key`). The named recipes are
    :data:`lib.settings.RECIPES`; :func:`recipe` and :func:`recipe_for_scale` build them. A bad
    field is a ``ValueError`` naming it and what it accepts, raised when the recipe is made.

    Attributes
    ----------
    name : str
        ``"paper"`` or ``"fast"``: the entry of :data:`lib.settings.RECIPES` it started from.
    epochs, batch_size : int
        Passes over the training images (>= 1); images per optimiser step (>= 1).
    optimizer : str
        ``"adam"`` or ``"sgd"`` (Nesterov momentum when ``momentum > 0``).
    lr, momentum, weight_decay : float
        Peak learning rate; SGD momentum (unused by Adam); L2 coefficient of parameters named "weight".
    schedule : str
        ``"step"`` (decay by ``gamma`` every ``step_size`` epochs) or ``"onecycle"`` (linear warm-up over
        the fraction ``warmup`` of all steps, then linear decay to 0).
    step_size : int
    gamma, warmup, label_smoothing : float
        ``warmup`` and ``label_smoothing`` are fractions in [0, 1].
    flip : bool
        Random horizontal flips.
    translate : int
        Random translation, in pixels.
    keep_best : bool
        Keep the epoch with the best test accuracy (the authors' choice) instead of the last.
    n_train, n_test : int or None
        Training images and test images for accuracies (``None``: all).
    precision : str
        A :data:`lib.config.PRECISIONS` mode: ``"bulk"`` (bfloat16 autocast where fast) or ``"float32"``.
    """

    name: str
    epochs: int              # passes over the training images
    batch_size: int          # images per optimiser step
    optimizer: str           # "adam" or "sgd" (Nesterov momentum)
    lr: float                # peak learning rate
    momentum: float          # SGD momentum (unused by Adam)
    weight_decay: float      # L2 coefficient, applied to parameters named "weight"
    schedule: str            # "step" (StepLR) or "onecycle" (linear warm-up, then linear decay to 0)
    step_size: int           # epochs between StepLR decays
    gamma: float             # StepLR decay factor
    warmup: float            # fraction of all steps spent warming up (onecycle)
    label_smoothing: float   # cross-entropy label smoothing
    flip: bool               # random horizontal flips
    translate: int           # random translation, pixels
    keep_best: bool          # keep the epoch with the best test accuracy (the authors' choice)
    n_train: int | None = None   # training images used (None: all)
    n_test: int | None = None    # test images used for accuracies (None: all)
    precision: str = "bulk"      # lib.config precision: "bulk" (bfloat16 autocast where fast) or "float32"

    def __post_init__(self):
        # Checked here, when a recipe is made, so that a bad setting fails before anything is
        # trained or written (a zoo entry of a 0-epoch run, a ZeroDivisionError deep in the loop).
        def need(ok, field, accepted):
            if not ok:
                raise ValueError(f"recipe {self.name!r}: {field} must be {accepted}; got {getattr(self, field)!r}")

        def is_int(v):
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def is_real(v):
            return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

        need(isinstance(self.name, str), "name", "a str (the recipe it started from)")
        need(is_int(self.epochs) and self.epochs >= 1, "epochs", "an integer >= 1")
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(is_int(self.translate) and self.translate >= 0, "translate", "an integer >= 0 (pixels)")
        need(is_real(self.lr) and self.lr > 0, "lr", "a finite number > 0")
        need(is_real(self.momentum) and self.momentum >= 0, "momentum", "a finite number >= 0")
        need(is_real(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a finite number >= 0")
        need(is_real(self.warmup) and 0 <= self.warmup <= 1, "warmup", "a fraction in [0, 1]")
        need(is_real(self.label_smoothing) and 0 <= self.label_smoothing < 1, "label_smoothing",
             "a number in [0, 1)")
        need(is_real(self.gamma) and self.gamma > 0, "gamma", "a finite number > 0")
        least_step = 1 if self.schedule == "step" else 0
        need(is_int(self.step_size) and self.step_size >= least_step, "step_size",
             "an integer >= 0 (>= 1 with schedule 'step')")
        # bool only: "no" or 0.0 would be read as a truth value and silently flip the meaning.
        for field in ("flip", "keep_best"):
            need(isinstance(getattr(self, field), bool), field, "True or False (a bool)")
        for field in ("n_train", "n_test"):
            need(getattr(self, field) is None or (is_int(getattr(self, field)) and getattr(self, field) >= 1),
                 field, "None (all images) or an integer >= 1")
        check_choice("optimizer", self.optimizer, ("adam", "sgd"))
        check_choice("schedule", self.schedule, ("step", "onecycle"))
        check_choice("precision", self.precision, PRECISIONS)


def recipe(name: str | Recipe, **overrides) -> Recipe:
    """A named recipe with some fields replaced.

    Parameters
    ----------
    name : str or Recipe
        A key of :data:`lib.settings.RECIPES` (``"paper"`` or ``"fast"``), or a recipe to start from.
    **overrides
        Fields of :class:`Recipe` to replace (e.g. ``epochs=8``).

    Returns
    -------
    Recipe

    Raises
    ------
    ValueError
        For an unknown recipe name or field, or a bad field value.
    """
    if isinstance(name, Recipe):
        base = name
    else:
        check_choice("recipe", name, RECIPES)
        base = Recipe(name=name, **RECIPES[name])
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown recipe fields {sorted(unknown)}; accepted: {sorted(fields)}")
    return dataclasses.replace(base, **overrides)


def recipe_for_scale(scale: str, name: str | None = None, **overrides) -> Recipe:
    """The training recipe of the zoo at ``scale``, with some fields replaced.

    Parameters
    ----------
    scale : str
        A key of :data:`lib.settings.SCALES`; its zoo's ``recipe``, ``epochs``, ``n_train`` and
        ``n_test`` are used.
    name : str, optional
        Another recipe to start from (default: the scale's).
    **overrides
        Fields of :class:`Recipe` to replace, e.g. ``optimizer="adam", lr=2e-3`` for a network
        without BatchNorm.

    Returns
    -------
    Recipe
    """
    z = scale_settings(scale).zoo
    fields = dict(epochs=z.epochs, n_train=z.n_train, n_test=z.n_test)
    return recipe(name or z.recipe, **{**fields, **overrides})


def make_optimizer(model: nn.Module, r: Recipe, steps_per_epoch: int):
    """The optimiser and per-step learning-rate scheduler of recipe ``r``.

    Weight decay applies to parameters whose name ends in "weight" only.

    Parameters
    ----------
    model : torch.nn.Module
    r : Recipe
    steps_per_epoch : int
        Optimiser steps per epoch (the schedule counts steps).

    Returns
    -------
    (torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR)
        Call the scheduler's ``step()`` after every optimiser step.
    """
    decay = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("weight")]
    groups = [dict(params=decay, weight_decay=r.weight_decay), dict(params=rest, weight_decay=0.0)]
    check_choice("optimizer", r.optimizer, ("adam", "sgd"))
    if r.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=r.lr)
    else:
        opt = torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=r.momentum > 0)
    total = max(1, r.epochs * steps_per_epoch)
    check_choice("schedule", r.schedule, ("step", "onecycle"))
    if r.schedule == "step":
        def factor(step):
            return r.gamma ** ((step // steps_per_epoch) // r.step_size)
    else:
        warm = max(1, int(r.warmup * total))

        def factor(step):
            return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device=None, batch_size: int = 1000,
             precision: str = "float32") -> float:
    """The accuracy of ``model`` on labelled images; its train/eval mode is restored afterwards.

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor
        uint8 images ``(n, H, W, 3)`` or model inputs ``(n, 3, H, W)``.
    y : torch.Tensor
        Labels ``(n,)``.
    device : optional
        For :func:`lib.config.get_device`.
    batch_size : int
    precision : str
        A :data:`lib.config.PRECISIONS` mode. The default is float32, because callers compare
        accuracies (stitching penalties, Theorem 4.2's exact zero) and both sides of a difference must
        be computed alike; the training loop passes its recipe's precision for its own progress.

    Returns
    -------
    float
        The fraction in [0, 1] of images classified correctly.
    """
    device = get_device(device)
    was = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        xb = to_input(xb, device) if xb.dtype == torch.uint8 else xb.to(device)
        with autocast(device, precision):
            correct += (model(xb).argmax(1).cpu() == y[start:start + batch_size].cpu()).sum().item()
    model.train(was)
    return correct / max(1, len(x))


def train(model: nn.Module, data: Dataset, r: Recipe, seed: int = 0, device=None, progress: bool = True,
          state: dict | None = None, on_epoch=None, desc: str = "train") -> list[dict]:
    """Train ``model`` in place with recipe ``r``; deterministic for a given seed on the CPU.

    Parameters
    ----------
    model : torch.nn.Module
    data : lib.data.Dataset
        Its first ``r.n_train`` / ``r.n_test`` images of a fixed shuffle are used (:func:`lib.data.subset`).
    r : Recipe
    seed : int
        Seeds torch's generators (forked: the caller's global generator state is left as it was) and
        the generator of batches and augmentation (:func:`lib.config.check_seed`).
    device : optional
        For :func:`lib.config.get_device`.
    progress : bool
        Show a progress bar and one line per epoch.
    state : dict, optional
        A checkpoint written through ``on_epoch``, to resume an interrupted run: the model,
        optimiser, scheduler and generator states, the history and the best weights so far.
    on_epoch : callable, optional
        Called after every epoch with such a dict.
    desc : str
        The label of the progress output and of errors.

    Returns
    -------
    list of dict
        One row per epoch: ``epoch``, ``loss``, ``train_acc`` and ``test_acc`` (fractions), ``lr``,
        ``seconds``. With ``r.keep_best`` the model ends with the weights of its best test epoch.

    Raises
    ------
    ValueError
        Before anything is allocated, for a bad seed or data
        (:func:`lib.data.check_training_data`).
    FloatingPointError
        If the loss or the weights stop being finite; nothing is stored for that epoch.
    """
    seed = check_seed(seed)
    check_training_data(data, getattr(model, "arch", None))
    device = get_device(device)
    # The global generators are forked, so that the caller's random numbers after training are those
    # it would have drawn without it (lib.zoo.get gives the same state whether it trains or loads).
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return _train(model, data, r, seed, device, progress, desc, (state, on_epoch))


def _resume(state: dict, model: nn.Module, opt, sched, gen: torch.Generator) -> tuple:
    """Restore a checkpoint of :func:`train`; returns its ``(history, best, epoch)``."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return list(state["history"]), state.get("best"), state["epoch"]


def _check_finite(model: nn.Module, mean_loss: float, r: Recipe, desc: str, epoch: int) -> None:
    # One check per epoch, on numbers the loop has on the host already (plus one sync for the
    # weights): a NaN or infinite loss stays so in the sum, and a model that diverged is never
    # evaluated, checkpointed or cached.
    finite = bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
    if not (math.isfinite(mean_loss) and finite):
        raise FloatingPointError(
            f"training {desc} with recipe {r.name!r} (optimizer {r.optimizer}, lr {r.lr}, "
            f"batch_size {r.batch_size}) diverged in epoch {epoch + 1}: the mean loss is "
            f"{mean_loss} and {'all' if finite else 'some'} weights are "
            f"{'finite' if finite else 'not finite'}; nothing "
            f"was stored for this epoch. Lower lr (or use another recipe) and run again")


def _train(model, data, r, seed, device, progress, desc, checkpoints) -> list[dict]:
    """The loop of :func:`train`, with its arguments checked and the global generators seeded;
    ``checkpoints`` is ``(state, on_epoch)``."""
    state, on_epoch = checkpoints
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = subset(data.x_train, data.y_train, r.n_train)
    x_test, y_test = subset(data.x_test, data.y_test, r.n_test)
    n_train = len(x_train)
    x_train, y_train = to_input(x_train, device), y_train.to(device)
    x_test = to_input(x_test, device)
    model.to(device).to(memory_format=torch.channels_last)
    steps = -(-n_train // r.batch_size)
    opt, sched = make_optimizer(model, r, steps)
    history, best, start = [], None, 0
    if state is not None:
        history, best, start = _resume(state, model, opt, sched, gen)
    for epoch in range(start, r.epochs):
        model.train()
        t0 = time.perf_counter()
        tot_loss, tot_correct, seen = 0.0, 0, 0
        bar = tqdm(batches(x_train, y_train, r.batch_size, gen), total=steps, disable=not progress,
                   desc=f"{desc} {epoch + 1}/{r.epochs}", leave=False, mininterval=2.0)
        for xb, yb in bar:
            xb = augment(xb, gen, r.flip, r.translate)
            with autocast(device, r.precision):
                out = model(xb)
                loss = F.cross_entropy(out, yb, label_smoothing=r.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += loss.item() * len(xb)
            tot_correct += (out.argmax(1) == yb).sum().item()
            seen += len(xb)
            bar.set_postfix(loss=f"{tot_loss / seen:.3f}", acc=f"{tot_correct / seen:.3f}")
        _check_finite(model, tot_loss / seen, r, desc, epoch)
        test_acc = evaluate(model, x_test, y_test, device, precision=r.precision)
        row = dict(epoch=epoch + 1, loss=tot_loss / seen, train_acc=tot_correct / seen, test_acc=test_acc,
                   lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        history.append(row)
        if progress:
            tqdm.write(f"{desc} epoch {epoch + 1}/{r.epochs}: loss {row['loss']:.3f} "
                       f"train {row['train_acc']:.3f} test {test_acc:.3f} ({row['seconds']:.0f} s)")
        if r.keep_best and (best is None or test_acc > best["test_acc"]):
            best = dict(test_acc=test_acc, model={k: v.detach().clone() for k, v in model.state_dict().items()})
        if on_epoch is not None:
            on_epoch(dict(epoch=epoch + 1, model=model.state_dict(), optimizer=opt.state_dict(),
                          scheduler=sched.state_dict(), generator=gen.get_state(),
                          torch_rng=torch.get_rng_state(), history=history, best=best))
    if r.keep_best and best is not None:
        model.load_state_dict(best["model"])
    model.eval()
    return history
