"""Model stitching with full, reduced-rank and G_ReLU stitching layers (Section 4, Theorem 4.2), and
the sanity test of Section 3.3 (Fig. 4).

A stitched model runs model A up to and including a hidden layer, a stitching layer (a 1x1 map on
channels), then model B after that layer (``lib.models.split`` cuts both). A is frozen and its front
is computed once per image set; only the stitching layer trains.

Modules: ``matching`` (Sinkhorn, Hungarian, activation matching, least squares, feature sums),
``layers`` (:class:`StitchLayer`), ``surgery`` (A's state at a layer, :class:`Stitched`,
:func:`stitch`), ``training`` (:func:`train_stitch` under a ``lib.settings.StitchSettings``),
``curves`` (evaluations within an epoch, :func:`last_quarter_change`), ``experiment``
(:func:`stitch_experiment` and its disk cache), ``variants`` (what a variant name runs under a
protocol, its label and result key), ``sanity`` (the rotation penalty of Fig. 4: transform a
pre-activation, freeze the front, fine-tune the rest) and ``finetune`` (that fine-tuning and its
learning-rate schedules).
"""

# The protocols' dataclasses live with the other settings; they are listed here beside their users.
from . import finetune, sanity
from .curves import check_evals_per_epoch, eval_steps, last_quarter_change
from .experiment import (
    VARIANT_HELP,
    StitchData,
    cached_experiment,
    experiment_config,
    parse_variant,
    stitch_experiment,
)
from .layers import LAYER_KINDS, StitchLayer
from .matching import (
    activation_matching,
    add_moments,
    channels_last_2d,
    hungarian,
    least_squares,
    matching_from_moments,
    matching_matrix,
    moments_of,
    permutation_of,
    recovered_fraction,
    sinkhorn,
    streamed_moments,
)
from .surgery import Stitched, channels_at, feature_moments, front_features, stitch
from .training import (
    BN_EPOCH,
    FRONTS,
    GRELU_P,
    INITS,
    augmented_front,
    bn_epoch_stats,
    check_settings,
    hard_rounding,
    settings_for_scale,
    train_stitch,
)
from .variants import Variant, describe, fig1_protocol

__all__ = [
    "sinkhorn",
    "hungarian",
    "channels_last_2d",
    "moments_of",
    "add_moments",
    "streamed_moments",
    "matching_from_moments",
    "activation_matching",
    "least_squares",
    "matching_matrix",
    "permutation_of",
    "recovered_fraction",
    "LAYER_KINDS",
    "StitchLayer",
    "channels_at",
    "front_features",
    "feature_moments",
    "Stitched",
    "stitch",
    "INITS",
    "GRELU_P",
    "FRONTS",
    "BN_EPOCH",
    "settings_for_scale",
    "check_settings",
    "augmented_front",
    "hard_rounding",
    "bn_epoch_stats",
    "train_stitch",
    "check_evals_per_epoch",
    "eval_steps",
    "last_quarter_change",
    "VARIANT_HELP",
    "parse_variant",
    "StitchData",
    "stitch_experiment",
    "experiment_config",
    "cached_experiment",
    "Variant",
    "describe",
    "fig1_protocol",
    "finetune",
    "sanity",
]
