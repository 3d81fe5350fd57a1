"""Weight-space symmetries (Section 3.2: Proposition 3.4, eq. 3.5, Remark 3.6): how the groups of
:mod:`lib.groups` act on a model's weights, read from its ``lib.models.SymmetrySpec`` only.

:func:`sample_elements` draws one element per site, :func:`apply_elements` moves the weights by
them, :func:`random_transform` does both; :func:`feature_transform` is how a hidden layer's features
move (eq. 3.5). :func:`transform_errors` and :func:`second_half_errors` measure how well a transform
keeps the function.
"""

from __future__ import annotations

import copy

import torch

from .config import check_choice, get_device
from .groups import (
    GROUP_KINDS,
    IntertwinerGroup,
    MatrixGroup,
    check_invertible,
    check_square,
    intertwiner_group,
    meet,
    monomial_pattern,
)
from .models import features, forward_from, hidden_layers, symmetry_spec

__all__ = [
    "TRANSFORM_GROUPS",
    "site_group",
    "sample_elements",
    "apply_elements",
    "random_transform",
    "feature_transform",
    "transform_features",
    "site_groups",
    "relative_change",
    "transform_errors",
    "second_half_errors",
]

TRANSFORM_GROUPS = ("intertwiner",) + GROUP_KINDS
"""tuple of str: the ``group`` values of :func:`random_transform`: ``"intertwiner"`` (each site's
own group, so the function is kept) or any of :data:`lib.groups.GROUP_KINDS`."""


def site_group(site, restricted: bool = True) -> IntertwinerGroup:
    """The intertwiner group acting at one symmetry site.

    Parameters
    ----------
    site : lib.models.Site
        A site of a model's spec (its activation, channel count ``C`` and restriction flags).
    restricted : bool
        Apply the site's restrictions (Remark 3.6); ``False``: the activation's own group.

    Returns
    -------
    lib.groups.IntertwinerGroup
        Elements of shape ``(C, C)``.
    """
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
    rest = torch.tensor(
        [i for i in range(site.channels) if i not in set(site.embed)],
        dtype=torch.long,
        device=A.device,
    )
    parent = elements.get(site.parent)
    if parent is None:
        parent = torch.eye(len(site.embed), dtype=A.dtype, device=A.device)
    return emb, rest, parent.to(A)


def sample_elements(
    model, generator: torch.Generator, group: str = "intertwiner", sigma: float = 1.0, device=None
) -> dict:
    """One random element per site of the model's spec.

    ``group="intertwiner"`` draws from each site's :func:`site_group`, so :func:`apply_elements`
    keeps the function. Another kind (``"gl"``, ``"orthogonal"``, ...) is drawn instead, met with
    the monomial matrices at BatchNorm sites (all their parameters can absorb); kinds outside a
    site's group break the function (Section 3.3). A zero-padded shortcut's ``embed`` channels
    always carry the parent site's element.

    Parameters
    ----------
    model : nn.Module
        A model built by :mod:`lib.models` (it carries a ``SymmetrySpec``).
    generator : torch.Generator
        A CPU generator; sites are drawn parents first, in spec order.
    group : str
        One of :data:`TRANSFORM_GROUPS`.
    sigma : float
        The spread of the log-normal scales (see :meth:`lib.groups.MatrixGroup.sample`).
    device : str or torch.device, optional
        Where the elements go; ``None``: :func:`lib.config.get_device`'s default.

    Returns
    -------
    dict
        Site name -> float64 tensor of shape ``(C, C)``, ``C`` the site's channel count.
    """
    check_choice("group", group, TRANSFORM_GROUPS)
    spec = symmetry_spec(model)
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
                A[rest[:, None], rest] = MatrixGroup(kind, len(rest)).sample(
                    generator, sigma, device="cpu"
                )
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
        cross = torch.cat(
            [A[emb[:, None], rest].flatten(), A[rest[:, None], emb].flatten(), tied.flatten()]
        )
        member = bool(cross.abs().max() <= 1e-6) if cross.numel() else True
    if strict and not member:
        tie = (
            f" with channels {site.embed[0]}..{site.embed[-1]} equal to {site.parent!r}'s element"
            if site.parent
            else ""
        )
        raise ValueError(
            f"elements[{site.name!r}] is not in the group acting at this site "
            f"({group.description}{tie}); pass strict=False to apply it anyway"
        )
    return group.phi(A) if member else A


def _along(t: torch.Tensor, L: torch.Tensor, axis: int) -> torch.Tensor:
    """``t`` with ``L`` applied on ``axis``: new[..., i, ...] = sum_j L[i, j] t[..., j, ...]."""
    moved = t.movedim(axis, 0)
    out = (L @ moved.reshape(moved.shape[0], -1)).reshape(moved.shape)
    return out.movedim(0, axis)


def apply_elements(model, elements: dict, strict: bool = True):
    """A deep copy of ``model`` with its weights moved by ``elements`` (Proposition 3.4).

    Every parameter/buffer axis tagged ``(site, role)`` in the spec is multiplied by A (``"out"``),
    by phi(A)^-1 from the right (``"in"``) or by A's permutation pattern (``"perm"``). With
    ``strict=True`` each A must lie in its site's group (:func:`site_group`, shortcut ties
    included), so the new model is the same function; ``strict=False`` applies non-members with
    phi(A) := A. The input model is not modified.

    Parameters
    ----------
    model : nn.Module
        A model built by :mod:`lib.models`.
    elements : dict
        Site name -> invertible matrix A of shape ``(C, C)``; missing sites get the identity.
    strict : bool
        Require every A to lie in its site's group (a ``ValueError`` otherwise).

    Returns
    -------
    nn.Module
        The transformed copy, with the input model's dtypes.
    """
    spec = symmetry_spec(model)
    unknown = set(elements) - set(spec.sites)
    if unknown:
        raise ValueError(
            f"unknown sites {sorted(unknown)}; this model's sites: {', '.join(spec.sites)}"
        )
    mats = {}
    for name, A in elements.items():
        site = spec.sites[name]
        A = check_square(A, site.channels, f"elements[{name!r}]").double()
        check_invertible(A, f"elements[{name!r}]")
        phi = _phi_at(site, A, elements, strict)
        mats[name] = {"out": A, "in": torch.linalg.inv(phi).T, "perm": monomial_pattern(A)}
    new = copy.deepcopy(model)
    tensors = dict(new.named_parameters())
    tensors.update(new.named_buffers())
    with torch.no_grad():
        for pname, axes in spec.axes.items():
            if pname not in tensors or tensors[pname].ndim != len(axes):
                raise ValueError(
                    f"symmetry spec entry {pname!r} does not match the model's tensors"
                )
            t = tensors[pname]
            x = t.detach().double()
            for axis, entry in enumerate(axes):
                if entry is None or entry[0] not in mats:
                    continue
                L = mats[entry[0]][entry[1]]
                if L is None:
                    raise ValueError(
                        f"elements[{entry[0]!r}] is not monomial, but {pname!r} can only "
                        "absorb a permutation (it feeds a per-channel layer)"
                    )
                x = _along(x, L.to(x.device), axis)
            t.copy_(x.to(t.dtype))
    return new


def random_transform(
    model, generator: torch.Generator, group: str = "intertwiner", sigma: float = 1.0
):
    """A random weight-space transform of ``model``.

    :func:`sample_elements` then :func:`apply_elements`. With ``group="intertwiner"`` the new model
    computes the same function; ``"gl"``, ``"orthogonal"`` (any kind outside the sites' groups) give
    a deliberately symmetry-breaking transform.

    Parameters
    ----------
    model : nn.Module
        A model built by :mod:`lib.models`; it is not modified.
    generator : torch.Generator
        A CPU generator, the only source of randomness.
    group : str
        One of :data:`TRANSFORM_GROUPS`.
    sigma : float
        The spread of the log-normal scales (see :meth:`lib.groups.MatrixGroup.sample`).

    Returns
    -------
    new_model : nn.Module
    elements : dict
        Site name -> float64 matrix of shape ``(C, C)``, on the model's device.
    """
    device = next(iter(model.parameters())).device
    elements = sample_elements(model, generator, group, sigma, device=device)
    return apply_elements(model, elements, strict=group == "intertwiner"), elements


def feature_transform(model, layer: str, elements: dict) -> torch.Tensor:
    """The matrix phi(A) by which hidden layer ``layer``'s channels move (eq. 3.5).

    Features of ``apply_elements(model, elements)`` equal ``transform_features(features of model,
    feature_transform(model, layer, elements))``.

    Parameters
    ----------
    model : nn.Module
        A model built by :mod:`lib.models`.
    layer : str
        A hidden layer with a symmetry site.
    elements : dict
        As returned by :func:`random_transform`; a missing site means the identity.

    Returns
    -------
    torch.Tensor, shape (C, C)
        Float64; ``C`` the layer's channel count.
    """
    spec = symmetry_spec(model)
    if layer not in spec.layers:
        raise ValueError(
            f"unknown layer {layer!r}; layers with a symmetry site: {', '.join(spec.layers)}"
        )
    site = spec.sites[spec.layers[layer]]
    A = elements.get(site.name)
    if A is None:
        return torch.eye(site.channels, dtype=torch.float64)
    return _phi_at(site, A.double(), elements, strict=False)


def transform_features(h: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``M`` applied on the channel axis of features: ``new[:, i] = sum_j M[i, j] h[:, j]``.

    Parameters
    ----------
    h : torch.Tensor, shape (N, C) or (N, C, H, W)
    M : torch.Tensor, shape (C, C)
        Cast to ``h``'s dtype and device.

    Returns
    -------
    torch.Tensor
        The shape and dtype of ``h``.
    """
    return _along(h, M.to(h), 1)


# Each restriction flag of a Site, and why it restricts the group (Remark 3.6).
_REASONS = {
    "monomial": "BatchNorm before σ: monomial only",
    "positive_phi": "max-pool after σ: φ(A) ≥ 0",
    "phi_fixed": "residual stream: φ(A) = A, shared by the stream",
}


def site_groups(model) -> list[dict]:
    """Which group acts at each site of ``model``, and why (Remark 3.6), as table rows.

    Parameters
    ----------
    model : nn.Module
        A model built by :mod:`lib.models`.

    Returns
    -------
    list of dict
        One per site, in spec order: ``site``, ``channels`` (int), ``activation``, ``free`` (its own
        group), ``group`` (restricted), ``phi``, ``reasons``, ``layers`` (hidden layers there).
    """
    spec = symmetry_spec(model)
    rows = []
    for name, site in spec.sites.items():
        free, group = site_group(site, restricted=False), site_group(site)
        reasons = [why for flag, why in _REASONS.items() if getattr(site, flag)]
        if site.parent:
            reasons.append(
                f"zero-padded shortcut: channels {site.embed[0]}–{site.embed[-1]} "
                f"carry {site.parent}'s element"
            )
        act = site.activation + "".join(f" {k}={v}" for k, v in site.params)
        rows.append(
            dict(
                site=name,
                channels=site.channels,
                activation=act,
                free=free.description,
                group=group.description,
                phi=group.phi_description,
                reasons="; ".join(reasons) or "none",
                layers=", ".join(layer for layer, s in spec.layers.items() if s == name),
            )
        )
    return rows


# How well a transform keeps the function: the checks of Proposition 3.4 and eq. (3.5).
def relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """How much ``new`` differs from ``old``, relative to the size of ``old``.

    Parameters
    ----------
    new, old : torch.Tensor
        The same shape (e.g. ``(N, classes)`` outputs).

    Returns
    -------
    float
        ``max |new - old| / max |old|``, a fraction.
    """
    return ((new - old).abs().max() / old.abs().max()).item()


def transform_errors(
    model, x: torch.Tensor, generator: torch.Generator, sigma: float = 1.0
) -> dict:
    """Proposition 3.4 and eq. (3.5) measured on one model, with one random transform per group.

    Draws, in this order, a :func:`random_transform` in the intertwiner group, one in ``"gl"`` and
    one in ``"orthogonal"`` (the last with ``sigma=1``).

    Parameters
    ----------
    model : nn.Module
        A model built by :mod:`lib.models`, in eval mode.
    x : torch.Tensor, shape (N, ...)
        Inputs, as the model takes them.
    generator : torch.Generator
    sigma : float
        The spread of the log-normal scales.

    Returns
    -------
    dict
        Fractions (:func:`relative_change`): ``moved`` (largest over parameter tensors), ``out``
        (outputs), ``eq35`` (worst hidden layer's features against phi(A) times the original's),
        ``gl`` and ``orth`` (outputs after the symmetry-breaking transforms).
    """
    y = model(x)
    new, elements = random_transform(model, generator, sigma=sigma)
    f, f_new = features(model, x), features(new, x)
    eq35 = max(
        relative_change(
            f_new[layer], transform_features(f[layer], feature_transform(model, layer, elements))
        )
        for layer in hidden_layers(model)
    )
    moved = max(relative_change(p_new, p) for p_new, p in zip(new.parameters(), model.parameters()))
    return dict(
        moved=moved,
        out=relative_change(new(x), y),
        eq35=eq35,
        gl=relative_change(random_transform(model, generator, group="gl", sigma=sigma)[0](x), y),
        orth=relative_change(random_transform(model, generator, group="orthogonal")[0](x), y),
    )


def second_half_errors(model, x: torch.Tensor, generator: torch.Generator, sigma: float = 1.0):
    """The second half of eq. (3.5), ``f_>m(x, W') ∘ phi(A_m) = f_>m(x, W)``, at every hidden layer.

    One :func:`random_transform` is drawn; at each layer ``m`` the transformed model's rest of the
    network (``lib.models.forward_from``) is fed phi(A_m) times the original's features.

    Parameters
    ----------
    model : nn.Module
        A model built by :mod:`lib.models`, in eval mode.
    x : torch.Tensor, shape (N, ...)
        Inputs, as the model takes them.
    generator : torch.Generator
    sigma : float
        The spread of the log-normal scales.

    Returns
    -------
    worst : float
        The largest :func:`relative_change` of the outputs over the layers where ``f_>m`` is
        defined.
    undefined : int
        The layers inside a residual block, where ``forward_from`` refuses.
    """
    y = model(x)
    new, elements = random_transform(model, generator, sigma=sigma)
    f, errs, undefined = features(model, x), [], 0
    for layer in hidden_layers(model):
        h_new = transform_features(f[layer], feature_transform(model, layer, elements))
        try:
            errs.append(relative_change(forward_from(new, layer, h_new), y))
        except ValueError:
            undefined += 1
    return max(errs), undefined
