"""Every setting of the library and the book, in one place.

* ``protocols``: how things are trained and measured: the zoo's training recipes
  (:data:`RECIPES`) and the departures of two families from them, the stitching protocol
  (:class:`StitchSettings`), the fine-tuning of the sanity test (:class:`FinetuneSettings`),
  NetDissect's constants, the subset seed.
* ``scales``: one frozen dataclass per concern (:class:`Zoo`, :class:`Similarity`,
  :class:`Stitching`, :class:`ResnetStitching`, :class:`SlopeSweep`, :class:`Dissection`,
  :class:`Checks`, and the fine-tuning) composed into :class:`Scale`; the four scales
  (:data:`SCALES`), each derived from another with :func:`derive` so that it states only what
  differs.
* ``paper``: the paper's reference numbers, each with its source (:data:`PAPER`).
* ``lookup``: choosing the scale (:func:`resolve_scale`), reading it (:func:`scale_settings`), a
  chapter's parameter or the scale's default (:func:`resolve`), and the book's model families
  (:func:`model_families`).

Chapters read their defaults from here (``S = scale_settings(scale)``) and override them in their
own ``parameters`` cell; no protocol number is defined anywhere else (``tests/test_settings.py``
checks).
"""

from .lookup import (
    BUDGET_SECONDS,
    DEFAULT_SCALE,
    model_families,
    resolve,
    resolve_scale,
    scale_settings,
)
from .paper import PAPER, Reported
from .protocols import (
    CONVNEXT_CPU,
    CONVNEXT_PAPER,
    FINETUNE_PAPER,
    NETDISSECT_IOU_THRESHOLD,
    NETDISSECT_QUANTILE,
    NOBN_RECIPE,
    RECIPES,
    RESNET_LAYERS,
    SLOPE_LAYERS,
    STITCH_PAPER,
    SUBSET_SEED,
    FinetuneSettings,
    StitchSettings,
)
from .scales import (
    DISSECTION_SOURCES,
    SCALES,
    Checks,
    Dissection,
    ResnetStitching,
    Scale,
    Similarity,
    SlopeSweep,
    Stitching,
    Zoo,
    derive,
)

__all__ = [
    # protocols
    "RECIPES",
    "NOBN_RECIPE",
    "CONVNEXT_CPU",
    "CONVNEXT_PAPER",
    "StitchSettings",
    "STITCH_PAPER",
    "FinetuneSettings",
    "FINETUNE_PAPER",
    "NETDISSECT_QUANTILE",
    "NETDISSECT_IOU_THRESHOLD",
    "RESNET_LAYERS",
    "SLOPE_LAYERS",
    "SUBSET_SEED",
    # scales
    "Zoo",
    "Similarity",
    "Stitching",
    "ResnetStitching",
    "SlopeSweep",
    "Dissection",
    "DISSECTION_SOURCES",
    "Checks",
    "Scale",
    "derive",
    "SCALES",
    # the paper's numbers
    "Reported",
    "PAPER",
    # lookup
    "DEFAULT_SCALE",
    "BUDGET_SECONDS",
    "resolve_scale",
    "scale_settings",
    "resolve",
    "model_families",
]
