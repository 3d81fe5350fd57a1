"""Architectures of the paper, their hidden layers, their symmetry specs and their cuts.

Every builder attaches a :class:`SymmetrySpec` to the model it returns (except the ConvNeXt of
Section 6): which parameter axes each hidden layer's intertwiner-group element acts on (the
``PermutationSpec`` idea of git-re-basin, generalised from permutations to any group of Table 1).
``lib.symmetry`` reads the spec and never branches on the architecture; ``lib.stitching`` cuts
models with :func:`split`.

Modules: ``spec`` (sites, specs and the small helpers that write them), ``myrtle``, ``resnet``,
``mlp``, ``convnext`` (one architecture each: blocks, builder, spec factory, cut), ``registry``
(:data:`ARCHITECTURES` and the functions that work on any model) and ``features`` (hidden features
of any model, streamed over images in chunks).
"""

from .convnext import (
    ConvNeXt20,
    ConvNeXtBlock,
    ConvNeXtCIFAR,
    LayerNorm2d,
    convnext20,
    convnext_cifar,
)
from .features import empty_rows, feature_chunks, features
from .mlp import mlp, mlp_spec
from .myrtle import myrtle_cnn, myrtle_spec
from .registry import (
    ARCHITECTURES,
    SPEC_ARCHITECTURES,
    Architecture,
    build,
    check_image_size,
    forward_from,
    hidden_layers,
    layer_info,
    residual_outputs,
    split,
    symmetry_spec,
)
from .resnet import BasicBlock, PadShortcut, ResNet, resnet20, resnet_spec
from .spec import Site, SymmetrySpec

__all__ = [
    "Site",
    "SymmetrySpec",
    "myrtle_spec",
    "resnet_spec",
    "mlp_spec",
    "myrtle_cnn",
    "resnet20",
    "mlp",
    "convnext_cifar",
    "convnext20",
    "ResNet",
    "BasicBlock",
    "PadShortcut",
    "ConvNeXtCIFAR",
    "ConvNeXt20",
    "ConvNeXtBlock",
    "LayerNorm2d",
    "Architecture",
    "ARCHITECTURES",
    "SPEC_ARCHITECTURES",
    "build",
    "check_image_size",
    "split",
    "symmetry_spec",
    "hidden_layers",
    "layer_info",
    "feature_chunks",
    "features",
    "empty_rows",
    "forward_from",
    "residual_outputs",
]
