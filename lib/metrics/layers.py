"""Similarity of every layer of one model with every layer of another (heatmaps, Table 2, layer
identification of Section 5), from their features.

:func:`similarity_matrices` compares all layer pairs for several measures of
:data:`lib.metrics.MATRIX_MEASURES`, computing each layer's Gram matrix once for the CKA measures
(:func:`normalized_gram`, U-centred with :func:`lib.metrics.u_center`). :func:`best_matches`,
:func:`same_layer_rate` and :func:`diagonal_summary` read the paper's observations off a matrix.
Features of models come from ``lib.similarity``, which also caches the matrices of two models.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import check_choice
from .hsic import sum_products
from .preprocessing import check_same_samples, shape_of
from .registry import MATRIX_MEASURES, MEASURES, get_measure

__all__ = [
    "PAIR_MODES",
    "normalized_gram",
    "similarity_matrices",
    "best_matches",
    "same_layer_rate",
    "diagonal_summary",
]

#: Which layer pairs :func:`similarity_matrices` compares: every pair, or layer ``i`` with layer
#: ``i`` only.
PAIR_MODES = ("all", "diagonal")
# The measures with a Gram form, which normalized_gram computes.
_WITH_GRAM = tuple(name for name, m in MEASURES.items() if m.gram is not None)


def normalized_gram(
    X,
    measure: str,
    zero_channels: str = "keep",
    *,
    block_size: int | None = None,
    memory_budget: float | None = None,
    dtype=torch.float32,
    device=None,
    name: str = "X",
) -> torch.Tensor:
    """The Gram form of a CKA ``measure`` of ``X``: its centred Gram matrix of unit Frobenius norm.

    The CKA of two inputs is the inner product of their matrices:
    ``(normalized_gram(X, m) * normalized_gram(Y, m)).sum()`` equals ``grelu_cka(X, Y)`` etc.

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, channels[, height, width])``.
    measure : str
        A measure of :data:`lib.metrics.MEASURES` with a Gram form (the ``gram`` of its
        :class:`lib.metrics.Measure`): ``"grelu_cka"`` (:func:`lib.metrics.grelu_cka_gram`),
        ``"orthogonal_cka"``, ``"linear_cka"`` (Kornblith et al.'s biased CKA) or
        ``"psd_grelu_cka"`` (:func:`lib.metrics.psd_normalized_gram`).
    zero_channels : str
        See :func:`lib.metrics.normalize_channels` (for the measures that normalise channels).
    block_size, memory_budget
        See ``lib.metrics.gram.block_plan`` (for the measures that take them).
    dtype, device, name
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)`` of unit Frobenius norm.

    Raises
    ------
    ValueError
        For a name without a Gram form (the accepted names are listed).
    DegenerateInputError
        As ``lib.metrics.hsic.centered_norm_`` and :func:`lib.metrics.normalize_channels` say.
    """
    spec = get_measure(measure, _WITH_GRAM)
    options = spec.pick(
        zero_channels=zero_channels, block_size=block_size, memory_budget=memory_budget
    )
    return spec.gram(X, dtype=dtype, device=device, name=name, **options)


def _check_layers(feats_a: dict, feats_b: dict, pairs: str) -> None:
    names_a, names_b = list(feats_a), list(feats_b)
    if not names_a or not names_b:
        raise ValueError("feats_a and feats_b must each hold at least one layer")
    if pairs == "diagonal" and len(names_a) != len(names_b):
        raise ValueError(
            f"pairs='diagonal' needs as many layers in feats_a as in feats_b; got "
            f"{len(names_a)} and {len(names_b)}"
        )
    for a in names_a:
        check_same_samples(feats_a[a], feats_b[names_b[0]])
    for b in names_b:
        check_same_samples(feats_a[names_a[0]], feats_b[b])


def similarity_matrices(
    feats_a: dict,
    feats_b: dict,
    measures=("grelu_cka", "orthogonal_cka"),
    *,
    pairs: str = "all",
    zero_channels: str = "keep",
    block_size: int | None = None,
    memory_budget: float | None = None,
    dtype=torch.float32,
    device=None,
) -> dict:
    """Similarity of every layer of model A with every layer of model B, for several measures.

    Each CKA Gram matrix is computed once per layer and model (:func:`normalized_gram`), so the cost
    is ``len(feats_a) + len(feats_b)`` Gram matrices, not their product; A's matrices are held while
    B's are computed one at a time (peak ``(len(feats_a) + 1) n_samples^2`` numbers per measure).
    The Procrustes measures are computed pair by pair.

    Parameters
    ----------
    feats_a, feats_b : dict
        ``{layer: features (n_samples, channels[, height, width])}`` of the two models on the same
        inputs (e.g. from ``lib.similarity.layer_features``); the order of the dicts is the order of
        rows and columns.
    measures : sequence of str
        Names from :data:`lib.metrics.MATRIX_MEASURES`.
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
        ``{measure: array (len(feats_a), len(feats_b))}``. Entries not computed are NaN: off the
        diagonal for ``pairs="diagonal"``, and for the Procrustes measures every pair whose spatial
        shapes differ (the authors compare same-shaped layers only).
    """
    specs = {m: get_measure(m, MATRIX_MEASURES) for m in measures}
    check_choice("pairs", pairs, PAIR_MODES)
    _check_layers(feats_a, feats_b, pairs)
    n_a, n_b = len(feats_a), len(feats_b)
    wanted = np.array([[pairs == "all" or i == j for j in range(n_b)] for i in range(n_a)])
    options = dict(zero_channels=zero_channels, block_size=block_size, memory_budget=memory_budget)
    out = {}
    for m, spec in specs.items():
        compare = _by_grams if spec.gram is not None else _pair_by_pair
        out[m] = compare(
            spec, feats_a, feats_b, wanted, spec.pick(**options), dtype=dtype, device=device
        )
    return out


def _by_grams(
    spec, feats_a: dict, feats_b: dict, wanted: np.ndarray, options: dict, **kw
) -> np.ndarray:
    """A CKA's matrix from each layer's Gram form, A's held while B's are computed one by one."""
    S = np.full(wanted.shape, np.nan)
    grams_a = [
        spec.gram(f, name=f"feats_a[{a!r}]", **options, **kw) if wanted[i].any() else None
        for i, (a, f) in enumerate(feats_a.items())
    ]
    for j, (b, f) in enumerate(feats_b.items()):
        if not wanted[:, j].any():
            continue
        L = spec.gram(f, name=f"feats_b[{b!r}]", **options, **kw)
        for i, K in enumerate(grams_a):
            if wanted[i, j]:
                S[i, j] = min(1.0, max(-1.0, sum_products(K, L.to(K))))
        del L
    return S


def _pair_by_pair(
    spec, feats_a: dict, feats_b: dict, wanted: np.ndarray, options: dict, **kw
) -> np.ndarray:
    """A Procrustes measure's matrix, pair by pair, on the pairs of one spatial shape only."""
    S = np.full(wanted.shape, np.nan)
    for i, fa in enumerate(feats_a.values()):
        for j, fb in enumerate(feats_b.values()):
            if wanted[i, j] and shape_of(fa)[2:] == shape_of(fb)[2:]:
                S[i, j] = spec.function(fa, fb, **options, **kw)
    return S


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
        ``(n_layers, n_layers)`` similarity matrix, model A's layers as rows and B's as columns, in
        the same order; NaN entries are not compared.

    Returns
    -------
    float
        The fraction (0 to 1) of the rows with at least two compared entries whose largest entry is
        on the diagonal (``best_matches(S)[i] == i``); NaN if no row has two.
    """
    S = np.asarray(S, dtype=float)
    counted = (~np.isnan(S)).sum(axis=1) > 1
    return float(np.mean((best_matches(S) == np.arange(len(S)))[counted]))


def diagonal_summary(S, in_block=None) -> dict:
    """Means of the diagonal of a same-architecture similarity matrix, as the paper reads Figs. 2
    and 5.

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
        ``same_layer``: :func:`same_layer_rate` (fraction); ``early`` and ``late``: mean diagonal
        over the first and the last third of the layers (at least one layer each); ``in_block`` and
        ``other``: mean diagonal over the layers inside residual blocks and over the others (both
        None if no layer is inside a block).
    """
    d = np.diag(np.asarray(S, dtype=float))
    third = max(1, len(d) // 3)
    inside = np.zeros(len(d), bool) if in_block is None else np.asarray(in_block, dtype=bool)
    out = dict(
        same_layer=same_layer_rate(S),
        early=d[:third].mean(),
        late=d[-third:].mean(),
        in_block=None,
        other=None,
    )
    if inside.any():
        out.update(in_block=d[inside].mean(), other=d[~inside].mean())
    return out
