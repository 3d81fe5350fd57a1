"""Architectures of the paper, their hidden layers, and their symmetry specs.

Every builder attaches a :class:`SymmetrySpec` to the model it returns: which parameter axes each
hidden layer's intertwiner-group element acts on (the ``PermutationSpec`` idea of git-re-basin,
generalised from permutations to any group of Table 1). ``lib.groups.random_transform`` reads the
spec and never branches on the architecture. The CIFAR ConvNeXt of Section 6 (no symmetry spec) is
built in :mod:`lib.convnext` and registered here as ``"convnext_cifar"``.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from .convnext import ConvNeXtBlock, ConvNeXtCIFAR, LayerNorm2d, convnext_cifar
from .config import check_choice
from .groups import Activation

__all__ = [
    "Site", "SymmetrySpec", "myrtle_cnn", "resnet20", "mlp", "build", "ARCHITECTURES",
    "hidden_layers", "layer_info", "features", "forward_from", "symmetry_spec",
]


# --------------------------------------------------------------------------------------------
# Symmetry specs: data, not code
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Site:
    """One group element's worth of symmetry: a hidden activation space of ``channels`` dimensions.

    ``monomial``: a per-channel layer (BatchNorm) sits between the linear map and the activation, so
    only monomial elements (permutation times diagonal) can pass through it.
    ``positive_phi``: a max-pool follows the activation, which commutes with phi(A) only when phi(A)
    has positive entries.
    ``phi_fixed``: the site is a residual stream, where the shortcut adds the transformed
    post-activation phi(A)h to the transformed pre-activation A z, so phi(A) must equal A.
    ``parent``/``embed``: a zero-padded shortcut copies the parent site's channels into the channels
    ``embed`` of this one, so this site's element restricted to them is the parent's element.
    """

    name: str
    channels: int
    activation: str
    params: tuple = ()               # activation parameters as sorted (key, value) pairs
    monomial: bool = False
    positive_phi: bool = False
    phi_fixed: bool = False
    parent: str | None = None
    embed: tuple | None = None


@dataclasses.dataclass(frozen=True)
class SymmetrySpec:
    """Where each site's element acts.

    ``axes[name]`` has one entry per axis of the parameter or buffer ``name``: ``None`` (untouched)
    or ``(site, role)`` with role ``"out"`` (multiply by A on that axis), ``"in"`` (multiply by
    phi(A)^-1 on that axis) or ``"perm"`` (apply only the permutation pattern of A, for a linear map
    followed by BatchNorm and for BatchNorm's running statistics).
    ``layers[hidden_layer_name]`` is the site whose element transforms that layer's output.
    """

    sites: dict
    axes: dict
    layers: dict


def _params(act: str, negative_slope: float | None) -> dict:
    return {"negative_slope": negative_slope} if act == "leaky_relu" else {}


def _bn_axes(axes: dict, prefix: str, site: str) -> None:
    axes[f"{prefix}.weight"] = ((site, "out"),)
    axes[f"{prefix}.bias"] = ((site, "out"),)
    axes[f"{prefix}.running_mean"] = ((site, "perm"),)
    axes[f"{prefix}.running_var"] = ((site, "perm"),)


def _check_width(width) -> None:
    # A width <= 0 would be rounded up to 1-channel layers and trained without complaint.
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a finite number > 0 (a multiplier of the channel counts, e.g. 0.25 or "
                         f"1.0); got {width!r}")


# --------------------------------------------------------------------------------------------
# Myrtle CNN
# --------------------------------------------------------------------------------------------
def myrtle_cnn(width: float = 1.0, batchnorm: bool = True, activation: str = "relu",
               num_classes: int = 10, in_channels: int = 3, negative_slope: float = 0.01) -> nn.Sequential:
    """The Myrtle CNN of the paper (Page 2018), as a ``Sequential`` laid out as the authors' code.

    With BatchNorm the modules are conv/bn/act (indices 0-2), then conv/bn/act/pool three times
    (3-6, 7-10, 11-14), then pool4/flatten/linear; the paper's "layers 3, 6, 10, 14" are positions
    in ``enumerate(model.named_modules())``, i.e. the four activations. Without BatchNorm the convs
    carry a bias and the "layers 0, 2, 5" of Fig. 4 are the first three convs.
    """
    _check_width(width)
    c = max(1, round(64 * width))
    chans = [in_channels, c, 2 * c, 4 * c, 8 * c]
    params = _params(activation, negative_slope)
    mods: OrderedDict = OrderedDict()
    sites, axes, layers = {}, {}, {}
    for i in range(1, 5):
        site = f"act{i}"
        conv = f"conv{i}"
        mods[conv] = nn.Conv2d(chans[i - 1], chans[i], 3, padding=1, bias=not batchnorm)
        in_axis = (f"act{i-1}", "in") if i > 1 else None
        if batchnorm:
            mods[f"bn{i}"] = nn.BatchNorm2d(chans[i])
            axes[f"{conv}.weight"] = ((site, "perm"), in_axis, None, None)
            _bn_axes(axes, f"bn{i}", site)
        else:
            axes[f"{conv}.weight"] = ((site, "out"), in_axis, None, None)
            axes[f"{conv}.bias"] = ((site, "out"),)
        mods[site] = Activation(activation, **params)
        if i > 1:
            mods[f"pool{i}"] = nn.MaxPool2d(2)
        sites[site] = Site(site, chans[i], activation, tuple(sorted(params.items())),
                           monomial=batchnorm, positive_phi=i > 1)
        layers[site] = site
    mods["pool"] = nn.MaxPool2d(4)
    mods["flatten"] = nn.Flatten()          # (N, 8c, 1, 1) -> (N, 8c)
    mods["fc"] = nn.Linear(8 * c, num_classes)
    axes["fc.weight"] = (None, ("act4", "in"))
    model = nn.Sequential(mods)
    model.symmetry_spec = SymmetrySpec(sites, axes, layers)
    model.arch = dict(arch="myrtle_cnn", width=width, batchnorm=batchnorm, activation=activation,
                      num_classes=num_classes, in_channels=in_channels, **params)
    return model


# --------------------------------------------------------------------------------------------
# ResNet20 (He et al. 2016, CIFAR variant with option-A shortcuts)
# --------------------------------------------------------------------------------------------
class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad channels ``in -> out`` on both sides."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.left = (out_channels - in_channels) // 2
        self.right = out_channels - in_channels - self.left

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.left, self.right))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, activation: str, params: dict,
                 residual_activation: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act1 = Activation(activation, **params)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = (PadShortcut(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch
                         else nn.Identity())
        self.act2 = Activation(activation, **params) if residual_activation else nn.Identity()

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, width: float, activation: str, params: dict,
                 num_classes: int, residual_activation: bool):
        super().__init__()
        chans = [max(1, round(16 * width * 2**k)) for k in range(3)]
        self.conv1 = nn.Conv2d(3, chans[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(chans[0])
        self.act1 = Activation(activation, **params)
        in_ch = chans[0]
        for s, ch in enumerate(chans, start=1):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if (s > 1 and b == 0) else 1
                blocks.append(BasicBlock(in_ch, ch, stride, activation, params, residual_activation))
                in_ch = ch
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.linear = nn.Linear(chans[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)      # (N, C, h, w) -> (N, C)
        return self.linear(x)


def _resnet_spec(model: ResNet, activation: str, params: dict) -> SymmetrySpec:
    # One shared element per residual stream (Remark 3.6); a free element inside each block.
    p = tuple(sorted(params.items()))
    sites, axes, layers = {}, {}, {}
    stream = "stream1"
    sites[stream] = Site(stream, model.conv1.out_channels, activation, p, monomial=True, phi_fixed=True)
    axes["conv1.weight"] = ((stream, "perm"), None, None, None)
    _bn_axes(axes, "bn1", stream)
    layers["act1"] = stream
    for s in (1, 2, 3):
        for b, block in enumerate(getattr(model, f"layer{s}")):
            pre = f"layer{s}.{b}"
            new_stream = f"stream{s}"
            if new_stream not in sites:
                sc = block.shortcut
                embed = tuple(range(sc.left, sc.left + block.conv1.in_channels))
                sites[new_stream] = Site(new_stream, block.conv2.out_channels, activation, p,
                                         monomial=True, phi_fixed=True, parent=stream, embed=embed)
            inner = f"{pre}.act1"
            sites[inner] = Site(inner, block.conv1.out_channels, activation, p, monomial=True)
            axes[f"{pre}.conv1.weight"] = ((inner, "perm"), (stream, "in"), None, None)
            _bn_axes(axes, f"{pre}.bn1", inner)
            axes[f"{pre}.conv2.weight"] = ((new_stream, "perm"), (inner, "in"), None, None)
            _bn_axes(axes, f"{pre}.bn2", new_stream)
            layers[inner] = inner
            if isinstance(block.act2, Activation):
                layers[f"{pre}.act2"] = new_stream
            stream = new_stream
    axes["linear.weight"] = (None, (stream, "in"))
    return SymmetrySpec(sites, axes, layers)


def resnet20(width: float = 1.0, activation: str = "relu", negative_slope: float = 0.01,
             num_classes: int = 10, residual_activation: bool = True) -> ResNet:
    """CIFAR ResNet20: 16/32/64 channels (times ``width``), three stages of three BasicBlocks.

    Option-A shortcuts (strided subsampling plus zero-padding of channels), Kaiming-normal init.
    ``residual_activation=False`` drops the activation after each residual addition (Section 6).
    """
    _check_width(width)
    params = _params(activation, negative_slope)
    model = ResNet(3, width, activation, params, num_classes, residual_activation)
    model.symmetry_spec = _resnet_spec(model, activation, params)
    model.arch = dict(arch="resnet20", width=width, activation=activation, num_classes=num_classes,
                      residual_activation=residual_activation, **params)
    return model


# --------------------------------------------------------------------------------------------
# MLP (Section 3's f = l_k o ... o l_1)
# --------------------------------------------------------------------------------------------
def mlp(sizes=(8, 16, 16, 4), activation: str = "relu", negative_slope: float = 0.01,
        degree: int | None = None) -> nn.Sequential:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between layers."""
    params = _params(activation, negative_slope)
    if activation == "polynomial":
        params = {"degree": degree or 2}
    p = tuple(sorted(params.items()))
    mods: OrderedDict = OrderedDict()
    sites, axes, layers = {}, {}, {}
    for i in range(1, len(sizes)):
        fc = f"fc{i}"
        mods[fc] = nn.Linear(sizes[i - 1], sizes[i])
        last = i == len(sizes) - 1
        out_axis = None if last else (f"act{i}", "out")
        in_axis = (f"act{i-1}", "in") if i > 1 else None
        axes[f"{fc}.weight"] = (out_axis, in_axis)
        if not last:
            axes[f"{fc}.bias"] = (out_axis,)
            mods[f"act{i}"] = Activation(activation, **params)
            sites[f"act{i}"] = Site(f"act{i}", sizes[i], activation, p)
            layers[f"act{i}"] = f"act{i}"
    model = nn.Sequential(mods)
    model.symmetry_spec = SymmetrySpec(sites, axes, layers)
    model.arch = dict(arch="mlp", sizes=tuple(sizes), activation=activation, **params)
    return model


ARCHITECTURES = {"myrtle_cnn": myrtle_cnn, "resnet20": resnet20, "mlp": mlp}
# The builders that attach a SymmetrySpec (weight-space symmetries are defined for these).
SPEC_ARCHITECTURES = ("myrtle_cnn", "resnet20", "mlp")


def build(arch: dict, seed: int | None = None) -> nn.Module:
    """Build a model from an architecture spec such as ``{"arch": "myrtle_cnn", "width": 0.25}``.

    With ``seed`` the initial weights depend on that seed only (the global RNG is left untouched).
    """
    arch = dict(arch)
    name = arch.pop("arch", None)
    check_choice("arch", name, ARCHITECTURES)
    if seed is None:
        return ARCHITECTURES[name](**arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[name](**arch)


# --------------------------------------------------------------------------------------------
# Hidden layers and features
# --------------------------------------------------------------------------------------------
def hidden_layers(model: nn.Module) -> list[str]:
    """Names of the model's hidden activation layers, in forward order."""
    return [name for name, m in model.named_modules() if isinstance(m, Activation)]


def _authors_resnet_index(name: str, blocks_per_stage: int) -> int:
    # The authors' ResNet20 registers conv1, bn1, r1, block_seq (one Sequential of all blocks), and in each
    # block conv1, bn1, r1, conv2, bn2, r2, shortcut: 8 positions per block, the first block at position 5.
    if name == "act1":
        return 3
    stage, block, which = name.split(".")
    k = (int(stage[len("layer"):]) - 1) * blocks_per_stage + int(block)
    return 5 + 8 * k + (3 if which == "act1" else 6)


def layer_info(model: nn.Module) -> list[dict]:
    """The hidden layers with the layer numbers of the paper's figures.

    Parameters
    ----------
    model : nn.Module
        A model built by this module.

    Returns
    -------
    list of dict
        One dict per hidden layer, in forward order: ``name``; ``paper_index``, the layer's position in
        ``enumerate(named_modules())`` of the *authors'* model (the numbering of the paper's figures:
        Myrtle CNN 3, 6, 10, 14; ResNet20 stem 3, in-block ReLUs 8, 16, ..., 72, block outputs 11, 19,
        ..., 75), which for a ``Sequential`` is its position in ours; ``in_block`` (inside a residual
        block, marked ``*``); ``label`` (e.g. ``"10"`` or ``"8*"``); and ``channels``.
    """
    spec = getattr(model, "symmetry_spec", None)
    info = []
    for pos, (name, m) in enumerate(model.named_modules()):
        if not isinstance(m, Activation):
            continue
        in_block = ".act1" in name and name.startswith("layer")
        if isinstance(model, ResNet):
            # Our ResNet nests blocks in one Sequential per stage, which shifts the positions of ours.
            pos = _authors_resnet_index(name, len(model.layer1))
        ch = spec.sites[spec.layers[name]].channels if spec and name in spec.layers else None
        info.append(dict(name=name, paper_index=pos, in_block=in_block,
                         label=f"{pos}{'*' if in_block else ''}", channels=ch))
    return info


def _resolve_layers(model: nn.Module, layers) -> list[str]:
    known = hidden_layers(model)
    modules = dict(model.named_modules())
    layers = known if layers is None else ([layers] if isinstance(layers, str) else list(layers))
    for name in layers:
        if name not in modules or name == "":
            raise ValueError(f"unknown layer {name!r}; this model's hidden layers: {', '.join(known)}")
    return layers


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor, layers=None, batch_size: int = 500) -> dict:
    """Outputs of the named layers (default: all hidden layers) for inputs ``x``.

    Returns ``{name: tensor}`` with tensors on ``x``'s device, each of shape ``(n, C, h, w)`` for conv
    layers or ``(n, C)`` for dense ones. The model runs in eval mode, in batches of ``batch_size``.
    """
    layers = _resolve_layers(model, layers)
    modules = dict(model.named_modules())
    store: dict = {name: [] for name in layers}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: store[n].append(o.detach()))
             for n in layers]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n: torch.cat(v) for n, v in store.items()}


def forward_from(model: nn.Module, layer: str, h: torch.Tensor) -> torch.Tensor:
    """The rest of the network, ``f_{>m}``: the outputs when hidden layer ``layer`` outputs ``h``.

    Parameters
    ----------
    model : nn.Module
        A ``Sequential`` model of this module (Myrtle CNN, MLP) or a ResNet20.
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
        For an unknown layer, and for a layer inside a residual block: there the rest of the network also
        reads the block's input through the shortcut, so it is not a function of the layer's output alone
        (Remark 3.6), and eq. (3.5)'s ``f_{>m}`` is not defined.
    """
    if layer not in hidden_layers(model):
        raise ValueError(f"unknown layer {layer!r}; this model's hidden layers: {', '.join(hidden_layers(model))}")
    if isinstance(model, nn.Sequential):
        names = [n for n, _ in model.named_children()]
        return model[names.index(layer) + 1:](h)
    if not isinstance(model, ResNet):
        raise ValueError(f"forward_from supports Sequential models and resnet20, not {type(model).__name__}")
    if layer != "act1" and layer.endswith(".act1"):
        raise ValueError(f"{layer!r} is inside a residual block: the rest of the network also needs the block's "
                         "input, so f_>m is not a function of this layer's output (Remark 3.6)")
    blocks = [b for s in (1, 2, 3) for b in getattr(model, f"layer{s}")]
    start = 0 if layer == "act1" else [f"layer{s}.{b}.act2" for s in (1, 2, 3)
                                       for b in range(len(model.layer1))].index(layer) + 1
    for block in blocks[start:]:
        h = block(h)
    return model.linear(F.adaptive_avg_pool2d(h, 1).flatten(1))     # (N, C, h, w) -> (N, C)


def symmetry_spec(model: nn.Module) -> SymmetrySpec:
    """The model's :class:`SymmetrySpec`; an error naming the supported builders if it has none."""
    spec = getattr(model, "symmetry_spec", None)
    if spec is None:
        raise ValueError(f"{type(model).__name__} has no symmetry spec; supported architectures are "
                         f"{', '.join(SPEC_ARCHITECTURES)} (as built by lib.models)")
    return spec


# --------------------------------------------------------------------------------------------
# Residual-stream outputs (Section 6, network dissection)
# --------------------------------------------------------------------------------------------
def residual_outputs(model: nn.Module) -> list[str]:
    """Module names of the residual-stream outputs (block outputs after the addition), in forward order.

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
        raise ValueError(f"{type(model).__name__} has no residual blocks; supported: resnet20, convnext_cifar")
    return names


ARCHITECTURES["convnext_cifar"] = convnext_cifar
__all__ += ["convnext_cifar", "residual_outputs", "ConvNeXtBlock", "LayerNorm2d"]
