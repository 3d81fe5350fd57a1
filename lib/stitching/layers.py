"""Stitching layers: full, reduced-rank and G_ReLU 1x1 maps on channels (Section 4, Fig. 1)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import check_choice
from .matching import hungarian, sinkhorn

__all__ = ["LAYER_KINDS", "StitchLayer"]

LAYER_KINDS = ("full", "rank", "grelu")
"""tuple of str: the kinds of stitching layer: any matrix, a rank-r product ``V U``, or ``P D``
(G_ReLU)."""


class StitchLayer(nn.Module):
    """A channel-only affine map ``h -> M h (+ b)`` (a 1x1 convolution) on ``(N, C, ...)``.

    Parameters
    ----------
    kind : str
        ``"full"``: any ``(C, C)`` matrix; ``"rank"``: ``V U`` with ``U (r, C)``, ``V (C, r)``;
        ``"grelu"``: ``P diag(d)`` with ``P`` in the Birkhoff polytope while training and rounded to
        a permutation (Hungarian) when ``hard`` is set, ``d >= 0``.
    channels : int
        C.
    rank : int, optional
        r, for ``kind="rank"`` (1 <= r <= C).
    init : str
        ``"default"`` (nn.Conv2d's Kaiming-uniform for full and rank, Sinkhorn noise for grelu) or
        ``"identity"`` (full and grelu start at the identity).
    generator : torch.Generator, optional
        The random start's source (default: seed 0).
    bias : bool
        Add a trainable ``b`` ``(C,)`` (full and rank only: the closed-form starts fit one; the
        paper's layers have none).

    Attributes
    ----------
    hard : bool
        Round ``P`` to a permutation in :meth:`matrix` (grelu; set for evaluation).
    """

    def __init__(
        self,
        kind: str,
        channels: int,
        rank: int | None = None,
        init: str = "default",
        generator: torch.Generator | None = None,
        bias: bool = False,
    ):
        super().__init__()
        check_choice("layer_kind", kind, LAYER_KINDS)
        check_choice("init", init, ("default", "identity"))
        if kind == "grelu" and bias:
            raise ValueError(
                "bias is only for layer_kind 'full' or 'rank'; a G_ReLU layer is P D alone"
            )
        self.kind, self.channels, self.rank, self.hard = kind, channels, rank, False
        g, C = generator or torch.Generator().manual_seed(0), channels

        # nn.Conv2d's default init (Kaiming-uniform, bound 1/sqrt(fan_in)) for full and rank.
        def uniform(*shape, fan_in):
            return (torch.rand(*shape, generator=g) * 2 - 1) / fan_in**0.5

        if kind == "full":
            self.weight = nn.Parameter(
                torch.eye(C) if init == "identity" else uniform(C, C, fan_in=C)
            )
        elif kind == "rank":
            if (
                isinstance(rank, bool)
                or not isinstance(rank, (int, np.integer))
                or not 1 <= rank <= C
            ):
                raise ValueError(
                    f"rank must be an integer in 1..{C} (the layer's channels), got {rank!r}"
                )
            self.u = nn.Parameter(uniform(rank, C, fan_in=C))
            self.v = nn.Parameter(uniform(C, rank, fan_in=rank))
        else:
            p = torch.eye(C) if init == "identity" else sinkhorn(torch.rand(C, C, generator=g))
            self.p = nn.Parameter(p)
            self.d = nn.Parameter(torch.ones(C))
        self.bias = nn.Parameter(torch.zeros(C)) if bias else None

    @torch.no_grad()
    def set_affine(self, W: torch.Tensor, b: torch.Tensor | None = None) -> None:
        """Start a full or rank layer at ``h -> W h + b``.

        Parameters
        ----------
        W : torch.Tensor
            ``(C, C)``; a rank layer keeps its top-r singular directions.
        b : torch.Tensor, optional
            ``(C,)``; needs a layer built with ``bias=True``.
        """
        if self.kind == "grelu":
            raise ValueError(
                "set_affine needs layer_kind 'full' or 'rank'; use set_matrix for 'grelu'"
            )
        if self.kind == "full":
            self.weight.copy_(W)
        else:
            U, s, Vh = torch.linalg.svd(W.double())
            r = self.rank
            # Balanced factors keep U and V on the same scale, which suits a common learning rate.
            self.v.copy_(U[:, :r] * s[:r].sqrt())
            self.u.copy_(s[:r].sqrt()[:, None] * Vh[:r])
        if b is not None:
            if self.bias is None:
                raise ValueError(
                    "this layer has no bias; build it with bias=True to start it at W h + b"
                )
            self.bias.copy_(b)

    def matrix(self) -> torch.Tensor:
        """The current ``(C, C)`` map (with the rounded permutation when ``self.hard``)."""
        if self.kind == "full":
            return self.weight
        if self.kind == "rank":
            return self.v @ self.u
        p = hungarian(self.p) if self.hard else self.p
        return p * self.d[None, :]

    @torch.no_grad()
    def set_matrix(self, M: torch.Tensor) -> None:
        """Start from ``M`` ``(C, C)``: any matrix for ``full``, a monomial ``P D`` (e.g. a
        matching) for ``grelu``."""
        if self.kind == "rank":
            raise ValueError(
                "set_matrix needs layer_kind 'full' or 'grelu'; a rank layer has no exact start"
            )
        if self.kind == "full":
            self.weight.copy_(M)
        else:
            self.p.copy_(hungarian(M.abs()))  # a permutation even where a scale is 0 (dead channel)
            self.d.copy_(M.abs().sum(0))

    @torch.no_grad()
    def project(self, rounds: int = 16) -> None:
        """Back onto the constraint set after an optimiser step (grelu: Birkhoff polytope, d >= 0).

        Parameters
        ----------
        rounds : int
            Sinkhorn normalisations.
        """
        if self.kind == "grelu":
            # A tiny floor keeps a column whose entries were all clipped from staying zero for ever
            # (Sinkhorn cannot rescale a zero column back onto the polytope).
            self.p.copy_(sinkhorn(self.p.clamp(min=0) + 1e-9, rounds))
            self.d.clamp_(min=0)

    def forward(self, h):
        M = self.matrix().to(h.dtype)
        b = None if self.bias is None else self.bias.to(h.dtype)
        if h.ndim == 4:
            return F.conv2d(h, M[:, :, None, None], b)
        return h @ M.T + (0 if b is None else b)
