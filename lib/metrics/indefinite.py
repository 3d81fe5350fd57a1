"""How much the max kernel's indefiniteness matters: spectra, HSIC signs, a search for bad inputs.

Lemma 5.5 of the paper argues that G_ReLU-CKA lies in ``[0, 1]`` because the max kernel is positive
semi-definite (PSD) and CKA is then a cosine of Gram matrices. The kernel is not PSD
(``lib.metrics.psd``), and the argument has a second gap: with the *unbiased* HSIC the paper uses, a
CKA is the cosine of U-centred Gram matrices (Szekely and Rizzo), which can be negative for every
kernel, PSD or not. What PSD buys is the *biased* estimator's bound: for PSD ``K`` and ``L``,
``tr(HKH HLH) >= 0``. This module measures all three:

- :func:`spectrum_summary`: the most negative eigenvalue of a Gram matrix ``K`` and of its centred
  form ``HKH``, relative to the largest;
- :func:`hsic_report`: ``HSIC_1(K, K)``, ``HSIC_1(L, L)`` (never negative: each is a squared norm
  of a U-centred matrix), ``HSIC_1(K, L)`` and the biased ``HSIC_0(K, L)``, with both CKAs;
- :func:`cka_random_range` and :func:`cka_range_search`: random small inputs, and inputs optimised
  by gradient, that push a CKA below 0 (unbiased or biased), or make ``HSIC_1(K, K)`` vanish
  (:func:`hsic_share`) while the linear kernel of the same features does not (G_ReLU-CKA undefined,
  orthogonal CKA defined).

Kernels are named by :data:`SEARCH_KERNELS`: ``"max"`` (G_ReLU-CKA's), ``"linear"`` (orthogonal
CKA's) and ``"psd"`` (:func:`lib.metrics.psd_grelu_gram` with :data:`lib.metrics.PSD_BETA`), each
on the paper's normalised channels.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..config import check_choice
from .gram import max_kernel_gram
from .hsic import cka_from_grams, hsic
from .normalization import normalize_channels
from .psd import PSD_BETA, psd_grelu_gram

__all__ = ["SEARCH_KERNELS", "SEARCH_TARGETS", "cka_random_range", "cka_range_search",
           "hsic_report", "hsic_share", "kernel_gram", "spectrum_summary"]

#: Kernels on the normalised channels that the searches compare.
SEARCH_KERNELS = ("max", "linear", "psd")
#: What :func:`cka_range_search` minimises: the unbiased CKA, the biased CKA, or the kernel's
#: :func:`hsic_share` relative to that of the linear kernel on the same inputs ("degenerate").
SEARCH_TARGETS = ("unbiased", "biased", "degenerate")


def _square(K, name="K") -> torch.Tensor:
    t = K.detach() if isinstance(K, torch.Tensor) else torch.as_tensor(np.asarray(K))
    t = t.to("cpu", torch.float64)
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] < 2:
        raise ValueError(f"{name} must be a square (n_samples, n_samples) matrix with "
                         f"n_samples >= 2; got shape {tuple(t.shape)}")
    return t


def spectrum_summary(K) -> dict:
    """The negative part of the spectrum of a symmetric Gram matrix and of its centred form.

    Parameters
    ----------
    K : array or tensor
        Symmetric, ``(n_samples, n_samples)``, ``n_samples >= 2``; computed in float64 on the CPU.

    Returns
    -------
    dict
        ``min_rel``: smallest eigenvalue of ``K`` divided by its largest; ``negative_share``: the
        share of the spectrum's absolute mass in negative eigenvalues; ``n_negative``: how many
        eigenvalues lie below ``-1e-12`` times the largest; ``centred_min_rel``,
        ``centred_negative_share``, ``centred_n_negative``: the same for ``HKH`` with
        ``H = I - 11^T / n``. A PSD ``K`` gives ``min_rel >= 0`` up to round-off (about
        ``-1e-15``), and so does its ``HKH``.
    """
    K = _square(K)
    n = K.shape[0]
    H = torch.eye(n, dtype=K.dtype) - 1.0 / n
    out = {}
    for prefix, M in (("", K), ("centred_", H @ K @ H)):
        e = torch.linalg.eigvalsh((M + M.T) / 2)
        top = float(e.abs().max())
        out[f"{prefix}min_rel"] = float(e[0]) / float(e[-1]) if float(e[-1]) > 0 else -math.inf
        mass = float(e.abs().sum())
        out[f"{prefix}negative_share"] = float(e[e < 0].abs().sum()) / mass if top > 0 else 0.0
        out[f"{prefix}n_negative"] = int((e < -1e-12 * top).sum())
    return out


def hsic_report(K, L) -> dict:
    """HSIC estimates and CKAs of two Gram matrices, for checking their signs.

    Parameters
    ----------
    K, L : arrays or tensors
        Symmetric, ``(n_samples, n_samples)`` each, ``n_samples >= 4``.

    Returns
    -------
    dict
        ``hsic1_kk``, ``hsic1_ll``, ``hsic1_kl``: the unbiased HSIC (:func:`lib.metrics.hsic`);
        ``hsic0_kl``: the biased one; ``cka1``, ``cka0``: the unbiased and biased CKA (NaN where a
        Gram matrix is degenerate).
    """
    K, L = _square(K, "K"), _square(L, "L")
    out = dict(hsic1_kk=hsic(K, K), hsic1_ll=hsic(L, L), hsic1_kl=hsic(K, L),
               hsic0_kl=hsic(K, L, unbiased=False))
    for key, unbiased in (("cka1", True), ("cka0", False)):
        try:
            out[key] = cka_from_grams(K, L, unbiased=unbiased)
        except ValueError:
            out[key] = math.nan
    return out


def hsic_share(K) -> float:
    """The share of a Gram matrix's off-diagonal variation that the unbiased HSIC sees.

    ``||U(K)||_F / ||K_off - m||_F``: ``U`` is the U-centring of the unbiased HSIC
    (``lib.metrics.u_center``), the orthogonal projection of the off-diagonal part away from the
    matrices ``b_i + b_j``; ``K_off - m`` is the off-diagonal part minus its mean. So the share lies
    in ``[0, 1]``, ignores scale, constants and the diagonal (as CKA does), and is 0 exactly when
    ``HSIC_1(K, K) = 0`` (``K[i, j] = b_i + b_j`` off the diagonal), where CKA is undefined.

    Parameters
    ----------
    K : array or tensor
        Symmetric, ``(n_samples, n_samples)``, ``n_samples >= 4``.

    Returns
    -------
    float
        In ``[0, 1]``; 0 also when the off-diagonal entries are all equal.
    """
    K = _square(K)
    n = K.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples; got {n}")
    off = ~torch.eye(n, dtype=torch.bool)
    spread = float(torch.linalg.vector_norm(K[off] - K[off].mean()))
    if spread == 0.0:
        return 0.0
    return min(1.0, math.sqrt(max(hsic(K, K), 0.0) * n * (n - 3)) / spread)


def kernel_gram(X, kernel: str, zero_channels: str = "keep") -> torch.Tensor:
    """The Gram matrix of one of :data:`SEARCH_KERNELS` on the normalised channels of ``X``.

    Parameters
    ----------
    X : array or tensor
        ``(n_samples, channels[, height, width])``.
    kernel : str
        ``"max"``, ``"linear"`` or ``"psd"``.
    zero_channels : str
        See :func:`lib.metrics.normalize_channels`.

    Returns
    -------
    torch.Tensor
        ``(n_samples, n_samples)`` in float64: the library's own Gram matrix (no gradient).
    """
    check_choice("kernel", kernel, SEARCH_KERNELS)
    if kernel == "psd":
        return psd_grelu_gram(X, PSD_BETA, zero_channels)
    z = normalize_channels(X, zero_channels=zero_channels)
    if kernel == "max":
        return max_kernel_gram(z)
    f = z.reshape(z.shape[0], -1)
    return f @ f.T


# -- differentiable versions for the adversarial search (small inputs: (n, n, c) temporaries) -----

def _normalised(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=0, keepdim=True)
    return x / x.norm(dim=0, keepdim=True)


def _gram(z: torch.Tensor, kernel: str) -> torch.Tensor:
    if kernel == "linear":
        return z @ z.T
    prod = z[:, None, :] * z[None, :, :]
    if kernel == "max":
        return prod.amax(dim=-1)
    return torch.logsumexp(PSD_BETA * prod / z.square().amax(), dim=-1).exp()


def _centred(K: torch.Tensor, unbiased: bool) -> torch.Tensor:
    n = K.shape[0]
    if not unbiased:
        H = torch.eye(n, dtype=K.dtype) - 1.0 / n
        return H @ K @ H
    off = 1.0 - torch.eye(n, dtype=K.dtype)
    K = K * off
    r = K.sum(dim=1)
    return (K - r[:, None] / (n - 2) - r[None, :] / (n - 2) + r.sum() / ((n - 1) * (n - 2))) * off


def _share(K: torch.Tensor) -> torch.Tensor:
    off = 1.0 - torch.eye(K.shape[0], dtype=K.dtype)
    m = (K * off).sum() / off.sum()
    return _centred(K, True).norm() / ((K - m) * off).norm()


def _objective(x, y, kernel: str, target: str) -> torch.Tensor:
    zx = _normalised(x)
    if target == "degenerate":
        return _share(_gram(zx, kernel)) / _share(_gram(zx, "linear"))
    a, b = (_centred(_gram(z, kernel), target == "unbiased") for z in (zx, _normalised(y)))
    return (a * b).sum() / (a.norm() * b.norm())


def _check_sizes(**sizes) -> None:
    low = dict(n_samples=4, channels=1, trials=1, restarts=1, steps=0)
    for name, v in sizes.items():
        if not (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= low[name]):
            raise ValueError(f"{name} must be an integer >= {low[name]}; got {v!r}")


def _sample(g: torch.Generator, n: int, c: int, nonnegative: bool) -> torch.Tensor:
    x = torch.randn(n, c, generator=g, dtype=torch.float64)
    return x.relu() if nonnegative else x


def cka_random_range(kernel: str = "max", n_samples: int = 8, channels: int = 3, trials: int = 200,
                     *, nonnegative: bool = False, seed: int = 0) -> dict:
    """CKA of independent random small inputs: how often it is negative or undefined.

    Each trial draws ``X`` and ``Y`` of shape ``(n_samples, channels)`` with standard normal entries
    (their ReLU with ``nonnegative``) and computes the CKA of the library's Gram matrices
    (:func:`kernel_gram`, zero channels kept) with both HSIC estimators.

    Parameters
    ----------
    kernel : str
        One of :data:`SEARCH_KERNELS`.
    n_samples, channels, trials : int
        Sizes (``n_samples >= 4``).
    nonnegative : bool
        Post-ReLU inputs instead of Gaussian ones.
    seed : int
        Seed of the draws.

    Returns
    -------
    dict
        ``unbiased_min``, ``unbiased_max``, ``unbiased_negative_share`` (fraction of the defined
        trials), ``biased_min``, ``biased_negative_share`` and ``undefined`` (trials where either
        input is degenerate: every channel constant, or a U-centred Gram matrix of zero norm).
    """
    check_choice("kernel", kernel, SEARCH_KERNELS)
    _check_sizes(n_samples=n_samples, channels=channels, trials=trials)
    g = torch.Generator().manual_seed(int(seed))
    values, undefined = {True: [], False: []}, 0
    for _ in range(trials):
        try:
            K, L = (kernel_gram(_sample(g, n_samples, channels, nonnegative), kernel)
                    for _ in range(2))
            pair = {u: cka_from_grams(K, L, unbiased=u) for u in (True, False)}
        except ValueError:
            undefined += 1
            continue
        for u, v in pair.items():
            values[u].append(v)
    u, b = np.array(values[True]), np.array(values[False])
    nan = math.nan
    return dict(unbiased_min=float(u.min()) if u.size else nan,
                unbiased_max=float(u.max()) if u.size else nan,
                unbiased_negative_share=float((u < 0).mean()) if u.size else nan,
                biased_min=float(b.min()) if b.size else nan,
                biased_negative_share=float((b < 0).mean()) if b.size else nan, undefined=undefined)


def _library_value(X: np.ndarray, Y: np.ndarray, kernel: str, target: str) -> float:
    """The search's objective recomputed from the library's Gram matrices and estimators."""
    K = kernel_gram(X, kernel)
    if target == "degenerate":
        return hsic_share(K) / hsic_share(kernel_gram(X, "linear"))
    L = kernel_gram(Y, kernel)
    try:
        return cka_from_grams(K, L, unbiased=target == "unbiased")
    except ValueError:
        return math.nan


def cka_range_search(kernel: str = "max", target: str = "unbiased", n_samples: int = 8,
                     channels: int = 3, *, restarts: int = 4, steps: int = 300,
                     nonnegative: bool = False, seed: int = 0) -> dict:
    """Inputs optimised by gradient descent (Adam) to minimise a CKA or to make it undefined.

    ``target="unbiased"`` or ``"biased"``: minimise the CKA of ``X`` and ``Y`` with that HSIC
    estimator (a PSD kernel cannot go below 0 with the biased one). ``"degenerate"``: minimise the
    :func:`hsic_share` of ``K_X`` divided by that of the linear kernel on the same ``X`` (1 for
    ``kernel="linear"``); 0 means ``HSIC_1(K, K) = 0``, this CKA undefined, where orthogonal CKA is
    defined (every kernel of the normalised channels is degenerate on some inputs, e.g. the vertices
    of a regular simplex). The best of ``restarts`` seeded starts is recomputed with the library.

    Parameters
    ----------
    kernel : str
        One of :data:`SEARCH_KERNELS`.
    target : str
        One of :data:`SEARCH_TARGETS`.
    n_samples, channels : int
        Shape of ``X`` and ``Y`` (``n_samples >= 4``).
    restarts, steps : int
        Independent starts (standard normal) and Adam steps (learning rate 0.05) per start.
    nonnegative : bool
        Parametrise ``X = theta^2`` (post-ReLU-like inputs) instead of ``X = theta``.
    seed : int
        Seed of the starts.

    Returns
    -------
    dict
        ``value``: the smallest objective reached (differentiable float64 version);
        ``library_value``: the same recomputed by :func:`lib.metrics.cka_from_grams` or
        :func:`hsic_share` on :func:`kernel_gram` (NaN where the library finds a Gram matrix
        degenerate); ``X``, ``Y``: the inputs, numpy ``(n_samples, channels)`` (``Y`` is None for
        ``"degenerate"``).
    """
    check_choice("kernel", kernel, SEARCH_KERNELS)
    check_choice("target", target, SEARCH_TARGETS)
    _check_sizes(n_samples=n_samples, channels=channels, restarts=restarts, steps=steps)
    g = torch.Generator().manual_seed(int(seed))
    best = (math.inf, None, None)
    for _ in range(restarts):
        theta = [_sample(g, n_samples, channels, False).requires_grad_() for _ in range(2)]
        opt = torch.optim.Adam(theta, lr=0.05)
        for step in range(steps + 1):
            x, y = (t.square() if nonnegative else t for t in theta)
            value = _objective(x, y, kernel, target)
            if step == steps or not torch.isfinite(value):
                break
            opt.zero_grad()
            value.backward()
            opt.step()
        if value.item() < best[0]:
            best = (value.item(), x.detach().numpy().copy(), y.detach().numpy().copy())
    value, X, Y = best
    if X is None:
        return dict(value=math.nan, library_value=math.nan, X=None, Y=None)
    return dict(value=value, library_value=_library_value(X, Y, kernel, target), X=X,
                Y=None if target == "degenerate" else Y)
