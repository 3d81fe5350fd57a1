"""ResNet20 (He et al. 2016, CIFAR variant with option-A shortcuts), its symmetry spec, and its cut.

torchvision style: small blocks (:class:`PadShortcut`, :class:`BasicBlock`), one network class
(:class:`ResNet`), one private builder and the public factory :func:`resnet20`. Module names follow
the authors' layout so that trained weights and the paper's layer numbers (:func:`authors_index`)
carry over.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..activations import Activation
from .spec import (
    Site,
    SymmetrySpec,
    activation_params,
    check_memory,
    check_width,
    conv_axes,
    dense_axes,
    norm_axes,
)

__all__ = [
    "PadShortcut",
    "BasicBlock",
    "ResNet",
    "ResNetFront",
    "ResNetBack",
    "resnet20",
    "resnet_spec",
    "stage_channels",
    "split_resnet",
    "authors_index",
]


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad channels ``in -> out`` on both sides.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the block's input and output; ``(out - in) // 2`` zero channels go before the
        input's, the rest after.
    stride : int
        Spatial subsampling factor.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.left = (out_channels - in_channels) // 2
        self.right = out_channels - in_channels - self.left

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.left, self.right))


class BasicBlock(nn.Module):
    """``act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x))``: ResNet's two-convolution block.

    Parameters
    ----------
    in_ch, out_ch : int
        Channels of the block's input and output.
    stride : int
        Stride of ``conv1`` (2 at the first block of a later stage); with ``stride != 1`` or a
        change of channels the shortcut is a :class:`PadShortcut`, else the identity.
    activation : str
        The activation's name; ``act1`` (inside the block) and ``act2`` (after the addition).
    params : dict
        The activation's parameters.
    residual_activation : bool
        False replaces ``act2`` by the identity (no activation after the residual addition).

    Notes
    -----
    :meth:`inner` and :meth:`outer` are the two halves of ``forward`` around ``act1``: the rest of
    the block needs both ``act1``'s output and the block's input (Remark 3.6).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        activation: str,
        params: dict,
        residual_activation: bool = True,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act1 = Activation(activation, **params)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = (
            PadShortcut(in_ch, out_ch, stride) if stride != 1 or in_ch != out_ch else nn.Identity()
        )
        self.act2 = Activation(activation, **params) if residual_activation else nn.Identity()

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """``act1``'s output ``(N, out_ch, h, w)`` for a block input ``x`` ``(N, in_ch, H, W)``."""
        return self.act1(self.bn1(self.conv1(x)))

    def outer(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The block's output from ``act1``'s output ``h`` and the block input ``x`` (for the
        shortcut)."""
        return self.act2(self.bn2(self.conv2(h)) + self.shortcut(x))

    def forward(self, x):
        return self.outer(self.inner(x), x)


class ResNet(nn.Module):
    """A CIFAR ResNet: stem, three stages of :class:`BasicBlock`, global average pool, linear head.

    Parameters
    ----------
    blocks_per_stage : int
        Blocks per stage (3 for ResNet20).
    width : float
        Multiplier of the stage channels 16, 32, 64 (rounded, at least 1).
    activation : str
        The activation's name.
    params : dict
        The activation's parameters.
    num_classes : int
        Outputs of the head.
    residual_activation : bool
        Whether an activation follows each residual addition.

    Notes
    -----
    Modules: ``conv1``, ``bn1``, ``act1`` (the stem), ``layer1`` .. ``layer3`` (one ``Sequential``
    of blocks per stage), ``linear``. Convolutions and the head start Kaiming-normal. Inputs ``(N,
    3, 32, 32)``, outputs ``(N, num_classes)``.
    """

    def __init__(
        self,
        blocks_per_stage: int,
        width: float,
        activation: str,
        params: dict,
        num_classes: int,
        residual_activation: bool,
    ):
        super().__init__()
        chans = stage_channels(width)
        self.conv1 = nn.Conv2d(3, chans[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(chans[0])
        self.act1 = Activation(activation, **params)
        in_ch = chans[0]
        for s, ch in enumerate(chans, start=1):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if (s > 1 and b == 0) else 1
                blocks.append(
                    BasicBlock(in_ch, ch, stride, activation, params, residual_activation)
                )
                in_ch = ch
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.linear = nn.Linear(chans[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem's output (hidden layer ``act1``) for inputs ``x`` ``(N, 3, H, W)``."""
        return self.act1(self.bn1(self.conv1(x)))

    def blocks(self) -> list:
        """The blocks in forward order, as ``(name, block)`` pairs (``"layer2.0"``, ...)."""
        return [
            (f"layer{s}.{b}", block)
            for s in (1, 2, 3)
            for b, block in enumerate(getattr(self, f"layer{s}"))
        ]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Outputs ``(N, num_classes)`` from the last block's output ``h`` ``(N, C, h, w)``."""
        return self.linear(F.adaptive_avg_pool2d(h, 1).flatten(1))  # (N, C, h, w) -> (N, C)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.head(x)


def stage_channels(width: float) -> list:
    """Channels of ResNet20's three stages.

    Parameters
    ----------
    width : float
        Multiplier of 16, 32, 64.

    Returns
    -------
    list of int
        ``round(16 * width * 2**k)``, at least 1, for k = 0, 1, 2.
    """
    return [max(1, round(16 * width * 2**k)) for k in range(3)]


def resnet_spec(
    channels, blocks_per_stage: int, activation: str, params: dict, residual_activation: bool
) -> SymmetrySpec:
    """The symmetry spec of a :class:`ResNet`: one shared element per residual stream (Remark 3.6)
    and a free element inside each block.

    Parameters
    ----------
    channels : sequence of int
        Channels of the three stages (``stage_channels``).
    blocks_per_stage : int
        Blocks per stage.
    activation : str
        The activation's name.
    params : dict
        Its parameters.
    residual_activation : bool
        Whether the block outputs ``layer{s}.{b}.act2`` are hidden layers.

    Returns
    -------
    SymmetrySpec
        Sites ``stream1`` .. ``stream3`` (monomial, phi(A) = A; each later stream embeds the
        previous one through the zero-padded shortcut) and ``layer{s}.{b}.act1`` (monomial).
    """
    p = tuple(sorted(params.items()))
    stream = "stream1"
    sites = {stream: Site(stream, channels[0], activation, p, monomial=True, phi_fixed=True)}
    axes = {"conv1.weight": conv_axes(stream, None, "perm"), **norm_axes("bn1", stream)}
    layers = {"act1": stream}
    in_ch = channels[0]
    for s, ch in enumerate(channels, start=1):
        new_stream = f"stream{s}"
        if new_stream not in sites:
            left = (ch - in_ch) // 2  # where PadShortcut puts the previous stream's channels
            sites[new_stream] = Site(
                new_stream,
                ch,
                activation,
                p,
                monomial=True,
                phi_fixed=True,
                parent=stream,
                embed=tuple(range(left, left + in_ch)),
            )
        for b in range(blocks_per_stage):
            pre, inner = f"layer{s}.{b}", f"layer{s}.{b}.act1"
            sites[inner] = Site(inner, ch, activation, p, monomial=True)
            axes[f"{pre}.conv1.weight"] = conv_axes(inner, stream, "perm")
            axes.update(norm_axes(f"{pre}.bn1", inner))
            axes[f"{pre}.conv2.weight"] = conv_axes(new_stream, inner, "perm")
            axes.update(norm_axes(f"{pre}.bn2", new_stream))
            layers[inner] = inner
            if residual_activation:
                layers[f"{pre}.act2"] = new_stream
            stream = new_stream
        in_ch = ch
    axes["linear.weight"] = dense_axes(None, stream)
    return SymmetrySpec(sites, axes, layers)


def _resnet(
    blocks_per_stage: int,
    width: float,
    activation: str,
    negative_slope: float,
    num_classes: int,
    residual_activation: bool,
    arch: str,
) -> ResNet:
    check_width(width)
    params = activation_params(activation, negative_slope)
    config = dict(
        arch=arch,
        width=width,
        activation=activation,
        num_classes=num_classes,
        residual_activation=residual_activation,
        **params,
    )
    check_memory(
        lambda: ResNet(
            blocks_per_stage, width, activation, params, num_classes, residual_activation
        ),
        "width",
        width,
        config,
    )
    model = ResNet(blocks_per_stage, width, activation, params, num_classes, residual_activation)
    model.symmetry_spec = resnet_spec(
        stage_channels(width), blocks_per_stage, activation, params, residual_activation
    )
    model.arch = config
    return model


def resnet20(
    width: float = 1.0,
    activation: str = "relu",
    negative_slope: float = 0.01,
    num_classes: int = 10,
    residual_activation: bool = True,
) -> ResNet:
    """CIFAR ResNet20: 16/32/64 channels (times ``width``), three stages of three BasicBlocks.

    Option-A shortcuts (strided subsampling plus zero-padding of channels), Kaiming-normal init.

    Parameters
    ----------
    width : float
        Multiplier of the channel counts.
    activation : str
        The activation's name (:data:`lib.activations.ACTIVATIONS`).
    negative_slope : float
        LeakyReLU's slope (only for ``activation="leaky_relu"``).
    num_classes : int
        Outputs of the head.
    residual_activation : bool
        False drops the activation after each residual addition (Section 6).

    Returns
    -------
    ResNet
        With ``symmetry_spec`` (:func:`resnet_spec`) and ``arch``.

    Raises
    ------
    ValueError
        For a width that is not a finite number > 0 or whose parameters would not fit in memory
        (``lib.models.spec.check_memory``), or a ``negative_slope`` that is not finite.
    """
    return _resnet(
        3, width, activation, negative_slope, num_classes, residual_activation, "resnet20"
    )


# --------------------------------------------------------------------------------------------
# The cut after a hidden layer
# --------------------------------------------------------------------------------------------
def _locate(model: ResNet, layer: str) -> tuple:
    # (number of whole blocks before the cut, whether the cut is inside the next block).
    if layer == "act1":
        return 0, False
    names = [name for name, _ in model.blocks()]
    block, _, which = layer.rpartition(".")
    if block not in names or which not in ("act1", "act2"):
        raise ValueError(f"{layer!r} is not a hidden layer of this ResNet")
    k = names.index(block)
    return (k, True) if which == "act1" else (k + 1, False)


class ResNetFront(nn.Module):
    """``x -> state``: a :class:`ResNet` up to and including a hidden layer.

    Parameters
    ----------
    model : ResNet
        The network (shared, not copied).
    layer : str
        A hidden layer: ``"act1"``, ``"layer{s}.{b}.act1"`` (inside a block) or
        ``"layer{s}.{b}.act2"``.

    Notes
    -----
    The state is ``(h,)`` with ``h`` the layer's output, or ``(h, block_input)`` inside a block,
    where the rest of the network also reads the block's input through the shortcut.
    """

    def __init__(self, model: ResNet, layer: str):
        super().__init__()
        self.model = model
        self.n_blocks, self.in_block = _locate(model, layer)

    def forward(self, x: torch.Tensor) -> tuple:
        blocks = [b for _, b in self.model.blocks()]
        h = self.model.stem(x)
        for block in blocks[: self.n_blocks]:
            h = block(h)
        return (blocks[self.n_blocks].inner(h), h) if self.in_block else (h,)


class ResNetBack(nn.Module):
    """``state -> outputs``: the rest of a :class:`ResNet` after a hidden layer (see
    :class:`ResNetFront`).

    Attributes
    ----------
    inputs : tuple of str
        The entries of the state it reads: ``("h",)``, or ``("h", "block_input")`` inside a block.
    """

    def __init__(self, model: ResNet, layer: str):
        super().__init__()
        self.model = model
        self.n_blocks, self.in_block = _locate(model, layer)
        self.inputs = ("h", "block_input") if self.in_block else ("h",)

    def forward(self, state: tuple) -> torch.Tensor:
        blocks = [b for _, b in self.model.blocks()]
        h, start = state[0], self.n_blocks
        if self.in_block:
            h, start = blocks[start].outer(h, state[1]), start + 1
        for block in blocks[start:]:
            h = block(h)
        return self.model.head(h)


def split_resnet(model: ResNet, layer: str) -> tuple:
    """Cut a :class:`ResNet` after a hidden layer.

    Parameters
    ----------
    model : ResNet
        The network; the parts share its modules.
    layer : str
        A hidden layer of ``model``.

    Returns
    -------
    tuple
        ``(ResNetFront, ResNetBack)`` with ``back(front(x)) == model(x)``.
    """
    return ResNetFront(model, layer), ResNetBack(model, layer)


def authors_index(model: ResNet, name: str) -> int:
    """The position of hidden layer ``name`` in ``enumerate(named_modules())`` of the *authors'*
    ResNet20.

    The authors' model registers conv1, bn1, r1, block_seq (one Sequential of all blocks), and in
    each block conv1, bn1, r1, conv2, bn2, r2, shortcut: 8 positions per block, the first block at
    position 5. So the stem is 3, the in-block activations 8, 16, ..., 72 and the block outputs 11,
    19, ..., 75.

    Parameters
    ----------
    model : ResNet
        The network (for its blocks per stage).
    name : str
        A hidden layer of ``model``.

    Returns
    -------
    int
        The paper's layer number.
    """
    if name == "act1":
        return 3
    stage, block, which = name.split(".")
    k = (int(stage[len("layer") :]) - 1) * len(model.layer1) + int(block)
    return 5 + 8 * k + (3 if which == "act1" else 6)
