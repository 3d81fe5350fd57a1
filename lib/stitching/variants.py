"""What a stitching variant is, and the name it is shown and recorded under.

A variant name (``"grelu"``, ``"rank4_random"``, ...) says which kind of layer is stitched; what was
run also depends on the protocol: a G_ReLU layer whose permutation stays at activation matching
while only its scales train (``grelu_p="fixed"``) is not the paper's Birkhoff-trained layer, and a
layer that starts from a closed-form fit is not one trained from the paper's random start.
:func:`describe` resolves a name under a protocol into a :class:`Variant` whose ``label`` (tables,
legends) and ``key`` (recorded results) say what ran, so every chapter names a variant the same way.
"""

from __future__ import annotations

import dataclasses

from ..settings import StitchSettings, scale_settings
from .experiment import parse_variant

__all__ = ["Variant", "describe", "fig1_protocol"]

# parse_variant checks a rank against the layer's channels; a label does not depend on them.
_ANY_CHANNELS = 1 << 30


@dataclasses.dataclass(frozen=True)
class Variant:
    """A stitching variant as it was run.

    Attributes
    ----------
    name : str
        The variant name given to :func:`lib.stitching.stitch_experiment`.
    kind : str
        ``"full"``, ``"rank"`` or ``"grelu"``.
    rank : int or None
        The rank of a ``"rank"`` layer.
    start : str
        ``"closed_form"`` (least squares, reduced-rank regression or activation matching),
        ``"random"`` (the paper's) or ``"matching"`` (activation matching, not trained).
    optimiser : str
        How it trains: ``"none"`` (one-shot), ``"adam"`` or ``"sgd"``; for G_ReLU followed by
        ``"+birkhoff"`` (P trained over the Birkhoff polytope) or ``"+fixed P"`` (only D trains).
    label : str
        The display name, e.g. ``"G_ReLU, matched P + trained D"``.
    key : str
        The name in result keys, e.g. ``"grelu_matchedP"``.
    """

    name: str
    kind: str
    rank: int | None
    start: str
    optimiser: str
    label: str
    key: str


def _grelu_label(start: str, p_trained: bool) -> tuple[str, str]:
    # (label, key) of a trained G_ReLU layer: where its permutation starts and whether it trains.
    if start == "random":
        return "G_ReLU, Birkhoff-trained from a random start", "grelu_birkhoff_random"
    if p_trained:
        return "G_ReLU, Birkhoff-trained from matching", "grelu_birkhoff"
    return "G_ReLU, matched P + trained D", "grelu_matchedP"


def describe(name: str, settings: StitchSettings) -> Variant:
    """Resolve a variant name under a stitching protocol into what is run.

    Parameters
    ----------
    name : str
        A variant of :func:`lib.stitching.stitch_experiment` (``lib.stitching.VARIANT_HELP``).
    settings : lib.settings.StitchSettings
        The protocol it runs under (its ``init``, ``grelu_p`` and ``optimizer`` matter).

    Returns
    -------
    Variant

    Raises
    ------
    ValueError
        If ``name`` is not a variant (the message lists the accepted names).
    """
    kind, rank, start = parse_variant(name, _ANY_CHANNELS, settings.init)
    if start == "matching":
        return Variant(
            name, kind, rank, start, "none", "activation matching (one-shot, untrained)", "matching"
        )
    suffix = ", random start" if start == "random" else ""
    if kind == "grelu":
        # A random permutation has nothing to keep fixed: stitch_experiment trains it (Birkhoff).
        p_trained = settings.grelu_p == "birkhoff" or start == "random"
        label, key = _grelu_label(start, p_trained)
        optimiser = f"{settings.optimizer}+{'birkhoff' if p_trained else 'fixed P'}"
        return Variant(name, kind, rank, start, optimiser, label, key)
    base, key = ("full", "full") if kind == "full" else (f"rank {rank}", f"rank{rank}")
    key += "_random" if start == "random" else ""
    return Variant(name, kind, rank, start, settings.optimizer, base + suffix, key)


def fig1_protocol(
    scale: str, *, epochs: int | None = None
) -> tuple[StitchSettings, int, int | None]:
    """The protocol of Fig. 1 (the Myrtle stitching chapter) at a scale.

    The scale's ``lib.settings.Scale.fig1``: the stitching of Section 4 with the replacements
    the central experiment gets at some scales (more images, other optimiser settings).

    Parameters
    ----------
    scale : str
        A key of :data:`lib.settings.SCALES`.
    epochs : int, optional
        Stitching epochs instead of the protocol's (``None``: keep them).

    Returns
    -------
    tuple
        ``(settings, stitch_images, eval_images)``: the :class:`lib.settings.StitchSettings`, the
        training images of each stitching layer, and the test images of its accuracies (``None``:
        all 10,000).
    """
    fig1 = scale_settings(scale).fig1
    protocol = fig1.protocol
    settings = protocol if epochs is None else dataclasses.replace(protocol, epochs=epochs)
    return settings, fig1.images, fig1.eval_images
