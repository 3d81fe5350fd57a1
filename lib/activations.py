"""The elementwise activations of the library (Table 1's sigma), by name.

Models build their nonlinear layers from :class:`Activation`, so that the symmetry machinery
(:mod:`lib.groups`, :mod:`lib.symmetry`) can read each hidden layer's activation and parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .config import check_choice

__all__ = ["ACTIVATIONS", "canonical_name", "activation_fn", "Activation"]


def _rbf(x):
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


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
"""dict: activation name -> ``fn(x, **params)``, applied elementwise to a tensor of any shape.
``leaky_relu`` takes ``negative_slope`` (default 0.01), ``polynomial`` (x^d) takes ``degree``
(default 2); ``"swish"`` is accepted everywhere as another name for ``"silu"``."""

_PARAMS = {"leaky_relu": {"negative_slope"}, "polynomial": {"degree"}}


def canonical_name(name: str) -> str:
    """The key of :data:`ACTIVATIONS` for ``name``: ``"swish"`` becomes ``"silu"``, others are
    unchanged.

    Parameters
    ----------
    name : str
        An activation name (not checked here).

    Returns
    -------
    str
    """
    return "silu" if name == "swish" else name


def activation_fn(name: str, **params):
    """The elementwise function called ``name``, with its parameters bound.

    Parameters
    ----------
    name : str
        A key of :data:`ACTIVATIONS` (or ``"swish"``).
    **params
        The activation's parameters (``negative_slope``, ``degree``); others are a ``ValueError``.

    Returns
    -------
    callable
        ``x -> sigma(x)``, a tensor of the same shape as ``x``.
    """
    name = canonical_name(name)
    check_choice("activation", name, ACTIVATIONS)
    unknown = set(params) - _PARAMS.get(name, set())
    if unknown:
        raise ValueError(
            f"activation {name!r} takes no parameter {sorted(unknown)}; "
            f"accepted: {sorted(_PARAMS.get(name, set())) or 'none'}"
        )
    fn = ACTIVATIONS[name]
    return (lambda x: fn(x, **params)) if params else fn


class Activation(nn.Module):
    """An elementwise activation layer: maps a tensor of any shape to one of the same shape.

    Parameters
    ----------
    name : str
        A key of :data:`ACTIVATIONS` (``"swish"`` is stored as ``"silu"``).
    **params
        The activation's parameters, as for :func:`activation_fn`.
    """

    def __init__(self, name: str = "relu", **params):
        super().__init__()
        self.fn = activation_fn(name, **params)
        self.name = canonical_name(name)
        self.params = dict(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The activation applied elementwise.

        Parameters
        ----------
        x : torch.Tensor, any shape

        Returns
        -------
        torch.Tensor
            ``sigma(x)``, with the shape and dtype of ``x``.
        """
        return self.fn(x)

    def extra_repr(self):
        return ", ".join([repr(self.name)] + [f"{k}={v}" for k, v in self.params.items()])
