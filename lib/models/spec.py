"""Symmetry as data: sites, the parameter axes their group elements act on, and the helpers that
write them.

A :class:`SymmetrySpec` says, for every parameter and buffer of a model, which axis the group
element of which hidden activation space (a :class:`Site`) multiplies, and how: the
``PermutationSpec`` idea of git-re-basin, generalised from permutations to any intertwiner group of
Table 1. Each architecture module builds its spec with a pure factory (``myrtle_spec``,
``resnet_spec``, ``mlp_spec``) out of the small helpers here: :func:`conv_axes`, :func:`dense_axes`,
:func:`bias_axes`, :func:`norm_axes`. ``lib.symmetry`` reads the spec and never branches on the
architecture.

The module also holds what every builder shares: :func:`activation_params`, :func:`check_width`,
:func:`check_memory`, and :func:`split_sequential`, the cut of a ``Sequential`` model (Myrtle CNN,
MLP) after a hidden layer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers

import torch
from torch import nn

from ..config import available_memory

__all__ = [
    "Site",
    "SymmetrySpec",
    "activation_params",
    "check_width",
    "check_memory",
    "conv_axes",
    "dense_axes",
    "bias_axes",
    "norm_axes",
    "SequentialFront",
    "SequentialBack",
    "split_sequential",
]


@dataclasses.dataclass(frozen=True)
class Site:
    """One group element's worth of symmetry: a hidden activation space of ``channels`` dimensions.

    Parameters
    ----------
    name : str
        The site's name (a key of the ``sites`` of a :class:`SymmetrySpec`).
    channels : int
        Dimension of the activation space (channels of a conv layer, units of a dense one).
    activation : str
        The activation applied at the site (a key of :data:`lib.activations.ACTIVATIONS`).
    params : tuple
        The activation's parameters as sorted ``(key, value)`` pairs, e.g. ``(("negative_slope",
        0.01),)``.
    monomial : bool
        A per-channel layer (BatchNorm) sits between the linear map and the activation, so only
        monomial elements (permutation times diagonal) can pass through it.
    positive_phi : bool
        A max-pool follows the activation, which commutes with phi(A) only when phi(A) has positive
        entries.
    phi_fixed : bool
        The site is a residual stream, where the shortcut adds the transformed post-activation
        phi(A) h to the transformed pre-activation A z, so phi(A) must equal A.
    parent : str or None
        A zero-padded shortcut copies the ``parent`` site's channels into the channels ``embed`` of
        this one, so this site's element restricted to them is the parent's element.
    embed : tuple of int or None
        The channels of this site that hold the parent's (see ``parent``).
    """

    name: str
    channels: int
    activation: str
    params: tuple = ()
    monomial: bool = False
    positive_phi: bool = False
    phi_fixed: bool = False
    parent: str | None = None
    embed: tuple | None = None


@dataclasses.dataclass(frozen=True)
class SymmetrySpec:
    """Where each site's element acts.

    Parameters
    ----------
    sites : dict
        ``{name: Site}``, parents before the sites embedded in them.
    axes : dict
        ``axes[name]`` has one entry per axis of the parameter or buffer ``name``: ``None``
        (untouched) or ``(site, role)`` with role ``"out"`` (multiply by A on that axis), ``"in"``
        (multiply by phi(A)^-1 on that axis) or ``"perm"`` (apply only the permutation pattern of A,
        for a linear map followed by BatchNorm and for BatchNorm's running statistics).
    layers : dict
        ``layers[hidden_layer_name]`` is the site whose element transforms that layer's output.
    """

    sites: dict
    axes: dict
    layers: dict


def activation_params(activation: str, negative_slope: float | None) -> dict:
    """The keyword parameters of ``activation``: ``{"negative_slope": s}`` for LeakyReLU, else none.

    Parameters
    ----------
    activation : str
        An activation name (:data:`lib.activations.ACTIVATIONS`).
    negative_slope : float or None
        LeakyReLU's slope for negative inputs (ignored for other activations).

    Returns
    -------
    dict
        Keyword arguments for :class:`lib.activations.Activation`.

    Raises
    ------
    ValueError
        For LeakyReLU with a slope that is not a finite number (NaN gives NaN outputs).
    """
    if activation != "leaky_relu":
        return {}
    ok = isinstance(negative_slope, numbers.Real) and not isinstance(negative_slope, bool)
    if not (ok and math.isfinite(negative_slope)):
        raise ValueError(
            f"negative_slope must be a finite number (LeakyReLU's slope for negative "
            f"inputs, e.g. 0.01); got {negative_slope!r}"
        )
    return {"negative_slope": negative_slope}


def check_width(width) -> None:
    """Raise ``ValueError`` unless ``width`` (a multiplier of the channel counts) is a finite number
    > 0.

    A width <= 0 would otherwise be rounded up to 1-channel layers and trained without complaint.

    Parameters
    ----------
    width : float
        The multiplier, e.g. 0.25 or 1.0.
    """
    if (
        isinstance(width, bool)
        or not isinstance(width, (int, float))
        or not math.isfinite(width)
        or width <= 0
    ):
        raise ValueError(
            f"width must be a finite number > 0 (a multiplier of the channel counts, e.g. 0.25 or "
            f"1.0); got {width!r}"
        )


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


# The configurations check_memory has passed: building one again costs no second construction.
_FITS: set = set()


def check_memory(make, param: str, value, config: dict) -> None:
    """Raise ``ValueError`` if the model that ``make()`` builds would not fit in the memory left.

    ``make`` runs on PyTorch's meta device, which records shapes and allocates nothing, so a width
    of 1e7 is refused in milliseconds instead of allocating until the kernel kills the process. The
    estimate counts parameters and buffers (what building allocates); training needs about four
    times that plus activations. A configuration that passed once is not checked again.

    Parameters
    ----------
    make : callable
        ``make() -> nn.Module``, the builder's construction without its checks.
    param : str
        The parameter that sets the size (``"width"``, ``"sizes"``), named in the error.
    value : object
        Its value, shown in the error.
    config : dict
        Everything ``make`` depends on (the model's ``arch`` dict), the key of the passed checks.

    Raises
    ------
    ValueError
        Naming ``param``, the estimate and the memory available
        (:func:`lib.config.available_memory`).
    """
    key = json.dumps(config, sort_keys=True, default=repr)
    if key in _FITS:
        return
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = make()
    except (RuntimeError, OverflowError, TypeError) as exc:  # torch's TypeError: beyond int64
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"{param}={value!r} gives layers too large to represent ({first_line}); "
            f"use a smaller {param}"
        ) from exc
    nbytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    available = available_memory()
    if available is not None and nbytes > available:
        raise ValueError(
            f"{param}={value!r} needs about {_gib(nbytes)} for the model's parameters "
            f"and buffers alone, more than the {_gib(available)} of memory available; "
            f"use a smaller {param}"
        )
    _FITS.add(key)


def _site_axis(site: str | None, role: str):
    return None if site is None else (site, role)


def conv_axes(out_site: str | None, in_site: str | None, out_role: str = "out") -> tuple:
    """The axes of a ``(C_out, C_in, k, k)`` convolution weight.

    Parameters
    ----------
    out_site, in_site : str or None
        The sites of the output and input channels (None: untouched, e.g. the image channels).
    out_role : str
        ``"out"``, or ``"perm"`` when a BatchNorm follows the convolution (it takes the diagonal
        part).

    Returns
    -------
    tuple
        Four entries for :attr:`SymmetrySpec.axes`.
    """
    return (_site_axis(out_site, out_role), _site_axis(in_site, "in"), None, None)


def dense_axes(out_site: str | None, in_site: str | None, out_role: str = "out") -> tuple:
    """The axes of a ``(C_out, C_in)`` dense weight.

    Parameters
    ----------
    out_site, in_site : str or None
        The sites of the outputs and inputs (None: untouched, e.g. the logits).
    out_role : str
        ``"out"``, or ``"perm"`` when a BatchNorm follows.

    Returns
    -------
    tuple
        Two entries for :attr:`SymmetrySpec.axes`.
    """
    return (_site_axis(out_site, out_role), _site_axis(in_site, "in"))


def bias_axes(site: str | None) -> tuple:
    """The axis of a ``(C,)`` bias of a linear map whose outputs are ``site``'s pre-activations.

    Parameters
    ----------
    site : str or None
        The site (None: untouched).

    Returns
    -------
    tuple
        One entry for :attr:`SymmetrySpec.axes`.
    """
    return (_site_axis(site, "out"),)


def norm_axes(prefix: str, site: str) -> dict:
    """The axes of a BatchNorm called ``prefix`` at ``site``.

    Parameters
    ----------
    prefix : str
        The module's name, e.g. ``"bn1"`` or ``"layer1.0.bn2"``.
    site : str
        The site of its channels.

    Returns
    -------
    dict
        ``{prefix.weight, prefix.bias: (site, "out")}`` (they take the element's diagonal) and
        ``{prefix.running_mean, prefix.running_var: (site, "perm")}`` (statistics are only
        permuted).
    """
    return {
        f"{prefix}.weight": ((site, "out"),),
        f"{prefix}.bias": ((site, "out"),),
        f"{prefix}.running_mean": ((site, "perm"),),
        f"{prefix}.running_var": ((site, "perm"),),
    }


# --------------------------------------------------------------------------------------------
# The cut of a Sequential model after a hidden layer
# --------------------------------------------------------------------------------------------
class SequentialFront(nn.Module):
    """``x -> (h,)``: a ``Sequential`` model up to and including a hidden layer.

    Parameters
    ----------
    part : nn.Sequential
        The modules up to and including the layer (shared with the model, not copied).
    """

    def __init__(self, part: nn.Sequential):
        super().__init__()
        self.part = part

    def forward(self, x: torch.Tensor) -> tuple:
        return (self.part(x),)


class SequentialBack(nn.Module):
    """``(h,) -> outputs``: the rest of a ``Sequential`` model after a hidden layer.

    Parameters
    ----------
    part : nn.Sequential
        The modules after the layer (shared with the model, not copied).

    Attributes
    ----------
    inputs : tuple of str
        The entries of the state it reads, ``("h",)``: the layer's output alone.
    """

    inputs = ("h",)

    def __init__(self, part: nn.Sequential):
        super().__init__()
        self.part = part

    def forward(self, state: tuple) -> torch.Tensor:
        return self.part(state[0])


def split_sequential(model: nn.Sequential, layer: str) -> tuple:
    """Cut a ``Sequential`` model after its child ``layer``: ``(front, back)``.

    Parameters
    ----------
    model : nn.Sequential
        The model (its modules are shared by both parts, not copied).
    layer : str
        A child of ``model``.

    Returns
    -------
    tuple
        ``(SequentialFront, SequentialBack)`` with ``back(front(x)) == model(x)``.
    """
    names = [n for n, _ in model.named_children()]
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r}; this model's modules: {', '.join(names)}")
    i = names.index(layer) + 1
    return SequentialFront(model[:i]), SequentialBack(model[i:])
