"""A small ConvNeXt (Liu et al. 2022) for CIFAR-10: the paper's ConvNeXt analogue for Section 6.

No activation follows its residual additions; :func:`lib.models.residual_outputs` names the block
outputs. :mod:`lib.models` registers :func:`convnext_cifar` as the architecture ``"convnext_cifar"`` and
re-exports these names. It has no symmetry spec.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import check_choice
from .groups import Activation

__all__ = ["convnext_cifar", "ConvNeXtBlock", "ConvNeXtCIFAR", "LayerNorm2d"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of ``(N, C, H, W)`` maps (ConvNeXt's channels-first norm)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """``x + gamma * pw2(act(pw1(norm(dw(x)))))`` with nothing applied after the addition.

    ``dw``: depthwise ``kernel_size`` x ``kernel_size`` conv (ConvNeXt: 7); ``norm``: LayerNorm over
    channels (``norm="layer"``, ConvNeXt's) or BatchNorm (``norm="batch"``); ``pw1``/``pw2``: 1x1 convs to
    4x the channels and back; ``act``: GELU (an :class:`Activation`, so the expanded layer is a hidden
    layer); ``gamma``: per-channel layer scale (None: no layer scale). ``out`` is an identity on the
    residual-stream output, so that ``features(model, x, ["<block>.out"])`` captures it.
    """

    def __init__(self, dim: int, layer_scale: float | None = 1e-6, kernel_size: int = 7, norm: str = "layer"):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = _norm(norm, dim)
        self.pw1 = nn.Conv2d(dim, 4 * dim, 1)
        self.act = Activation("gelu")
        self.pw2 = nn.Conv2d(4 * dim, dim, 1)
        self.gamma = (nn.Parameter(torch.full((dim, 1, 1), float(layer_scale)))
                      if layer_scale is not None else None)
        self.out = nn.Identity()

    def forward(self, x):
        y = self.pw2(self.act(self.pw1(self.norm(self.dw(x)))))
        if self.gamma is not None:
            y = self.gamma * y
        return self.out(x + y)


def _norm(kind: str, channels: int) -> nn.Module:
    return LayerNorm2d(channels) if kind == "layer" else nn.BatchNorm2d(channels)


class ConvNeXtCIFAR(nn.Module):
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

    def forward(self, x):
        x = self.stage1(self.stem(x))
        for s in range(2, self.n_stages + 1):
            x = getattr(self, f"stage{s}")(getattr(self, f"down{s}")(x))
        return self.head(self.norm(x.mean((2, 3))))      # (N, C, h, w) -> (N, C)


def convnext_cifar(width: float = 1.0, depths=(2, 2, 2), num_classes: int = 10,
                   layer_scale: float | None = 1e-6, kernel_size: int = 7, norm: str = "layer") -> ConvNeXtCIFAR:
    """A small ConvNeXt (Liu et al. 2022) for 32x32 inputs: the paper's ConvNeXt analogue at CIFAR scale.

    Stem: 3x3 conv (stride 1) + LayerNorm; stage ``s`` (``stage1``, ``stage2``, ...) has ``depths[s-1]``
    :class:`ConvNeXtBlock` of ``round(32 * width * 2**(s-1))`` channels; between stages a LayerNorm and a
    2x2 stride-2 conv halve the resolution (32, 16, 8 for three stages); head: global average pool,
    LayerNorm, linear. No stochastic depth. Like ConvNeXt, no activation follows the residual
    additions; :func:`lib.models.residual_outputs` names the block outputs. For Section 6 dissect the last
    block output, ``f"stage{len(depths)}.{depths[-1]-1}.out"`` (``"stage3.1.out"`` by default, 8x8), the
    analogue of the paper's final residual output. No symmetry spec: :func:`lib.models.symmetry_spec` raises.

    ``kernel_size`` (odd, ConvNeXt: 7) is the depthwise kernel; ``norm`` is ``"layer"`` (ConvNeXt's
    LayerNorm over channels, everywhere) or ``"batch"`` (BatchNorm in its place, which trains faster
    on a CPU and in few epochs; the residual additions still have nothing after them).
    """
    depths = tuple(int(d) for d in depths)
    if not depths or min(depths) < 1:
        raise ValueError(f"depths must be a non-empty sequence of positive ints, got {depths!r}")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width!r}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
    check_choice("norm", norm, ("layer", "batch"))
    dims = [max(1, round(32 * width * 2**k)) for k in range(len(depths))]
    model = ConvNeXtCIFAR(dims, depths, num_classes, layer_scale, kernel_size, norm)
    model.arch = dict(arch="convnext_cifar", width=width, depths=depths, num_classes=num_classes,
                      layer_scale=layer_scale, kernel_size=kernel_size, norm=norm)
    return model
