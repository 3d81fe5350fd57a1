"""Intertwiner groups of elementwise activations and the weight-space symmetries they give.

Section 3.1 (Table 1, Lemma 3.1, Theorem 3.3) and Section 3.2 (Proposition 3.4, Remark 3.6):
the activations themselves (models build their nonlinear layers from them), the candidate matrix
groups, ``intertwiner_group`` (closed forms), ``identify_group`` (found numerically for any
elementwise callable) and Theorem 3.3's ray checks. The action of these groups on a model's weights
(``random_transform``, ``apply_elements``, ...; Proposition 3.4) lives in :mod:`lib.symmetry`; its
names stay reachable here as ``lib.groups.<name>`` (forwarded on first use, since lib.symmetry imports
this module).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from ._lazy import forward_names
from .config import check_choice, get_device

__all__ = [
    "ACTIVATIONS", "activation_fn", "Activation",
    "GROUP_KINDS", "GROUP_DESCRIPTIONS", "meet", "MatrixGroup", "matrix_group",
    "IntertwinerGroup", "intertwiner_group",
    "best_intertwiner", "intertwining_error", "GroupIdentification", "identify_group",
    "maps_coordinate_rays", "ray_orbit_size",
    "TRANSFORM_GROUPS", "site_group", "sample_elements", "apply_elements", "random_transform",
    "feature_transform", "transform_features", "site_groups",
]


def _rbf(x):
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


# Each entry maps (tensor, **params) -> tensor, applied elementwise.
ACTIVATIONS = {
    "identity": lambda x: x,
    "relu": F.relu,
    "leaky_relu": lambda x, negative_slope=0.01: F.leaky_relu(x, negative_slope),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "rbf": _rbf,
    "polynomial": lambda x, degree=2: x**degree,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
    "elu": F.elu,
}

_PARAMS = {"leaky_relu": {"negative_slope"}, "polynomial": {"degree"}}


def activation_fn(name: str, **params):
    """The elementwise function ``x -> sigma(x)`` called ``name`` with its parameters bound."""
    if name == "swish":
        name = "silu"
    check_choice("activation", name, ACTIVATIONS)
    unknown = set(params) - _PARAMS.get(name, set())
    if unknown:
        raise ValueError(f"activation {name!r} takes no parameter {sorted(unknown)}; "
                         f"accepted: {sorted(_PARAMS.get(name, set())) or 'none'}")
    fn = ACTIVATIONS[name]
    return (lambda x: fn(x, **params)) if params else fn


class Activation(nn.Module):
    """An elementwise activation layer, by name (any key of :data:`ACTIVATIONS`)."""

    def __init__(self, name: str = "relu", **params):
        super().__init__()
        self.fn = activation_fn(name, **params)
        self.name = "silu" if name == "swish" else name
        self.params = dict(params)

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self):
        return ", ".join([repr(self.name)] + [f"{k}={v}" for k, v in self.params.items()])


# --------------------------------------------------------------------------------------------
# Matrix groups: the candidates of Table 1 (plus O(n) for symmetry-breaking transforms)
# --------------------------------------------------------------------------------------------
# Each kind lists the kinds contained in it; meets (intersections) are read off these sets.
_SUBKINDS = {
    "gl": {"gl", "orthogonal", "monomial", "positive_monomial", "signed_permutation", "permutation"},
    "orthogonal": {"orthogonal", "signed_permutation", "permutation"},
    "monomial": {"monomial", "positive_monomial", "signed_permutation", "permutation"},
    "positive_monomial": {"positive_monomial", "permutation"},
    "signed_permutation": {"signed_permutation", "permutation"},
    "permutation": {"permutation"},
}
GROUP_KINDS = tuple(_SUBKINDS)
GROUP_DESCRIPTIONS = {
    "gl": "GL_n", "orthogonal": "O(n)", "monomial": "PD, D non-zero",
    "positive_monomial": "PD, D > 0", "signed_permutation": "PD, D in {±1}",
    "permutation": "Σ_n (permutations)",
}


def meet(a: str, b: str) -> str:
    """The largest group kind contained in both ``a`` and ``b`` (their intersection)."""
    check_choice("group kind", a, GROUP_KINDS)
    check_choice("group kind", b, GROUP_KINDS)
    common = _SUBKINDS[a] & _SUBKINDS[b]
    return max(common, key=lambda k: len(_SUBKINDS[k] & common))


def _check_square(A, n: int | None = None, name: str = "A") -> torch.Tensor:
    A = torch.as_tensor(A)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {tuple(A.shape)}")
    if n is not None and A.shape[0] != n:
        raise ValueError(f"{name} must be {n}x{n} for this group, got {tuple(A.shape)}")
    return A


def _check_invertible(A, name: str = "A") -> None:
    s = torch.linalg.svdvals(A.double())
    if s.numel() and s.min() <= 1e-12 * max(s.max().item(), 1.0):
        raise ValueError(f"{name} is singular (smallest singular value {s.min().item():.3g}); "
                         "group elements must be invertible")


def _monomial_pattern(A: torch.Tensor, atol: float = 1e-6):
    """The permutation matrix with A's non-zero pattern, or ``None`` if A is not monomial."""
    mask = A.abs() > atol
    if not ((mask.sum(0) == 1).all() and (mask.sum(1) == 1).all()):
        return None
    return mask.to(A.dtype)


@dataclasses.dataclass(frozen=True)
class MatrixGroup:
    """A matrix group of one of the :data:`GROUP_KINDS` acting on ``R^n``."""

    kind: str
    n: int

    def __post_init__(self):
        check_choice("group kind", self.kind, GROUP_KINDS)
        if int(self.n) != self.n or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")

    @property
    def description(self) -> str:
        return GROUP_DESCRIPTIONS[self.kind]

    def sample(self, generator: torch.Generator, sigma: float = 1.0, dtype=torch.float64,
               device=None) -> torch.Tensor:
        """A random element, shape ``(n, n)``.

        Monomial kinds are ``P @ D`` with a uniform permutation ``P`` and diagonal entries drawn
        as the kind allows: mean-one log-normal ``exp(sigma z - sigma^2/2)`` scales, random signs,
        or both. ``orthogonal`` is Haar (QR of a Gaussian matrix, sign-fixed); ``gl`` is
        ``Q1 diag(s) Q2`` with Haar ``Q1, Q2`` and log-normal ``s``: generic but well conditioned.
        """
        n, g, kw = self.n, generator, dict(generator=generator, dtype=torch.float64)
        if self.kind in ("gl", "orthogonal"):
            qs = []
            for _ in range(2 if self.kind == "gl" else 1):
                q, r = torch.linalg.qr(torch.randn(n, n, **kw))
                qs.append(q * torch.sign(torch.diagonal(r)))
            A = qs[0] if self.kind == "orthogonal" else qs[0] @ torch.diag(self._scales(g, sigma)) @ qs[1]
        else:
            d = torch.ones(n, dtype=torch.float64)
            if self.kind in ("monomial", "positive_monomial"):
                d = self._scales(g, sigma)
            if self.kind in ("monomial", "signed_permutation"):
                d = d * (2.0 * torch.randint(0, 2, (n,), generator=g) - 1.0)
            A = torch.eye(n, dtype=torch.float64)[torch.randperm(n, generator=g)] * d
        return A.to(device=get_device(device), dtype=dtype)

    def _scales(self, g, sigma):
        return torch.exp(sigma * torch.randn(self.n, generator=g, dtype=torch.float64) - sigma**2 / 2)

    def contains(self, A, atol: float = 1e-6) -> bool:
        """Whether ``A`` (shape ``(n, n)``) belongs to the group, up to ``atol`` per entry."""
        A = _check_square(A, self.n).double()
        if self.kind == "gl":
            return bool(torch.linalg.svdvals(A).min() > atol)
        if self.kind == "orthogonal":
            return bool((A.T @ A - torch.eye(self.n, dtype=A.dtype, device=A.device)).abs().max() <= atol)
        pattern = _monomial_pattern(A, atol)
        if pattern is None:
            return False
        vals = A[pattern.bool()]
        if self.kind == "positive_monomial":
            return bool((vals > 0).all())
        if self.kind == "signed_permutation":
            return bool(((vals.abs() - 1).abs() <= atol).all())
        if self.kind == "permutation":
            return bool(((vals - 1).abs() <= atol).all())
        return True

    def subgroup_of(self, kind: str) -> bool:
        """Whether this kind is contained in ``kind``."""
        check_choice("group kind", kind, GROUP_KINDS)
        return self.kind in _SUBKINDS[kind]


def matrix_group(kind: str, n: int) -> MatrixGroup:
    """The group of kind ``kind`` (one of :data:`GROUP_KINDS`) on ``R^n``."""
    return MatrixGroup(kind, n)


# --------------------------------------------------------------------------------------------
# Intertwiner groups (Table 1, Lemma 3.1)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class IntertwinerGroup(MatrixGroup):
    """``G_sigma`` of an activation with its homomorphism ``phi`` (Lemma 3.1).

    ``phi_rule`` is the closed form of ``phi`` on the group: ``"A"`` (phi(A) = A), ``"abs"``
    (entrywise absolute value) or ``"power"`` (entrywise ``degree``-th power).
    """

    activation: str = "identity"
    params: tuple = ()
    phi_rule: str = "A"
    degree: int | None = None

    @property
    def phi_description(self) -> str:
        return {"A": "A", "abs": "abs(A)", "power": f"A^⊙{self.degree}"}[self.phi_rule]

    def sigma(self, x: torch.Tensor) -> torch.Tensor:
        """The activation, applied elementwise."""
        return activation_fn(self.activation, **dict(self.params))(x)

    def phi(self, A) -> torch.Tensor:
        """``phi_sigma(A)`` by the closed form of Table 1, shape ``(n, n)``; A must be invertible."""
        A = _check_square(A, self.n)
        _check_invertible(A)
        if self.phi_rule == "abs":
            return A.abs()
        if self.phi_rule == "power":
            return A**self.degree
        return A.clone()

    def phi_lemma(self, A) -> torch.Tensor:
        """``phi_sigma(A) = sigma(A) sigma(I)^-1`` computed literally as in Lemma 3.1."""
        A = _check_square(A, self.n)
        _check_invertible(A)
        s_id = self.sigma(torch.eye(self.n, dtype=A.dtype, device=A.device))
        try:
            _check_invertible(s_id, "sigma(I)")
        except ValueError as err:
            raise ValueError(f"Lemma 3.1 needs sigma(I) invertible for {self.activation!r}: {err}")
        return torch.linalg.solve(s_id.T, self.sigma(A).T).T

    def restrict(self, monomial: bool = False, positive_phi: bool = False,
                 phi_fixed: bool = False) -> "IntertwinerGroup":
        """The subgroup whose elements survive the layers around a site (see ``lib.models.Site``).

        ``monomial``: only P·D passes a per-channel layer (BatchNorm). ``positive_phi``: a max-pool
        commutes with phi(A) only if phi(A) has non-negative entries. ``phi_fixed``: on a residual
        stream phi(A) must equal A.
        """
        kind = self.kind
        if monomial:
            kind = meet(kind, "monomial")
        if positive_phi and (self.phi_rule == "A" or (self.phi_rule == "power" and self.degree % 2)):
            kind = meet(kind, "positive_monomial")
        if phi_fixed and self.phi_rule == "abs":
            kind = meet(kind, "positive_monomial")
        if phi_fixed and self.phi_rule == "power":
            kind = meet(kind, "signed_permutation" if self.degree % 2 else "permutation")
        return dataclasses.replace(self, kind=kind)


def intertwiner_group(name: str, n: int, **params) -> IntertwinerGroup:
    """``G_sigma`` and ``phi_sigma`` of the activation ``name`` on ``R^n`` (Table 1, extended).

    identity and LeakyReLU of slope 1: GL_n, phi = A. ReLU and LeakyReLU (slope not ±1): P·D with
    D > 0, phi = A. LeakyReLU of slope -1 is abs: P·D with D non-zero, phi = abs(A). RBF: P·D with
    D in {±1}, phi = abs(A). x^d: P·D with D non-zero, phi = A^⊙d (d = 1: GL_n). tanh (odd): P·D with
    D in {±1}, phi = A. sigmoid, GELU, SiLU, softplus, ELU: permutations, phi = A (sigma(-x) and
    sigma(cx) are not linear in sigma(x) for them; ``identify_group`` checks this numerically).
    """
    name = "silu" if name == "swish" else name
    check_choice("activation", name, ACTIVATIONS)
    activation_fn(name, **params)
    kind, rule, degree = {
        "identity": ("gl", "A", None), "relu": ("positive_monomial", "A", None),
        "rbf": ("signed_permutation", "abs", None), "tanh": ("signed_permutation", "A", None),
    }.get(name, ("permutation", "A", None))
    if name == "leaky_relu":
        slope = params.get("negative_slope", 0.01)
        kind, rule = {1: ("gl", "A"), -1: ("monomial", "abs")}.get(slope, ("positive_monomial", "A"))
    if name == "polynomial":
        degree = params.get("degree", 2)
        if int(degree) != degree or degree < 1:
            raise ValueError(f"polynomial degree must be an integer >= 1, got {degree!r}")
        kind, rule = ("gl", "A") if degree == 1 else ("monomial", "power")
        degree = int(degree)
    return IntertwinerGroup(kind, n, name, tuple(sorted(params.items())), rule, degree)


# --------------------------------------------------------------------------------------------
# Finding G_sigma numerically
# --------------------------------------------------------------------------------------------
def best_intertwiner(fn, A: torch.Tensor, x: torch.Tensor):
    """The least-squares ``B`` with ``fn(A x) ≈ B fn(x)`` over the rows ``x`` (shape ``(m, n)``).

    Returns ``(B, residual)`` where the residual is ``||fn(x A^T) - fn(x) B^T||_F / ||fn(x A^T)||_F``:
    float-precision small exactly when some B intertwines A on these inputs.
    """
    A = _check_square(A, x.shape[1]).to(x)
    y, z = fn(x), fn(x @ A.T)
    bt = torch.linalg.lstsq(y, z).solution
    return bt.T, ((y @ bt - z).norm() / z.norm().clamp_min(1e-300)).item()


def intertwining_error(fn, A: torch.Tensor, B: torch.Tensor, x: torch.Tensor) -> float:
    """``||fn(x A^T) - fn(x) B^T||_F / ||fn(x A^T)||_F`` for inputs ``x`` of shape ``(m, n)``."""
    z = fn(x @ A.to(x).T)
    return ((fn(x) @ B.to(x).T - z).norm() / z.norm().clamp_min(1e-300)).item()


@dataclasses.dataclass
class GroupIdentification:
    """What :func:`identify_group` found: the group ``kind``, phi's closed form ``phi_name`` and
    callable ``phi``, the worst least-squares ``residuals`` per candidate kind, how well ``phi``
    matched the fitted B (``phi_residual``) and how well Lemma 3.1's sigma(A)sigma(I)^-1 did
    (``lemma_residual``; NaN when sigma(I) is singular)."""

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
        return GROUP_DESCRIPTIONS[self.kind]

    @property
    def larger_residuals(self) -> dict:
        """Residuals of the candidates strictly larger than the accepted group (all rejected)."""
        return {k: v for k, v in self.residuals.items() if self.kind in _SUBKINDS[k] and k != self.kind}


_CANDIDATES = ("gl", "monomial", "positive_monomial", "signed_permutation", "permutation")


def identify_group(fn, n: int = 4, *, trials: int = 3, n_inputs: int | None = None,
                   input_scale: float = 2.0, tol: float = 1e-8, generator=None,
                   **params) -> GroupIdentification:
    """Determine numerically which candidate group an elementwise ``fn`` intertwines with.

    ``fn`` is a callable on tensors or an activation name (then ``params`` are its parameters).
    For each candidate kind (GL_n; P·D with D non-zero, D > 0, D = ±1; permutations) ``trials``
    random elements A are drawn and B is solved for by least squares over ``n_inputs`` Gaussian
    inputs of scale ``input_scale``; a kind passes when every relative residual is below ``tol``.
    The answer is the largest passing kind. phi is then matched against A, abs(A) and A^⊙d on the
    fitted Bs, falling back to Lemma 3.1's sigma(A)sigma(I)^-1. ``generator=None`` uses seed 0, so
    the answer is deterministic. Runs on the CPU in float64 (tiny problems).
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
    residuals, fits = {}, {}
    for kind in _CANDIDATES:
        fits[kind] = []
        for _ in range(trials):
            A = MatrixGroup(kind, n).sample(g, device="cpu")
            B, r = best_intertwiner(fn, A, x)
            fits[kind].append((A, B))
            residuals[kind] = max(residuals.get(kind, 0.0), r)
    passing = [k for k in _CANDIDATES if residuals[k] <= tol]
    if not passing:
        raise ValueError(f"{name} does not even commute with permutations (residual "
                         f"{residuals['permutation']:.3g}); is it an elementwise function?")
    kind = passing[0]

    def rel(P, Q):
        return ((P - Q).norm() / Q.norm()).item()

    candidates = [("A", lambda A: A), ("abs(A)", lambda A: A.abs())]
    ratios = [torch.log(B.abs()[A.abs() > 1e-3]) / torch.log(A.abs()[A.abs() > 1e-3])
              for A, B in fits[kind]]
    ratios = torch.cat([r[r.isfinite()] for r in ratios])
    if ratios.numel():
        d = int(round(ratios.median().item()))
        if d >= 2:
            candidates.append((f"A^⊙{d}", lambda A, d=d: A**d))
    s_id = fn(torch.eye(n, dtype=torch.float64))
    lemma_ok = torch.linalg.svdvals(s_id).min() > 1e-12
    lemma = (lambda A: torch.linalg.solve(s_id.T, fn(A.double()).T).T)
    lemma_residual = max(rel(lemma(A), B) for A, B in fits[kind]) if lemma_ok else float("nan")
    for phi_name, phi in candidates:
        err = max(rel(phi(A), B) for A, B in fits[kind])
        if err <= 1e-6:
            return GroupIdentification(name, n, kind, phi_name, phi, residuals, err, lemma_residual)
    return GroupIdentification(name, n, kind, "σ(A)σ(I)^-1", lemma if lemma_ok else None, residuals,
                               lemma_residual, lemma_residual)


# --------------------------------------------------------------------------------------------
# Theorem 3.3: G_ReLU is the stabiliser of the coordinate rays
# --------------------------------------------------------------------------------------------
def maps_coordinate_rays(A, atol: float = 1e-6) -> bool:
    """Whether ``A`` maps the set of rays ``{R>=0 e_i}`` onto itself (each A e_i a positive
    multiple of a distinct e_j), checked geometrically on A's normalised columns."""
    A = _check_square(A).double()
    cols = A / A.norm(dim=0).clamp_min(1e-300)
    j = cols.argmax(0)
    on_rays = (cols - torch.eye(A.shape[0], dtype=A.dtype, device=A.device)[:, j]).abs().max() <= atol
    return bool(on_rays) and len(set(j.tolist())) == A.shape[0]


def ray_orbit_size(v, group: MatrixGroup, generator: torch.Generator, n_samples: int = 64,
                   atol: float = 1e-6) -> int:
    """How many distinct rays ``R>=0 A v`` (including v) ``n_samples`` random A of ``group`` give.

    Bounded by ``n`` for a coordinate ray and growing with ``n_samples`` for a ray whose
    direction has two or more non-zero coordinates (Theorem 3.3, second part).
    """
    v = torch.as_tensor(v, dtype=torch.float64)
    rays = [v / v.norm()]
    for _ in range(n_samples):
        u = group.sample(generator, device="cpu") @ v.cpu()
        u = u / u.norm()
        if all((u - r.cpu()).norm() > atol for r in rays):
            rays.append(u)
    return len(rays)


# --------------------------------------------------------------------------------------------
# Weight-space symmetries: in lib.symmetry, forwarded by name
# --------------------------------------------------------------------------------------------
_SYMMETRY_NAMES = ("TRANSFORM_GROUPS", "site_group", "sample_elements", "apply_elements", "random_transform",
                   "feature_transform", "transform_features", "site_groups")


# lib.symmetry imports this module (and lib.models, which builds its layers from Activation), so its
# names are looked up on first use rather than imported at the top.
__getattr__, __dir__ = forward_names(__name__, "lib.symmetry", _SYMMETRY_NAMES)
