"""The "sanity test" for intertwiners (Section 3.3, Fig. 4): the rotation penalty.

A trained Myrtle CNN without BatchNorm gets a fixed channel map A (a 1x1 convolution) right after
one of its convolutions, i.e. on the pre-activation; the layers up to there are frozen and the
rest is fine-tuned. For A in G_ReLU the later layers can undo A exactly (Proposition 3.4: the next
convolution absorbs phi(A)^-1 = A^-1), so the penalty should be small; for a random orthogonal A
no later weights can undo it on all inputs, so the penalty should be large.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from .config import check_choice, get_device
from .groups import intertwiner_group, matrix_group
from .train import evaluate, recipe, train

__all__ = ["ROTATION_KINDS", "FixedChannelMap", "random_channel_map", "rotated_model", "rotation_penalty"]

ROTATION_KINDS = ("grelu", "orthogonal")


class FixedChannelMap(nn.Module):
    """A fixed (non-trainable) ``h -> A h`` on the channel axis of ``(N, C, H, W)``: a 1x1 conv."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.register_buffer("A", A.float()[:, :, None, None])

    def forward(self, x):
        return nn.functional.conv2d(x, self.A.to(x.dtype))


def random_channel_map(kind: str, channels: int, generator: torch.Generator, sigma: float = 1.0) -> torch.Tensor:
    """A ``(C, C)`` float64 matrix: a random G_ReLU element (uniform permutation times mean-one
    log-normal diagonal with ``sigma``) or a Haar-random orthogonal matrix (QR with the sign fix)."""
    check_choice("kind", kind, ROTATION_KINDS)
    if kind == "grelu":
        return intertwiner_group("relu", channels).sample(generator, sigma=sigma, device="cpu")
    return matrix_group("orthogonal", channels).sample(generator, device="cpu")


def rotated_model(model: nn.Sequential, layer: str, A: torch.Tensor) -> nn.Sequential:
    """A copy of the Sequential ``model`` with ``A`` applied after its module ``layer`` (a conv) and
    every parameter up to and including ``layer`` frozen."""
    names = [n for n, _ in model.named_children()]
    if not isinstance(model, nn.Sequential) or layer not in names:
        raise ValueError(f"unknown layer {layer!r}; this model's modules: {', '.join(names)}")
    conv = getattr(model, layer)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"layer {layer!r} must be a Conv2d (the transform acts on the pre-activation), "
                         f"got {type(conv).__name__}")
    if tuple(A.shape) != (conv.out_channels, conv.out_channels):
        raise ValueError(f"A must be {conv.out_channels}x{conv.out_channels} for {layer!r}, got {tuple(A.shape)}")
    new = copy.deepcopy(model)
    dev = conv.weight.device
    setattr(new, layer, nn.Sequential(getattr(new, layer), FixedChannelMap(A.to(dev))))
    for name in names[:names.index(layer) + 1]:
        for p in getattr(new, name).parameters():
            p.requires_grad_(False)
    return new


def rotation_penalty(model: nn.Sequential, layer: str, kind: str, generator: torch.Generator, data,
                     epochs: int, n_train: int | None = None, n_test: int | None = None,
                     batch_size: int = 256, lr: float = 1e-3, seed: int = 0, device=None) -> dict:
    """Transform the pre-activation of ``layer`` by a random ``kind`` matrix, freeze the front, fine-tune.

    Fine-tuning: Adam (``lr``, weight decay 1e-4 on weights, the authors' recipe without its step
    schedule, which never fires within our epochs), flips and translations, ``epochs`` passes over
    ``n_train`` training images (``lib.data.subset``), batch ``batch_size``; accuracies on ``n_test``
    test images. Returns ``clean`` (the model's accuracy), ``start`` (after the transform, before
    fine-tuning), ``finetuned`` (best over the epochs), ``penalty = clean - finetuned`` (fractions),
    ``history`` and ``seconds``.
    """
    from .data import subset

    device = get_device(device)
    t0 = time.perf_counter()
    conv = getattr(model, layer, None)
    channels = conv.out_channels if isinstance(conv, nn.Conv2d) else 0
    A = random_channel_map(kind, max(channels, 1), generator)
    new = rotated_model(model.to(device), layer, A)
    x_te, y_te = subset(data.x_test, data.y_test, n_test)
    clean = evaluate(model, x_te, y_te, device)
    start = evaluate(new, x_te, y_te, device)
    r = recipe("paper", epochs=epochs, batch_size=batch_size, lr=lr, n_train=n_train, n_test=n_test,
               step_size=max(epochs, 1))
    history = train(new, data, r, seed=seed, device=device, progress=False, desc=f"finetune {layer}")
    finetuned = max(h["test_acc"] for h in history)
    return dict(layer=layer, kind=kind, clean=clean, start=start, finetuned=finetuned,
                penalty=clean - finetuned, history=history, seconds=time.perf_counter() - t0)
