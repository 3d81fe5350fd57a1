"""Gram matrices of features for the CKA measures (``lib.metrics.cka``).

:func:`linear_gram`, :func:`rbf_gram` (with Kornblith et al.'s bandwidth) and
:func:`max_kernel_gram`, the max kernel of G_ReLU-CKA. The max kernel is computed block by block
within a memory budget (:func:`block_plan`, :func:`blocked_max_kernel`), so that its temporaries
never reach the ``(n_samples, n_samples, channels)`` of a broadcast. Slow reference implementations
for comparison live in ``tests/reference.py``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .normalization import center_features
from .preprocessing import DegenerateInputError, channel_major, flatten_features

__all__ = [
    "BLOCK_BYTES",
    "BLOCK_ROWS",
    "linear_gram",
    "rbf_gram",
    "block_plan",
    "blocked_max_kernel",
    "max_kernel_gram",
]

#: Default bytes for the temporaries of one block of the max-kernel Gram matrix, per device kind. On
#: the 2-core development CPU (32 MB L3 cache), blocks with temporaries above about 32 MB were
#: measured to fall off a performance cliff.
BLOCK_BYTES = {"cpu": 32 * 2**20, "cuda": 1024 * 2**20}

#: Largest number of rows of one block of the max-kernel Gram matrix, per device kind.
BLOCK_ROWS = {"cpu": 512, "cuda": 4096}


def linear_gram(X, **kw) -> torch.Tensor:
    """The linear-kernel Gram matrix ``X X^T`` of the flattened features (no centring).

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, ...)``, see :func:`lib.metrics.to_channels`.
    **kw
        ``dtype``, ``device``, ``name`` for :func:`lib.metrics.to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)``.
    """
    f = flatten_features(X, **kw)
    return f @ f.T


def _median(t: torch.Tensor) -> torch.Tensor:
    """``np.median`` of all entries (the mean of the two middle values for an even count)."""
    flat = t.reshape(-1)
    m = flat.numel()
    hi = flat.kthvalue(m // 2 + 1).values
    return hi if m % 2 else (hi + flat.kthvalue(m // 2).values) / 2


def rbf_gram(X, threshold: float = 1.0, **kw) -> torch.Tensor:
    """RBF Gram matrix ``exp(-||x_i - x_j||^2 / (2 sigma^2))`` of the flattened features.

    As in Kornblith et al.'s ``gram_rbf``: ``sigma^2 = threshold^2 * median`` of the squared
    distances, the median taken over all ``n_samples^2`` entries including the zero diagonal, so
    ``sigma`` is ``threshold`` times the square root of that median.

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, ...)``, see :func:`lib.metrics.to_channels`.
    threshold : float
        Bandwidth relative to the median distance (positive).
    **kw
        ``dtype``, ``device``, ``name`` for :func:`lib.metrics.to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)``, entries in ``(0, 1]``.

    Raises
    ------
    ValueError
        If ``threshold`` is not a positive number.
    DegenerateInputError
        If at least half the sample pairs coincide to the working precision (a squared distance
        at most ``4 sqrt(n_features) eps (|x_i - m|^2 + |x_j - m|^2)``, ``m`` the mean sample and
        ``eps`` that of ``dtype``, counts as zero).
    """
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive number; got {threshold!r}")
    # Distances do not depend on a translation, but their expansion |a|^2 + |b|^2 - 2<a, b> cancels
    # as much of it as the features' offset exceeds their spread: centre (in float64) first.
    f = center_features(X, rescale=True, **kw)
    g = f @ f.T
    sq = g.diagonal().clone()
    d = g.mul_(-2).add_(sq[:, None]).add_(sq[None, :]).clamp_(min=0)
    # A squared distance within the typical round-off of its expansion, 4 sqrt(n_features) eps
    # times the pair's squared norms, is zero: coinciding samples count as such (the rule of
    # "Degenerate inputs" in lib.metrics.preprocessing).
    tol = (4 * math.sqrt(f.shape[1]) * torch.finfo(d.dtype).eps) * (sq[:, None] + sq[None, :])
    d.masked_fill_(d <= tol, 0.0)
    del tol
    med = float(_median(d))
    if med == 0.0:
        raise DegenerateInputError(
            f"the median squared distance between samples is zero to {d.dtype} precision in "
            f"{kw.get('name', 'X')} (at least half the sample pairs coincide); the RBF bandwidth "
            f"is undefined"
        )
    return d.mul_(-1.0 / (2 * threshold**2 * med)).exp_()


def block_plan(
    n: int,
    c: int,
    itemsize: int,
    device: torch.device,
    block_size: int | None = None,
    memory_budget: float | None = None,
) -> tuple[int, int]:
    """How :func:`blocked_max_kernel` splits its work: rows per block and channels per chunk.

    Parameters
    ----------
    n : int
        Number of samples (rows of the Gram matrix).
    c : int
        Number of channels.
    itemsize : int
        Bytes per number (8 for float64).
    device : torch.device
        Where the work runs; selects the defaults of :data:`BLOCK_BYTES` and :data:`BLOCK_ROWS`.
    block_size : int, optional
        Rows (and columns) of one block; None chooses it from ``memory_budget``.
    memory_budget : float, optional
        Bytes for the per-channel products of one block; None: :data:`BLOCK_BYTES` of the device.

    Returns
    -------
    block : int
        Rows per block, at most ``n``.
    chunk : int
        Channels per chunk, so that ``chunk * block^2 * itemsize`` fits ``memory_budget`` (at least
        1).

    Raises
    ------
    ValueError
        If ``block_size`` or ``memory_budget`` is not positive.
    """
    kind = "cuda" if device.type == "cuda" else "cpu"
    if memory_budget is None:
        memory_budget = BLOCK_BYTES[kind]
    if not (isinstance(memory_budget, (int, float)) and memory_budget > 0):
        raise ValueError(
            f"memory_budget must be a positive number of bytes or None; got {memory_budget!r}"
        )
    if block_size is None:
        rows = min(BLOCK_ROWS[kind], max(1, math.isqrt(int(memory_budget // itemsize))))
        block = math.ceil(n / math.ceil(n / rows))
    elif (
        isinstance(block_size, (int, np.integer))
        and not isinstance(block_size, bool)
        and block_size >= 1
    ):
        block = min(int(block_size), n)
    else:
        raise ValueError(f"block_size must be a positive integer or None; got {block_size!r}")
    chunk = int(min(c, max(1, memory_budget // (block * block * itemsize))))
    return block, chunk


def blocked_max_kernel(
    z: torch.Tensor, block_size: int | None = None, memory_budget: float | None = None
) -> torch.Tensor:
    """Max-kernel Gram matrix of features already in the channel-major layout.

    Per channel the Gram matrix ``z_c z_c^T`` is a matrix product; the maximum over channels is kept
    running over chunks of channels, block by block (upper triangle only, mirrored), so that the
    temporaries stay within ``memory_budget`` (see :func:`block_plan`).

    Parameters
    ----------
    z : torch.Tensor
        ``(channels, n_samples, positions)``, e.g. from
        ``lib.metrics.preprocessing.normalize_channel_major``.
    block_size, memory_budget
        See :func:`block_plan`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)``, exactly symmetric, ``K[i, j] = max_c <z[c, i], z[c, j]>``.
    """
    c, n, _ = z.shape
    block, chunk = block_plan(n, c, z.element_size(), z.device, block_size, memory_budget)
    K = torch.empty((n, n), dtype=z.dtype, device=z.device)
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        for j0 in range(i0, n, block):
            j1 = min(j0 + block, n)
            tile = None
            for c0 in range(0, c, chunk):
                c1 = min(c0 + chunk, c)
                g = torch.bmm(z[c0:c1, i0:i1], z[c0:c1, j0:j1].transpose(1, 2)).amax(dim=0)
                tile = g if tile is None else torch.maximum(tile, g, out=tile)
            if j0 == i0:
                # Products of a block with itself are symmetric only up to round-off; make it exact.
                tile = torch.triu(tile) + torch.triu(tile, 1).T
            K[i0:i1, j0:j1] = tile
            if j0 != i0:
                K[j0:j1, i0:i1] = tile.T
    return K


def max_kernel_gram(
    X,
    block_size: int | None = None,
    memory_budget: float | None = None,
    *,
    dtype=torch.float64,
    device=None,
) -> torch.Tensor:
    """Gram matrix of the max kernel ``K[i, j] = max_c sum_p X[i, c, p] X[j, c, p]`` (no
    preprocessing).

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, channels[, height, width])``, see :func:`lib.metrics.to_channels`;
        for ``(n_samples, n_features)`` this is ``max_k X[i, k] X[j, k]``.
    block_size : int, optional
        Rows (and columns) of one block; None chooses it from ``memory_budget``.
    memory_budget : float, optional
        Bytes for the per-channel products of one block (the channel chunk is sized to fit; at least
        one channel per chunk); None: 32 MiB on CPU, 1 GiB on CUDA. The block itself and its running
        maximum add ``2 * block_size^2`` numbers.
    dtype, device
        As for :func:`lib.metrics.to_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)``, diagonal included (``max_c ||x_ic||^2``; the unbiased HSIC
        ignores it).
    """
    z = channel_major(X, dtype, device, "X")
    return blocked_max_kernel(z, block_size, memory_budget)
