"""The architectures, registered once, and what works on any of them: build, cut, hidden layers,
the paper's layer numbers (features of any of them: :mod:`lib.models.features`).

Every entry of :data:`ARCHITECTURES` names its builder and its cut (``split``). A model carries the
dict it was built from as ``model.arch``, so :func:`split` and :func:`layer_info` read the model's
architecture from the model and never branch on its class.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Callable

import torch
from torch import nn

from ..activations import Activation
from ..config import check_choice, check_seed
from .convnext import ConvNeXtBlock, convnext20, convnext_cifar, split_convnext
from .mlp import mlp
from .myrtle import myrtle_cnn
from .resnet import BasicBlock, authors_index, resnet20, split_resnet
from .spec import SymmetrySpec, split_sequential

__all__ = [
    "Architecture",
    "ARCHITECTURES",
    "SPEC_ARCHITECTURES",
    "build",
    "check_image_size",
    "split",
    "symmetry_spec",
    "hidden_layers",
    "layer_info",
    "forward_from",
    "residual_outputs",
]


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One registered architecture.

    Parameters
    ----------
    builder : callable
        ``builder(**arch) -> nn.Module``, the public factory (e.g. :func:`lib.models.myrtle_cnn`).
    split : callable
        ``split(model, layer) -> (front, back)``, the cut after a hidden layer.
    symmetric : bool
        Whether the builder attaches a :class:`SymmetrySpec` (weight-space symmetries are defined).
    paper_index : callable or None
        ``paper_index(model, name) -> int``, the authors' layer number where their module layout
        differs from ours; None: the position in ``enumerate(model.named_modules())``.
    """

    builder: Callable
    split: Callable
    symmetric: bool
    paper_index: Callable | None = None


ARCHITECTURES = {
    "myrtle_cnn": Architecture(myrtle_cnn, split_sequential, symmetric=True),
    "resnet20": Architecture(resnet20, split_resnet, symmetric=True, paper_index=authors_index),
    "mlp": Architecture(mlp, split_sequential, symmetric=True),
    "convnext_cifar": Architecture(convnext_cifar, split_convnext, symmetric=False),
    "convnext20": Architecture(convnext20, split_convnext, symmetric=False),
}
"""dict: ``{name: Architecture}``; ``name`` is the ``"arch"`` entry of a model's architecture dict.
"""

SPEC_ARCHITECTURES = tuple(name for name, a in ARCHITECTURES.items() if a.symmetric)
"""tuple of str: the architectures whose builders attach a :class:`SymmetrySpec`."""


def build(arch: dict, seed: int | None = None) -> nn.Module:
    """Build a model from an architecture dict such as ``{"arch": "myrtle_cnn", "width": 0.25}``.

    Parameters
    ----------
    arch : dict
        ``"arch"`` (a key of :data:`ARCHITECTURES`) and the builder's keyword arguments.
    seed : int, optional
        With a seed the initial weights depend on that seed only (the global RNG is left untouched);
        see :func:`lib.config.check_seed`.

    Returns
    -------
    nn.Module
        The model, with ``arch`` (and ``symmetry_spec`` where defined).

    Raises
    ------
    ValueError
        For an unknown architecture, a bad seed, or a bad argument of its builder.
    """
    arch = dict(arch)
    name = arch.pop("arch", None)
    check_choice("arch", name, ARCHITECTURES)
    if seed is None:
        return ARCHITECTURES[name].builder(**arch)
    seed = check_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[name].builder(**arch)


@functools.lru_cache(maxsize=32)
def _meta_model(arch_json: str) -> nn.Module:
    # On the meta device a model records shapes only: building and running it allocates nothing.
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build(json.loads(arch_json)).eval()


@functools.lru_cache(maxsize=256)
def _input_error(arch_json: str, height: int, width: int) -> str:
    """The first line of the error of a forward pass on one image ("" if it runs)."""
    try:
        with torch.no_grad():
            _meta_model(arch_json)(torch.empty(1, 3, height, width, device="meta"))
    except RuntimeError as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ""


def check_image_size(arch: dict, height: int, width: int) -> None:
    """Raise ``ValueError`` unless a model of ``arch`` takes RGB images of this size.

    The pooling and strided layers of an architecture need images of some least size (the Myrtle
    CNN 32 x 32: three 2x2 pools and a 4x4 one); smaller images would fail inside a convolution
    with the allocator's or the kernel's error. Checked on the meta device: nothing is allocated.

    Parameters
    ----------
    arch : dict
        A config for :func:`build`.
    height, width : int
        The images' size in pixels.

    Raises
    ------
    ValueError
        Naming the size, the architecture and the smallest square size it takes (searched up to 64).
    """
    arch_json = json.dumps(arch, sort_keys=True)
    error = _input_error(arch_json, int(height), int(width))
    if not error:
        return
    # Not a bisection: the Myrtle CNN's head takes 32..39 pixels only (its 4x4 pool must leave 1x1).
    sizes = range(max(int(height), int(width)) + 1, 65)
    least = next((n for n in sizes if not _input_error(arch_json, n, n)), None)
    why = (
        f"its pooling and strided layers need larger images: the smallest square images it "
        f"takes are {least} x {least} pixels"
        if least
        else error
    )
    raise ValueError(
        f"the images ({height} x {width} pixels, RGB) do not fit architecture "
        f"{arch.get('arch')!r} ({why}); use other images or another architecture"
    )


def _architecture(model: nn.Module) -> Architecture | None:
    return ARCHITECTURES.get(getattr(model, "arch", {}).get("arch"))


def hidden_layers(model: nn.Module) -> list[str]:
    """Names of the model's hidden activation layers, in forward order.

    Parameters
    ----------
    model : nn.Module
        Any model.

    Returns
    -------
    list of str
        The names of its :class:`lib.activations.Activation` modules (e.g. ``["act1", "act2",
        "act3", "act4"]``).
    """
    return [name for name, m in model.named_modules() if isinstance(m, Activation)]


def _check_hidden(model: nn.Module, layer: str) -> None:
    known = hidden_layers(model)
    if layer not in known:
        raise ValueError(f"unknown layer {layer!r}; this model's hidden layers: {', '.join(known)}")


def split(model: nn.Module, layer: str) -> tuple:
    """Cut ``model`` after hidden layer ``layer``: ``(front, back)`` with ``back(front(x)) ==
    model(x)``.

    Parameters
    ----------
    model : nn.Module
        A model of :data:`ARCHITECTURES` (or any ``nn.Sequential`` of them).
    layer : str
        One of :func:`hidden_layers`.

    Returns
    -------
    tuple
        ``front``: an ``nn.Module`` mapping inputs ``(N, ...)`` to the *state* at the layer, a tuple
        whose first entry is the layer's output ``(N, C[, h, w])``; inside a residual block the
        second is the block's input, which the rest of the network reads through the shortcut.
        ``back``: an ``nn.Module`` mapping the state to the outputs ``(N, classes)``;
        ``back.inputs`` names the state's entries. Both share the model's modules (nothing is
        copied), so they follow its train/eval mode and device.
    """
    _check_hidden(model, layer)
    a = _architecture(model)
    if a is not None:
        return a.split(model, layer)
    if isinstance(model, nn.Sequential):
        return split_sequential(model, layer)
    raise ValueError(
        f"split supports the architectures {', '.join(ARCHITECTURES)} (as built by lib.models) and "
        f"nn.Sequential models, not {type(model).__name__}"
    )


def forward_from(model: nn.Module, layer: str, h: torch.Tensor) -> torch.Tensor:
    """The rest of the network, ``f_{>m}``: the outputs when hidden layer ``layer`` outputs ``h``.

    Parameters
    ----------
    model : nn.Module
        A model of :data:`ARCHITECTURES`.
    layer : str
        A hidden layer (see :func:`hidden_layers`).
    h : torch.Tensor
        That layer's output, ``(n, C[, h, w])``.

    Returns
    -------
    torch.Tensor
        The model's outputs ``(n, classes)``.

    Raises
    ------
    ValueError
        For an unknown layer, and for a layer inside a residual block: there the rest of the network
        also reads the block's input through the shortcut, so it is not a function of the layer's
        output alone (Remark 3.6), and eq. (3.5)'s ``f_{>m}`` is not defined.
    """
    _, back = split(model, layer)
    if len(back.inputs) > 1:
        raise ValueError(
            f"{layer!r} is inside a residual block: the rest of the network also needs the block's "
            "input, so f_>m is not a function of this layer's output (Remark 3.6)"
        )
    return back((h,))


def symmetry_spec(model: nn.Module) -> SymmetrySpec:
    """The model's :class:`SymmetrySpec`.

    Parameters
    ----------
    model : nn.Module
        A model built by one of :data:`SPEC_ARCHITECTURES`.

    Returns
    -------
    SymmetrySpec

    Raises
    ------
    ValueError
        If the model has none, naming the supported builders.
    """
    spec = getattr(model, "symmetry_spec", None)
    if spec is None:
        raise ValueError(
            f"{type(model).__name__} has no symmetry spec; supported architectures are "
            f"{', '.join(SPEC_ARCHITECTURES)} (as built by lib.models)"
        )
    return spec


def layer_info(model: nn.Module) -> list[dict]:
    """The hidden layers with the layer numbers of the paper's figures.

    Parameters
    ----------
    model : nn.Module
        A model built by this package.

    Returns
    -------
    list of dict
        One dict per hidden layer, in forward order: ``name``; ``paper_index``, the layer's position
        in ``enumerate(named_modules())`` of the *authors'* model (the numbering of the paper's
        figures: Myrtle CNN 3, 6, 10, 14; ResNet20 stem 3, in-block ReLUs 8, 16, ..., 72, block
        outputs 11, 19, ..., 75), which for a ``Sequential`` is its position in ours; ``in_block``
        (inside a residual block, marked ``*``); ``label`` (e.g. ``"10"`` or ``"8*"``); and
        ``channels`` (None without a symmetry spec).
    """
    spec = getattr(model, "symmetry_spec", None)
    a = _architecture(model)
    info = []
    for pos, (name, m) in enumerate(model.named_modules()):
        if not isinstance(m, Activation):
            continue
        in_block = ".act1" in name and name.startswith("layer")
        if a is not None and a.paper_index is not None:
            pos = a.paper_index(model, name)
        ch = spec.sites[spec.layers[name]].channels if spec and name in spec.layers else None
        info.append(
            dict(
                name=name,
                paper_index=pos,
                in_block=in_block,
                label=f"{pos}{'*' if in_block else ''}",
                channels=ch,
            )
        )
    return info


def residual_outputs(model: nn.Module) -> list[str]:
    """Module names of the residual-stream outputs (block outputs after the addition), in forward
    order.

    Parameters
    ----------
    model : nn.Module
        A ResNet20 or a ConvNeXt of this package.

    Returns
    -------
    list of str
        ResNet20: each ``BasicBlock`` (``"layer3.2"``; its output is after ``act2``, i.e. after the
        residual activation when there is one). ConvNeXt: each block's ``out`` (``"stage3.1.out"``).
        The names work with :func:`features`.
    """
    names = []
    for name, m in model.named_modules():
        if isinstance(m, BasicBlock):
            names.append(name)
        elif isinstance(m, ConvNeXtBlock):
            names.append(f"{name}.out")
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no residual blocks; supported: resnet20, convnext_cifar"
        )
    return names
