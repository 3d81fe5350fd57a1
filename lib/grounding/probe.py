"""A linear probe in the principal-component basis of a layer's features (Ding et al.'s function).

The probe (:func:`fit_probe`) is ridge regression on one-hot labels in the PCA basis of the training
features, so deleting principal components is dropping coordinates, and each component's weights
are fitted independently (the PCA scores are orthogonal on the training set).
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import to_channels

__all__ = [
    "fit_probe",
    "probe_scores",
    "probe_accuracy",
    "delete_components",
    "deletion_counts",
    "feature_shape",
]


def _flat(X) -> torch.Tensor:
    t = to_channels(X, dtype=torch.float32)
    return t.reshape(t.shape[0], -1)


def fit_probe(X, y, ridge: float = 1e-2, num_classes: int = 10) -> dict:
    """A linear probe: ridge regression on one-hot labels, in the training features' PCA basis.

    Parameters
    ----------
    X : array or tensor
        Training features ``(n_train, channels[, height, width])``.
    y : array or tensor
        Labels ``(n_train,)`` in ``0 .. num_classes - 1``.
    ridge : float
        Penalty relative to the mean variance of the components (positive).
    num_classes : int
        Number of classes.

    Returns
    -------
    dict
        ``mean`` ``(d,)``, ``components`` ``(r, d)`` (orthonormal rows, by decreasing variance),
        ``variances`` ``(r,)``, ``weights`` ``(r, num_classes)``, ``shape`` (per-sample feature
        shape); ``r`` is the rank of the centred features.
    """
    if not (isinstance(ridge, (int, float)) and ridge > 0):
        raise ValueError(f"ridge must be a positive number; got {ridge!r}")
    f = _flat(X).double()
    y = torch.as_tensor(np.asarray(y)).long()
    mean = f.mean(dim=0)
    f -= mean
    # The PCA through the (n, n) Gram matrix: features have far more dimensions than samples.
    evals, u = torch.linalg.eigh(f @ f.T)
    evals, u = evals.flip(0), u.flip(1)
    r = int((evals > evals[0] * 1e-10).sum())
    s = evals[:r].sqrt()
    components = (u[:, :r].T @ f) / s[:, None]
    scores = u[:, :r] * s
    target = torch.nn.functional.one_hot(y, num_classes).double()
    # Orthogonal scores decouple the ridge solution: one division per component.
    lam = ridge * float((s * s).mean())
    weights = scores.T @ (target - target.mean(dim=0)) / (s * s + lam)[:, None]
    return dict(
        mean=mean.float(),
        components=components.float(),
        weights=weights.float(),
        variances=(s * s / len(f)).float(),
        offset=target.mean(dim=0).float(),
        shape=feature_shape(X),
    )


def feature_shape(X) -> tuple:
    """The per-sample shape of features.

    Parameters
    ----------
    X : array, tensor or nested sequence
        ``(n_samples, ...)``.

    Returns
    -------
    tuple of int
        ``X.shape[1:]``, without converting ``X``.
    """
    return tuple(X.shape[1:]) if hasattr(X, "shape") else tuple(np.shape(X)[1:])


def probe_scores(probe: dict, X) -> torch.Tensor:
    """Coordinates of features in the probe's principal-component basis.

    Parameters
    ----------
    probe : dict
        From :func:`fit_probe`.
    X : array or tensor
        Features ``(n, *probe["shape"])``.

    Returns
    -------
    torch.Tensor
        ``(n, r)`` float32: ``(X - mean) components^T``.
    """
    return (_flat(X) - probe["mean"]) @ probe["components"].T


def probe_accuracy(probe: dict, X, y, keep=None, *, scores=None) -> float:
    """Accuracy of a :func:`fit_probe` probe on features, optionally on some components only.

    Parameters
    ----------
    probe : dict
        From :func:`fit_probe`.
    X : array or tensor
        Features ``(n, *probe["shape"])``; ignored when ``scores`` is given.
    y : array or tensor
        Labels ``(n,)``.
    keep : array of bool, optional
        ``(r,)``: the components the probe may use (the others are deleted); default all.
    scores : torch.Tensor, optional
        :func:`probe_scores` of ``X``, when the caller has them (they cost a product with every
        component).

    Returns
    -------
    float
        Fraction of correct predictions.
    """
    scores = probe_scores(probe, X) if scores is None else scores
    w = probe["weights"] if keep is None else probe["weights"] * torch.as_tensor(keep)[:, None]
    pred = (scores @ w + probe["offset"]).argmax(dim=1)
    return float((pred == torch.as_tensor(np.asarray(y))).float().mean())


def delete_components(probe: dict, X, deleted, *, scores=None) -> torch.Tensor:
    """Features with some of the probe's principal components projected out.

    Parameters
    ----------
    probe : dict
        From :func:`fit_probe` (its ``mean`` and ``components``).
    X : array or tensor
        Features ``(n, *probe["shape"])``.
    deleted : sequence of int
        Indices of components (0 = largest variance).
    scores : torch.Tensor, optional
        :func:`probe_scores` of ``X``, when the caller has them.

    Returns
    -------
    torch.Tensor
        ``X`` minus its coordinates along the deleted components, float32, in the shape of ``X``.
    """
    f = _flat(X)
    idx = torch.as_tensor(np.asarray(deleted, dtype=np.int64))
    coords = (f - probe["mean"]) @ probe["components"][idx].T if scores is None else scores[:, idx]
    return (f - coords @ probe["components"][idx]).reshape((f.shape[0],) + tuple(probe["shape"]))


def deletion_counts(rank: int, steps: int) -> list[int]:
    """How many components :func:`sensitivity_rows` deletes: about ``steps`` counts from 1 to
    ``rank - 1``, evenly spaced on a log scale.

    Parameters
    ----------
    rank : int
        Number of components (at least 2).
    steps : int
        Number of counts wanted (at least 1).

    Returns
    -------
    list of int
        Increasing, distinct, in ``[1, rank - 1]`` (fewer than ``steps`` when ``rank`` is small).
    """
    if not (isinstance(rank, int) and rank >= 2 and isinstance(steps, int) and steps >= 1):
        raise ValueError(f"rank must be an integer >= 2 and steps >= 1; got {rank!r} and {steps!r}")
    return sorted({int(round(v)) for v in np.geomspace(1, rank - 1, steps)})
