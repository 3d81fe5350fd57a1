"""The tests of Ding, Denain and Steinhardt (2021) for similarity measures (not in the paper).

Ding et al. ask that a (dis)similarity measure be *sensitive* to changes of a representation that
change what it does, and *specific*, i.e. not moved by changes that do not; "what it does" is read
off a linear probe. Each test yields points ``(dissimilarity, functional difference)``, one per pair
of representations, and grades a measure by their Spearman rank correlation
(:func:`spearman_interval`, with a bootstrap interval):

- *sensitivity* (:func:`sensitivity_rows`): principal components of a layer's representation are
  deleted, lowest variance first and highest variance first; the functional difference is the drop
  of the probe's accuracy;
- *specificity* (:func:`specificity_points`): every layer of one seed against every layer of another
  seed; the functional difference is the difference of their probes' accuracies;
- *quality under a distribution shift* (:func:`shift_rows`): a layer's representation of clean test
  images against that of corrupted ones (:func:`corrupt`); the functional difference is the drop of
  the clean-trained probe's accuracy.

Modules: ``stats`` (:func:`spearman_interval`), ``probe`` (:func:`fit_probe`: ridge regression on
one-hot labels in the training features' principal-component basis, so that deleting components is
dropping coordinates), ``protocol`` (the tests, on arrays) and ``study`` (the max kernel's spectra
and HSIC signs per layer, and the three tests on two seeds of the zoo's models, cached).
"""

from .probe import (
    delete_components,
    deletion_counts,
    feature_shape,
    fit_probe,
    probe_accuracy,
    probe_scores,
)
from .protocol import (
    DELETION_ORDERS,
    MEASURES,
    corrupt,
    pair_matrices,
    sensitivity_rows,
    shift_rows,
    similarities_to,
    specificity_points,
)
from .stats import spearman_interval
from .study import (
    KERNELS,
    cached_ding_study,
    ding_study,
    fit_probes,
    hsic_signs,
    layer_grams,
    layer_spectra,
)

__all__ = [
    "MEASURES",
    "DELETION_ORDERS",
    "spearman_interval",
    "fit_probe",
    "probe_scores",
    "probe_accuracy",
    "delete_components",
    "deletion_counts",
    "feature_shape",
    "similarities_to",
    "pair_matrices",
    "sensitivity_rows",
    "specificity_points",
    "corrupt",
    "shift_rows",
    # the chapter's studies on the zoo's models
    "KERNELS",
    "layer_grams",
    "layer_spectra",
    "hsic_signs",
    "fit_probes",
    "ding_study",
    "cached_ding_study",
]
