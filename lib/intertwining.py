"""Intertwining checked numerically: finding ``G_sigma`` for any elementwise function (Section 3.1)
and Theorem 3.3's characterisation of ``G_ReLU`` by the coordinate rays.

:func:`identify_group` needs no table: it tries every candidate of :data:`lib.groups.GROUP_KINDS`
(except ``orthogonal``) on random elements and inputs, solving ``sigma(A x) = B sigma(x)`` for ``B``
by least squares. The closed forms it is compared with are :func:`lib.groups.intertwiner_group`.
"""
from __future__ import annotations

import dataclasses

import torch

from .activations import activation_fn
from .groups import GROUP_DESCRIPTIONS, MatrixGroup, check_square

__all__ = ["best_intertwiner", "intertwining_error", "GroupIdentification", "identify_group",
           "maps_coordinate_rays", "ray_orbit_size"]


def best_intertwiner(fn, A: torch.Tensor, x: torch.Tensor):
    """The least-squares ``B`` with ``fn(A x) ≈ B fn(x)`` over the rows of ``x``.

    Parameters
    ----------
    fn : callable
        An elementwise function on tensors.
    A : torch.Tensor, shape (n, n)
    x : torch.Tensor, shape (m, n)
        The inputs, one per row (``m >= n``).

    Returns
    -------
    B : torch.Tensor, shape (n, n)
    residual : float
        ``||fn(x A^T) - fn(x) B^T||_F / ||fn(x A^T)||_F`` (a fraction): at float precision exactly
        when some B intertwines A on these inputs.
    """
    A = check_square(A, x.shape[1]).to(x)
    y, z = fn(x), fn(x @ A.T)
    bt = torch.linalg.lstsq(y, z).solution
    return bt.T, ((y @ bt - z).norm() / z.norm().clamp_min(1e-300)).item()


def intertwining_error(fn, A: torch.Tensor, B: torch.Tensor, x: torch.Tensor) -> float:
    """How far ``B`` is from intertwining ``A`` through ``fn`` on the inputs ``x``.

    Parameters
    ----------
    fn : callable
        An elementwise function on tensors.
    A, B : torch.Tensor, shape (n, n)
    x : torch.Tensor, shape (m, n)
        The inputs, one per row.

    Returns
    -------
    float
        ``||fn(x A^T) - fn(x) B^T||_F / ||fn(x A^T)||_F``, a fraction.
    """
    z = fn(x @ A.to(x).T)
    return ((fn(x) @ B.to(x).T - z).norm() / z.norm().clamp_min(1e-300)).item()


@dataclasses.dataclass
class GroupIdentification:
    """What :func:`identify_group` found.

    Parameters
    ----------
    name : str
        The function's name.
    n : int
        The dimension it was identified in.
    kind : str
        The accepted group, one of :data:`lib.groups.GROUP_KINDS`.
    phi_name : str
        phi's closed form (``"A"``, ``"abs(A)"``, ``"A^⊙d"`` or ``"σ(A)σ(I)^-1"``).
    phi : callable or None
        ``A -> phi(A)``, shape ``(n, n)`` to ``(n, n)``; None when no form fitted and sigma(I) is singular.
    residuals : dict
        Candidate kind -> worst least-squares residual of its trials (a fraction).
    phi_residual : float
        How far ``phi(A)`` is from the fitted B (relative Frobenius norm, worst trial).
    lemma_residual : float
        The same for Lemma 3.1's ``sigma(A) sigma(I)^-1``; NaN when sigma(I) is singular.
    """

    name: str
    n: int
    kind: str
    phi_name: str
    phi: object
    residuals: dict
    phi_residual: float
    lemma_residual: float

    @property
    def description(self) -> str:
        """str: the accepted group's name, as in :data:`lib.groups.GROUP_DESCRIPTIONS`."""
        return GROUP_DESCRIPTIONS[self.kind]

    @property
    def larger_residuals(self) -> dict:
        """dict: the residuals of the candidates strictly larger than the accepted group (all rejected)."""
        return {k: v for k, v in self.residuals.items()
                if MatrixGroup(self.kind, self.n).subgroup_of(k) and k != self.kind}


_CANDIDATES = ("gl", "monomial", "positive_monomial", "signed_permutation", "permutation")


def identify_group(fn, n: int = 4, *, trials: int = 3, n_inputs: int | None = None,
                   input_scale: float = 2.0, tol: float = 1e-8, generator=None,
                   **params) -> GroupIdentification:
    """Determine numerically which candidate group an elementwise ``fn`` intertwines with.

    For each candidate kind (GL_n; P·D with D non-zero, D > 0, D = ±1; permutations) ``trials``
    random elements A are drawn and B is solved for by least squares (:func:`best_intertwiner`); a
    kind passes when every relative residual is below ``tol``. The answer is the largest passing
    kind. phi is then matched against A, abs(A) and A^⊙d on the fitted Bs, falling back to Lemma
    3.1's sigma(A)sigma(I)^-1. Runs on the CPU in float64 (tiny problems).

    Parameters
    ----------
    fn : callable or str
        An elementwise function on tensors, or an activation name (then ``params`` are its parameters).
    n : int
        The dimension, at least 2.
    trials : int
        Random elements per candidate kind.
    n_inputs : int, optional
        Gaussian inputs x; ``None``: ``64 n``.
    input_scale : float
        The inputs' standard deviation.
    tol : float
        The largest relative residual (a fraction) for which a kind passes.
    generator : torch.Generator, optional
        The source of all randomness; ``None`` uses seed 0, so the answer is deterministic.
    **params
        The activation's parameters, only when ``fn`` is a name.

    Returns
    -------
    GroupIdentification
    """
    name = fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))
    if isinstance(fn, str):
        fn = activation_fn(fn, **params)
    elif params:
        raise ValueError("params are only accepted when fn is an activation name")
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = input_scale * torch.randn(n_inputs or 64 * n, n, generator=g, dtype=torch.float64)
    residuals, fits = _fit_candidates(fn, x, g, trials)
    passing = [k for k in _CANDIDATES if residuals[k] <= tol]
    if not passing:
        raise ValueError(f"{name} does not even commute with permutations (residual "
                         f"{residuals['permutation']:.3g}); is it an elementwise function?")
    kind = passing[0]
    phi_name, phi, err, lemma_residual = _match_phi(fn, n, fits[kind])
    return GroupIdentification(name, n, kind, phi_name, phi, residuals, err, lemma_residual)


def _fit_candidates(fn, x: torch.Tensor, g: torch.Generator, trials: int) -> tuple:
    # For each candidate kind, ``trials`` random A with their least-squares B: the largest residual
    # per kind, and the (A, B) pairs.
    n = x.shape[1]
    residuals, fits = {}, {}
    for kind in _CANDIDATES:
        fits[kind] = []
        for _ in range(trials):
            A = MatrixGroup(kind, n).sample(g, device="cpu")
            B, r = best_intertwiner(fn, A, x)
            fits[kind].append((A, B))
            residuals[kind] = max(residuals.get(kind, 0.0), r)
    return residuals, fits


def _match_phi(fn, n: int, fits: list) -> tuple:
    # The first named phi that reproduces the fitted Bs (relative error <= 1e-6), else Lemma 3.1's
    # sigma(A) sigma(I)^-1 (None where sigma(I) is singular): (name, phi, its error, the lemma's).
    s_id = fn(torch.eye(n, dtype=torch.float64))
    lemma_ok = torch.linalg.svdvals(s_id).min() > 1e-12

    def lemma(A):
        return torch.linalg.solve(s_id.T, fn(A.double()).T).T
    lemma_residual = max(_relative(lemma(A), B) for A, B in fits) if lemma_ok else float("nan")
    for phi_name, phi in _phi_candidates(fits):
        err = max(_relative(phi(A), B) for A, B in fits)
        if err <= 1e-6:
            return phi_name, phi, err, lemma_residual
    return "σ(A)σ(I)^-1", lemma if lemma_ok else None, lemma_residual, lemma_residual


def _relative(P: torch.Tensor, Q: torch.Tensor) -> float:
    return ((P - Q).norm() / Q.norm()).item()


def _identity(A):
    return A


def _absolute(A):
    return A.abs()


def _phi_candidates(fits: list) -> list:
    # The named forms of phi tried in turn: A, abs(A), and A^⊙d with d read off the fitted Bs' log
    # ratios (|B| = |A|^d entrywise) when that is an integer >= 2.
    candidates = [("A", _identity), ("abs(A)", _absolute)]
    ratios = [torch.log(B.abs()[A.abs() > 1e-3]) / torch.log(A.abs()[A.abs() > 1e-3])
              for A, B in fits]
    ratios = torch.cat([r[r.isfinite()] for r in ratios])
    if ratios.numel():
        d = int(round(ratios.median().item()))
        if d >= 2:
            def power(A, d=d):
                return A**d
            candidates.append((f"A^⊙{d}", power))
    return candidates


# --------------------------------------------------------------------------------------------
# Theorem 3.3: G_ReLU is the stabiliser of the coordinate rays
# --------------------------------------------------------------------------------------------
def maps_coordinate_rays(A, atol: float = 1e-6) -> bool:
    """Whether ``A`` maps the set of rays ``{R>=0 e_i}`` onto itself.

    Checked geometrically: each normalised column ``A e_i`` must lie on some ``R>=0 e_j``, with
    every ``j`` hit once.

    Parameters
    ----------
    A : array_like, shape (n, n)
    atol : float
        Absolute tolerance per entry of the normalised columns.

    Returns
    -------
    bool
    """
    A = check_square(A).double()
    cols = A / A.norm(dim=0).clamp_min(1e-300)
    j = cols.argmax(0)
    on_rays = (cols - torch.eye(A.shape[0], dtype=A.dtype, device=A.device)[:, j]).abs().max() <= atol
    return bool(on_rays) and len(set(j.tolist())) == A.shape[0]


def ray_orbit_size(v, group: MatrixGroup, generator: torch.Generator, n_samples: int = 64,
                   atol: float = 1e-6) -> int:
    """How many distinct rays ``R>=0 A v`` (including v itself) ``n_samples`` random A of ``group`` give.

    Bounded by ``n`` for a coordinate ray and growing with ``n_samples`` for a ray whose
    direction has two or more non-zero coordinates (Theorem 3.3, second part).

    Parameters
    ----------
    v : array_like, shape (n,)
        A non-zero vector.
    group : lib.groups.MatrixGroup
        The group, of dimension ``n``.
    generator : torch.Generator
        The source of the random elements.
    n_samples : int
        Random elements drawn.
    atol : float
        Unit vectors closer than ``atol`` (Euclidean norm) are the same ray.

    Returns
    -------
    int
        Between 1 and ``n_samples + 1``.
    """
    v = torch.as_tensor(v, dtype=torch.float64)
    rays = [v / v.norm()]
    for _ in range(n_samples):
        u = group.sample(generator, device="cpu") @ v.cpu()
        u = u / u.norm()
        if all((u - r.cpu()).norm() > atol for r in rays):
            rays.append(u)
    return len(rays)
