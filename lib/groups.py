"""Intertwiner groups of elementwise activations (Section 3.1, Table 1, Lemma 3.1, Theorem 3.3).

This first part holds the activations themselves; models build their nonlinear layers from it.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .config import check_choice

__all__ = ["ACTIVATIONS", "activation_fn", "Activation"]


def _rbf(x):
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


# Each entry maps (tensor, **params) -> tensor, applied elementwise.
ACTIVATIONS = {
    "identity": lambda x: x,
    "relu": F.relu,
    "leaky_relu": lambda x, negative_slope=0.01: F.leaky_relu(x, negative_slope),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "rbf": _rbf,
    "polynomial": lambda x, degree=2: x**degree,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
    "elu": F.elu,
}

_PARAMS = {"leaky_relu": {"negative_slope"}, "polynomial": {"degree"}}


def activation_fn(name: str, **params):
    """The elementwise function ``x -> sigma(x)`` called ``name`` with its parameters bound."""
    if name == "swish":
        name = "silu"
    check_choice("activation", name, ACTIVATIONS)
    unknown = set(params) - _PARAMS.get(name, set())
    if unknown:
        raise ValueError(f"activation {name!r} takes no parameter {sorted(unknown)}; "
                         f"accepted: {sorted(_PARAMS.get(name, set())) or 'none'}")
    fn = ACTIVATIONS[name]
    return (lambda x: fn(x, **params)) if params else fn


class Activation(nn.Module):
    """An elementwise activation layer, by name (any key of :data:`ACTIVATIONS`)."""

    def __init__(self, name: str = "relu", **params):
        super().__init__()
        self.fn = activation_fn(name, **params)
        self.name = "silu" if name == "swish" else name
        self.params = dict(params)

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self):
        return ", ".join([repr(self.name)] + [f"{k}={v}" for k, v in self.params.items()])
