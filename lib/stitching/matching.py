"""Closed forms behind the stitching layers: Sinkhorn, Hungarian, activation matching, least
squares.

Everything here works on features or on their float64 sums (the "moments": ``n``, ``ΣX``, ``ΣY``,
``XᵀX``, ``XᵀY``, ``ΣY²`` over samples), which are accumulated in a streaming pass
(:func:`streamed_moments`, or :func:`moments_of` and :func:`add_moments` chunk by chunk) so that
memory does not grow with the number of images: only one chunk of images is ever held as float64
samples, never the ``(N·H·W, C)`` copies of both feature sets. Channels are the features and every
(image, position) is a sample.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..config import check_chunk_size

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
]


def sinkhorn(P: torch.Tensor, rounds: int = 16) -> torch.Tensor:
    """Alternating row and column normalisations of a non-negative matrix (towards the Birkhoff
    polytope).

    Parameters
    ----------
    P : torch.Tensor
        A non-negative ``(C, C)`` matrix.
    rounds : int
        Row-then-column normalisations.

    Returns
    -------
    torch.Tensor
        ``(C, C)``: columns sum to 1 exactly, rows approximately.
    """
    for _ in range(rounds):
        P = P / P.sum(1, keepdim=True).clamp_min(1e-12)
        P = P / P.sum(0, keepdim=True).clamp_min(1e-12)
    return P


def hungarian(P: torch.Tensor) -> torch.Tensor:
    """The permutation matrix maximising ``sum_i P[i, perm_i]`` (linear sum assignment).

    Parameters
    ----------
    P : torch.Tensor
        A ``(C, C)`` score matrix.

    Returns
    -------
    torch.Tensor
        A ``(C, C)`` 0/1 permutation matrix of ``P``'s dtype and device.
    """
    rows, cols = linear_sum_assignment(P.detach().double().cpu().numpy(), maximize=True)
    out = torch.zeros_like(P)
    out[torch.as_tensor(rows), torch.as_tensor(cols)] = 1.0
    return out


def channels_last_2d(f: torch.Tensor) -> torch.Tensor:
    """Features as float64 samples of every channel: every position is a sample.

    Parameters
    ----------
    f : torch.Tensor
        ``(n, C)`` or ``(n, C, h, w)``.

    Returns
    -------
    torch.Tensor
        ``(n, C)`` or ``(n * h * w, C)``, float64.
    """
    if f.ndim not in (2, 4):
        raise ValueError(f"features must have shape (n, C) or (n, C, h, w), got {tuple(f.shape)}")
    return f.double() if f.ndim == 2 else f.double().movedim(1, -1).reshape(-1, f.shape[1])


def moments_of(xa: torch.Tensor, xb: torch.Tensor) -> dict:
    """The sums over the rows of two sample matrices.

    Parameters
    ----------
    xa, xb : torch.Tensor
        float64 samples ``(n, C_a)`` and ``(n, C_b)`` (e.g. from :func:`channels_last_2d`).

    Returns
    -------
    dict
        ``n`` (samples), ``sa`` ``(C_a,)`` and ``sb`` ``(C_b,)`` (sums), ``aa`` ``(C_a, C_a)``
        (``XᵀX``), ``ab`` ``(C_a, C_b)`` (``XᵀY``) and ``bb`` ``(C_b,)`` (sums of squares).
    """
    return dict(
        n=xa.shape[0], sa=xa.sum(0), sb=xb.sum(0), aa=xa.T @ xa, ab=xa.T @ xb, bb=(xb * xb).sum(0)
    )


def add_moments(total: dict | None, part: dict) -> dict:
    """``total + part`` entry by entry (``part`` alone when ``total`` is None): one step of a
    streaming pass.

    Parameters
    ----------
    total : dict or None
        The sums so far (:func:`moments_of`).
    part : dict
        The sums of the next chunk.

    Returns
    -------
    dict
        The sums over both.
    """
    return part if total is None else {k: total[k] + part[k] for k in part}


def streamed_moments(
    features_a: torch.Tensor, features_b: torch.Tensor, chunk_size: int = 256
) -> dict:
    """The float64 sums of two feature sets (:func:`moments_of`), ``chunk_size`` images at a time.

    Only one chunk's samples exist in float64 at a time, so the memory beyond the inputs does not
    grow with the number of images ``n``; the sums equal the one-shot
    ``moments_of(channels_last_2d(features_a), channels_last_2d(features_b))`` up to the order of
    float64 additions.

    Parameters
    ----------
    features_a, features_b : torch.Tensor
        Features of the same ``n`` images, ``(n, C_a)`` and ``(n, C_b)`` or ``(n, C_a, h, w)`` and
        ``(n, C_b, h, w)``, any floating dtype, on one device.
    chunk_size : int
        Images per chunk (a positive integer; it need not divide ``n``).

    Returns
    -------
    dict
        The sums (:func:`moments_of`), on the inputs' device.
    """
    chunk_size = check_chunk_size(chunk_size)
    if (
        features_a.ndim != features_b.ndim
        or features_a.shape[0] != features_b.shape[0]
        or features_a.shape[2:] != features_b.shape[2:]
    ):
        raise ValueError(
            f"features_a and features_b must hold the same images and positions, got "
            f"shapes {tuple(features_a.shape)} and {tuple(features_b.shape)}"
        )
    if features_a.shape[0] == 0:
        raise ValueError("features_a and features_b hold no images")
    total = None
    for s in range(0, features_a.shape[0], chunk_size):
        part = moments_of(
            channels_last_2d(features_a[s : s + chunk_size]),
            channels_last_2d(features_b[s : s + chunk_size]),
        )
        total = add_moments(total, part)
    return total


def matching_from_moments(m: dict):
    """Activation matching from feature sums: ``(perm, scales)``, each of shape ``(C,)``.

    Channels are compared by their uncentred cosine similarity over all samples and positions (the
    cross-correlation of G_ReLU-Procrustes, Section 5); the Hungarian algorithm maximises the
    matched sum.

    Parameters
    ----------
    m : dict
        Sums of A's and B's features (:func:`moments_of`, ``lib.stitching.feature_moments``).

    Returns
    -------
    tuple of torch.Tensor
        ``perm[i]`` (int64) is the channel of B matched to channel i of A and ``scales[i] >= 0``
        (float32) the least-squares factor with ``features_b[:, perm[i]] ≈ scales[i] * features_a[:,
        i]``.
    """
    aa = m["aa"].diagonal()
    na, nb = aa.clamp_min(1e-24).sqrt(), m["bb"].clamp_min(1e-24).sqrt()
    corr = m["ab"] / na[:, None] / nb[None, :]  # (C_a, C_b)
    rows, cols = linear_sum_assignment(corr.cpu().numpy(), maximize=True)
    perm = torch.as_tensor(cols[np.argsort(rows)], device=corr.device)
    idx = torch.arange(len(perm), device=corr.device)
    scales = (m["ab"][idx, perm] / aa.clamp_min(1e-24)).clamp_min(0.0)
    return perm, scales.float()


def activation_matching(features_a: torch.Tensor, features_b: torch.Tensor, chunk_size: int = 256):
    """Match B's channels to A's from features held in memory, streaming over their images.

    The sums are accumulated ``chunk_size`` images at a time (:func:`streamed_moments`), so the
    memory beyond the inputs does not grow with the number of images.

    Parameters
    ----------
    features_a, features_b : torch.Tensor
        Equal shapes, ``(n, C)`` or ``(n, C, h, w)``.
    chunk_size : int
        Images per chunk (a positive integer).

    Returns
    -------
    tuple of torch.Tensor
        ``(perm, scales)``, each ``(C,)``, as in :func:`matching_from_moments`.
    """
    if features_a.ndim not in (2, 4):
        raise ValueError(
            f"features must have shape (n, C) or (n, C, h, w), got {tuple(features_a.shape)}"
        )
    if features_a.shape != features_b.shape:
        raise ValueError(
            f"features_a and features_b must have equal shapes, got "
            f"{tuple(features_a.shape)} and {tuple(features_b.shape)}"
        )
    return matching_from_moments(streamed_moments(features_a, features_b, chunk_size))


def least_squares(m: dict, rank: int | None = None, rcond: float = 1e-10):
    """Closed-form stitching map from feature sums: ``(W, b)`` with ``y ≈ W x + b``.

    Without ``rank``: ordinary least squares of B's channels on A's (with a bias), i.e.
    ``W = Σ_ba Σ_aa⁺`` for the centred covariances. With ``rank = r``: reduced-rank regression, the
    least-squares map projected onto the top-r left singular vectors ``U_r`` of ``Σ_ba Σ_aa^{-1/2}``
    (its singular directions in the metric of A's features), ``W_r = U_r U_rᵀ W``, which minimises
    the squared error among maps of rank ``r``. Directions of A's features with variance below
    ``rcond`` times the largest (dead channels) are left out of the pseudo-inverse, so their weights
    are 0.

    Parameters
    ----------
    m : dict
        Sums of A's (``x``) and B's (``y``) samples (:func:`moments_of`).
    rank : int, optional
        The rank ``r`` of a reduced-rank map.
    rcond : float
        Relative variance below which a direction of A's features is dropped.

    Returns
    -------
    tuple of torch.Tensor
        ``W`` ``(C_b, C_a)`` and ``b`` ``(C_b,)``, float64.
    """
    n = m["n"]
    ma, mb = m["sa"] / n, m["sb"] / n
    s_aa = m["aa"] / n - torch.outer(ma, ma)
    s_ab = m["ab"] / n - torch.outer(ma, mb)
    lam, Q = torch.linalg.eigh(s_aa)
    keep = lam > rcond * lam.max().clamp_min(1e-300)
    Qk, lk = Q[:, keep], lam[keep]
    W = (s_ab.T @ Qk) / lk @ Qk.T  # Σ_ba Σ_aa⁺
    if rank is not None:
        B = (s_ab.T @ Qk) / lk.sqrt()  # Σ_ba Σ_aa^{-1/2} in A's eigenbasis
        U = torch.linalg.svd(B, full_matrices=False)[0][:, :rank]
        W = U @ (U.T @ W)
    return W, mb - W @ ma


def matching_matrix(perm: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The stitching matrix ``M = P D`` of a matching: ``M[perm[i], i] = scales[i]``.

    Parameters
    ----------
    perm, scales : torch.Tensor
        ``(C,)`` each (:func:`matching_from_moments`).

    Returns
    -------
    torch.Tensor
        ``(C, C)`` of ``scales``' dtype.
    """
    C = len(perm)
    M = torch.zeros(C, C, dtype=scales.dtype, device=scales.device)
    M[perm, torch.arange(C, device=perm.device)] = scales
    return M


def permutation_of(M: torch.Tensor) -> torch.Tensor:
    """The permutation pattern of a (near-)monomial matrix: ``perm[i]`` is the row of column i's
    largest entry.

    Parameters
    ----------
    M : torch.Tensor
        ``(C, C)``, e.g. a stitching matrix or a planted ``phi(A)``.

    Returns
    -------
    torch.Tensor
        ``(C,)`` int64, in the convention of :func:`matching_from_moments`.
    """
    return M.abs().argmax(0)


def recovered_fraction(
    perm: torch.Tensor, true_perm: torch.Tensor, alive: torch.Tensor | None = None
) -> float:
    """The fraction of channels that ``perm`` maps as ``true_perm`` does.

    Parameters
    ----------
    perm, true_perm : torch.Tensor
        ``(C,)`` permutations (:func:`matching_from_moments`, :func:`permutation_of`), on any
        devices.
    alive : torch.Tensor, optional
        ``(C,)`` bool: count only these channels (channels that never fire are interchangeable, so a
        permutation is only defined on the live ones).

    Returns
    -------
    float
        A fraction in [0, 1].
    """
    hit = perm.cpu() == true_perm.cpu()
    if alive is not None:
        hit = hit[alive.cpu()]
    return hit.float().mean().item()
