"""Weight-space symmetries (Section 3.2: Proposition 3.4, Remark 3.6): the action of the intertwiner
groups of :mod:`lib.groups` on a model's weights.

``sample_elements`` draws one group element per symmetry site of the model's
``lib.models.SymmetrySpec``; ``apply_elements`` moves the weights by them (the one generic action, read
from the spec only); ``random_transform`` does both. ``feature_transform``/``transform_features`` give
how hidden features move (eq. 3.5) and ``site_group(s)`` which group acts at each site, and why.
These names are also reachable as ``lib.groups.<name>``.
"""
from __future__ import annotations

import copy

import torch

from .config import check_choice, get_device
from .groups import (GROUP_KINDS, IntertwinerGroup, MatrixGroup, _check_invertible, _check_square,
                     _monomial_pattern, intertwiner_group, meet)
from .models import symmetry_spec

__all__ = [
    "TRANSFORM_GROUPS", "site_group", "sample_elements", "apply_elements", "random_transform",
    "feature_transform", "transform_features", "site_groups",
]

TRANSFORM_GROUPS = ("intertwiner",) + GROUP_KINDS


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
    spec = symmetry_spec(model)
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
    spec = symmetry_spec(model)
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
    spec = symmetry_spec(model)
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
