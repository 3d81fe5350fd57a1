"""A small ConvNeXt (Liu et al. 2022) for CIFAR-10: the paper's ConvNeXt analogue for Section 6.

No activation follows its residual additions; :func:`lib.models.residual_outputs` names the block
outputs. It has no symmetry spec.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import check_choice
from ..activations import Activation
from .spec import check_memory, check_width

__all__ = ["convnext_cifar", "convnext20", "ConvNeXtBlock", "ConvNeXtCIFAR", "ConvNeXt20", "LayerNorm2d",
           "ConvNeXtFront", "ConvNeXtBack", "split_convnext"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of ``(N, C, H, W)`` maps (ConvNeXt's channels-first norm).

    Parameters
    ----------
    channels : int
        C.
    eps : float
        Added to the variance.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _norm(kind: str, channels: int) -> nn.Module:
    return LayerNorm2d(channels) if kind == "layer" else nn.BatchNorm2d(channels)


class ConvNeXtBlock(nn.Module):
    """``x + gamma * pw2(act(pw1(norm(dw(x)))))`` with nothing applied after the addition.

    Parameters
    ----------
    dim : int
        Channels of the block's input and output.
    layer_scale : float or None
        Start of the per-channel layer scale ``gamma`` (None: no layer scale).
    kernel_size : int
        The depthwise convolution's kernel (ConvNeXt: 7).
    norm : str
        ``"layer"`` (LayerNorm over channels, ConvNeXt's) or ``"batch"`` (BatchNorm).
    dw_bias : bool
        Whether the depthwise convolution has a bias (redundant before BatchNorm).

    Notes
    -----
    ``dw``: depthwise conv; ``pw1``/``pw2``: 1x1 convs to 4x the channels and back; ``act``: GELU (an
    :class:`lib.activations.Activation`, so the expanded layer is a hidden layer). ``out`` is an identity on the
    residual-stream output, so that ``features(model, x, ["<block>.out"])`` captures it.
    :meth:`inner` and :meth:`outer` are the two halves of ``forward`` around ``act``.
    """

    def __init__(self, dim: int, layer_scale: float | None = 1e-6, kernel_size: int = 7, norm: str = "layer",
                 dw_bias: bool = True):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=dw_bias)
        self.norm = _norm(norm, dim)
        self.pw1 = nn.Conv2d(dim, 4 * dim, 1)
        self.act = Activation("gelu")
        self.pw2 = nn.Conv2d(4 * dim, dim, 1)
        self.gamma = (nn.Parameter(torch.full((dim, 1, 1), float(layer_scale)))
                      if layer_scale is not None else None)
        self.out = nn.Identity()

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """``act``'s output ``(N, 4 dim, H, W)`` for the block input ``x`` ``(N, dim, H, W)``."""
        return self.act(self.pw1(self.norm(self.dw(x))))

    def outer(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The block's output from ``act``'s output ``h`` and the block input ``x``."""
        y = self.pw2(h)
        if self.gamma is not None:
            y = self.gamma * y
        return self.out(x + y)

    def forward(self, x):
        return self.outer(self.inner(x), x)


class ConvNeXtCIFAR(nn.Module):
    """The network of :func:`convnext_cifar`: stem, stages of :class:`ConvNeXtBlock` with downsampling
    between them, global average pool, LayerNorm, linear head.

    Parameters
    ----------
    dims : sequence of int
        Channels per stage.
    depths : sequence of int
        Blocks per stage.
    num_classes : int
        Outputs of the head.
    layer_scale : float or None
        Start of each block's layer scale.
    kernel_size : int
        The depthwise kernel.
    norm : str
        ``"layer"`` or ``"batch"``.
    """

    def __init__(self, dims, depths, num_classes: int, layer_scale: float | None, kernel_size: int = 7,
                 norm: str = "layer"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 3, padding=1), _norm(norm, dims[0]))
        for s, (dim, depth) in enumerate(zip(dims, depths), start=1):
            if s > 1:
                setattr(self, f"down{s}", nn.Sequential(_norm(norm, dims[s - 2]),
                                                       nn.Conv2d(dims[s - 2], dim, 2, stride=2)))
            setattr(self, f"stage{s}", nn.Sequential(*[ConvNeXtBlock(dim, layer_scale, kernel_size, norm)
                                                       for _ in range(depth)]))
        self.n_stages = len(dims)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def steps(self) -> list:
        """The forward order after the stem: ``(name, module)`` for each downsampling and block."""
        out = []
        for s in range(1, self.n_stages + 1):
            if s > 1:
                out.append((f"down{s}", getattr(self, f"down{s}")))
            out += [(f"stage{s}.{b}", blk) for b, blk in enumerate(getattr(self, f"stage{s}"))]
        return out

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """Outputs ``(N, num_classes)`` from the last block's output ``h`` ``(N, C, h, w)``."""
        return self.head(self.norm(h.mean((2, 3))))      # (N, C, h, w) -> (N, C)

    def forward(self, x):
        x = self.stage1(self.stem(x))
        for s in range(2, self.n_stages + 1):
            x = getattr(self, f"stage{s}")(getattr(self, f"down{s}")(x))
        return self.classify(x)


def convnext_cifar(width: float = 1.0, depths=(2, 2, 2), num_classes: int = 10,
                   layer_scale: float | None = 1e-6, kernel_size: int = 7, norm: str = "layer") -> ConvNeXtCIFAR:
    """A small ConvNeXt (Liu et al. 2022) for 32x32 inputs: the paper's ConvNeXt analogue at CIFAR scale.

    Stem: 3x3 conv (stride 1) + LayerNorm; stage ``s`` (``stage1``, ``stage2``, ...) has ``depths[s-1]``
    :class:`ConvNeXtBlock` of ``round(32 * width * 2**(s-1))`` channels; between stages a LayerNorm and a
    2x2 stride-2 conv halve the resolution (32, 16, 8 for three stages); head: global average pool,
    LayerNorm, linear. No stochastic depth. Like ConvNeXt, no activation follows the residual
    additions. For Section 6 dissect the last block output, ``f"stage{len(depths)}.{depths[-1]-1}.out"``
    (``"stage3.1.out"`` by default, 8x8), the analogue of the paper's final residual output.

    Parameters
    ----------
    width : float
        Multiplier of the channel counts 32, 64, 128, ...
    depths : sequence of int
        Blocks per stage (positive).
    num_classes : int
        Outputs of the head.
    layer_scale : float or None
        Start of the layer scale (None: none).
    kernel_size : int
        The depthwise kernel, odd (ConvNeXt: 7).
    norm : str
        ``"layer"`` (ConvNeXt's LayerNorm over channels, everywhere) or ``"batch"`` (BatchNorm in its
        place, which trains faster on a CPU and in few epochs; the residual additions still have
        nothing after them).

    Returns
    -------
    ConvNeXtCIFAR
        With ``arch``; no symmetry spec (:func:`lib.models.symmetry_spec` raises).

    Raises
    ------
    ValueError
        For a width that is not a finite number > 0 (``lib.models.spec.check_width``) or whose
        parameters would not fit in memory (``lib.models.spec.check_memory``), and for bad
        ``depths``, ``kernel_size`` or ``norm``.
    """
    depths = tuple(int(d) for d in depths)
    if not depths or min(depths) < 1:
        raise ValueError(f"depths must be a non-empty sequence of positive ints, got {depths!r}")
    check_width(width)
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
    check_choice("norm", norm, ("layer", "batch"))
    dims = [max(1, round(32 * width * 2**k)) for k in range(len(depths))]
    arch = dict(arch="convnext_cifar", width=width, depths=depths, num_classes=num_classes,
                layer_scale=layer_scale, kernel_size=kernel_size, norm=norm)
    check_memory(lambda: ConvNeXtCIFAR(dims, depths, num_classes, layer_scale, kernel_size, norm),
                 "width", width, arch)
    model = ConvNeXtCIFAR(dims, depths, num_classes, layer_scale, kernel_size, norm)
    model.arch = arch
    return model


class ConvNeXt20(ConvNeXtCIFAR):
    """The network of :func:`convnext20`: ResNet20's layout with ConvNeXt blocks.

    Parameters
    ----------
    dims : sequence of int
        Channels per stage.
    depth : int
        Blocks per stage.
    num_classes : int
        Outputs of the head.
    """

    def __init__(self, dims, depth: int, num_classes: int):
        nn.Module.__init__(self)
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 3, padding=1, bias=False), nn.BatchNorm2d(dims[0]))
        for s, dim in enumerate(dims, start=1):
            if s > 1:
                setattr(self, f"down{s}", nn.Sequential(nn.BatchNorm2d(dims[s - 2]),
                                                       nn.Conv2d(dims[s - 2], dim, 2, stride=2)))
            setattr(self, f"stage{s}", nn.Sequential(*[ConvNeXtBlock(dim, None, 3, "batch", dw_bias=False)
                                                       for _ in range(depth)]))
        self.n_stages = len(dims)
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """Outputs ``(N, num_classes)`` from the last block's output ``h`` ``(N, C, h, w)``."""
        return self.head(self.norm(h).mean((2, 3)))      # BatchNorm, then (N, C, h, w) -> (N, C)


def convnext20(width: float = 1.0, depth: int = 3, num_classes: int = 10) -> ConvNeXt20:
    """A ConvNeXt-style network laid out like ResNet20: Section 6's ConvNeXt analogue at CIFAR scale.

    Stem: 3x3 conv (no bias) + BatchNorm, no activation; three stages of ``depth``
    :class:`ConvNeXtBlock` with ``round(16 * width * 2**(s-1))`` channels (ResNet20's 16/32/64 at
    width 1), each block ``x + pw2(GELU(pw1(BN(dw3x3(x)))))`` with nothing after the addition and no
    layer scale; between stages BatchNorm + 2x2 stride-2 conv (32, 16, 8 pixels); head: BatchNorm,
    global average pool, linear. Kaiming-normal convolutions. Same channels, depth and resolutions as
    ResNet20, so the two differ in the block and in the activation on the residual stream, and it
    trains with the ResNets' SGD recipe (measured at ``cpu`` scale, width 0.25, 8 epochs: 64.2 %
    against the ReLU ResNet's 66.9 %). The last residual output is ``f"stage3.{depth - 1}.out"``.

    Parameters
    ----------
    width : float
        Multiplier of the channel counts 16, 32, 64.
    depth : int
        Blocks per stage (ResNet20: 3).
    num_classes : int
        Outputs of the head.

    Returns
    -------
    ConvNeXt20
        With ``arch``; no symmetry spec (:func:`lib.models.symmetry_spec` raises).

    Raises
    ------
    ValueError
        If ``width`` is not a finite number > 0 (``lib.models.spec.check_width``) or its
        parameters would not fit in memory (``lib.models.spec.check_memory``), or ``depth`` is not
        a positive int.
    """
    check_width(width)
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    dims = [max(1, round(16 * width * 2**k)) for k in range(3)]
    arch = dict(arch="convnext20", width=width, depth=depth, num_classes=num_classes)
    check_memory(lambda: ConvNeXt20(dims, depth, num_classes), "width", width, arch)
    model = ConvNeXt20(dims, depth, num_classes)
    model.arch = arch
    return model


# --------------------------------------------------------------------------------------------
# The cut after a hidden layer (every hidden layer is a block's ``act``)
# --------------------------------------------------------------------------------------------
def _position(model: ConvNeXtCIFAR, layer: str) -> int:
    block, _, which = layer.rpartition(".")
    names = [name for name, _ in model.steps()]
    if block not in names or which != "act":
        raise ValueError(f"{layer!r} is not a hidden layer of this ConvNeXt")
    return names.index(block)


class ConvNeXtFront(nn.Module):
    """``x -> (h, block_input)``: a :class:`ConvNeXtCIFAR` up to and including a block's ``act``.

    Parameters
    ----------
    model : ConvNeXtCIFAR
        The network (shared, not copied).
    layer : str
        A hidden layer, ``"stage{s}.{b}.act"``.
    """

    def __init__(self, model: ConvNeXtCIFAR, layer: str):
        super().__init__()
        self.model, self.k = model, _position(model, layer)

    def forward(self, x: torch.Tensor) -> tuple:
        steps = [m for _, m in self.model.steps()]
        h = self.model.stem(x)
        for m in steps[:self.k]:
            h = m(h)
        return steps[self.k].inner(h), h


class ConvNeXtBack(nn.Module):
    """``(h, block_input) -> outputs``: the rest of a :class:`ConvNeXtCIFAR` after a block's ``act``.

    Attributes
    ----------
    inputs : tuple of str
        ``("h", "block_input")``: the residual addition also reads the block's input.
    """

    inputs = ("h", "block_input")

    def __init__(self, model: ConvNeXtCIFAR, layer: str):
        super().__init__()
        self.model, self.k = model, _position(model, layer)

    def forward(self, state: tuple) -> torch.Tensor:
        steps = [m for _, m in self.model.steps()]
        h = steps[self.k].outer(state[0], state[1])
        for m in steps[self.k + 1:]:
            h = m(h)
        return self.model.classify(h)


def split_convnext(model: ConvNeXtCIFAR, layer: str) -> tuple:
    """Cut a :class:`ConvNeXtCIFAR` after a hidden layer (a block's ``act``).

    Parameters
    ----------
    model : ConvNeXtCIFAR
        The network; the parts share its modules.
    layer : str
        A hidden layer, ``"stage{s}.{b}.act"``.

    Returns
    -------
    tuple
        ``(ConvNeXtFront, ConvNeXtBack)`` with ``back(front(x)) == model(x)``.
    """
    return ConvNeXtFront(model, layer), ConvNeXtBack(model, layer)
