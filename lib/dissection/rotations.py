"""Rotations of a layer's basis for dissection (Section 6): Haar-random Q in SO(n) and the
geodesic ``Q^alpha`` from the identity to Q."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.linalg
import torch

__all__ = ["Rotations", "random_rotation", "rotation_power", "geodesic_checks",
           "head_after_basis_change"]


@dataclasses.dataclass(frozen=True)
class Rotations:
    """The rotated bases of Section 6: Haar-random rotations ``Q_r``, each taken to ``Q_r^alpha``.

    Checked when made.

    Parameters
    ----------
    alphas : sequence of float
        Positions on the geodesic from I (0) to ``Q_r`` (1), each in [0, 1] (stored as a tuple).
    n_rotations : int
        Haar-random rotations per alpha, >= 1.
    seed : int
        Seed of the rotations (:func:`random_rotation`, drawn in order from one generator).

    Raises
    ------
    ValueError
        If ``alphas`` is empty or outside [0, 1], or ``n_rotations`` is not a positive int.
    """

    alphas: tuple = (0.0, 0.25, 0.5, 0.75, 1.0)
    n_rotations: int = 5
    seed: int = 0

    def __post_init__(self):
        alphas = tuple(self.alphas)
        if not alphas:
            raise ValueError("alphas must be a non-empty sequence of numbers in [0, 1]")
        for a in alphas:
            number = isinstance(a, (int, float, np.floating)) and not isinstance(a, bool)
            if not number or not 0 <= a <= 1:
                raise ValueError(f"alphas must be numbers in [0, 1], got {a!r}")
        n = self.n_rotations
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n_rotations must be a positive int, got {n!r}")
        object.__setattr__(self, "alphas", alphas)


def _generator(generator) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    raise ValueError(f"generator must be a torch.Generator or an int seed, got {generator!r}")


def random_rotation(n: int, generator=0) -> torch.Tensor:
    """A Haar-uniform random rotation in SO(n).

    QR of a standard Gaussian matrix with the signs of R's diagonal moved into Q (Haar on O(n),
    Diaconis 2005); if det Q = -1 the first column is negated, a measure-preserving bijection from
    the other coset of O(n) onto SO(n).

    Parameters
    ----------
    n : int
        The dimension, >= 1.
    generator : torch.Generator or int
        The random stream (advanced by one ``(n, n)`` Gaussian draw) or an int seed.

    Returns
    -------
    torch.Tensor
        float64 ``(n, n)`` on the CPU, orthogonal with determinant +1.

    Raises
    ------
    ValueError
        If ``n`` is not a positive int or ``generator`` neither a generator nor an int.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    a = torch.randn(n, n, generator=_generator(generator), dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotation_power(q: torch.Tensor, alpha: float) -> torch.Tensor:
    """``Q^alpha = exp(alpha log Q)``: the minimal geodesic in SO(n) from I (alpha 0) to Q (alpha 1).

    Uses the real Schur form ``Q = Z T Z^T`` (Z orthogonal; T block diagonal since Q is normal):
    each 2x2 block is a rotation by ``theta`` in (-pi, pi] of one plane, raised to ``alpha theta``;
    eigenvalues -1 (an even number of them, as det Q = 1) are paired into planes rotated by pi.
    The result is real, orthogonal and of determinant 1 for every alpha, and
    ``Q^a Q^b = Q^(a+b)``.

    Parameters
    ----------
    q : torch.Tensor
        ``(n, n)``, a rotation (orthogonal, determinant +1, to 1e-6).
    alpha : float
        Position on the geodesic, in [0, 1].

    Returns
    -------
    torch.Tensor
        float64 ``(n, n)`` on ``q``'s device.

    Raises
    ------
    ValueError
        If ``alpha`` is not a number in [0, 1] (NaN included) or ``q`` is not a rotation.
    """
    if not isinstance(alpha, (int, float, np.floating)) or isinstance(alpha, bool) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1] (0: the identity, 1: Q), got {alpha!r}")
    alpha = float(alpha)
    qn = torch.as_tensor(q).detach().to("cpu", torch.float64).numpy()
    n = qn.shape[0]
    if qn.ndim != 2 or qn.shape[1] != n:
        raise ValueError(f"Q must be a square matrix, got shape {qn.shape}")
    if not np.allclose(qn @ qn.T, np.eye(n), atol=1e-6) or np.linalg.det(qn) < 0:
        raise ValueError("Q must be a rotation (orthogonal with determinant +1)")
    t, z = scipy.linalg.schur(qn, output="real")
    blocks = np.zeros_like(t)
    minus_one = []
    i = 0
    while i < n:
        if i + 1 < n and abs(t[i + 1, i]) > 1e-12:
            c, s = (t[i, i] + t[i + 1, i + 1]) / 2, (t[i + 1, i] - t[i, i + 1]) / 2
            theta = alpha * math.atan2(s, c)
            blocks[i:i + 2, i:i + 2] = [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]
            i += 2
            continue
        if t[i, i] > 0:
            blocks[i, i] = 1.0
        else:
            minus_one.append(i)
        i += 1
    # A pair of -1 eigenvalues is a rotation by pi of the plane of their Schur vectors.
    for a, b in zip(minus_one[::2], minus_one[1::2]):
        c, s = math.cos(alpha * math.pi), math.sin(alpha * math.pi)
        blocks[a, a], blocks[a, b], blocks[b, a], blocks[b, b] = c, -s, s, c
    out = z @ blocks @ z.T
    return torch.from_numpy(out).to(torch.as_tensor(q).device)


def geodesic_checks(q: torch.Tensor, alphas, atol: float = 1e-9) -> dict:
    """The properties that make ``Q^alpha`` (:func:`rotation_power`) a path of rotations from I to Q.

    Parameters
    ----------
    q : torch.Tensor
        ``(n, n)``, a rotation.
    alphas : sequence of float
        Positions in [0, 1] at which ``Q^alpha`` is checked.
    atol : float
        Absolute tolerance of the matrix comparisons (the determinant is allowed 1e-8).

    Returns
    -------
    dict
        ``{statement: bool}``: every ``Q^alpha`` orthogonal, every determinant 1, ``Q^0 = I``,
        ``Q^1 = Q``.
    """
    n = q.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    powers = [rotation_power(q, float(a)).to("cpu", torch.float64) for a in alphas]
    q = torch.as_tensor(q).to("cpu", torch.float64)
    return {
        "Q^alpha orthogonal": all(torch.allclose(qa @ qa.T, eye, atol=atol) for qa in powers),
        "det Q^alpha = 1": all(abs(torch.linalg.det(qa).item() - 1) < 1e-8 for qa in powers),
        "Q^0 = I": torch.allclose(rotation_power(q, 0.0), eye, atol=atol),
        "Q^1 = Q": torch.allclose(rotation_power(q, 1.0), q, atol=atol),
    }


def head_after_basis_change(model: torch.nn.Module, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The outputs of a :func:`lib.models.convnext20` from its last residual output ``h`` after the
    change of basis ``h -> A h``, with ``A^{-1}`` folded into the head.

    The last residual output has no activation; the head reads it through BatchNorm (in eval mode
    a per-channel affine map ``s * h + t``), a spatial mean and a linear layer ``W``, so the head
    ``W diag(s) A^{-1}`` with bias ``W t + c`` applied to the mean of ``A h`` gives the original
    outputs for every invertible ``A``: the site's symmetry group is all of ``GL_n``.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`lib.models.ConvNeXt20` in eval mode.
    h : torch.Tensor
        ``(N, C, H, W)``, the output of its last block.
    a : torch.Tensor
        ``(C, C)``, invertible.

    Returns
    -------
    torch.Tensor
        ``(N, num_classes)``, equal to ``model.classify(h)`` up to rounding.

    Raises
    ------
    ValueError
        If ``a`` is not a square matrix of ``h``'s channel count.
    """
    c = h.shape[1]
    if a.shape != (c, c):
        raise ValueError(f"a must be ({c}, {c}) for {c} channels, got {tuple(a.shape)}")
    bn, head = model.norm, model.head
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    t = bn.bias - bn.running_mean * s
    a = a.to(h.dtype)
    z = torch.einsum("ij,njhw->nihw", a, h).mean((2, 3))        # the rotated site, pooled: (N, C)
    w = head.weight * s @ torch.linalg.inv(a)                    # W diag(s) A^-1: (classes, C)
    return z @ w.T + head.weight @ t + head.bias
