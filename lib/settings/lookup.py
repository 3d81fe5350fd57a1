"""Choosing a scale and reading its settings: :func:`resolve_scale`, :func:`scale_settings`,
:func:`resolve` for a chapter's parameters, and the book's model families
(:func:`model_families`)."""

from __future__ import annotations

import os

from ..config import check_choice
from .paper import PAPER
from .scales import SCALES, Scale

__all__ = [
    "DEFAULT_SCALE",
    "BUDGET_SECONDS",
    "resolve_scale",
    "scale_settings",
    "resolve",
    "model_families",
]

#: The scale a chapter runs at when neither its parameters nor $SYMMETRIES_SCALE name one.
DEFAULT_SCALE = "cpu"

#: Wall-clock budget of a whole book build from empty caches, in seconds, where one is set (the
#: design card: the `cpu` book within 2 h on 2 CPU cores). tests/test_budget.py guards it.
BUDGET_SECONDS = {"cpu": 2 * 3600}


def resolve_scale(scale: str | None = None) -> str:
    """The name of the scale to run at: ``scale`` if given, else ``$SYMMETRIES_SCALE``, else
    ``"cpu"``.

    Every chapter's parameters cell says ``scale = None`` and calls this right after it, so that
    one environment variable sets the scale of the whole book while papermill's ``-p scale smoke``
    (which injects a literal after the parameters cell) still wins for one chapter.

    Parameters
    ----------
    scale : str or None
        A name in :data:`SCALES`, or ``None`` to read ``$SYMMETRIES_SCALE`` (unset or empty:
        ``"cpu"``).

    Returns
    -------
    str
        A key of :data:`SCALES`.

    Raises
    ------
    ValueError
        If the chosen name is not a scale; the message names where it came from and lists the
        scales.
    """
    if scale is not None:
        check_choice("scale", scale, SCALES)
        return scale
    env = os.environ.get("SYMMETRIES_SCALE", "").strip()
    if not env:
        return DEFAULT_SCALE
    # Named as the variable, so that a typo in the environment is not mistaken for one in a chapter.
    check_choice("scale from $SYMMETRIES_SCALE", env, SCALES)
    return env


def scale_settings(scale: str) -> Scale:
    """The settings of one scale.

    Parameters
    ----------
    scale : str
        A key of :data:`SCALES` (``"smoke"``, ``"cpu"``, ``"gpu"`` or ``"paper"``).

    Returns
    -------
    Scale

    Raises
    ------
    ValueError
        If ``scale`` is not a key of :data:`SCALES`.
    """
    check_choice("scale", scale, SCALES)
    return SCALES[scale]


def resolve(value, default):
    """A chapter parameter, or the scale's default where it is ``None``.

    Only ``None`` means "the default": ``0``, ``0.0``, ``""`` and empty lists are values (``x or
    default`` would silently replace them).

    Parameters
    ----------
    value : object
        The parameter as the chapter's ``parameters`` cell (or papermill) set it.
    default : object
        The scale's setting, e.g. ``S.finetune.epochs``.

    Returns
    -------
    object
        ``default`` if ``value is None``, else ``value``.
    """
    return default if value is None else value


def model_families(s: Scale) -> dict:
    """The book's model families at scale ``s``, as plain data.

    The zoo step (``python -m lib.zoo train``) trains all of them; every chapter asks for the same
    entries (:func:`lib.zoo.book_models` turns these into recipes and seeds).

    Parameters
    ----------
    s : Scale
        The scale's settings (:func:`scale_settings`).

    Returns
    -------
    dict
        ``{name: dict(arch, recipe, models, paper_acc)}``: ``arch`` is a dict for
        :func:`lib.models.build`; ``recipe`` the fields replaced in the scale's recipe; ``models``
        the number of models one replicate trains; ``paper_acc`` the clean accuracy the paper
        reports, ``(mean, std)`` in percent (``None`` where none; :data:`lib.settings.PAPER`).
    """
    z, d, sl = s.zoo, s.dissection, s.slope
    pairs, none = 2 * z.n_pairs, (None, None)
    acc = {
        k: (PAPER[k].value, PAPER[k].std) for k in ("myrtle_acc", "myrtle_nobn_acc", "resnet20_acc")
    }
    out = {
        "myrtle": dict(
            arch=dict(arch="myrtle_cnn", width=z.myrtle_width),
            recipe={},
            models=pairs,
            paper_acc=acc["myrtle_acc"],
        ),
        # Half the width, to report accuracy against width.
        "myrtle_narrow": dict(
            arch=dict(arch="myrtle_cnn", width=z.myrtle_width / 2),
            recipe={},
            models=pairs,
            paper_acc=none,
        ),
        # Section 3.3 fine-tunes one network without BatchNorm.
        "myrtle_nobn": dict(
            arch=dict(arch="myrtle_cnn", width=z.myrtle_width, batchnorm=False),
            recipe=z.nobn_recipe,
            models=1,
            paper_acc=acc["myrtle_nobn_acc"],
        ),
        "resnet20": dict(
            arch=dict(arch="resnet20", width=z.resnet_width),
            recipe={},
            models=pairs,
            paper_acc=acc["resnet20_acc"],
        ),
        # Section 6's trio: ResNet20 with a ReLU after each residual addition, the same without it,
        # and ConvNeXt-style; one model each. The ResNets have their own width, Dissection.width: at
        # `cpu` it is the slope sweep's 0.25, so the ReLU model is the slope sweep's first model
        # (one zoo entry, trained once); at gpu/paper it is resnet_width and the "resnet20" model.
        "resnet20_dissection": dict(
            arch=dict(arch="resnet20", width=d.width), recipe={}, models=1, paper_acc=none
        ),
        "resnet20_noresrelu": dict(
            arch=dict(arch="resnet20", width=d.width, residual_activation=False),
            recipe={},
            models=1,
            paper_acc=none,
        ),
        "convnext": dict(
            arch=dict(z.convnext_arch, width=z.convnext_width),
            recipe=z.convnext_recipe,
            models=1,
            paper_acc=none,
        ),
    }
    # Appendix D.3: ResNet20 with LeakyReLU of each negative slope (slope 0 is the ReLU network).
    for slope in sl.slopes:
        leaky = {} if slope == 0 else dict(activation="leaky_relu", negative_slope=slope)
        out[f"resnet20_slope{slope:g}"] = dict(
            arch=dict(arch="resnet20", width=sl.width, **leaky),
            recipe=dict(epochs=sl.epochs),
            models=2 * sl.pairs,
            paper_acc=none,
        )
    return out
