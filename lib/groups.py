"""Matrix groups and the intertwiner groups of elementwise activations (Section 3.1, Table 1, Lemma
3.1).

The candidate matrix groups (:class:`MatrixGroup`) and Table 1's closed forms
(:func:`intertwiner_group`: ``G_sigma`` with its homomorphism ``phi_sigma``). Finding a group
numerically and Theorem 3.3 are :mod:`lib.intertwining`; the action on a model's weights
(Proposition 3.4) is :mod:`lib.symmetry`.
"""

from __future__ import annotations

import dataclasses

import torch

from .activations import ACTIVATIONS, activation_fn, canonical_name
from .config import check_choice, get_device

__all__ = [
    "GROUP_KINDS",
    "GROUP_DESCRIPTIONS",
    "meet",
    "check_square",
    "check_invertible",
    "monomial_pattern",
    "MatrixGroup",
    "IntertwinerGroup",
    "intertwiner_group",
]


# Matrix groups: the candidates of Table 1 (plus O(n) for symmetry-breaking transforms).
# Each kind lists the kinds contained in it; meets (intersections) are read off these sets.
_SUBKINDS = {
    "gl": {
        "gl",
        "orthogonal",
        "monomial",
        "positive_monomial",
        "signed_permutation",
        "permutation",
    },
    "orthogonal": {"orthogonal", "signed_permutation", "permutation"},
    "monomial": {"monomial", "positive_monomial", "signed_permutation", "permutation"},
    "positive_monomial": {"positive_monomial", "permutation"},
    "signed_permutation": {"signed_permutation", "permutation"},
    "permutation": {"permutation"},
}
GROUP_KINDS = tuple(_SUBKINDS)
"""tuple of str: the matrix group kinds, largest first: ``gl`` (GL_n), ``orthogonal`` (O(n)),
``monomial`` (P·D, D non-zero), ``positive_monomial`` (D > 0), ``signed_permutation`` (D = ±1),
``permutation``."""
GROUP_DESCRIPTIONS = {
    "gl": "GL_n",
    "orthogonal": "O(n)",
    "monomial": "PD, D non-zero",
    "positive_monomial": "PD, D > 0",
    "signed_permutation": "PD, D in {±1}",
    "permutation": "Σ_n (permutations)",
}
"""dict: group kind -> its name as the book's tables print it."""


def meet(a: str, b: str) -> str:
    """The largest group kind contained in both ``a`` and ``b`` (their intersection).

    Parameters
    ----------
    a, b : str
        Kinds of :data:`GROUP_KINDS`.

    Returns
    -------
    str
        A kind of :data:`GROUP_KINDS`, e.g. ``meet("orthogonal", "monomial") ==
        "signed_permutation"``.
    """
    check_choice("group kind", a, GROUP_KINDS)
    check_choice("group kind", b, GROUP_KINDS)
    common = _SUBKINDS[a] & _SUBKINDS[b]
    return max(common, key=lambda k: len(_SUBKINDS[k] & common))


def check_square(A, n: int | None = None, name: str = "A") -> torch.Tensor:
    """``A`` as a tensor, or a ``ValueError`` naming ``name`` unless it is a square (``n x n``)
    matrix.

    Parameters
    ----------
    A : array_like, shape (m, m)
    n : int, optional
        The required size; ``None`` accepts any square matrix.
    name : str
        What the error message calls ``A``.

    Returns
    -------
    torch.Tensor, shape (m, m)
    """
    A = torch.as_tensor(A)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {tuple(A.shape)}")
    if n is not None and A.shape[0] != n:
        raise ValueError(f"{name} must be {n}x{n} for this group, got {tuple(A.shape)}")
    return A


def check_invertible(A: torch.Tensor, name: str = "A") -> None:
    """Raise a ``ValueError`` naming ``name`` if the square matrix ``A`` is singular.

    Parameters
    ----------
    A : torch.Tensor, shape (n, n)
        Singular when its smallest singular value is at most ``1e-12`` times ``max(1, largest)``.
    name : str
        What the error message calls ``A``.

    Raises
    ------
    ValueError
        If ``A`` is singular.
    """
    s = torch.linalg.svdvals(A.double())
    if s.numel() and s.min() <= 1e-12 * max(s.max().item(), 1.0):
        raise ValueError(
            f"{name} is singular (smallest singular value {s.min().item():.3g}); "
            "group elements must be invertible"
        )


def monomial_pattern(A: torch.Tensor, atol: float = 1e-6) -> torch.Tensor | None:
    """The permutation matrix with ``A``'s non-zero pattern, or ``None`` if ``A`` is not monomial.

    Parameters
    ----------
    A : torch.Tensor, shape (n, n)
    atol : float
        Entries with absolute value at most ``atol`` count as zero.

    Returns
    -------
    torch.Tensor of shape (n, n) and ``A``'s dtype, or None
        ``P`` with ``A = P D`` for a diagonal ``D`` when ``A`` has one non-zero per row and column.
    """
    mask = A.abs() > atol
    if not ((mask.sum(0) == 1).all() and (mask.sum(1) == 1).all()):
        return None
    return mask.to(A.dtype)


@dataclasses.dataclass(frozen=True)
class MatrixGroup:
    """A matrix group of one of the :data:`GROUP_KINDS`, acting on ``R^n``.

    Parameters
    ----------
    kind : str
        One of :data:`GROUP_KINDS`.
    n : int
        The dimension (positive); elements have shape ``(n, n)``.
    """

    kind: str
    n: int

    def __post_init__(self):
        check_choice("group kind", self.kind, GROUP_KINDS)
        if int(self.n) != self.n or self.n < 1:
            raise ValueError(f"n must be a positive integer, got {self.n!r}")

    @property
    def description(self) -> str:
        """str: the group's name, as in :data:`GROUP_DESCRIPTIONS`."""
        return GROUP_DESCRIPTIONS[self.kind]

    def sample(
        self, generator: torch.Generator, sigma: float = 1.0, dtype=torch.float64, device=None
    ) -> torch.Tensor:
        """A random element.

        Monomial kinds are ``P @ D`` with a uniform permutation ``P`` and diagonal entries drawn
        as the kind allows: mean-one log-normal ``exp(sigma z - sigma^2/2)`` scales, random signs,
        or both. ``orthogonal`` is Haar (QR of a Gaussian matrix, sign-fixed); ``gl`` is
        ``Q1 diag(s) Q2`` with Haar ``Q1, Q2`` and log-normal ``s``: generic but well conditioned.

        Parameters
        ----------
        generator : torch.Generator
            A CPU generator; all randomness is drawn from it, in float64.
        sigma : float
            The standard deviation of the log of the scales (dimensionless).
        dtype : torch.dtype
            The returned dtype.
        device : str or torch.device, optional
            ``None``: :func:`lib.config.get_device`'s default.

        Returns
        -------
        torch.Tensor, shape (n, n)
        """
        n, g, kw = self.n, generator, dict(generator=generator, dtype=torch.float64)
        if self.kind in ("gl", "orthogonal"):
            qs = []
            for _ in range(2 if self.kind == "gl" else 1):
                q, r = torch.linalg.qr(torch.randn(n, n, **kw))
                qs.append(q * torch.sign(torch.diagonal(r)))
            A = (
                qs[0]
                if self.kind == "orthogonal"
                else qs[0] @ torch.diag(self._scales(g, sigma)) @ qs[1]
            )
        else:
            d = torch.ones(n, dtype=torch.float64)
            if self.kind in ("monomial", "positive_monomial"):
                d = self._scales(g, sigma)
            if self.kind in ("monomial", "signed_permutation"):
                d = d * (2.0 * torch.randint(0, 2, (n,), generator=g) - 1.0)
            A = torch.eye(n, dtype=torch.float64)[torch.randperm(n, generator=g)] * d
        return A.to(device=get_device(device), dtype=dtype)

    def _scales(self, g, sigma):
        return torch.exp(
            sigma * torch.randn(self.n, generator=g, dtype=torch.float64) - sigma**2 / 2
        )

    def contains(self, A, atol: float = 1e-6) -> bool:
        """Whether ``A`` (shape ``(n, n)``) belongs to the group, up to ``atol`` per entry.

        Parameters
        ----------
        A : array_like, shape (n, n)
        atol : float
            Absolute tolerance per entry (for ``gl``: on the smallest singular value).

        Returns
        -------
        bool
        """
        A = check_square(A, self.n).double()
        if self.kind == "gl":
            return bool(torch.linalg.svdvals(A).min() > atol)
        if self.kind == "orthogonal":
            return bool(
                (A.T @ A - torch.eye(self.n, dtype=A.dtype, device=A.device)).abs().max() <= atol
            )
        pattern = monomial_pattern(A, atol)
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
        """Whether this group's kind is contained in ``kind``.

        Parameters
        ----------
        kind : str
            One of :data:`GROUP_KINDS`.

        Returns
        -------
        bool
        """
        check_choice("group kind", kind, GROUP_KINDS)
        return self.kind in _SUBKINDS[kind]


# Intertwiner groups (Table 1, Lemma 3.1).
@dataclasses.dataclass(frozen=True)
class IntertwinerGroup(MatrixGroup):
    """``G_sigma`` of an activation on ``R^n`` with its homomorphism ``phi_sigma`` (Lemma 3.1).

    A :class:`MatrixGroup` that also knows its activation; built by :func:`intertwiner_group`.

    Parameters
    ----------
    kind : str
        One of :data:`GROUP_KINDS`.
    n : int
        The dimension; elements have shape ``(n, n)``.
    activation : str
        A key of :data:`lib.activations.ACTIVATIONS`.
    params : tuple of (str, value) pairs
        The activation's parameters, sorted by name.
    phi_rule : str
        The closed form of ``phi`` on the group: ``"A"`` (phi(A) = A), ``"abs"`` (entrywise absolute
        value) or ``"power"`` (entrywise ``degree``-th power).
    degree : int, optional
        The power of ``"power"``.
    """

    activation: str = "identity"
    params: tuple = ()
    phi_rule: str = "A"
    degree: int | None = None

    @property
    def phi_description(self) -> str:
        """str: phi's closed form as the book prints it: ``"A"``, ``"abs(A)"`` or ``"A^⊙d"``."""
        return {"A": "A", "abs": "abs(A)", "power": f"A^⊙{self.degree}"}[self.phi_rule]

    def sigma(self, x: torch.Tensor) -> torch.Tensor:
        """The activation applied elementwise.

        Parameters
        ----------
        x : torch.Tensor, any shape

        Returns
        -------
        torch.Tensor
            ``sigma(x)``, the shape of ``x``.
        """
        return activation_fn(self.activation, **dict(self.params))(x)

    def phi(self, A) -> torch.Tensor:
        """``phi_sigma(A)`` by the closed form of Table 1.

        Parameters
        ----------
        A : array_like, shape (n, n)
            An invertible matrix (a ``ValueError`` otherwise).

        Returns
        -------
        torch.Tensor, shape (n, n)
        """
        A = check_square(A, self.n)
        check_invertible(A)
        if self.phi_rule == "abs":
            return A.abs()
        if self.phi_rule == "power":
            return A**self.degree
        return A.clone()

    def phi_lemma(self, A) -> torch.Tensor:
        """``phi_sigma(A) = sigma(A) sigma(I)^-1``, computed literally as in Lemma 3.1.

        Parameters
        ----------
        A : array_like, shape (n, n)
            An invertible matrix; ``sigma(I)`` must be invertible too (a ``ValueError`` otherwise).

        Returns
        -------
        torch.Tensor, shape (n, n)
        """
        A = check_square(A, self.n)
        check_invertible(A)
        s_id = self.sigma(torch.eye(self.n, dtype=A.dtype, device=A.device))
        try:
            check_invertible(s_id, "sigma(I)")
        except ValueError as err:
            raise ValueError(f"Lemma 3.1 needs sigma(I) invertible for {self.activation!r}: {err}")
        return torch.linalg.solve(s_id.T, self.sigma(A).T).T

    def restrict(
        self, monomial: bool = False, positive_phi: bool = False, phi_fixed: bool = False
    ) -> "IntertwinerGroup":
        """The subgroup whose elements survive the layers around a site (see ``lib.models.Site``).

        Parameters
        ----------
        monomial : bool
            Only P·D passes a per-channel layer (BatchNorm) before the activation.
        positive_phi : bool
            A max-pool after the activation commutes with phi(A) only if phi(A) is non-negative.
        phi_fixed : bool
            On a residual stream phi(A) must equal A.

        Returns
        -------
        IntertwinerGroup
            The same activation and phi, with ``kind`` the largest kind meeting the restrictions.
        """
        kind = self.kind
        if monomial:
            kind = meet(kind, "monomial")
        if positive_phi and (
            self.phi_rule == "A" or (self.phi_rule == "power" and self.degree % 2)
        ):
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
    D in {±1}, phi = abs(A). x^d: P·D with D non-zero, phi = A^⊙d (d = 1: GL_n). tanh (odd): P·D
    with D in {±1}, phi = A. sigmoid, GELU, SiLU, softplus, ELU: permutations, phi = A (sigma(-x)
    and sigma(cx) are not linear in sigma(x) for them; :func:`lib.intertwining.identify_group`
    checks this numerically).

    Parameters
    ----------
    name : str
        A key of :data:`lib.activations.ACTIVATIONS` (or ``"swish"``).
    n : int
        The dimension of the hidden space.
    **params
        The activation's parameters (``negative_slope``; ``degree``, an integer >= 1).

    Returns
    -------
    IntertwinerGroup
        Elements of shape ``(n, n)``.
    """
    name = canonical_name(name)
    check_choice("activation", name, ACTIVATIONS)
    activation_fn(name, **params)
    kind, rule, degree = {
        "identity": ("gl", "A", None),
        "relu": ("positive_monomial", "A", None),
        "rbf": ("signed_permutation", "abs", None),
        "tanh": ("signed_permutation", "A", None),
    }.get(name, ("permutation", "A", None))
    if name == "leaky_relu":
        slope = params.get("negative_slope", 0.01)
        kind, rule = {1: ("gl", "A"), -1: ("monomial", "abs")}.get(
            slope, ("positive_monomial", "A")
        )
    if name == "polynomial":
        degree = params.get("degree", 2)
        if int(degree) != degree or degree < 1:
            raise ValueError(f"polynomial degree must be an integer >= 1, got {degree!r}")
        kind, rule = ("gl", "A") if degree == 1 else ("monomial", "power")
        degree = int(degree)
    return IntertwinerGroup(kind, n, name, tuple(sorted(params.items())), rule, degree)
