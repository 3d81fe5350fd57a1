"""Network dissection (Bau et al. 2017) under rotations of a layer's basis: Section 6 of the paper.

* ``iou``: the NetDissect algorithm (:func:`quantile_thresholds`,
  :func:`iou_scores`) and :func:`dissect`, which repeats it in bases rotated by ``Q^alpha``;
  its result is a :class:`DissectionResult` (``result``).
* ``rotations``: Haar-random rotations (:func:`random_rotation`) and the
  geodesic ``Q^alpha`` (:func:`rotation_power`).
* ``broden``: the reader of concept datasets in Broden's layout
  (:class:`BrodenDataset`); ``synthetic``: the offline concept dataset
  (:func:`make_concept_dataset`).
* ``networks``: the networks dissected per scale (:func:`zoo_models`,
  :func:`imagenet_models`); ``study``: the concept data per scale, cached
  dissections and the chapter's layer scan and checks; ``trends``: whether a
  count falls or rises along the rotation path.
"""

from .broden import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INDEX_COLUMNS,
    BrodenDataset,
)
from .iou import NetDissectSettings, dissect, iou_scores, quantile_thresholds
from .networks import (
    MIN_UNITS,
    ZOO_TRIO,
    dissection_layer,
    imagenet_models,
    stage_outputs,
    strip_residual_relu,
    zoo_models,
)
from .result import DissectionResult
from .rotations import (
    Rotations,
    geodesic_checks,
    head_after_basis_change,
    random_rotation,
    rotation_power,
)
from .study import (
    concept_dataset,
    dissect_memo,
    layer_iou,
    layers_agree,
    most_interpretable_stage,
    stage_scan,
    unit_examples,
)
from .synthetic import (
    COLOR_NAMES,
    COLOR_RGB,
    SHAPE_NAMES,
    TEXTURE_NAMES,
    ConceptSpec,
    make_concept_dataset,
    quantize_colors,
)
from .trends import rotation_slope_test, rotation_trend

__all__ = [
    # NetDissect and rotations
    "quantile_thresholds",
    "iou_scores",
    "NetDissectSettings",
    "dissect",
    "DissectionResult",
    "Rotations",
    "random_rotation",
    "rotation_power",
    "geodesic_checks",
    "head_after_basis_change",
    # concept data
    "BrodenDataset",
    "INDEX_COLUMNS",
    "ConceptSpec",
    "make_concept_dataset",
    "quantize_colors",
    "COLOR_NAMES",
    "COLOR_RGB",
    "TEXTURE_NAMES",
    "SHAPE_NAMES",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    # Section 6's networks, data and study
    "ZOO_TRIO",
    "MIN_UNITS",
    "stage_outputs",
    "dissection_layer",
    "strip_residual_relu",
    "imagenet_models",
    "zoo_models",
    "concept_dataset",
    "dissect_memo",
    "stage_scan",
    "most_interpretable_stage",
    "layer_iou",
    "layers_agree",
    "unit_examples",
    "rotation_trend",
    "rotation_slope_test",
]
