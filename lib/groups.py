"""Intertwiner groups of elementwise activations and the weight-space symmetries they give.

Section 3.1 (Table 1, Lemma 3.1, Theorem 3.3) and Section 3.2 (Proposition 3.4, Remark 3.6):
the activations themselves (models build their nonlinear layers from them), the candidate matrix
groups, ``intertwiner_group`` (closed forms), ``identify_group`` (found numerically for any
elementwise callable), and ``random_transform``/``apply_elements``, the one generic action of the
intertwiner groups on a model's weights, driven by the model's ``lib.models.SymmetrySpec``.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

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
# Weight-space symmetries (Proposition 3.4, Remark 3.6), driven by lib.models' SymmetrySpec
# --------------------------------------------------------------------------------------------
TRANSFORM_GROUPS = ("intertwiner",) + GROUP_KINDS


def _spec(model):
    # Imported here because lib.models builds its layers from this module's Activation.
    from .models import symmetry_spec
    return symmetry_spec(model)


def site_group(site, restricted: bool = True) -> IntertwinerGroup:
    """The intertwiner group acting at a ``lib.models.Site`` after its restrictions (with
    ``restricted=False``: the activation's own group, ignoring the layers around the site)."""
    group = intertwiner_group(site.activation, site.channels, **dict(site.params))
    return group.restrict(site.monomial, site.positive_phi, site.phi_fixed) if restricted else group


def _parents_first(sites: dict) -> list:
    order, seen = [], set()

    def visit(name):
        if name in seen:
            return
        seen.add(name)
        if sites[name].parent is not None:
            visit(sites[name].parent)
        order.append(name)
    for name in sites:
        visit(name)
    return order


def _embedded(site, elements: dict, A: torch.Tensor):
    # (embed indices, the other indices, the parent's element) of a zero-padded shortcut.
    emb = torch.tensor(site.embed, device=A.device)
    rest = torch.tensor([i for i in range(site.channels) if i not in set(site.embed)],
                        dtype=torch.long, device=A.device)
    parent = elements.get(site.parent)
    if parent is None:
        parent = torch.eye(len(site.embed), dtype=A.dtype, device=A.device)
    return emb, rest, parent.to(A)


def sample_elements(model, generator: torch.Generator, group: str = "intertwiner",
                    sigma: float = 1.0, device=None) -> dict:
    """One random element per site of the model's spec: ``{site: (C, C) float64 tensor}``.

    ``group="intertwiner"`` draws from each site's restricted intertwiner group (:func:`site_group`),
    so that :func:`apply_elements` preserves the function. Any other :data:`GROUP_KINDS` value
    (``"gl"``, ``"orthogonal"``, ``"permutation"``, ...) draws from that kind instead, intersected
    with the monomial matrices at BatchNorm sites (the only elements parameters can absorb there);
    kinds outside a site's intertwiner group break the function (Section 3.3's random rotation).
    A zero-padded shortcut's channels ``embed`` always carry the parent site's element.
    """
    check_choice("group", group, TRANSFORM_GROUPS)
    spec = _spec(model)
    elements = {}
    for name in _parents_first(spec.sites):
        site = spec.sites[name]
        kind = site_group(site).kind if group == "intertwiner" else group
        if site.monomial:
            kind = meet(kind, "monomial")
        if site.parent is None:
            A = MatrixGroup(kind, site.channels).sample(generator, sigma, device="cpu")
        else:
            A = torch.zeros(site.channels, site.channels, dtype=torch.float64)
            emb, rest, parent = _embedded(site, elements, A)
            A[emb[:, None], emb] = parent
            if len(rest):
                A[rest[:, None], rest] = MatrixGroup(kind, len(rest)).sample(generator, sigma, device="cpu")
        elements[name] = A
    device = get_device(device)
    return {k: v.to(device) for k, v in elements.items()}


def _phi_at(site, A: torch.Tensor, elements: dict, strict: bool) -> torch.Tensor:
    # phi of the site's group for a member; A itself (the compensation that would be exact for a
    # linear activation) for a non-member, which is how symmetry-breaking transforms are applied.
    group = site_group(site)
    member = group.contains(A)
    if member and site.parent is not None:
        emb, rest, parent = _embedded(site, elements, A)
        tied = A[emb[:, None], emb] - parent
        cross = torch.cat([A[emb[:, None], rest].flatten(), A[rest[:, None], emb].flatten(), tied.flatten()])
        member = bool(cross.abs().max() <= 1e-6) if cross.numel() else True
    if strict and not member:
        tie = f" with channels {site.embed[0]}..{site.embed[-1]} equal to {site.parent!r}'s element" \
            if site.parent else ""
        raise ValueError(f"elements[{site.name!r}] is not in the group acting at this site "
                         f"({group.description}{tie}); pass strict=False to apply it anyway")
    return group.phi(A) if member else A


def _along(t: torch.Tensor, L: torch.Tensor, axis: int) -> torch.Tensor:
    """``t`` with ``L`` applied on ``axis``: new[..., i, ...] = sum_j L[i, j] t[..., j, ...]."""
    moved = t.movedim(axis, 0)
    out = (L @ moved.reshape(moved.shape[0], -1)).reshape(moved.shape)
    return out.movedim(0, axis)


def apply_elements(model, elements: dict, strict: bool = True):
    """A deep copy of ``model`` with its weights moved by ``elements`` (Proposition 3.4).

    ``elements[site]`` is a ``(C, C)`` matrix A for a site of ``lib.models.symmetry_spec(model)``;
    missing sites get the identity. Every parameter/buffer axis tagged ``(site, role)`` in the
    spec is multiplied by A (``"out"``), by phi(A)^-1 from the right (``"in"``) or by A's
    permutation pattern (``"perm"``). With ``strict=True`` each A must lie in its site's group
    (:func:`site_group`, shortcut ties included), which makes the new model the same function;
    ``strict=False`` applies non-members with phi(A) := A. The input model is not modified.
    """
    spec = _spec(model)
    unknown = set(elements) - set(spec.sites)
    if unknown:
        raise ValueError(f"unknown sites {sorted(unknown)}; this model's sites: {', '.join(spec.sites)}")
    mats = {}
    for name, A in elements.items():
        site = spec.sites[name]
        A = _check_square(A, site.channels, f"elements[{name!r}]").double()
        _check_invertible(A, f"elements[{name!r}]")
        phi = _phi_at(site, A, elements, strict)
        mats[name] = {"out": A, "in": torch.linalg.inv(phi).T, "perm": _monomial_pattern(A)}
    new = copy.deepcopy(model)
    tensors = dict(new.named_parameters())
    tensors.update(new.named_buffers())
    with torch.no_grad():
        for pname, axes in spec.axes.items():
            if pname not in tensors or tensors[pname].ndim != len(axes):
                raise ValueError(f"symmetry spec entry {pname!r} does not match the model's tensors")
            t = tensors[pname]
            x = t.detach().double()
            for axis, entry in enumerate(axes):
                if entry is None or entry[0] not in mats:
                    continue
                L = mats[entry[0]][entry[1]]
                if L is None:
                    raise ValueError(f"elements[{entry[0]!r}] is not monomial, but {pname!r} can only "
                                     "absorb a permutation (it feeds a per-channel layer)")
                x = _along(x, L.to(x.device), axis)
            t.copy_(x.to(t.dtype))
    return new


def random_transform(model, generator: torch.Generator, group: str = "intertwiner",
                     sigma: float = 1.0):
    """A random weight-space transform of ``model``: ``(new_model, elements)``.

    The generic action of Proposition 3.4, read from ``lib.models.symmetry_spec(model)`` only:
    :func:`sample_elements` then :func:`apply_elements`. With the default ``group="intertwiner"``
    the new model computes the same function; ``"gl"`` or ``"orthogonal"`` (or any kind outside
    the sites' groups) give a deliberately symmetry-breaking transform. ``elements`` maps each
    site to its ``(C, C)`` float64 matrix, on the model's device.
    """
    device = next(iter(model.parameters())).device
    elements = sample_elements(model, generator, group, sigma, device=device)
    return apply_elements(model, elements, strict=group == "intertwiner"), elements


def feature_transform(model, layer: str, elements: dict) -> torch.Tensor:
    """The ``(C, C)`` matrix phi(A) by which hidden layer ``layer``'s channels move (eq. 3.5):
    features of ``apply_elements(model, elements)`` = phi(A) @ features of ``model``."""
    spec = _spec(model)
    if layer not in spec.layers:
        raise ValueError(f"unknown layer {layer!r}; layers with a symmetry site: {', '.join(spec.layers)}")
    site = spec.sites[spec.layers[layer]]
    A = elements.get(site.name)
    if A is None:
        return torch.eye(site.channels, dtype=torch.float64)
    return _phi_at(site, A.double(), elements, strict=False)


def transform_features(h: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``M`` applied on the channel axis (axis 1) of features ``h`` of shape ``(N, C, ...)``."""
    return _along(h, M.to(h), 1)


def site_groups(model) -> list[dict]:
    """Which group acts at each site of ``model``, and why (Remark 3.6): one dict per site with
    ``site``, ``channels``, ``activation``, ``free`` (the activation's own group), ``group`` (after
    the restrictions), ``phi``, ``reasons`` and ``layers`` (hidden layers transforming there)."""
    spec = _spec(model)
    rows = []
    for name, site in spec.sites.items():
        free, group = site_group(site, restricted=False), site_group(site)
        reasons = []
        if site.monomial:
            reasons.append("BatchNorm before σ: monomial only")
        if site.positive_phi:
            reasons.append("max-pool after σ: φ(A) ≥ 0")
        if site.phi_fixed:
            reasons.append("residual stream: φ(A) = A, shared by the stream")
        if site.parent:
            reasons.append(f"zero-padded shortcut: channels {site.embed[0]}–{site.embed[-1]} "
                           f"carry {site.parent}'s element")
        act = site.activation + "".join(f" {k}={v}" for k, v in site.params)
        rows.append(dict(site=name, channels=site.channels, activation=act, free=free.description,
                         group=group.description, phi=group.phi_description,
                         reasons="; ".join(reasons) or "none",
                         layers=", ".join(l for l, s in spec.layers.items() if s == name)))
    return rows
