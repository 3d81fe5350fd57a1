"""Hidden features of any registered architecture, streamed over images in chunks.

:func:`feature_chunks` yields one chunk's features at a time; :func:`features` writes them into one
preallocated result (:func:`empty_rows`, in the chunk's memory layout), so the memory beyond the
result does not grow with the number of images.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import check_chunk_size
from .registry import hidden_layers

__all__ = ["feature_chunks", "features", "empty_rows"]


def _resolve_layers(model: nn.Module, layers) -> list[str]:
    known = hidden_layers(model)
    modules = dict(model.named_modules())
    layers = known if layers is None else ([layers] if isinstance(layers, str) else list(layers))
    for name in layers:
        if name not in modules or name == "":
            raise ValueError(
                f"unknown layer {name!r}; this model's hidden layers: {', '.join(known)}"
            )
    return layers


def empty_rows(like: torch.Tensor, n: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised ``(n, *like.shape[1:])`` tensor laid out as ``like`` (its memory format).

    Chunks of features copied into it keep the layout ``torch.cat`` of the chunks would have had
    (channels_last for this library's inputs, ``lib.data.to_input``), so that the kernels that later
    read it, and so their rounding, are the same.

    Parameters
    ----------
    like : torch.Tensor
        One chunk ``(m, ...)``.
    n : int
        Rows of the result.
    dtype : torch.dtype, optional
        Its dtype (default: ``like``'s).

    Returns
    -------
    torch.Tensor
        ``(n, *like.shape[1:])`` on ``like``'s device.
    """
    fmt = torch.contiguous_format
    if (
        like.ndim == 4
        and not like.is_contiguous()
        and like.is_contiguous(memory_format=torch.channels_last)
    ):
        fmt = torch.channels_last
    return torch.empty(
        (n, *like.shape[1:]), dtype=dtype or like.dtype, device=like.device, memory_format=fmt
    )


@torch.no_grad()
def _forward_features(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict:
    # Hooks live for one forward pass only, so that a caller may run the model between chunks.
    modules = dict(model.named_modules())
    store: dict = {name: [] for name in layers}
    hooks = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: store[n].append(o.detach()))
        for n in layers
    ]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for name, outs in store.items():
        if len(outs) != 1:
            raise ValueError(
                f"layer {name!r} ran {len(outs)} times in one forward pass; features "
                f"need a module that runs once per input"
            )
    return {name: outs[0] for name, outs in store.items()}


def feature_chunks(model: nn.Module, x: torch.Tensor, layers=None, chunk_size: int = 500):
    """Outputs of the named layers, ``chunk_size`` inputs at a time: a stream for running sums.

    Only one chunk's features exist at a time, so a consumer that accumulates statistics (means,
    cross-products) needs memory that does not grow with ``n``.

    Parameters
    ----------
    model : nn.Module
        Any model; it runs in eval mode during each forward pass (its mode is restored after each).
    x : torch.Tensor
        Model inputs ``(n, ...)`` on the model's device.
    layers : str or list of str, optional
        Module names (default: :func:`hidden_layers`).
    chunk_size : int
        Inputs per forward pass (a positive integer).

    Yields
    ------
    tuple
        ``(start, {name: tensor})``: the chunk's first input and each layer's outputs
        ``(m, C, h, w)`` or ``(m, C)`` for the inputs ``x[start:start + m]``, on ``x``'s device.
    """
    chunk_size = check_chunk_size(chunk_size)
    layers = _resolve_layers(model, layers)
    for start in range(0, len(x), chunk_size):
        yield start, _forward_features(model, x[start : start + chunk_size], layers)


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor, layers=None, batch_size: int = 500) -> dict:
    """Outputs of the named layers (default: all hidden layers) for inputs ``x``.

    Each chunk's outputs are copied into one preallocated tensor per layer, so the memory beyond the
    result is one chunk's features (:func:`feature_chunks`), not a second copy of all ``n``.

    Parameters
    ----------
    model : nn.Module
        Any model; it runs in eval mode (its mode is restored afterwards).
    x : torch.Tensor
        Model inputs ``(n, ...)`` on the model's device, ``n >= 1``.
    layers : str or list of str, optional
        Module names (default: :func:`hidden_layers`); any module works, e.g. ``"layer3.2"``.
    batch_size : int
        Inputs per forward pass (a positive integer).

    Returns
    -------
    dict
        ``{name: tensor}`` on ``x``'s device, each ``(n, C, h, w)`` for conv layers or ``(n, C)``
        for dense ones.
    """
    batch_size = check_chunk_size(batch_size, "batch_size")
    if len(x) == 0:
        raise ValueError("x must hold at least one input")
    out: dict = {}
    for start, part in feature_chunks(model, x, layers, batch_size):
        for name, f in part.items():
            if name not in out:
                out[name] = empty_rows(f, len(x))
            out[name][start : start + len(f)] = f
    return out
