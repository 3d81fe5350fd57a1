"""The Myrtle CNN (Page 2018), the paper's main convolutional model, and its symmetry spec."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..activations import Activation
from .spec import (SymmetrySpec, Site, activation_params, bias_axes, check_memory, check_width,
                   conv_axes, dense_axes, norm_axes)

__all__ = ["myrtle_cnn", "myrtle_spec"]


def myrtle_spec(channels, activation: str, params: dict, batchnorm: bool) -> SymmetrySpec:
    """The symmetry spec of a Myrtle CNN: one site per activation ``act1`` .. ``act4``.

    Parameters
    ----------
    channels : sequence of int
        Output channels of ``conv1`` .. ``conv4``.
    activation : str
        The activation's name.
    params : dict
        Its parameters (``lib.models.spec.activation_params``).
    batchnorm : bool
        Whether each convolution is followed by a BatchNorm (then the sites are monomial and the
        convolutions carry no bias).

    Returns
    -------
    SymmetrySpec
        Sites ``act1`` .. ``act4`` (the last three followed by a max-pool, so phi(A) must be positive).
    """
    p = tuple(sorted(params.items()))
    sites, axes, layers = {}, {}, {}
    for i, c in enumerate(channels, start=1):
        site, prev = f"act{i}", (f"act{i-1}" if i > 1 else None)
        if batchnorm:
            axes[f"conv{i}.weight"] = conv_axes(site, prev, "perm")
            axes.update(norm_axes(f"bn{i}", site))
        else:
            axes[f"conv{i}.weight"] = conv_axes(site, prev)
            axes[f"conv{i}.bias"] = bias_axes(site)
        sites[site] = Site(site, c, activation, p, monomial=batchnorm, positive_phi=i > 1)
        layers[site] = site
    axes["fc.weight"] = dense_axes(None, f"act{len(channels)}")
    return SymmetrySpec(sites, axes, layers)


def _conv_stage(i: int, c_in: int, c_out: int, batchnorm: bool, activation: str, params: dict) -> OrderedDict:
    # conv (with a bias only without BatchNorm), BatchNorm, activation, then a 2x2 max-pool after stage 1.
    mods: OrderedDict = OrderedDict()
    mods[f"conv{i}"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm)
    if batchnorm:
        mods[f"bn{i}"] = nn.BatchNorm2d(c_out)
    mods[f"act{i}"] = Activation(activation, **params)
    if i > 1:
        mods[f"pool{i}"] = nn.MaxPool2d(2)
    return mods


def myrtle_cnn(width: float = 1.0, batchnorm: bool = True, activation: str = "relu",
               num_classes: int = 10, in_channels: int = 3, negative_slope: float = 0.01) -> nn.Sequential:
    """The Myrtle CNN of the paper (Page 2018), as a ``Sequential`` laid out as the authors' code.

    With BatchNorm the modules are conv/bn/act (indices 0-2), then conv/bn/act/pool three times
    (3-6, 7-10, 11-14), then pool4/flatten/linear; the paper's "layers 3, 6, 10, 14" are positions
    in ``enumerate(model.named_modules())``, i.e. the four activations. Without BatchNorm the convs
    carry a bias and the "layers 0, 2, 5" of Fig. 4 are the first three convs.

    Parameters
    ----------
    width : float
        Multiplier of the channel counts 64, 128, 256, 512 (rounded, at least 1).
    batchnorm : bool
        BatchNorm after every convolution.
    activation : str
        The activation's name (:data:`lib.activations.ACTIVATIONS`).
    num_classes : int
        Outputs of the final linear layer.
    in_channels : int
        Channels of the input images.
    negative_slope : float
        LeakyReLU's slope (only for ``activation="leaky_relu"``).

    Returns
    -------
    nn.Sequential
        Inputs ``(N, in_channels, 32, 32)``, outputs ``(N, num_classes)``; with ``symmetry_spec``
        (:func:`myrtle_spec`) and ``arch`` (the dict that :func:`lib.models.build` rebuilds it from).

    Raises
    ------
    ValueError
        For a width that is not a finite number > 0 or whose parameters would not fit in memory
        (``lib.models.spec.check_memory``), or a ``negative_slope`` that is not finite.
    """
    check_width(width)
    c = max(1, round(64 * width))
    chans = [in_channels, c, 2 * c, 4 * c, 8 * c]
    params = activation_params(activation, negative_slope)

    def make() -> nn.Sequential:
        mods: OrderedDict = OrderedDict()
        for i in range(1, 5):
            mods.update(_conv_stage(i, chans[i - 1], chans[i], batchnorm, activation, params))
        mods["pool"] = nn.MaxPool2d(4)
        mods["flatten"] = nn.Flatten()          # (N, 8c, 1, 1) -> (N, 8c)
        mods["fc"] = nn.Linear(8 * c, num_classes)
        return nn.Sequential(mods)
    arch = dict(arch="myrtle_cnn", width=width, batchnorm=batchnorm, activation=activation,
                num_classes=num_classes, in_channels=in_channels, **params)
    check_memory(make, "width", width, arch)
    model = make()
    model.symmetry_spec = myrtle_spec(chans[1:], activation, params, batchnorm)
    model.arch = arch
    return model
