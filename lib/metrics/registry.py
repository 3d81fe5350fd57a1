"""Every similarity measure of :mod:`lib.metrics` by name: :data:`MEASURES`.

A :class:`Measure` says what a name computes (its function, and its Gram form where it has one),
what kind of measure it is, what it is invariant to and how it preprocesses, which keyword options
it takes and how the book labels it. Code that is handed a measure's name looks it up here
(:func:`get_measure`) and calls what the entry holds, so a name that is not registered is a
``ValueError`` listing the names, never silently some other measure. A new measure is one entry.

Every function takes the same keywords: ``function(X, Y, *, dtype, device, **options)`` and
``gram(X, *, dtype, device, name, **options)``, ``options`` those the entry names
(:meth:`Measure.pick` selects them from a common set).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from ..config import check_choice
from .cka import (
    grelu_cka,
    grelu_cka_gram,
    linear_cka,
    linear_cka_gram,
    orthogonal_cka,
    orthogonal_cka_gram,
    rbf_cka,
)
from .procrustes import grelu_procrustes, orthogonal_procrustes
from .psd import psd_grelu_cka, psd_normalized_gram

__all__ = [
    "KINDS",
    "OPTIONS",
    "Measure",
    "MEASURES",
    "MATRIX_MEASURES",
    "PAPER_MEASURES",
    "get_measure",
]

#: The kinds of measure, a CKA (an inner product of centred Gram matrices) or a Procrustes
#: similarity (``1 - distance`` after the best alignment of channels; same spatial shapes only).
KINDS = ("cka", "procrustes")
#: The keyword options a measure may take besides ``dtype`` and ``device``.
OPTIONS = ("zero_channels", "block_size", "memory_budget")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Measure:
    """One registered similarity measure.

    Parameters
    ----------
    function : callable
        ``function(X, Y, *, dtype, device, **options) -> float``, the public measure of
        :mod:`lib.metrics` (e.g. :func:`lib.metrics.grelu_cka`); ``X`` and ``Y`` are features
        ``(n_samples, channels[, height, width])`` of the same samples.
    kind : str
        One of :data:`KINDS`.
    invariance : str
        The group of transformations of the features that leave the measure unchanged, in words.
    preprocessing : str
        What is done to the features before they are compared, in words.
    label : str
        The measure's name in the book's tables and figures.
    options : tuple of str
        The keywords of :data:`OPTIONS` that ``function`` and ``gram`` take.
    gram : callable or None
        The matrix form: ``gram(X, *, dtype, device, name, **options)`` is an ``(n_samples,
        n_samples)`` tensor of unit Frobenius norm whose inner product with ``Y``'s is the measure
        (so a layer's matrix is computed once and compared with many). None: no matrix form.
    paper : bool
        One of the paper's measures of Section 5 (Table 2, Figs. 2 and 5).
    """

    function: Callable
    kind: str
    invariance: str
    preprocessing: str
    label: str
    options: tuple = ()
    gram: Callable | None = None
    paper: bool = False

    def __post_init__(self):
        check_choice("kind", self.kind, KINDS)
        for option in self.options:
            check_choice("option", option, OPTIONS)

    @property
    def matrix(self) -> bool:
        """bool: whether :func:`lib.metrics.similarity_matrices` computes it over all layer pairs
        (every measure with a Gram form, and the Procrustes measures pair by pair)."""
        return self.gram is not None or self.kind == "procrustes"

    def pick(self, **options) -> dict:
        """The options among ``options`` that this measure takes.

        Parameters
        ----------
        **options
            Keywords of :data:`OPTIONS` with their values.

        Returns
        -------
        dict
            ``{option: value}`` for the options this measure's ``options`` names.
        """
        for option in options:
            check_choice("option", option, OPTIONS)
        return {k: v for k, v in options.items() if k in self.options}


_NORMALISED = "each channel centred and scaled to unit norm over (samples, positions)"
_G_RELU = (
    "G_ReLU on channels: permutations, positive scalings and translations of channels "
    "(and negative scalings)"
)

MEASURES = {
    "grelu_cka": Measure(
        function=grelu_cka,
        kind="cka",
        label="G_ReLU-CKA",
        paper=True,
        invariance=_G_RELU,
        preprocessing=_NORMALISED + "; max kernel; unbiased HSIC",
        options=("zero_channels", "block_size", "memory_budget"),
        gram=grelu_cka_gram,
    ),
    "psd_grelu_cka": Measure(
        function=psd_grelu_cka,
        kind="cka",
        label="PSD G_ReLU-CKA",
        invariance=_G_RELU,
        preprocessing=_NORMALISED + "; channel-exponential kernel (PSD); unbiased HSIC",
        options=("zero_channels", "memory_budget"),
        gram=psd_normalized_gram,
    ),
    "orthogonal_cka": Measure(
        function=orthogonal_cka,
        kind="cka",
        label="orthogonal CKA",
        paper=True,
        invariance="permutations, scalings and translations of channels; not rotations of "
        "channels in general",
        preprocessing=_NORMALISED + "; linear kernel; unbiased HSIC",
        options=("zero_channels",),
        gram=orthogonal_cka_gram,
    ),
    "linear_cka": Measure(
        function=linear_cka,
        kind="cka",
        label="linear CKA",
        paper=True,
        invariance="orthogonal maps of the flattened features, isotropic scaling, translations",
        preprocessing="flattened features centred over samples; linear kernel; biased HSIC",
        gram=linear_cka_gram,
    ),
    "rbf_cka": Measure(
        function=rbf_cka,
        kind="cka",
        label="RBF CKA",
        invariance="orthogonal maps of the flattened features, isotropic scaling, translations",
        preprocessing="flattened features; RBF kernel, bandwidth a multiple of the median "
        "distance; biased HSIC",
    ),
    "grelu_procrustes": Measure(
        function=grelu_procrustes,
        kind="procrustes",
        label="G_ReLU-Procrustes",
        paper=True,
        invariance="permutations and positive scalings of channels (not translations)",
        preprocessing="each channel scaled to unit norm over (samples, positions), no centring; "
        "channels matched by the Hungarian algorithm",
        options=("zero_channels",),
    ),
    "orthogonal_procrustes": Measure(
        function=orthogonal_procrustes,
        kind="procrustes",
        label="orthogonal Procrustes",
        paper=True,
        invariance="orthogonal maps of channels and isotropic scaling (not translations)",
        preprocessing="the whole tensor scaled to unit norm, no centring; channels matched by "
        "the best orthogonal map",
    ),
}
"""dict: ``{name: Measure}``, ``name`` the function's name in :mod:`lib.metrics`."""

MATRIX_MEASURES = tuple(name for name, m in MEASURES.items() if m.matrix)
"""tuple of str: the measures :func:`lib.metrics.similarity_matrices` computes
(:attr:`Measure.matrix`), in the order of :data:`MEASURES`."""

PAPER_MEASURES = tuple(name for name, m in MEASURES.items() if m.paper)
"""tuple of str: the paper's measures of Section 5, in the order of :data:`MEASURES`."""


def get_measure(name: str, among=None) -> Measure:
    """The registered measure called ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`MEASURES`.
    among : sequence of str, optional
        The names the caller accepts (e.g. :data:`MATRIX_MEASURES`); default: all of them.

    Returns
    -------
    Measure

    Raises
    ------
    ValueError
        ``unknown measure ...; accepted values: ...``, listing ``among``.
    """
    check_choice("measure", name, MEASURES if among is None else among)
    return MEASURES[name]
