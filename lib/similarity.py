"""Similarity of every layer of one model with every layer of another (heatmaps, Table 2, layer
identification of Section 5).

:func:`layer_features` takes each model's hidden features once; :func:`similarity_matrices` compares all
layer pairs for several measures of :mod:`lib.metrics`, computing each layer's CKA Gram matrix once
(:func:`normalized_gram`, U-centred with :func:`u_centre`); :func:`best_matches` reads the layer
identification off a matrix; :func:`model_pair_similarities` does it all for two models. All names are
re-exported by :mod:`lib.metrics`.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .config import check_choice
from .gram import _max_kernel
from .metrics import grelu_procrustes, orthogonal_procrustes
from .preprocessing import _device, _normalize_channel_major, _rescaled, _same_samples, _shape, center_features

__all__ = ["MATRIX_MEASURES", "CKA_MEASURES", "layer_features", "u_centre", "normalized_gram",
           "similarity_matrices", "similarity_matrix", "best_matches", "model_pair_similarities"]

MATRIX_MEASURES = ("grelu_cka", "orthogonal_cka", "linear_cka", "grelu_procrustes", "orthogonal_procrustes")
CKA_MEASURES = ("grelu_cka", "orthogonal_cka", "linear_cka")
PAIRS = ("all", "diagonal")


@torch.no_grad()
def layer_features(model: torch.nn.Module, x: torch.Tensor, layers=None, *, dtype=torch.float32,
                   batch_size: int = 250) -> dict:
    """Hidden features of ``model`` on inputs ``x``, as CPU tensors in ``dtype``.

    Parameters
    ----------
    model : a model of :mod:`lib.models` (run in eval mode on its own device).
    x : model inputs ``(n_samples, 3, H, W)`` on the model's device (e.g. from :func:`lib.data.to_input`).
    layers : layer names for :func:`lib.models.features` (default: every hidden activation layer).
    dtype : storage type, ``torch.float32`` or ``torch.float16`` (half the memory; the measures convert
        back to ``float32``/``float64``; values beyond 65504 become infinite and are reported by them).
    batch_size : images per forward pass; only one batch's features exist in float32 at a time.

    Returns
    -------
    ``{name: tensor (n_samples, channels, height, width)}`` in forward order, on the CPU.
    """
    from .models import features

    check_choice("dtype", dtype, (torch.float32, torch.float16))
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    out: dict = {}
    for start in range(0, len(x), batch_size):
        chunk = features(model, x[start:start + batch_size], layers, batch_size=batch_size)
        for name, f in chunk.items():
            if name not in out:
                out[name] = torch.empty((len(x),) + tuple(f.shape[1:]), dtype=dtype)
            out[name][start:start + len(f)] = f.to("cpu", dtype)
    return out


def u_centre(K: torch.Tensor) -> torch.Tensor:
    """The "U-centred" Gram matrix of Székely and Rizzo, ``(n_samples, n_samples)``, in place.

    Off the diagonal ``K_ij - r_i/(n-2) - r_j/(n-2) + s/((n-1)(n-2))`` with ``r`` the row sums and ``s``
    the total of ``K`` with its diagonal zeroed; zero on the diagonal. The unbiased HSIC of
    :func:`hsic` is ``<u_centre(K), u_centre(L)> / (n (n-3))``, so a CKA is the cosine of U-centred
    Gram matrices: each layer's Gram matrix is centred and normalised once and then reused for every
    layer it is compared with.
    """
    n = K.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples; got {n}")
    K.fill_diagonal_(0)
    r = K.sum(dim=1)
    K -= r[:, None] / (n - 2)
    K -= r[None, :] / (n - 2)
    K += r.sum() / ((n - 1) * (n - 2))
    K.fill_diagonal_(0)
    return K


def normalized_gram(X, measure: str, zero_channels: str = "keep", *, block_size: int | None = None,
                    memory_budget: float | None = None, dtype=torch.float32, device=None,
                    name: str = "X") -> torch.Tensor:
    """The centred Gram matrix of ``X`` for a CKA ``measure``, scaled to unit Frobenius norm.

    ``measure``: ``"grelu_cka"`` (max kernel of the channel-normalised features, U-centred),
    ``"orthogonal_cka"`` (linear kernel of the same, U-centred) or ``"linear_cka"`` (linear kernel of
    the centred flattened features, i.e. Kornblith et al.'s biased CKA). The CKA of two inputs is the
    inner product of their matrices: ``(normalized_gram(X, m) * normalized_gram(Y, m)).sum()`` equals
    ``grelu_cka(X, Y)`` etc. Returns ``(n_samples, n_samples)``.
    """
    check_choice("measure", measure, CKA_MEASURES)
    dev = _device(X, device=device)
    if measure == "linear_cka":
        # Centred features give an already doubly centred Gram matrix: the biased HSIC is <K, L>.
        f = _rescaled(center_features(X, dtype=dtype, device=dev, name=name), inplace=True)
        K = f @ f.T
    else:
        z = _normalize_channel_major(X, True, zero_channels, dtype, dev, name)
        if measure == "grelu_cka":
            K = _max_kernel(z, block_size, memory_budget)
        else:
            f = z.permute(1, 0, 2).reshape(z.shape[1], -1)
            K = f @ f.T
        del z
        K = u_centre(K)
    norm = float(torch.linalg.vector_norm(K))
    if not norm > 0:
        raise ValueError(f"{name} gives a degenerate Gram matrix (all samples coincide after preprocessing); "
                         f"CKA is undefined")
    return K.div_(norm)


def similarity_matrices(feats_a: dict, feats_b: dict, measures=("grelu_cka", "orthogonal_cka"), *,
                        pairs: str = "all", zero_channels: str = "keep", block_size: int | None = None,
                        memory_budget: float | None = None, dtype=torch.float32, device=None) -> dict:
    """Similarity of every layer of model A with every layer of model B, for several measures.

    Parameters
    ----------
    feats_a, feats_b : ``{layer: features (n_samples, channels[, height, width])}`` of the two models on
        the same inputs (e.g. from :func:`layer_features`); the order of the dicts is the order of rows
        and columns.
    measures : names from :data:`MATRIX_MEASURES`.
    pairs : ``"all"`` (every layer pair) or ``"diagonal"`` (only layer ``i`` of A with layer ``i`` of B,
        e.g. Table 2; needs as many layers in A as in B).
    zero_channels : see :func:`normalize_channels`; ``"keep"`` by default because trained ReLU layers
        often have dead channels.
    dtype : computation type (``float32`` by default: the CKAs and Procrustes values agree with
        ``float64`` to about 1e-5 on real features, at half the time and memory).

    Returns
    -------
    ``{measure: array (len(feats_a), len(feats_b))}``. Entries not computed are NaN: off the diagonal
    for ``pairs="diagonal"``, and for the Procrustes measures every pair whose spatial shapes differ
    (the authors compare same-shaped layers only).

    Each CKA Gram matrix is computed once per layer and model (:func:`normalized_gram`), so the cost is
    ``len(feats_a) + len(feats_b)`` Gram matrices, not their product; A's matrices are held while B's
    are computed one at a time (peak ``(len(feats_a) + 1) n_samples^2`` numbers per measure).
    """
    for m in measures:
        check_choice("measure", m, MATRIX_MEASURES)
    check_choice("pairs", pairs, PAIRS)
    names_a, names_b = list(feats_a), list(feats_b)
    if not names_a or not names_b:
        raise ValueError("feats_a and feats_b must each hold at least one layer")
    if pairs == "diagonal" and len(names_a) != len(names_b):
        raise ValueError(f"pairs='diagonal' needs as many layers in feats_a as in feats_b; got "
                         f"{len(names_a)} and {len(names_b)}")
    for a in names_a:
        _same_samples(feats_a[a], feats_b[names_b[0]])
    for b in names_b:
        _same_samples(feats_a[names_a[0]], feats_b[b])
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
                        S[i, j] = min(1.0, max(-1.0, float(torch.dot(K.reshape(-1), L.to(K).reshape(-1)))))
                del L
            del grams_a
        else:
            fn = grelu_procrustes if m == "grelu_procrustes" else orthogonal_procrustes
            kw = dict(zero_channels=zero_channels) if m == "grelu_procrustes" else {}
            for i, a in enumerate(names_a):
                for j, b in enumerate(names_b):
                    if wanted[i, j] and _shape(feats_a[a])[2:] == _shape(feats_b[b])[2:]:
                        S[i, j] = fn(feats_a[a], feats_b[b], dtype=dtype, device=device, **kw)
        out[m] = S
    return out


def similarity_matrix(feats_a: dict, feats_b: dict, measure: str, **kwargs) -> np.ndarray:
    """:func:`similarity_matrices` for one measure: array ``(len(feats_a), len(feats_b))``."""
    return similarity_matrices(feats_a, feats_b, (measure,), **kwargs)[measure]


def best_matches(S) -> np.ndarray:
    """For each row of a similarity matrix ``S`` ``(n_layers_a, n_layers_b)``, the column of its largest
    entry (NaN entries ignored; -1 for a row without any). The layer-identification test of Kornblith
    et al. 2019 asks for ``best_matches(S)[i] == i`` between two seeds of one architecture."""
    S = np.asarray(S, dtype=float)
    if S.ndim != 2:
        raise ValueError(f"S must be a 2-D similarity matrix; got shape {S.shape}")
    filled = np.where(np.isnan(S), -np.inf, S)
    best = filled.argmax(axis=1)
    return np.where(np.isfinite(filled).any(axis=1), best, -1)


def model_pair_similarities(model_a: torch.nn.Module, model_b: torch.nn.Module, x: torch.Tensor, layers=None,
                            measures=MATRIX_MEASURES, *, feature_dtype=torch.float32, batch_size: int = 250,
                            **kwargs) -> dict:
    """All-layer-pairs similarities of two models on the inputs ``x``, each model's features taken once.

    Parameters
    ----------
    model_a, model_b : models of :mod:`lib.models` with the same hidden layers ``layers``.
    x : inputs ``(n_samples, 3, H, W)`` on the models' device.
    layers : hidden layer names (default: every hidden activation layer of ``model_a``).
    measures : names from :data:`MATRIX_MEASURES`, all computed from the same features.
    feature_dtype : how features are held on the CPU between the forward passes and the measures
        (``float16`` halves the memory at some accuracy; see :func:`layer_features`).
    kwargs : for :func:`similarity_matrices` (``pairs``, ``dtype``, ``device``, ...).

    Returns
    -------
    ``dict(layers=[...], matrices={measure: array (n_layers, n_layers)}, seconds={"features": s,
    measure: s, ...}, feature_mib=MiB per model, n_samples=n)``.
    """
    t0 = time.perf_counter()
    fa = layer_features(model_a, x, layers, dtype=feature_dtype, batch_size=batch_size)
    fb = layer_features(model_b, x, list(fa), dtype=feature_dtype, batch_size=batch_size)
    seconds = {"features": time.perf_counter() - t0}
    matrices = {}
    for m in measures:
        t0 = time.perf_counter()
        matrices[m] = similarity_matrix(fa, fb, m, **kwargs)
        seconds[m] = time.perf_counter() - t0
    mib = sum(f.numel() * f.element_size() for f in fa.values()) / 2**20
    return dict(layers=list(fa), matrices=matrices, seconds=seconds, feature_mib=mib, n_samples=len(x))
