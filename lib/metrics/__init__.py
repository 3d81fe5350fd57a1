"""Representation similarity measures of Section 5: G_ReLU- and orthogonal CKA and Procrustes.

Every measure takes two feature arrays (numpy or torch, any device) with the same number of samples,
either ``(n_samples, n_features)`` or conv features ``(n_samples, channels, height, width)``, and
returns a Python float. The conventions are the authors' (``pnnl/modelsym``, see
implementation-notes.md, "Similarity measures"). The package, one module per concern:

- ``lib.metrics.preprocessing``: the channel view of the inputs, checks, what degenerate inputs do;
- ``lib.metrics.normalization``: centring and per-channel normalisation (in float64);
- ``lib.metrics.gram``: linear, RBF and max-kernel Gram matrices (the max kernel block by block);
- ``lib.metrics.hsic``: HSIC and CKA from Gram matrices (U-centred, summed in float64);
- ``lib.metrics.cka``: :func:`linear_cka`, :func:`rbf_cka`, :func:`grelu_cka` (Definition 5.3),
  :func:`orthogonal_cka`, their Gram forms and G_ReLU-CKA's memory estimates;
- ``lib.metrics.procrustes``: :func:`grelu_procrustes` (Definition 5.2),
  :func:`orthogonal_procrustes`;
- ``lib.metrics.registry``: :data:`MEASURES`, every measure by name (its function, kind, invariance,
  preprocessing, Gram form and label); code handed a measure's name looks it up there;
- ``lib.metrics.layers``: all layer pairs of two models' features (heatmaps, Table 2, layer
  identification);
- ``lib.metrics.psd``: :func:`psd_grelu_cka`, CKA with a PSD G_ReLU-invariant kernel (not in the
  paper);
- ``lib.metrics.indefinite``: how much the max kernel's indefiniteness matters (spectra, HSIC signs,
  a search for inputs where G_ReLU-CKA is negative or undefined).

The names below are the measures' documented home (``lib.metrics.<name>``); helpers for writing new
measures (``lib.metrics.preprocessing.compute_device``, ``lib.metrics.gram.blocked_max_kernel``,
...) are public in their modules.

The package takes arrays and depends on nothing in ``lib`` but ``lib.config``; features of models
and the cached comparison of two models are in ``lib.similarity``.
"""

from .cka import (
    grelu_cka,
    grelu_cka_gram,
    grelu_cka_max_samples,
    grelu_cka_memory,
    linear_cka,
    linear_cka_gram,
    orthogonal_cka,
    orthogonal_cka_gram,
    rbf_cka,
)
from .gram import linear_gram, max_kernel_gram, rbf_gram
from .hsic import cka_from_grams, hsic, u_center
from .indefinite import (
    SEARCH_KERNELS,
    SEARCH_TARGETS,
    cka_random_range,
    cka_range_search,
    hsic_report,
    hsic_share,
    kernel_gram,
    spectrum_summary,
)
from .layers import (
    PAIR_MODES,
    best_matches,
    diagonal_summary,
    normalized_gram,
    same_layer_rate,
    similarity_matrices,
)
from .normalization import center_features, normalize_channels, normalize_total
from .preprocessing import DegenerateInputError, flatten_features, to_channels
from .procrustes import grelu_procrustes, orthogonal_procrustes
from .psd import PSD_BETA, psd_grelu_cka, psd_grelu_gram, psd_normalized_gram
from .registry import (
    KINDS,
    MATRIX_MEASURES,
    MEASURES,
    OPTIONS,
    PAPER_MEASURES,
    Measure,
    get_measure,
)

__all__ = [
    "DegenerateInputError",
    # measures
    "linear_cka",
    "rbf_cka",
    "grelu_cka",
    "orthogonal_cka",
    "grelu_procrustes",
    "orthogonal_procrustes",
    # inputs and preprocessing
    "to_channels",
    "flatten_features",
    "center_features",
    "normalize_channels",
    "normalize_total",
    # the registry of measures
    "MEASURES",
    "Measure",
    "KINDS",
    "OPTIONS",
    "MATRIX_MEASURES",
    "PAPER_MEASURES",
    "get_measure",
    # Gram matrices, Gram forms, HSIC, memory
    "linear_gram",
    "rbf_gram",
    "max_kernel_gram",
    "hsic",
    "cka_from_grams",
    "grelu_cka_gram",
    "orthogonal_cka_gram",
    "linear_cka_gram",
    "grelu_cka_memory",
    "grelu_cka_max_samples",
    # all layer pairs of two models' features
    "PAIR_MODES",
    "u_center",
    "normalized_gram",
    "similarity_matrices",
    "best_matches",
    "same_layer_rate",
    "diagonal_summary",
    # a PSD G_ReLU-invariant kernel (psd) and how much the max kernel's indefiniteness matters
    "psd_grelu_cka",
    "psd_grelu_gram",
    "psd_normalized_gram",
    "PSD_BETA",
    "spectrum_summary",
    "hsic_report",
    "hsic_share",
    "kernel_gram",
    "SEARCH_KERNELS",
    "SEARCH_TARGETS",
    "cka_random_range",
    "cka_range_search",
]
