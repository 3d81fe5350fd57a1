"""A fully connected network, Section 3's ``f = l_k o ... o l_1``, and its symmetry spec."""

from __future__ import annotations

import numbers
from collections import OrderedDict

from torch import nn

from ..activations import Activation
from .spec import Site, SymmetrySpec, activation_params, bias_axes, check_memory, dense_axes

__all__ = ["mlp", "mlp_spec"]


def mlp_spec(sizes, activation: str, params: dict) -> SymmetrySpec:
    """The symmetry spec of :func:`mlp`: one site per hidden layer ``act1`` .. ``act{k-1}``.

    Parameters
    ----------
    sizes : sequence of int
        Units per layer, input first, output last.
    activation : str
        The activation's name.
    params : dict
        Its parameters.

    Returns
    -------
    SymmetrySpec
        Sites without restrictions (no BatchNorm, no pooling).
    """
    p = tuple(sorted(params.items()))
    sites, axes, layers = {}, {}, {}
    for i in range(1, len(sizes)):
        last = i == len(sizes) - 1
        site, prev = (None if last else f"act{i}"), (f"act{i - 1}" if i > 1 else None)
        axes[f"fc{i}.weight"] = dense_axes(site, prev)
        if not last:
            axes[f"fc{i}.bias"] = bias_axes(site)
            sites[site] = Site(site, sizes[i], activation, p)
            layers[site] = site
    return SymmetrySpec(sites, axes, layers)


def mlp(
    sizes=(8, 16, 16, 4),
    activation: str = "relu",
    negative_slope: float = 0.01,
    degree: int | None = None,
) -> nn.Sequential:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between
    layers.

    Parameters
    ----------
    sizes : sequence of int
        Units per layer, input first, output last.
    activation : str
        The activation's name (:data:`lib.activations.ACTIVATIONS`).
    negative_slope : float
        LeakyReLU's slope (only for ``activation="leaky_relu"``).
    degree : int, optional
        The power of ``activation="polynomial"`` (default 2).

    Returns
    -------
    nn.Sequential
        ``fc1, act1, fc2, ..., fc{k}``: inputs ``(N, sizes[0])``, outputs ``(N, sizes[-1])``; with
        ``symmetry_spec`` (:func:`mlp_spec`) and ``arch``.

    Raises
    ------
    ValueError
        For ``sizes`` that are not at least 2 positive integers or whose parameters would not fit in
        memory (``lib.models.spec.check_memory``), or a ``negative_slope`` that is not finite.
    """
    ok = all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1 for n in sizes)
    if not (ok and len(sizes) >= 2):
        raise ValueError(
            f"sizes must be a sequence of at least 2 integers >= 1 (units per layer, "
            f"input first, output last); got {sizes!r}"
        )
    params = activation_params(activation, negative_slope)
    if activation == "polynomial":
        params = {"degree": degree or 2}

    def make() -> nn.Sequential:
        mods: OrderedDict = OrderedDict()
        for i in range(1, len(sizes)):
            mods[f"fc{i}"] = nn.Linear(sizes[i - 1], sizes[i])
            if i < len(sizes) - 1:
                mods[f"act{i}"] = Activation(activation, **params)
        return nn.Sequential(mods)

    arch = dict(arch="mlp", sizes=tuple(sizes), activation=activation, **params)
    check_memory(make, "sizes", tuple(sizes), arch)
    model = make()
    model.symmetry_spec = mlp_spec(sizes, activation, params)
    model.arch = arch
    return model
