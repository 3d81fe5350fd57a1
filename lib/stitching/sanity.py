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
import dataclasses
import time

import torch
from torch import nn
from torch.nn import functional as F

from ..cache import fingerprint, memo
from ..config import check_choice, check_chunk_size, exact_mode, get_device
from ..data import subset, to_input
from ..groups import MatrixGroup, intertwiner_group
from ..models import empty_rows
from ..settings import FinetuneSettings
from .finetune import check_finetune, finetune_tail, tail_accuracy
from .matching import add_moments, least_squares, moments_of

__all__ = ["ROTATION_KINDS", "FixedChannelMap", "random_channel_map", "rotated_model",
           "pre_activations", "refit_next_conv", "rotation_penalty", "rotation_config",
           "cached_rotation_penalty"]

ROTATION_KINDS = ("grelu", "orthogonal")
"""tuple of str: the transforms of the sanity test: a random G_ReLU element or a random orthogonal matrix."""



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


def _trial_fronts(model: nn.Sequential, layer: str, data, finetune: FinetuneSettings,
                  fronts) -> tuple:
    # The labels of the subsets and their pre-activations, computed here unless given.
    x_tr, y_tr = subset(data.x_train, data.y_train, finetune.images)
    x_te, y_te = subset(data.x_test, data.y_test, finetune.eval_images)
    if fronts is None:
        device = next(model.parameters()).device
        fronts = tuple(pre_activations(model, layer, x, device=device) for x in (x_tr, x_te))
    train_z, test_z = fronts
    if len(train_z) != len(y_tr) or len(test_z) != len(y_te):
        raise ValueError(f"fronts hold {len(train_z)} and {len(test_z)} images but the settings' "
                         f"images and eval_images select {len(y_tr)} and {len(y_te)}; accepted: "
                         f"fronts of the same subsets")
    return (train_z, y_tr), (test_z, y_te)


def _trainable_copy(layers: nn.Sequential) -> nn.Sequential:
    # A copy of the layers after the transform with every parameter trainable.
    tail = copy.deepcopy(layers)
    for p in tail.parameters():
        p.requires_grad_(True)
    return tail


def rotation_penalty(model: nn.Sequential, layer: str, kind: str, generator: torch.Generator, data,
                     finetune: FinetuneSettings, *, seed: int = 0,
                     fronts: tuple | None = None) -> dict:
    """Transform the pre-activation of ``layer`` by a random ``kind`` matrix, freeze the front, fine-tune.

    Everything runs on the model's device.

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
        The images; ``finetune.images`` and ``finetune.eval_images`` of them are taken with
        ``lib.data.subset``.
    finetune : lib.settings.FinetuneSettings
        The protocol (checked by ``lib.stitching.finetune.check_finetune``): images, start
        (``"refit"``: the next conv refitted by least squares first, :func:`refit_next_conv`;
        ``"transformed"``: the paper's, from the trained weights), epochs, optimiser, schedule.
    seed : int
        Seed of the batch order.
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
    check_finetune(finetune)
    t0 = time.perf_counter()
    idx = _cut_after_conv(model, layer)
    A = random_channel_map(kind, getattr(model, layer).out_channels, generator)
    (train_z, y_tr), (test_z, y_te) = _trial_fronts(model, layer, data, finetune, fronts)
    tail = _trainable_copy(model[idx:])
    clean = tail_accuracy(tail, test_z, y_te, finetune.precision)
    net = nn.Sequential(FixedChannelMap(A.to(next(model.parameters()).device)), tail)
    start_acc = tail_accuracy(net, test_z, y_te, finetune.precision)
    if finetune.start == "refit":
        refit_next_conv(tail, A, train_z)
    history = finetune_tail(net, train_z, y_tr, test_z, y_te, finetune, seed=seed)
    for h in history:
        h["penalty"] = clean - h["test_acc"]
    finetuned, final = max(h["test_acc"] for h in history), history[-1]["test_acc"]
    return dict(layer=layer, kind=kind, start_kind=finetune.start, clean=clean, start=start_acc,
                refit=history[0]["test_acc"], finetuned=finetuned, final=final,
                penalty=clean - finetuned, final_penalty=clean - final, history=history,
                seconds=time.perf_counter() - t0)


def rotation_config(model: nn.Sequential, layer: str, kind: str, trial: int, data,
                    finetune: FinetuneSettings, *, seed: int = 0) -> dict:
    """What :func:`cached_rotation_penalty`'s memo key is a hash of (``lib.cache.memo_key``).

    The model's weight fingerprint (``lib.cache.fingerprint``), the data, the layer, the kind, the
    trial, the seed and every field of the fine-tuning settings (``dataclasses.asdict``).

    Parameters
    ----------
    model, layer, kind, trial, data, finetune, seed
        As for :func:`cached_rotation_penalty`.

    Returns
    -------
    dict
        JSON-serialisable.
    """
    return dict(model=fingerprint(model), data=data.identity, layer=layer, kind=kind, trial=trial,
                seed=seed, finetune=dataclasses.asdict(finetune))


def cached_rotation_penalty(model: nn.Sequential, layer: str, kind: str, trial: int, data,
                            finetune: FinetuneSettings, *, seed: int = 0, fronts=None) -> dict:
    """:func:`rotation_penalty` of trial ``trial``, memoised on disk (``lib.cache.memo``).

    The transform comes from ``torch.Generator().manual_seed(1000 * seed + trial)`` and the batch
    order from seed ``seed + trial``; the memo key is a hash of :func:`rotation_config`.

    Parameters
    ----------
    model : nn.Sequential
        A Myrtle CNN without BatchNorm.
    layer, kind, data, finetune
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
    config = rotation_config(model, layer, kind, trial, data, finetune, seed=seed)
    return memo("rotation_penalty", config, lambda: rotation_penalty(
        model, layer, kind, torch.Generator().manual_seed(1000 * seed + trial), data, finetune,
        seed=seed + trial, fronts=fronts() if callable(fronts) else fronts))
