"""Model surgery for stitching: A's state at a layer, and the stitched model ``B_{>l} ∘ M ∘
A_{<=l}``.

Models are cut with ``lib.models.split``. A's *state* at a layer is what B's rest of the network
needs: ``(h,)``, the layer's output, or inside a residual block ``(h, block_input)``. There the
stitching layer maps the inner activation into B's ``conv2``, and A's block input feeds B's shortcut
untransformed (Remark 3.6: no single-site element carries the residual stream there, so Theorem 4.2
is not expected to hold). A is frozen, and its state is computed once per image set
(:func:`front_features`), together with the feature sums of the closed-form starts
(:func:`feature_moments`). Both stream over the images ``batch_size`` at a time: the sums need one
batch's features, the stored state the result plus one batch.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import check_choice, check_chunk_size, exact_mode, get_device
from ..data import to_input
from ..models import empty_rows, hidden_layers, split, symmetry_spec
from .layers import LAYER_KINDS, StitchLayer
from .matching import add_moments, channels_last_2d, moments_of

__all__ = ["channels_at", "front_features", "feature_moments", "Stitched", "stitch"]


def channels_at(model: nn.Module, layer: str) -> int:
    """Channels of hidden layer ``layer`` (from the model's symmetry spec); checks the layer's name.

    Parameters
    ----------
    model : nn.Module
        A model with a symmetry spec (``lib.models.SPEC_ARCHITECTURES``).
    layer : str
        One of ``lib.models.hidden_layers(model)``.

    Returns
    -------
    int
        C.
    """
    known = hidden_layers(model)
    if layer not in known:
        raise ValueError(f"unknown layer {layer!r}; this model's hidden layers: {', '.join(known)}")
    spec = symmetry_spec(model)
    return spec.sites[spec.layers[layer]].channels


@torch.no_grad()
def front_features(
    model_a: nn.Module,
    layer: str,
    x: torch.Tensor,
    batch_size: int = 500,
    dtype=torch.float32,
    device=None,
) -> tuple:
    """A's state at ``layer`` for uint8 images, computed once, in eval mode.

    Parameters
    ----------
    model_a : nn.Module
        The front model, on ``device``.
    layer : str
        A hidden layer.
    x : torch.Tensor
        uint8 images ``(n, H, W, 3)``.
    batch_size : int
        Images per forward pass (a positive integer): the memory beyond the result is one batch.
    dtype : torch.dtype
        Storage (float16 halves the memory of early conv layers).
    device : str or torch.device, optional
        Where to compute (``lib.config.get_device``).

    Returns
    -------
    tuple of torch.Tensor
        ``(h,)`` with ``h`` of shape ``(n, C, h, w)``, or ``(h, block_input)`` for a layer inside a
        residual block.
    """
    channels_at(model_a, layer)
    batch_size = _check_images_and_batch(x, batch_size)
    device = get_device(device)
    front = split(model_a, layer)[0]
    was = model_a.training
    model_a.eval()
    out = None
    try:
        for s in range(0, len(x), batch_size):
            out = _store(out, s, front(to_input(x[s : s + batch_size], device)), len(x), dtype)
    finally:
        model_a.train(was)
    return out


def _check_images_and_batch(x: torch.Tensor, batch_size) -> int:
    batch_size = check_chunk_size(batch_size, "batch_size")
    if len(x) == 0:
        raise ValueError("x holds no images")
    return batch_size


def _store(out: tuple | None, start: int, state: tuple, n: int, dtype) -> tuple:
    # The state of all n images is allocated once, at the first batch, and filled batch by batch:
    # a list of batches joined by torch.cat would hold two copies of it at the end.
    if out is None:
        out = tuple(empty_rows(t, n, dtype) for t in state)
    for o, t in zip(out, state):
        o[start : start + len(t)] = t
    return out


@torch.no_grad()
def feature_moments(
    model_a: nn.Module,
    model_b: nn.Module,
    layer: str,
    x: torch.Tensor,
    batch_size: int = 250,
    device=None,
    front_dtype=None,
):
    """Float64 sums of A's and B's features at ``layer`` over images ``x``, in one streaming pass.

    Channels are the features and every (image, position) a sample, so ``n_samples = n·h·w``. The
    images are processed ``batch_size`` at a time in float32 (no autocast), so memory does not grow
    with ``n``.

    Parameters
    ----------
    model_a, model_b : nn.Module
        Two models of one architecture, on ``device``.
    layer : str
        A hidden layer of both.
    x : torch.Tensor
        uint8 images ``(n, H, W, 3)``.
    batch_size : int
        Images per forward pass (a positive integer): the chunk of the streaming pass.
    device : str or torch.device, optional
        Where to compute.
    front_dtype : torch.dtype, optional
        Also keep A's state at the layer (as :func:`front_features` gives it), stored as this dtype:
        one pass instead of two.

    Returns
    -------
    dict or tuple
        The sums (``lib.stitching.moments_of``: ``n``, ``sa``, ``sb``, ``aa``, ``ab``, ``bb``); with
        ``front_dtype``, ``(sums, fronts)``.
    """
    channels_at(model_a, layer)
    batch_size = _check_images_and_batch(x, batch_size)
    device = get_device(device)
    front_a, front_b = split(model_a, layer)[0], split(model_b, layer)[0]
    total, kept = None, None
    was = model_a.training, model_b.training
    model_a.eval(), model_b.eval()
    try:
        with exact_mode():
            for s in range(0, len(x), batch_size):
                xin = to_input(x[s : s + batch_size], device)
                state = front_a(xin)
                hb = front_b(xin)[0]
                total = add_moments(
                    total, moments_of(channels_last_2d(state[0]), channels_last_2d(hb))
                )
                if front_dtype is not None:
                    kept = _store(kept, s, state, len(x), front_dtype)
    finally:
        model_a.train(was[0]), model_b.train(was[1])
    return total if front_dtype is None else (total, kept)


class Stitched(nn.Module):
    """``B_{>layer} ∘ stitch ∘ A_{<=layer}``.

    Parameters
    ----------
    model_a : nn.Module
        The front model (shared with the caller, frozen, always in eval mode).
    model_b : nn.Module
        The back model (the stitched model's own copy; its parameters are frozen, its BatchNorm
        statistics may adapt in train mode).
    layer : str
        The hidden layer after which the models are cut.
    stitch_layer : StitchLayer
        The map between them.

    Notes
    -----
    ``forward(x)`` takes float model inputs ``(N, 3, H, W)`` and returns outputs ``(N, classes)``;
    :meth:`tail` takes A's state as returned by :meth:`front` or :func:`front_features`.
    """

    def __init__(
        self, model_a: nn.Module, model_b: nn.Module, layer: str, stitch_layer: StitchLayer
    ):
        super().__init__()
        self.model_a, self.model_b, self.layer, self.stitch = model_a, model_b, layer, stitch_layer
        self.a_front, self.b_back = split(model_a, layer)[0], split(model_b, layer)[1]
        # B is the stitched model's own copy; A is shared with the caller and only run under
        # no_grad.
        for p in model_b.parameters():
            p.requires_grad_(False)

    def front(self, x: torch.Tensor) -> tuple:
        """A's state at the layer for float inputs ``x`` ``(N, 3, H, W)`` (no gradient)."""
        with torch.no_grad():
            return self.a_front(x)

    def tail(self, state: tuple) -> torch.Tensor:
        """B's outputs ``(N, classes)`` from A's state: the stitching layer maps ``state[0]``."""
        return self.b_back((self.stitch(state[0].float()), *(t.float() for t in state[1:])))

    def forward(self, x):
        return self.tail(self.front(x))

    def train(self, mode: bool = True):
        # A stays in eval mode; B's layers follow ``mode`` (BatchNorm statistics adapt when True).
        super().train(mode)
        self.model_a.eval()
        return self


def stitch(
    model_a: nn.Module,
    model_b: nn.Module,
    layer: str,
    layer_kind: str,
    rank: int | None = None,
    init: str = "default",
    generator: torch.Generator | None = None,
    bias: bool = False,
) -> Stitched:
    """The stitched model ``B_{>layer} ∘ M ∘ A_{<=layer}`` with a new stitching layer of
    ``layer_kind``.

    Parameters
    ----------
    model_a, model_b : nn.Module
        Two models of the same architecture on the same device. ``model_b`` is deep-copied (its
        BatchNorm statistics may adapt); ``model_a`` is shared and frozen.
    layer : str
        A hidden layer of both.
    layer_kind : str
        ``"full"``, ``"rank"`` or ``"grelu"`` (:class:`StitchLayer`).
    rank : int, optional
        r, only for ``layer_kind="rank"``.
    init : str
        ``"default"`` or ``"identity"`` (full and grelu layers start at the identity, so stitching a
        model with itself reproduces it exactly).
    generator : torch.Generator, optional
        The random start's source.
    bias : bool
        Add a bias to full and rank layers.

    Returns
    -------
    Stitched
    """
    check_choice("layer_kind", layer_kind, LAYER_KINDS)
    if getattr(model_a, "arch", None) != getattr(model_b, "arch", None):
        raise ValueError(
            f"model_a and model_b must have the same architecture, got "
            f"{getattr(model_a, 'arch', type(model_a).__name__)} and "
            f"{getattr(model_b, 'arch', type(model_b).__name__)}"
        )
    dev_a, dev_b = next(model_a.parameters()).device, next(model_b.parameters()).device
    if dev_a != dev_b:
        raise ValueError(f"model_a and model_b must be on the same device, got {dev_a} and {dev_b}")
    if layer_kind != "rank" and rank is not None:
        raise ValueError(
            f"rank is only for layer_kind='rank', got rank={rank!r} with {layer_kind!r}"
        )
    layer_ = StitchLayer(layer_kind, channels_at(model_a, layer), rank, init, generator, bias).to(
        dev_a
    )
    return Stitched(model_a, copy.deepcopy(model_b), layer, layer_)
