"""Similarity of every layer of one model with every layer of another (heatmaps, Table 2, layer
identification of Section 5).

:func:`layer_features` takes each model's hidden features once; :func:`similarity_matrices` compares all
layer pairs for several measures, computing each layer's CKA Gram matrix once (:func:`normalized_gram`,
U-centred with :func:`lib.metrics.u_center`); :func:`model_pair_similarities` does it all for two
models and :func:`cached_pair_similarities` caches that on disk, keyed on the weights and images.
:func:`best_matches`, :func:`same_layer_rate` and :func:`diagonal_summary` read the paper's
observations off a matrix.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..config import check_choice
from ..models import feature_chunks
from ..cache import fingerprint, memo, tensor_digest
from .gram import blocked_max_kernel
from .hsic import centered_norm_, sum_products
from .normalization import center_features, normalize_channel_major
from .preprocessing import check_same_samples, compute_device, shape_of
from .procrustes import grelu_procrustes, orthogonal_procrustes

__all__ = ["MATRIX_MEASURES", "CKA_MEASURES", "PAIR_MODES", "MEASURE_NAMES", "layer_features",
           "normalized_gram", "similarity_matrices", "model_pair_similarities", "cached_pair_similarities",
           "best_matches", "same_layer_rate", "diagonal_summary"]

#: The measures :func:`similarity_matrices` computes, by their function names in :mod:`lib.metrics`.
MATRIX_MEASURES = ("grelu_cka", "orthogonal_cka", "linear_cka", "grelu_procrustes", "orthogonal_procrustes")
#: The CKA measures among :data:`MATRIX_MEASURES` (computed through :func:`normalized_gram`).
CKA_MEASURES = ("grelu_cka", "orthogonal_cka", "linear_cka")
#: Which layer pairs :func:`similarity_matrices` compares: every pair, or layer ``i`` with layer ``i`` only.
PAIR_MODES = ("all", "diagonal")
#: How the book names each measure of :data:`MATRIX_MEASURES` in tables and figures.
MEASURE_NAMES = {"grelu_cka": "G_ReLU-CKA", "orthogonal_cka": "orthogonal CKA", "linear_cka": "linear CKA",
                 "grelu_procrustes": "G_ReLU-Procrustes", "orthogonal_procrustes": "orthogonal Procrustes"}


@torch.no_grad()
def layer_features(model: torch.nn.Module, x: torch.Tensor, layers=None, *, dtype=torch.float32,
                   batch_size: int = 250) -> dict:
    """Hidden features of ``model`` on inputs ``x``, as CPU tensors in ``dtype``.

    Parameters
    ----------
    model : torch.nn.Module
        A model of :mod:`lib.models` (run in eval mode on its own device).
    x : torch.Tensor
        Model inputs ``(n_samples, 3, H, W)`` on the model's device (e.g. from :func:`lib.data.to_input`).
    layers : list of str, optional
        Layer names for :func:`lib.models.features` (default: every hidden activation layer).
    dtype : torch.dtype
        Storage type, ``torch.float32`` or ``torch.float16`` (half the memory; the measures convert back
        to ``float32``/``float64``; values beyond 65504 become infinite and are reported by them).
    batch_size : int
        Images per forward pass; only one batch's features exist in float32 at a time
        (:func:`lib.models.feature_chunks`), so the memory beyond the result does not grow with
        ``n_samples``.

    Returns
    -------
    dict
        ``{name: tensor (n_samples, channels, height, width)}`` in forward order, on the CPU.
    """
    check_choice("dtype", dtype, (torch.float32, torch.float16))
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    out: dict = {}
    for start, chunk in feature_chunks(model, x, layers, batch_size):
        for name, f in chunk.items():
            if name not in out:
                out[name] = torch.empty((len(x),) + tuple(f.shape[1:]), dtype=dtype)
            out[name][start:start + len(f)] = f.to("cpu", dtype)
    return out


def normalized_gram(X, measure: str, zero_channels: str = "keep", *, block_size: int | None = None,
                    memory_budget: float | None = None, dtype=torch.float32, device=None,
                    name: str = "X") -> torch.Tensor:
    """The centred Gram matrix of ``X`` for a CKA ``measure``, scaled to unit Frobenius norm.

    The CKA of two inputs is the inner product of their matrices:
    ``(normalized_gram(X, m) * normalized_gram(Y, m)).sum()`` equals ``grelu_cka(X, Y)`` etc.

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, channels[, height, width])``.
    measure : str
        ``"grelu_cka"`` (max kernel of the channel-normalised features, U-centred), ``"orthogonal_cka"``
        (linear kernel of the same, U-centred) or ``"linear_cka"`` (linear kernel of the centred
        flattened features, i.e. Kornblith et al.'s biased CKA).
    zero_channels : str
        See :func:`lib.metrics.normalize_channels`.
    block_size, memory_budget
        See ``lib.metrics.gram.block_plan``.
    dtype, device, name
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)`` of unit Frobenius norm.

    Raises
    ------
    DegenerateInputError
        As :func:`lib.metrics.hsic.centered_norm_` and :func:`lib.metrics.normalize_channels` say.
    """
    check_choice("measure", measure, CKA_MEASURES)
    dev = compute_device(X, device=device)
    if measure == "linear_cka":
        # Centred features give a doubly centred Gram matrix (centred again below, to round-off).
        f = center_features(X, dtype=dtype, device=dev, name=name, rescale=True)
        K = f @ f.T
    else:
        z = normalize_channel_major(X, True, zero_channels, dtype, dev, name)
        if measure == "grelu_cka":
            K = blocked_max_kernel(z, block_size, memory_budget)
        else:
            f = z.permute(1, 0, 2).reshape(z.shape[1], -1)
            K = f @ f.T
        del z
    if measure != "linear_cka" and K.shape[0] < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples; got {K.shape[0]}")
    return K.div_(centered_norm_(K, unbiased=measure != "linear_cka", name=name))


def _check_layers(feats_a: dict, feats_b: dict, pairs: str) -> None:
    names_a, names_b = list(feats_a), list(feats_b)
    if not names_a or not names_b:
        raise ValueError("feats_a and feats_b must each hold at least one layer")
    if pairs == "diagonal" and len(names_a) != len(names_b):
        raise ValueError(f"pairs='diagonal' needs as many layers in feats_a as in feats_b; got "
                         f"{len(names_a)} and {len(names_b)}")
    for a in names_a:
        check_same_samples(feats_a[a], feats_b[names_b[0]])
    for b in names_b:
        check_same_samples(feats_a[names_a[0]], feats_b[b])


def similarity_matrices(feats_a: dict, feats_b: dict, measures=("grelu_cka", "orthogonal_cka"), *,
                        pairs: str = "all", zero_channels: str = "keep", block_size: int | None = None,
                        memory_budget: float | None = None, dtype=torch.float32, device=None) -> dict:
    """Similarity of every layer of model A with every layer of model B, for several measures.

    Each CKA Gram matrix is computed once per layer and model (:func:`normalized_gram`), so the cost is
    ``len(feats_a) + len(feats_b)`` Gram matrices, not their product; A's matrices are held while B's
    are computed one at a time (peak ``(len(feats_a) + 1) n_samples^2`` numbers per measure).

    Parameters
    ----------
    feats_a, feats_b : dict
        ``{layer: features (n_samples, channels[, height, width])}`` of the two models on the same inputs
        (e.g. from :func:`layer_features`); the order of the dicts is the order of rows and columns.
    measures : sequence of str
        Names from :data:`MATRIX_MEASURES`.
    pairs : str
        ``"all"`` (every layer pair) or ``"diagonal"`` (only layer ``i`` of A with layer ``i`` of B,
        e.g. Table 2; needs as many layers in A as in B).
    zero_channels : str
        See :func:`lib.metrics.normalize_channels`; ``"keep"`` by default because trained
        ReLU layers often have dead channels.
    block_size, memory_budget
        See ``lib.metrics.gram.block_plan``.
    dtype : torch.dtype
        Computation type (``float32`` by default: every measure agreed with ``float64`` to 2e-7 on
        the activations of ``benchmarks/metrics_float32.py``, in half the time and memory or less).
    device : str or torch.device, optional
        See ``lib.metrics.preprocessing.compute_device``.

    Returns
    -------
    dict
        ``{measure: array (len(feats_a), len(feats_b))}``. Entries not computed are NaN: off the diagonal
        for ``pairs="diagonal"``, and for the Procrustes measures every pair whose spatial shapes differ
        (the authors compare same-shaped layers only).
    """
    for m in measures:
        check_choice("measure", m, MATRIX_MEASURES)
    check_choice("pairs", pairs, PAIR_MODES)
    _check_layers(feats_a, feats_b, pairs)
    names_a, names_b = list(feats_a), list(feats_b)
    wanted = np.array([[pairs == "all" or i == j for j in range(len(names_b))] for i in range(len(names_a))])
    gram_kw = dict(zero_channels=zero_channels, block_size=block_size, memory_budget=memory_budget,
                   dtype=dtype, device=device)
    out = {}
    for m in measures:
        S = np.full((len(names_a), len(names_b)), np.nan)
        if m in CKA_MEASURES:
            grams_a = [normalized_gram(feats_a[a], m, name=f"feats_a[{a!r}]", **gram_kw)
                       if wanted[i].any() else None for i, a in enumerate(names_a)]
            for j, b in enumerate(names_b):
                if not wanted[:, j].any():
                    continue
                L = normalized_gram(feats_b[b], m, name=f"feats_b[{b!r}]", **gram_kw)
                for i, K in enumerate(grams_a):
                    if wanted[i, j]:
                        S[i, j] = min(1.0, max(-1.0, sum_products(K, L.to(K))))
                del L
            del grams_a
        else:
            fn = grelu_procrustes if m == "grelu_procrustes" else orthogonal_procrustes
            kw = dict(zero_channels=zero_channels) if m == "grelu_procrustes" else {}
            for i, a in enumerate(names_a):
                for j, b in enumerate(names_b):
                    if wanted[i, j] and shape_of(feats_a[a])[2:] == shape_of(feats_b[b])[2:]:
                        S[i, j] = fn(feats_a[a], feats_b[b], dtype=dtype, device=device, **kw)
        out[m] = S
    return out


def model_pair_similarities(model_a: torch.nn.Module, model_b: torch.nn.Module, x: torch.Tensor, layers=None,
                            measures=MATRIX_MEASURES, *, feature_dtype=torch.float32, batch_size: int = 250,
                            **kwargs) -> dict:
    """All-layer-pairs similarities of two models on the inputs ``x``, each model's features taken once.

    Parameters
    ----------
    model_a, model_b : torch.nn.Module
        Models of :mod:`lib.models` with the same hidden layers ``layers``.
    x : torch.Tensor
        Inputs ``(n_samples, 3, H, W)`` on the models' device.
    layers : list of str, optional
        Hidden layer names (default: every hidden activation layer of ``model_a``).
    measures : sequence of str
        Names from :data:`MATRIX_MEASURES`, all computed from the same features.
    feature_dtype : torch.dtype
        How features are held on the CPU between the forward passes and the measures (``float16``
        halves the memory at some accuracy; see :func:`layer_features`).
    batch_size : int
        Images per forward pass.
    **kwargs
        For :func:`similarity_matrices` (``pairs``, ``dtype``, ``device``, ...).

    Returns
    -------
    dict
        ``layers`` (list of names), ``matrices`` (``{measure: array (n_layers, n_layers)}``),
        ``seconds`` (``{"features": s, measure: s, ...}``, wall-clock seconds), ``feature_mib`` (MiB of
        features per model) and ``n_samples``.
    """
    t0 = time.perf_counter()
    fa = layer_features(model_a, x, layers, dtype=feature_dtype, batch_size=batch_size)
    fb = layer_features(model_b, x, list(fa), dtype=feature_dtype, batch_size=batch_size)
    seconds = {"features": time.perf_counter() - t0}
    matrices = {}
    for m in measures:
        t0 = time.perf_counter()
        matrices[m] = similarity_matrices(fa, fb, (m,), **kwargs)[m]
        seconds[m] = time.perf_counter() - t0
    mib = sum(f.numel() * f.element_size() for f in fa.values()) / 2**20
    return dict(layers=list(fa), matrices=matrices, seconds=seconds, feature_mib=mib, n_samples=len(x))


def cached_pair_similarities(model_a: torch.nn.Module, model_b: torch.nn.Module, x: torch.Tensor, layers,
                             measures=MATRIX_MEASURES, *, device=None) -> dict:
    """:func:`model_pair_similarities` of two models, cached on disk (``lib.cache.memo``, kind
    ``"similarity"``).

    Features are held in float32 and compared in float32 with ``zero_channels="keep"``. The cache
    key holds everything the matrices depend on: each model's architecture (``model.arch``) and the
    sha256 of its weights (``lib.cache.fingerprint``), so a transformed copy of a zoo model (which
    keeps its ``zoo_key``) or a model changed in place never reads another's entry; the sha256 of
    the inputs ``x`` with their shape and dtype (``lib.cache.tensor_digest``); the layers and the
    measures.

    Parameters
    ----------
    model_a, model_b : torch.nn.Module
        Models of :mod:`lib.models` (e.g. from :func:`lib.zoo.get`).
    x : torch.Tensor
        Inputs ``(n_samples, 3, H, W)`` on the models' device.
    layers : list of str
        Hidden layer names.
    measures : sequence of str
        Names from :data:`MATRIX_MEASURES`.
    device : str or torch.device, optional
        Where the measures run.

    Returns
    -------
    dict
        As :func:`model_pair_similarities`; ``seconds`` are those of the run that filled the cache.
    """
    config = dict(a=_model_identity(model_a), b=_model_identity(model_b), images=tensor_digest(x),
                  layers=list(layers), n_images=len(x), measures=list(measures),
                  feature_dtype="float32", dtype="float32", zero_channels="keep")
    return memo("similarity", config, lambda: model_pair_similarities(
        model_a, model_b, x, layers, measures, feature_dtype=torch.float32, device=device))


def _model_identity(model: torch.nn.Module) -> dict:
    # The weights alone do not fix the function (an activation's slope is no weight): the
    # architecture config that lib.models.build records goes in too.
    arch = getattr(model, "arch", None)
    if arch is None:
        arch = type(model).__qualname__
    return dict(arch=arch, weights=fingerprint(model))


def best_matches(S) -> np.ndarray:
    """For each row of a similarity matrix, the column of its largest entry.

    Parameters
    ----------
    S : array
        ``(n_layers_a, n_layers_b)``; NaN entries (not compared) are ignored.

    Returns
    -------
    numpy.ndarray
        ``(n_layers_a,)`` integer column indices; -1 for a row without any entry.
    """
    S = np.asarray(S, dtype=float)
    if S.ndim != 2:
        raise ValueError(f"S must be a 2-D similarity matrix; got shape {S.shape}")
    filled = np.where(np.isnan(S), -np.inf, S)
    best = filled.argmax(axis=1)
    return np.where(np.isfinite(filled).any(axis=1), best, -1)


def same_layer_rate(S) -> float:
    """The layer-identification test of Kornblith et al. 2019 between two seeds of one architecture.

    Parameters
    ----------
    S : array
        ``(n_layers, n_layers)`` similarity matrix, model A's layers as rows and B's as columns, in the
        same order; NaN entries are not compared.

    Returns
    -------
    float
        The fraction (0 to 1) of the rows with at least two compared entries whose largest entry is on
        the diagonal (``best_matches(S)[i] == i``); NaN if no row has two.
    """
    S = np.asarray(S, dtype=float)
    counted = (~np.isnan(S)).sum(axis=1) > 1
    return float(np.mean((best_matches(S) == np.arange(len(S)))[counted]))


def diagonal_summary(S, in_block=None) -> dict:
    """Means of the diagonal of a same-architecture similarity matrix, as the paper reads Figs. 2 and 5.

    Parameters
    ----------
    S : array
        ``(n_layers, n_layers)`` similarity matrix between two models of one architecture.
    in_block : sequence of bool, optional
        ``(n_layers,)``: which layers lie inside a residual block (``lib.models.layer_info``'s
        ``in_block``).

    Returns
    -------
    dict
        ``same_layer``: :func:`same_layer_rate` (fraction); ``early`` and ``late``: mean diagonal over
        the first and the last third of the layers (at least one layer each); ``in_block`` and
        ``other``: mean diagonal over the layers inside residual blocks and over the others (both None
        if no layer is inside a block).
    """
    d = np.diag(np.asarray(S, dtype=float))
    third = max(1, len(d) // 3)
    inside = np.zeros(len(d), bool) if in_block is None else np.asarray(in_block, dtype=bool)
    out = dict(same_layer=same_layer_rate(S), early=d[:third].mean(), late=d[-third:].mean(),
               in_block=None, other=None)
    if inside.any():
        out.update(in_block=d[inside].mean(), other=d[~inside].mean())
    return out
