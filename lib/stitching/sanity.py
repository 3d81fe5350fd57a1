"""The "sanity test" for intertwiners (Section 3.3, Fig. 4): the rotation penalty.

A trained Myrtle CNN without BatchNorm gets a fixed channel map A (a 1x1 convolution) right after
one of its convolutions, i.e. on the pre-activation; the layers up to there are frozen and the
rest is fine-tuned. For A in G_ReLU the later layers can undo A exactly (Proposition 3.4: the next
convolution absorbs phi(A)^-1 = A^-1), so the penalty should be small; for a random orthogonal A
no later weights can undo it on all inputs, so the penalty should be large.

The frozen front (the model up to and including the transformed convolution) is run once per layer
(:func:`pre_activations`) and shared by every trial and kind; each trial trains only the tail, on
those cached pre-activations (no augmentation), with the scale's schedule
(``lib.stitching.finetune``). Two starts: ``"transformed"`` (the paper's: the
tail as trained, fed ``A z``) and ``"refit"`` (the default): the next convolution is first refitted
by least squares so that it reproduces the original model's next pre-activation from the transformed
input, the same algorithm for both kinds. For ``A`` in G_ReLU the fit is exact (ReLU and max-pooling
commute with ``A``, so ``W A⁻¹`` is linear in the new input): Proposition 3.4 in closed form. For an
orthogonal ``A`` it is the best linear compensation, and fine-tuning continues from there.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn
from torch.nn import functional as F

from ..config import check_choice, check_chunk_size, exact_mode, get_device
from ..data import subset, to_input
from ..groups import MatrixGroup, intertwiner_group
from ..models import empty_rows
from ..cache import memo
from .finetune import SCHEDULES, finetune_tail, tail_accuracy
from .matching import add_moments, least_squares, moments_of

__all__ = ["ROTATION_KINDS", "ROTATION_STARTS", "FixedChannelMap", "random_channel_map", "rotated_model",
           "pre_activations", "refit_next_conv", "rotation_penalty", "cached_rotation_penalty"]

ROTATION_KINDS = ("grelu", "orthogonal")
"""tuple of str: the transforms of the sanity test: a random G_ReLU element or a random orthogonal matrix."""
ROTATION_STARTS = ("refit", "transformed")
"""tuple of str: the starts of the fine-tuning: after a least-squares refit of the next conv, or the paper's."""



class FixedChannelMap(nn.Module):
    """A fixed (non-trainable) ``h -> A h`` on the channel axis of ``(N, C, H, W)``: a 1x1 conv.

    Parameters
    ----------
    A : torch.Tensor
        ``(C, C)``, stored as a float32 buffer.
    """

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.register_buffer("A", A.float()[:, :, None, None])

    def forward(self, x):
        return nn.functional.conv2d(x, self.A.to(x.dtype))


def random_channel_map(kind: str, channels: int, generator: torch.Generator, sigma: float = 1.0) -> torch.Tensor:
    """A random transform of the sanity test.

    Parameters
    ----------
    kind : str
        ``"grelu"``: a uniform permutation times a mean-one log-normal diagonal with ``sigma``;
        ``"orthogonal"``: Haar-random (QR with the sign fix).
    channels : int
        C.
    generator : torch.Generator
        The source of randomness.
    sigma : float
        Log-normal spread of the diagonal (grelu).

    Returns
    -------
    torch.Tensor
        ``(C, C)``, float64, on the CPU.
    """
    check_choice("kind", kind, ROTATION_KINDS)
    if kind == "grelu":
        return intertwiner_group("relu", channels).sample(generator, sigma=sigma, device="cpu")
    return MatrixGroup("orthogonal", channels).sample(generator, device="cpu")


def _cut_after_conv(model: nn.Sequential, layer: str) -> int:
    # The index after the Conv2d child ``layer`` of a Sequential: where the transform goes.
    names = [n for n, _ in model.named_children()]
    if not isinstance(model, nn.Sequential) or layer not in names:
        raise ValueError(f"unknown layer {layer!r}; this model's modules: {', '.join(names)}")
    if not isinstance(getattr(model, layer), nn.Conv2d):
        raise ValueError(f"layer {layer!r} must be a Conv2d (the transform acts on the pre-activation), "
                         f"got {type(getattr(model, layer)).__name__}")
    return names.index(layer) + 1


def rotated_model(model: nn.Sequential, layer: str, A: torch.Tensor) -> nn.Sequential:
    """A copy of ``model`` with ``A`` applied after its conv ``layer`` and everything up to there frozen.

    Parameters
    ----------
    model : nn.Sequential
        A Myrtle CNN (not modified).
    layer : str
        A ``Conv2d`` child of ``model`` (the transform acts on its output, the pre-activation).
    A : torch.Tensor
        ``(C, C)`` with C the conv's output channels.

    Returns
    -------
    nn.Sequential
        The copy, with ``layer`` replaced by ``Sequential(conv, FixedChannelMap(A))``.
    """
    names = [n for n, _ in model.named_children()]
    idx = _cut_after_conv(model, layer)
    conv = getattr(model, layer)
    if tuple(A.shape) != (conv.out_channels, conv.out_channels):
        raise ValueError(f"A must be {conv.out_channels}x{conv.out_channels} for {layer!r}, got {tuple(A.shape)}")
    new = copy.deepcopy(model)
    dev = conv.weight.device
    setattr(new, layer, nn.Sequential(getattr(new, layer), FixedChannelMap(A.to(dev))))
    for name in names[:idx]:
        for p in getattr(new, name).parameters():
            p.requires_grad_(False)
    return new


@torch.no_grad()
def pre_activations(model: nn.Sequential, layer: str, x: torch.Tensor, batch_size: int = 500,
                    dtype=torch.float16, device=None) -> torch.Tensor:
    """The output of conv ``layer`` (the pre-activation), computed in float32 in eval mode.

    Parameters
    ----------
    model : nn.Sequential
        A Myrtle CNN.
    layer : str
        A ``Conv2d`` child of ``model``.
    x : torch.Tensor
        uint8 images ``(n, H, W, 3)``.
    batch_size : int
        Images per forward pass (a positive integer): the memory beyond the result is one batch.
    dtype : torch.dtype
        Storage of the result.
    device : str or torch.device, optional
        Where to compute.

    Returns
    -------
    torch.Tensor
        ``(n, C, h, w)`` as ``dtype``.
    """
    batch_size = check_chunk_size(batch_size, "batch_size")
    if len(x) == 0:
        raise ValueError("x holds no images")
    device = get_device(device)
    front = model[:_cut_after_conv(model, layer)].to(device).eval()
    out = None
    with exact_mode():
        # Filled batch by batch: a list of batches joined by torch.cat would hold the result twice.
        for s in range(0, len(x), batch_size):
            h = front(to_input(x[s:s + batch_size], device))
            if out is None:
                out = empty_rows(h, len(x), dtype)
            out[s:s + len(h)] = h
    return out


def _first_conv(tail: nn.Sequential) -> int:
    for i, m in enumerate(tail):
        if isinstance(m, nn.Conv2d):
            return i
    raise ValueError("the layers after the transform hold no Conv2d to refit")


@torch.no_grad()
def refit_next_conv(tail: nn.Sequential, A: torch.Tensor, z: torch.Tensor, batch_size: int = 250) -> None:
    """Refit, in place, the first convolution of ``tail`` by least squares (with its bias).

    The refitted conv, fed ``g(A z)`` (``g``: the modules before it, e.g. ReLU and max-pool), best
    reproduces in squared error over all ``n·h'·w'`` positions the output it had on ``g(z)``; the
    normal equations over its ``C·k·k`` unfolded inputs are summed in float64 over chunks.

    Parameters
    ----------
    tail : nn.Sequential
        The model after the transformed conv; its first conv must have a bias.
    A : torch.Tensor
        The transform ``(C, C)``.
    z : torch.Tensor
        The original pre-activations ``(n, C, h, w)``.
    batch_size : int
        Samples per chunk of the normal equations.
    """
    i = _first_conv(tail)
    g, conv = tail[:i], tail[i]
    dev = conv.weight.device
    M = A.float().to(dev)[:, :, None, None]
    moments = None
    with exact_mode():
        for s in range(0, len(z), batch_size):
            zb = z[s:s + batch_size].to(dev).float()
            target = conv(g(zb))                                            # (b, C_out, h', w')
            x = F.unfold(g(F.conv2d(zb, M)), conv.kernel_size, conv.dilation, conv.padding, conv.stride)
            x = x.movedim(1, -1).reshape(-1, x.shape[1]).double()          # (b·L, C·k·k)
            y = target.movedim(1, -1).reshape(-1, target.shape[1]).double()
            moments = add_moments(moments, moments_of(x, y))
    W, b = least_squares(moments)
    conv.weight.copy_(W.reshape(conv.weight.shape).to(conv.weight))
    if conv.bias is None:
        raise ValueError("the conv to refit needs a bias (the Myrtle CNN without BatchNorm has one)")
    conv.bias.copy_(b.to(conv.bias))


def rotation_penalty(model: nn.Sequential, layer: str, kind: str, generator: torch.Generator, data,
                     epochs: int, n_train: int | None = 10000, n_test: int | None = 2000, batch_size: int = 256,
                     lr: float = 1e-3, seed: int = 0, device=None, start: str = "refit", fronts: tuple | None = None,
                     precision: str = "bulk", schedule: str = "linear", step_size: int = 12,
                     gamma: float = 0.5, evals_per_epoch: int = 1) -> dict:
    """Transform the pre-activation of ``layer`` by a random ``kind`` matrix, freeze the front, fine-tune.

    Parameters
    ----------
    model : nn.Sequential
        A Myrtle CNN without BatchNorm; it is not modified.
    layer : str
        A conv of ``model`` (the transform acts on its output, the pre-activation).
    kind : str
        ``"grelu"`` or ``"orthogonal"`` (:func:`random_channel_map` draws it from ``generator``).
    generator : torch.Generator
        The transform's source.
    data : lib.data.Dataset
        The images.
    epochs : int
        Fine-tuning passes over the training images.
    n_train, n_test : int or None
        Images taken with ``lib.data.subset`` (None: all).
    batch_size, lr, seed, precision, schedule, step_size, gamma, evals_per_epoch
        As for :func:`lib.stitching.finetune.finetune_tail`.
    device : str or torch.device, optional
        Where to compute.
    start : str
        ``"refit"`` (next conv refitted by least squares first, :func:`refit_next_conv`) or
        ``"transformed"`` (the paper's: fine-tune from the trained weights).
    fronts : tuple of torch.Tensor, optional
        ``(train_z, test_z)`` from :func:`pre_activations` on the same subsets, to share one front
        between trials; computed here when None.

    Returns
    -------
    dict
        Accuracies as fractions: ``clean`` (the model on the cached test fronts), ``start`` (right
        after the transform), ``refit`` (after the refit; equal to ``start`` for ``"transformed"``),
        ``finetuned`` (best over the epochs, the start included), ``final`` (last epoch),
        ``penalty = clean - finetuned`` and ``final_penalty`` (fractions); ``history`` (per evaluation,
        with ``penalty``) and ``seconds``.
    """
    check_choice("kind", kind, ROTATION_KINDS)
    check_choice("start", start, ROTATION_STARTS)
    check_choice("schedule", schedule, SCHEDULES)
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0 (0 evaluates the start only), got {epochs!r}")
    device = get_device(device)
    t0 = time.perf_counter()
    idx = _cut_after_conv(model, layer)
    model = model.to(device)
    A = random_channel_map(kind, getattr(model, layer).out_channels, generator)
    x_tr, y_tr = subset(data.x_train, data.y_train, n_train)
    x_te, y_te = subset(data.x_test, data.y_test, n_test)
    if fronts is None:
        fronts = tuple(pre_activations(model, layer, x, device=device) for x in (x_tr, x_te))
    train_z, test_z = fronts
    if len(train_z) != len(y_tr) or len(test_z) != len(y_te):
        raise ValueError(f"fronts hold {len(train_z)} and {len(test_z)} images but n_train and n_test select "
                         f"{len(y_tr)} and {len(y_te)}; accepted: fronts of the same subsets")
    tail = copy.deepcopy(model[idx:])
    for p in tail.parameters():
        p.requires_grad_(True)
    clean = tail_accuracy(tail, test_z, y_te, precision)
    net = nn.Sequential(FixedChannelMap(A.to(device)), tail)
    start_acc = tail_accuracy(net, test_z, y_te, precision)
    if start == "refit":
        refit_next_conv(tail, A, train_z)
    history = finetune_tail(net, train_z, y_tr, test_z, y_te, epochs, batch_size, lr, seed=seed, precision=precision,
                            schedule=schedule, step_size=step_size, gamma=gamma, evals_per_epoch=evals_per_epoch)
    for h in history:
        h["penalty"] = clean - h["test_acc"]
    finetuned = max(h["test_acc"] for h in history)
    return dict(layer=layer, kind=kind, start_kind=start, clean=clean, start=start_acc, refit=history[0]["test_acc"],
                finetuned=finetuned, final=history[-1]["test_acc"], penalty=clean - finetuned,
                final_penalty=clean - history[-1]["test_acc"], history=history, seconds=time.perf_counter() - t0)


def cached_rotation_penalty(model: nn.Sequential, model_key: str, layer: str, kind: str, trial: int, data,
                            epochs: int, n_train: int | None, n_test: int | None, batch_size: int = 256,
                            lr: float = 1e-3, seed: int = 0, start: str = "refit", fronts=None,
                            schedule: str = "linear", step_size: int = 12, gamma: float = 0.5,
                            evals_per_epoch: int = 1) -> dict:
    """:func:`rotation_penalty` of trial ``trial``, memoised on disk (``lib.cache.memo``).

    The transform comes from ``torch.Generator().manual_seed(1000 * seed + trial)`` and the batch
    order from seed ``seed + trial``; the memo key holds the model's zoo key and every setting.

    Parameters
    ----------
    model : nn.Sequential
        A Myrtle CNN without BatchNorm.
    model_key : str
        Its ``lib.zoo.model_key`` (the memo key's name for the weights).
    layer, kind, data, epochs, n_train, n_test, batch_size, lr, start, schedule, step_size, gamma, evals_per_epoch
        As for :func:`rotation_penalty`.
    trial : int
        The trial's index.
    seed : int
        The chapter's seed.
    fronts : callable or tuple, optional
        ``(train_z, test_z)`` as for :func:`rotation_penalty`, or a function returning them, called
        only when the result is not cached yet.

    Returns
    -------
    dict
        :func:`rotation_penalty`'s result.
    """
    config = dict(model=model_key, layer=layer, kind=kind, trial=trial, seed=seed, epochs=epochs, start=start,
                  n_train=n_train, n_test=n_test, batch_size=batch_size, lr=lr, schedule=schedule,
                  step_size=step_size, gamma=gamma, evals_per_epoch=evals_per_epoch)
    return memo("rotation_penalty", config, lambda: rotation_penalty(
        model, layer, kind, torch.Generator().manual_seed(1000 * seed + trial), data, epochs, n_train, n_test,
        batch_size=batch_size, lr=lr, seed=seed + trial, start=start, fronts=fronts() if callable(fronts) else fronts,
        schedule=schedule, step_size=step_size, gamma=gamma, evals_per_epoch=evals_per_epoch))
