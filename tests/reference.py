"""Slow, obvious implementations that the tests compare the library's fast ones with.

- the max-kernel Gram matrix of G_ReLU-CKA filled one row at a time as in the authors'
  ``wreath_cka`` (:func:`max_kernel_rows`, also timed by ``benchmarks/metrics_speed.py``), and
  through the full ``(n, n, channels)`` tensor of per-channel inner products
  (:func:`max_kernel_naive`);
- Kornblith et al.'s (2019) ``center_gram(unbiased=True)`` and ``gram_rbf``, re-typed in numpy;
- G_ReLU-CKA and the authors' orthogonal CKA written out in numpy float64
  (:func:`channel_normalized`, :func:`max_kernel_np`, :func:`unbiased_cka_np`);

and the synthetic features the tests of ``lib.metrics`` feed them (:func:`conv_features`, ...).
"""

from __future__ import annotations

import numpy as np
import torch

from lib.metrics import to_channels


def max_kernel_row(f: torch.Tensor, i: int, kind: str = "authors") -> torch.Tensor:
    """Row ``i`` of the max kernel against rows ``< i`` of ``f`` ``(n, c, p)``: ``(i,)``.

    ``"authors"``: elementwise product and sum as in the authors' ``wreath_cka`` (an ``(i, c, p)``
    temporary); ``"matvec"``: the same with matrix-vector products (no temporary; a stronger
    baseline).
    """
    if kind == "authors":
        return (f[:i] * f[i]).sum(dim=-1).amax(dim=1)
    return torch.einsum("jcp,cp->jc", f[:i], f[i]).amax(dim=1)


def max_kernel_rows(X, kind: str = "authors") -> torch.Tensor:
    """Max-kernel Gram matrix ``(n, n)`` filled one row at a time in a Python loop (the authors'
    way)."""
    f = to_channels(X)
    n = f.shape[0]
    K = torch.zeros((n, n), dtype=f.dtype, device=f.device)
    for i in range(1, n):
        K[i, :i] = max_kernel_row(f, i, kind)
    K = K + K.T
    K.diagonal().copy_(f.square().sum(dim=-1).amax(dim=1))
    return K


def max_kernel_naive(X) -> torch.Tensor:
    """Max-kernel Gram matrix ``(n, n)`` through the full ``(n, n, channels)`` tensor of inner
    products."""
    f = to_channels(X)
    return torch.einsum("icp,jcp->ijc", f, f).amax(dim=-1)


def kornblith_unbiased_center(K: np.ndarray) -> np.ndarray:
    """Kornblith et al.'s ``center_gram(unbiased=True)`` of a Gram matrix ``(n, n)``, by hand."""
    n = len(K)
    K = K.copy()
    np.fill_diagonal(K, 0)
    means = K.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    K -= means[:, None] + means[None, :]
    np.fill_diagonal(K, 0)
    return K


def kornblith_gram_rbf(a: np.ndarray, threshold: float) -> np.ndarray:
    """Kornblith et al.'s ``gram_rbf`` of features ``(n, d)``: ``(n, n)``."""
    g = a @ a.T
    d = -2 * g + np.diag(g)[:, None] + np.diag(g)[None, :]
    return np.exp(-d / (2 * threshold**2 * np.median(d)))


def channel_normalized(x: np.ndarray, center: bool = True) -> np.ndarray:
    """Each channel of ``x`` ``(n, c[, h, w])`` centred (optionally) and scaled to unit norm over
    (samples, positions), in numpy float64: ``(n, c, p)``."""
    f = np.asarray(x, dtype=np.float64).reshape(len(x), x.shape[1], -1)
    if center:
        f = f - f.mean(axis=(0, 2), keepdims=True)
    return f / np.sqrt((f**2).sum(axis=(0, 2), keepdims=True))


def max_kernel_np(f: np.ndarray) -> np.ndarray:
    """``K[i, j] = max_c <f[i, c], f[j, c]>`` of ``f`` ``(n, c, p)`` by channel: ``(n, n)``."""
    K = np.full((len(f), len(f)), -np.inf)
    for c in range(f.shape[1]):
        np.maximum(K, f[:, c] @ f[:, c].T, out=K)
    return K


def unbiased_cka_np(K: np.ndarray, L: np.ndarray) -> float:
    """Debiased CKA of two Gram matrices by Kornblith et al.'s unbiased centring (numpy float64)."""
    ku, lu = kornblith_unbiased_center(K), kornblith_unbiased_center(L)
    return float((ku * lu).sum() / np.sqrt((ku * ku).sum() * (lu * lu).sum()))


# -- synthetic features ----------------------------------------------------------------------------


def conv_features(seed, n=48, c=6, h=3, w=3, relu=True):
    """Random conv features with channel-dependent scales (post-ReLU unless ``relu=False``)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)) * rng.uniform(0.5, 2.0, (1, c, 1, 1)) + rng.uniform(
        -0.5, 1.0, (1, c, 1, 1)
    )
    return np.maximum(x, 0) if relu else x


def grelu_act(x, seed, translate):
    """``x`` acted on by a random element of G_ReLU on channels (permutation x positive diagonal),
    plus a per-channel translation if ``translate``."""
    rng = np.random.default_rng(1000 + seed)
    c = x.shape[1]
    shape = (1, c) + (1,) * (x.ndim - 2)
    y = x[:, rng.permutation(c)] * np.exp(rng.standard_normal(c)).reshape(shape)
    return y + rng.standard_normal(c).reshape(shape) * 3 if translate else y


def haar(c, seed):
    """A Haar-random orthogonal ``(c, c)`` matrix."""
    q, r = np.linalg.qr(np.random.default_rng(2000 + seed).standard_normal((c, c)))
    return q * np.sign(np.diag(r))


def rotate_channels(x, q):
    """``x`` ``(n, c, ...)`` with its channels mixed by ``q`` ``(c, c)``."""
    return np.einsum("nc...,cd->nd...", x, q)


def related(x, seed, noise=0.7):
    """A representation correlated with ``x`` but not a transform of it."""
    return x + noise * np.random.default_rng(3000 + seed).standard_normal(x.shape)
