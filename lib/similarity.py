"""Representation similarity of two models: their hidden features, compared at every layer pair.

The model-aware layer above :mod:`lib.metrics` (whose measures take arrays only):
:func:`layer_features` takes a model's hidden features once (:func:`lib.models.feature_chunks`);
:func:`model_pair_similarities` compares all layer pairs of two models with
:func:`lib.metrics.similarity_matrices`, and :func:`cached_pair_similarities` caches that on disk
(``lib.cache.memo``), keyed on the weights and the images.
"""

from __future__ import annotations

import time

import torch

from .cache import fingerprint, memo, tensor_digest
from .config import check_choice
from .metrics import PAPER_MEASURES, similarity_matrices
from .models import feature_chunks

__all__ = ["layer_features", "model_pair_similarities", "cached_pair_similarities"]


@torch.no_grad()
def layer_features(
    model: torch.nn.Module,
    x: torch.Tensor,
    layers=None,
    *,
    dtype=torch.float32,
    batch_size: int = 250,
) -> dict:
    """Hidden features of ``model`` on inputs ``x``, as CPU tensors in ``dtype``.

    Parameters
    ----------
    model : torch.nn.Module
        A model of :mod:`lib.models` (run in eval mode on its own device).
    x : torch.Tensor
        Model inputs ``(n_samples, 3, H, W)`` on the model's device (e.g. from
        :func:`lib.data.to_input`).
    layers : list of str, optional
        Layer names for :func:`lib.models.features` (default: every hidden activation layer).
    dtype : torch.dtype
        Storage type, ``torch.float32`` or ``torch.float16`` (half the memory; the measures convert
        back to ``float32``/``float64``; values beyond 65504 become infinite and are reported by
        them).
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
            out[name][start : start + len(f)] = f.to("cpu", dtype)
    return out


def model_pair_similarities(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    x: torch.Tensor,
    layers=None,
    measures=PAPER_MEASURES,
    *,
    feature_dtype=torch.float32,
    batch_size: int = 250,
    **kwargs,
) -> dict:
    """All-layer-pairs similarities of two models on the inputs ``x``, each model's features taken
    once.

    Parameters
    ----------
    model_a, model_b : torch.nn.Module
        Models of :mod:`lib.models` with the same hidden layers ``layers``.
    x : torch.Tensor
        Inputs ``(n_samples, 3, H, W)`` on the models' device.
    layers : list of str, optional
        Hidden layer names (default: every hidden activation layer of ``model_a``).
    measures : sequence of str
        Names from :data:`lib.metrics.MATRIX_MEASURES`, all computed from the same features
        (default: the paper's, :data:`lib.metrics.PAPER_MEASURES`).
    feature_dtype : torch.dtype
        How features are held on the CPU between the forward passes and the measures (``float16``
        halves the memory at some accuracy; see :func:`layer_features`).
    batch_size : int
        Images per forward pass.
    **kwargs
        For :func:`lib.metrics.similarity_matrices` (``pairs``, ``dtype``, ``device``, ...).

    Returns
    -------
    dict
        ``layers`` (list of names), ``matrices`` (``{measure: array (n_layers, n_layers)}``),
        ``seconds`` (``{"features": s, measure: s, ...}``, wall-clock seconds), ``feature_mib``
        (MiB of features per model) and ``n_samples``.
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
    return dict(
        layers=list(fa), matrices=matrices, seconds=seconds, feature_mib=mib, n_samples=len(x)
    )


def cached_pair_similarities(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    x: torch.Tensor,
    layers,
    measures=PAPER_MEASURES,
    *,
    device=None,
) -> dict:
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
        Names from :data:`lib.metrics.MATRIX_MEASURES` (default: the paper's).
    device : str or torch.device, optional
        Where the measures run.

    Returns
    -------
    dict
        As :func:`model_pair_similarities`; ``seconds`` are those of the run that filled the cache.
    """
    config = dict(
        a=_model_identity(model_a),
        b=_model_identity(model_b),
        images=tensor_digest(x),
        layers=list(layers),
        n_images=len(x),
        measures=list(measures),
        feature_dtype="float32",
        dtype="float32",
        zero_channels="keep",
    )
    return memo(
        "similarity",
        config,
        lambda: model_pair_similarities(
            model_a, model_b, x, layers, measures, feature_dtype=torch.float32, device=device
        ),
    )


def _model_identity(model: torch.nn.Module) -> dict:
    # The weights alone do not fix the function (an activation's slope is no weight): the
    # architecture config that lib.models.build records goes in too.
    arch = getattr(model, "arch", None)
    if arch is None:
        arch = type(model).__qualname__
    return dict(arch=arch, weights=fingerprint(model))
