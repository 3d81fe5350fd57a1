"""The chapter's studies on the zoo's models: the max kernel's spectra and HSIC signs per layer, and
Ding et al.'s three tests on two seeds of one architecture, cached (``lib.cache.memo``, kind
``"grounding"``) under the models' zoo keys and the study's settings.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..cache import memo
from ..metrics import (
    PSD_BETA,
    hsic_report,
    max_kernel_gram,
    normalize_channels,
    psd_grelu_gram,
    spectrum_summary,
)
from ..similarity import layer_features
from .probe import deletion_counts, fit_probe, probe_accuracy
from .protocol import MEASURES, corrupt, pair_matrices, sensitivity_rows, shift_rows

__all__ = [
    "KERNELS",
    "layer_grams",
    "layer_spectra",
    "hsic_signs",
    "fit_probes",
    "ding_study",
    "cached_ding_study",
]

#: The kernels whose Gram matrices the spectra and sign counts compare.
KERNELS = ("max", "psd")


def layer_grams(feats: dict, kernel: str, beta: float = PSD_BETA) -> dict:
    """Each layer's Gram matrix (float64) for G_ReLU-CKA's max kernel or the PSD kernel.

    Parameters
    ----------
    feats : dict
        ``{layer: features (n_samples, channels[, height, width])}``.
    kernel : str
        ``"max"`` (``lib.metrics.max_kernel_gram`` of the normalised channels, zero channels kept)
        or ``"psd"`` (``lib.metrics.psd_grelu_gram``).
    beta : float
        The PSD kernel's ``beta``.

    Returns
    -------
    dict
        ``{layer: (n_samples, n_samples) tensor}``.
    """
    if kernel == "max":
        return {
            k: max_kernel_gram(normalize_channels(f, zero_channels="keep"))
            for k, f in feats.items()
        }
    if kernel == "psd":
        return {k: psd_grelu_gram(f, beta, zero_channels="keep") for k, f in feats.items()}
    raise ValueError(f"unknown kernel {kernel!r}; accepted values: {', '.join(map(repr, KERNELS))}")


def layer_spectra(grams: dict) -> list:
    """``lib.metrics.spectrum_summary`` of each layer's Gram matrix.

    Parameters
    ----------
    grams : dict
        ``{layer: (n, n) Gram matrix}`` (:func:`layer_grams`).

    Returns
    -------
    list of dict
        One per layer: ``layer`` and the summary's fields.
    """
    return [dict(layer=k, **spectrum_summary(K)) for k, K in grams.items()]


def hsic_signs(grams_a: dict, grams_b: dict) -> dict:
    """Signs of the HSIC estimates and CKAs over every layer pair of two models.

    Parameters
    ----------
    grams_a, grams_b : dict
        ``{layer: Gram matrix}`` of two models on the same inputs (:func:`layer_grams`).

    Returns
    -------
    dict
        ``pairs``; ``hsic1_kk_min`` (the smallest unbiased HSIC of a matrix with itself);
        ``hsic1_kl_negative``, ``hsic0_kl_negative``, ``cka1_negative``, ``cka0_negative`` (how many
        pairs have a negative value); ``cka1_min``, ``cka0_min``.
    """
    reports = [hsic_report(K, L) for K in grams_a.values() for L in grams_b.values()]
    col = {k: np.array([r[k] for r in reports]) for k in reports[0]}
    kk_min = min(col["hsic1_kk"].min(), col["hsic1_ll"].min())
    out = dict(pairs=len(reports), hsic1_kk_min=float(kk_min))
    for k in ("hsic1_kl", "hsic0_kl", "cka1", "cka0"):
        out[f"{k}_negative"] = int((col[k] < 0).sum())
    out.update(cka1_min=float(np.nanmin(col["cka1"])), cka0_min=float(np.nanmin(col["cka0"])))
    return out


def fit_probes(model: torch.nn.Module, train: tuple, ridge: float = 1e-2) -> dict:
    """A :func:`lib.grounding.fit_probe` probe for every hidden layer of a model.

    Parameters
    ----------
    model : torch.nn.Module
        A model of ``lib.models`` in eval mode.
    train : tuple
        ``(inputs (n, 3, H, W) on the model's device, labels (n,))``.
    ridge : float
        See :func:`lib.grounding.fit_probe`.

    Returns
    -------
    dict
        ``{layer: probe}`` in forward order.
    """
    x, y = train
    feats = layer_features(model, x)
    # Fit and free one layer at a time: the float64 copies are the largest temporaries.
    return {name: fit_probe(feats.pop(name), y, ridge) for name in list(feats)}


def _sensitivity(probes, feats, y, layers, steps) -> list:
    rows = []
    for name in layers:
        counts = deletion_counts(probes[name]["components"].shape[0], steps)
        found = sensitivity_rows(probes[name], feats[name], y, counts)
        rows += [dict(layer=name, **r) for r in found]
    return rows


def _shift(model, probes, feats, test, layers, levels, seed) -> list:
    x, y = test
    shifted = {lv: layer_features(model, corrupt(x, lv, seed), layers) for lv in levels}
    rows = []
    for name in layers:
        by_level = {lv: shifted[lv][name] for lv in levels}
        rows += [dict(layer=name, **r) for r in shift_rows(probes[name], feats[name], by_level, y)]
    return rows


def ding_study(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    train: tuple,
    test: tuple,
    layers,
    *,
    steps: int = 5,
    levels=(0.5, 1.0, 2.0),
    ridge: float = 1e-2,
) -> dict:
    """Ding et al.'s three tests on two models of one architecture trained from different seeds.

    Probes for every hidden layer of both models (:func:`fit_probes`); *specificity*: every layer of
    A against every layer of B (:func:`lib.grounding.pair_matrices`) with the probes' accuracies;
    *sensitivity* (:func:`lib.grounding.sensitivity_rows`) and the *shift* test
    (:func:`lib.grounding.shift_rows`, Gaussian noise of each level on the inputs) on ``layers`` of
    model A.

    Parameters
    ----------
    model_a, model_b : torch.nn.Module
        Two models of ``lib.models`` in eval mode.
    train, test : tuple
        ``(inputs (n, 3, H, W) on the models' device, labels (n,))``: the probes' training images
        and the images whose features are compared.
    layers : list of str
        Layers of model A for the sensitivity and shift tests.
    steps : int
        Deletion counts per order (:func:`lib.grounding.deletion_counts`).
    levels : sequence of float
        Noise levels of the shift test (see :func:`lib.grounding.corrupt`).
    ridge : float
        See :func:`lib.grounding.fit_probe`.

    Returns
    -------
    dict
        ``layers_a``, ``layers_b``; ``acc_a``, ``acc_b`` (probe accuracy per layer, fractions);
        ``matrices`` (``{measure: (layers_a, layers_b)}``); ``sensitivity`` and ``shift`` (rows,
        each with its ``layer``); ``seconds``.
    """
    t0 = time.perf_counter()
    x, y = test
    out = {}
    for tag, model in (("a", model_a), ("b", model_b)):
        probes = fit_probes(model, train, ridge)
        feats = layer_features(model, x)
        out[f"layers_{tag}"] = list(feats)
        out[f"acc_{tag}"] = [probe_accuracy(probes[k], f, y) for k, f in feats.items()]
        if tag == "a":
            out["sensitivity"] = _sensitivity(probes, feats, y, layers, steps)
            out["shift"] = _shift(model, probes, feats, test, layers, levels, seed=0)
            feats_a = feats
        else:
            out["matrices"] = pair_matrices(feats_a, feats)
        del probes
    out["seconds"] = time.perf_counter() - t0
    return out


def cached_ding_study(
    model_a: torch.nn.Module, model_b: torch.nn.Module, train: tuple, test: tuple, layers, **kw
) -> dict:
    """:func:`ding_study` of two zoo models, cached (``lib.cache.memo``, kind ``"grounding"``).

    The key holds the models' zoo keys (``model.zoo_key``), the numbers of training and test images
    (so the images must be the book's fixed subsets, ``lib.data.subset``), the layers and ``kw``.

    Parameters
    ----------
    model_a, model_b, train, test, layers, **kw
        As for :func:`ding_study`.

    Returns
    -------
    dict
        As :func:`ding_study`; ``seconds`` are those of the run that filled the cache.
    """
    for name, model in (("model_a", model_a), ("model_b", model_b)):
        if not hasattr(model, "zoo_key"):
            raise ValueError(
                f"{name} has no zoo_key; cached_ding_study takes models from lib.zoo.get"
            )
    config = dict(
        a=model_a.zoo_key,
        b=model_b.zoo_key,
        n_train=len(train[1]),
        n_test=len(test[1]),
        layers=list(layers),
        measures=MEASURES,
        beta=PSD_BETA,
        version=1,
        **kw,
    )
    return memo(
        "grounding", config, lambda: ding_study(model_a, model_b, train, test, layers, **kw)
    )
