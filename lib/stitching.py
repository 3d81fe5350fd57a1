"""Model stitching with full, reduced-rank and G_ReLU stitching layers (Section 4, Theorem 4.2).

A stitched model runs model A up to and including a hidden layer, a stitching layer (a 1x1 map on
channels), then model B after that layer. A is frozen and its "front" is computed once per image set
(:func:`front_features`); only the stitching layer trains.

Every layer can start where the optimum of a closed-form problem is (``init="closed_form"``, the
default): the full layer at the least-squares map of B's features on A's, a rank-r layer at the
reduced-rank regression, and the G_ReLU layer at activation matching. All three come from one
streaming pass (:func:`feature_moments`) that accumulates the float64 sums ``XᵀX``, ``XᵀY``,
``ΣX``, ``ΣY`` over ``N·H·W`` positions, so memory does not grow with the number of images.
``init="random"`` is the paper's start (Kaiming-uniform full and rank layers without bias, Sinkhorn
noise for G_ReLU).

Inside a ResNet block the state at the layer is the pair (inner activation, block input): the
stitching layer maps the inner activation into B's ``conv2``, and A's block input feeds B's shortcut
untransformed (Remark 3.6: no single-site element carries the residual stream there, so Theorem 4.2
is not expected to hold).
"""
from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F

from .config import check_choice, get_device
from .data import subset, to_input
from .models import ResNet, hidden_layers

__all__ = ["LAYER_KINDS", "INITS", "StitchSettings", "StitchLayer", "Stitched", "stitch", "front_features",
           "train_stitch", "stitch_experiment", "sinkhorn", "hungarian", "activation_matching",
           "matching_matrix", "channels_at", "feature_moments", "least_squares", "matching_from_moments",
           "parse_variant", "settings_for_scale"]

LAYER_KINDS = ("full", "rank", "grelu")
INITS = ("closed_form", "random")


@dataclasses.dataclass(frozen=True)
class StitchSettings:
    """How a stitching layer is trained. The defaults are the ``cpu``-scale protocol; the authors'
    protocol (implementation notes) is :meth:`paper`."""

    optimizer: str = "adam"         # "adam" or "sgd" (plain, the authors')
    lr: float = 1e-3                # peak learning rate per step
    lr_decay: bool = True           # decay linearly to 0 over all steps (the last epochs settle); False: constant (paper)
    momentum: float = 0.0           # SGD momentum (authors: none)
    weight_decay: float = 1e-4      # L2 coefficient per step; for grelu on D only
    epochs: int = 4                 # passes over the stitching images (paper: 20); 0 evaluates the start
    batch_size: int = 128           # images per step (authors: 32, 3-4x slower per image on CPUs)
    alpha: float = 0.1              # weight of the vertex penalty -alpha * ||P||_F (grelu)
    sinkhorn_rounds: int = 16       # row/column normalisations after every step (grelu)
    p_only_fraction: float = 0.5    # fraction of the epochs that train P alone (grelu)
    bn_adapt: bool = True           # B's BatchNorms after the stitch in train mode (running stats adapt)
    init: str = "closed_form"       # default start of every variant: "closed_form" or "random" (paper)
    precision: str = "bulk"         # lib.config precision of training and evaluation ("float32": exact)

    @classmethod
    def paper(cls) -> "StitchSettings":
        """The authors' protocol: plain SGD, lr 1e-3, 20 epochs, batch 32, random starts."""
        return cls(optimizer="sgd", lr_decay=False, epochs=20, batch_size=32, init="random")


def settings_for_scale(scale: str, **overrides) -> StitchSettings:
    """The stitching protocol of ``scale`` (``lib.config.SCALES``): the paper's at ``"paper"``, else
    the default :class:`StitchSettings` with the scale's ``stitch_epochs``; ``overrides`` replace fields."""
    from .config import scale_settings

    s = scale_settings(scale)
    base = StitchSettings.paper() if scale == "paper" else StitchSettings(epochs=s.stitch_epochs)
    return dataclasses.replace(base, **overrides)


def _check_settings(settings: StitchSettings) -> None:
    from .config import PRECISIONS

    check_choice("optimizer", settings.optimizer, ("sgd", "adam"))
    check_choice("init", settings.init, INITS)
    check_choice("precision", settings.precision, PRECISIONS)
    if not isinstance(settings.epochs, int) or settings.epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0 (0 evaluates the start only), got {settings.epochs!r}")
    if settings.batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {settings.batch_size!r}")


# -- Birkhoff polytope and matching ------------------------------------------------------------
def sinkhorn(P: torch.Tensor, rounds: int = 16) -> torch.Tensor:
    """``rounds`` alternating row and column normalisations of a non-negative ``(C, C)`` matrix."""
    for _ in range(rounds):
        P = P / P.sum(1, keepdim=True).clamp_min(1e-12)
        P = P / P.sum(0, keepdim=True).clamp_min(1e-12)
    return P


def hungarian(P: torch.Tensor) -> torch.Tensor:
    """The permutation matrix maximising ``sum_i P[i, perm_i]`` (linear sum assignment), shape ``(C, C)``."""
    rows, cols = linear_sum_assignment(P.detach().double().cpu().numpy(), maximize=True)
    out = torch.zeros_like(P)
    out[torch.as_tensor(rows), torch.as_tensor(cols)] = 1.0
    return out


def _channels_last_2d(f: torch.Tensor) -> torch.Tensor:
    # (n, C) or (n, C, h, w) -> (n * h * w, C): every position is a sample of every channel.
    if f.ndim not in (2, 4):
        raise ValueError(f"features must have shape (n, C) or (n, C, h, w), got {tuple(f.shape)}")
    return f.double() if f.ndim == 2 else f.double().movedim(1, -1).reshape(-1, f.shape[1])


def _moments_of(xa: torch.Tensor, xb: torch.Tensor) -> dict:
    # Sums over the rows of float64 (n, C_a) and (n, C_b) samples.
    return dict(n=xa.shape[0], sa=xa.sum(0), sb=xb.sum(0), aa=xa.T @ xa, ab=xa.T @ xb, bb=(xb * xb).sum(0))


def _add_moments(total: dict | None, part: dict) -> dict:
    return part if total is None else {k: total[k] + part[k] for k in part}


def matching_from_moments(m: dict):
    """Activation matching from :func:`feature_moments`: ``(perm, scales)``, each of shape ``(C,)``.

    Channels are compared by their uncentred cosine similarity over all samples and positions (the
    cross-correlation of G_ReLU-Procrustes, Section 5); the Hungarian algorithm maximises the matched
    sum; ``perm[i]`` is the channel of B matched to channel i of A and ``scales[i] >= 0`` the
    least-squares factor with ``features_b[:, perm[i]] ≈ scales[i] * features_a[:, i]``.
    """
    aa = m["aa"].diagonal()
    na, nb = aa.clamp_min(1e-24).sqrt(), m["bb"].clamp_min(1e-24).sqrt()
    corr = m["ab"] / na[:, None] / nb[None, :]                      # (C_a, C_b)
    rows, cols = linear_sum_assignment(corr.cpu().numpy(), maximize=True)
    perm = torch.as_tensor(cols[np.argsort(rows)], device=corr.device)
    idx = torch.arange(len(perm), device=corr.device)
    scales = (m["ab"][idx, perm] / aa.clamp_min(1e-24)).clamp_min(0.0)
    return perm, scales.float()


def activation_matching(features_a: torch.Tensor, features_b: torch.Tensor):
    """Match B's channels to A's from features ``(n, C)`` or ``(n, C, h, w)`` held in memory:
    ``(perm, scales)`` as in :func:`matching_from_moments`."""
    xa, xb = _channels_last_2d(features_a), _channels_last_2d(features_b)
    if xa.shape != xb.shape:
        raise ValueError(f"features_a and features_b must have equal shapes, got "
                         f"{tuple(features_a.shape)} and {tuple(features_b.shape)}")
    return matching_from_moments(_moments_of(xa, xb))


def least_squares(m: dict, rank: int | None = None, rcond: float = 1e-10):
    """Closed-form stitching map from :func:`feature_moments`: ``(W, b)`` with ``y ≈ W x + b``.

    ``W`` has shape ``(C_b, C_a)`` and ``b`` shape ``(C_b,)`` (float64). Without ``rank``: ordinary
    least squares of B's channels on A's (with a bias), i.e. ``W = Σ_ba Σ_aa⁺`` for the centred
    covariances. With ``rank = r``: reduced-rank regression, the least-squares map projected onto
    the top-r left singular vectors ``U_r`` of ``Σ_ba Σ_aa^{-1/2}`` (its singular directions in the
    metric of A's features), ``W_r = U_r U_rᵀ W``, which minimises the squared error among maps of
    rank ``r``. Directions of A's features with variance below ``rcond`` times the largest (dead
    channels) are left out of the pseudo-inverse, so their weights are 0.
    """
    n = m["n"]
    ma, mb = m["sa"] / n, m["sb"] / n
    s_aa = m["aa"] / n - torch.outer(ma, ma)
    s_ab = m["ab"] / n - torch.outer(ma, mb)
    lam, Q = torch.linalg.eigh(s_aa)
    keep = lam > rcond * lam.max().clamp_min(1e-300)
    Qk, lk = Q[:, keep], lam[keep]
    W = (s_ab.T @ Qk) / lk @ Qk.T                                   # Σ_ba Σ_aa⁺
    if rank is not None:
        B = (s_ab.T @ Qk) / lk.sqrt()                               # Σ_ba Σ_aa^{-1/2} in A's eigenbasis
        U = torch.linalg.svd(B, full_matrices=False)[0][:, :rank]
        W = U @ (U.T @ W)
    return W, mb - W @ ma


@torch.no_grad()
def feature_moments(model_a, model_b, layer: str, x: torch.Tensor, batch_size: int = 250, device=None,
                    front_dtype=None):
    """Float64 sums of A's and B's features at ``layer`` over images ``x`` (uint8 ``(n, H, W, 3)``).

    Channels are the features and every (image, position) a sample, so ``n_samples = n·h·w``. The
    images are processed ``batch_size`` at a time in float32 (no autocast), so memory does not grow
    with ``n``. Returns ``n`` (samples), ``sa`` ``(C_a,)`` and ``sb`` ``(C_b,)`` (sums), ``aa``
    ``(C_a, C_a)`` (``XᵀX``), ``ab`` ``(C_a, C_b)`` (``XᵀY``) and ``bb`` ``(C_b,)`` (sums of squares).
    With ``front_dtype`` it returns ``(moments, fronts)``, where ``fronts`` is A's state at the layer
    as :func:`front_features` gives it, stored as ``front_dtype``: one pass instead of two.
    """
    from .config import exact_mode

    channels_at(model_a, layer)
    device = get_device(device)
    total, kept = None, []
    was = model_a.training, model_b.training
    model_a.eval(), model_b.eval()
    try:
        with exact_mode():
            for s in range(0, len(x), batch_size):
                xin = to_input(x[s:s + batch_size], device)
                state = _capture(model_a, layer, xin)
                hb = _capture(model_b, layer, xin)[0]
                total = _add_moments(total, _moments_of(_channels_last_2d(state[0]), _channels_last_2d(hb)))
                if front_dtype is not None:
                    kept.append(tuple(t.to(front_dtype) for t in state))
    finally:
        model_a.train(was[0]), model_b.train(was[1])
    if front_dtype is None:
        return total
    return total, tuple(torch.cat(parts) for parts in zip(*kept))


def matching_matrix(perm: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The ``(C, C)`` stitching matrix ``M = P D`` of a matching: ``M[perm[i], i] = scales[i]``."""
    C = len(perm)
    M = torch.zeros(C, C, dtype=scales.dtype, device=scales.device)
    M[perm, torch.arange(C, device=perm.device)] = scales
    return M


# -- Stitching layers --------------------------------------------------------------------------
class StitchLayer(nn.Module):
    """A channel-only affine map ``h -> M h (+ b)`` (a 1x1 convolution) on ``(N, C, ...)``.

    ``full``: any ``(C, C)`` matrix; ``rank``: ``V U`` with ``U (r, C)``, ``V (C, r)``; ``grelu``:
    ``P diag(d)`` with ``P`` in the Birkhoff polytope while training and rounded to a permutation
    (Hungarian) when ``hard`` is set, ``d >= 0``. ``bias=True`` adds a trainable ``b`` ``(C,)``
    (full and rank only: the closed-form starts fit one; the paper's layers have none).
    """

    def __init__(self, kind: str, channels: int, rank: int | None = None, init: str = "default",
                 generator: torch.Generator | None = None, bias: bool = False):
        super().__init__()
        check_choice("layer_kind", kind, LAYER_KINDS)
        check_choice("init", init, ("default", "identity"))
        if kind == "grelu" and bias:
            raise ValueError("bias is only for layer_kind 'full' or 'rank'; a G_ReLU layer is P D alone")
        self.kind, self.channels, self.rank, self.hard = kind, channels, rank, False
        g, C = generator or torch.Generator().manual_seed(0), channels

        # nn.Conv2d's default init (Kaiming-uniform, bound 1/sqrt(fan_in)) for full and rank.
        def uniform(*shape, fan_in):
            return (torch.rand(*shape, generator=g) * 2 - 1) / fan_in ** 0.5
        if kind == "full":
            self.weight = nn.Parameter(torch.eye(C) if init == "identity" else uniform(C, C, fan_in=C))
        elif kind == "rank":
            if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= C:
                raise ValueError(f"rank must be an integer in 1..{C} (the layer's channels), got {rank!r}")
            self.u = nn.Parameter(uniform(rank, C, fan_in=C))
            self.v = nn.Parameter(uniform(C, rank, fan_in=rank))
        else:
            p = torch.eye(C) if init == "identity" else sinkhorn(torch.rand(C, C, generator=g))
            self.p = nn.Parameter(p)
            self.d = nn.Parameter(torch.ones(C))
        self.bias = nn.Parameter(torch.zeros(C)) if bias else None

    @torch.no_grad()
    def set_affine(self, W: torch.Tensor, b: torch.Tensor | None = None) -> None:
        """Start a full or rank layer at ``h -> W h + b`` (``W`` ``(C, C)``; a rank layer needs
        ``rank(W) <= r``: it keeps the top-r singular directions of ``W``)."""
        if self.kind == "grelu":
            raise ValueError("set_affine needs layer_kind 'full' or 'rank'; use set_matrix for 'grelu'")
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
                raise ValueError("this layer has no bias; build it with bias=True to start it at W h + b")
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
        """Start from ``M``: any matrix for ``full``, a monomial ``P D`` (e.g. a matching) for ``grelu``."""
        if self.kind == "rank":
            raise ValueError("set_matrix needs layer_kind 'full' or 'grelu'; a rank layer has no exact start")
        if self.kind == "full":
            self.weight.copy_(M)
        else:
            self.p.copy_(hungarian(M.abs()))    # a permutation even where a scale is 0 (dead channel)
            self.d.copy_(M.abs().sum(0))

    @torch.no_grad()
    def project(self, rounds: int = 16) -> None:
        """Back onto the constraint set after an optimiser step (grelu: Birkhoff polytope, d >= 0)."""
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


# -- Fronts and tails --------------------------------------------------------------------------
def _block_of(layer: str) -> str | None:
    parts = layer.split(".")
    return ".".join(parts[:2]) if len(parts) == 3 and parts[2] == "act1" else None


def channels_at(model, layer: str) -> int:
    """Channels of hidden layer ``layer`` (from the model's symmetry spec); checks the layer's name."""
    known = hidden_layers(model)
    if layer not in known:
        raise ValueError(f"unknown layer {layer!r}; this model's hidden layers: {', '.join(known)}")
    if not isinstance(model, (nn.Sequential, ResNet)):
        raise ValueError(f"stitching supports Sequential models (myrtle_cnn, mlp) and resnet20, "
                         f"not {type(model).__name__}")
    spec = model.symmetry_spec
    return spec.sites[spec.layers[layer]].channels


class _Captured(Exception):
    # Raised by the capture hook: nothing after the layer is needed, so the forward pass stops there.
    pass


def _capture(model_a, layer: str, x: torch.Tensor) -> tuple:
    # A's output at ``layer`` (and, inside a ResNet block, the block's input) for float inputs.
    modules = dict(model_a.named_modules())
    block = _block_of(layer) if isinstance(model_a, ResNet) else None
    cur = {}

    def grab(m, i, o):
        cur["h"] = o
        raise _Captured

    hooks = [modules[layer].register_forward_hook(grab)]
    if block:
        hooks.append(modules[block].register_forward_pre_hook(lambda m, i: cur.__setitem__("x", i[0])))
    try:
        with torch.no_grad():
            model_a(x)
    except _Captured:
        pass
    finally:
        for hk in hooks:
            hk.remove()
    return (cur["h"], cur["x"]) if block else (cur["h"],)


@torch.no_grad()
def front_features(model_a, layer: str, x: torch.Tensor, batch_size: int = 500, dtype=torch.float32,
                   device=None) -> tuple:
    """A's state at ``layer`` for uint8 images ``x`` ``(n, H, W, 3)``, computed once, in eval mode.

    Returns a tuple: ``(h,)`` with ``h`` of shape ``(n, C, h, w)``, or ``(h, block_input)`` for a layer
    inside a ResNet block. Stored as ``dtype`` (float16 halves the memory of early conv layers).
    """
    channels_at(model_a, layer)
    device = get_device(device)
    was = model_a.training
    model_a.eval()
    try:
        out = [tuple(t.to(dtype) for t in _capture(model_a, layer, to_input(x[s:s + batch_size], device)))
               for s in range(0, len(x), batch_size)]
    finally:
        model_a.train(was)
    return tuple(torch.cat(parts) for parts in zip(*out))


def _resnet_tail(model: ResNet, layer: str, h, block_input):
    start = (1, 0)
    if layer != "act1":
        name, b, which = layer.split(".")
        s, b = int(name[5:]), int(b)
        blk = getattr(model, name)[b]
        if which == "act1":
            h = blk.act2(blk.bn2(blk.conv2(h)) + blk.shortcut(block_input))
        start = (s, b + 1)
    for s in range(start[0], 4):
        stage = getattr(model, f"layer{s}")
        for b in range(start[1] if s == start[0] else 0, len(stage)):
            h = stage[b](h)
    return model.linear(F.adaptive_avg_pool2d(h, 1).flatten(1))     # (N, C, h, w) -> (N, C)


class Stitched(nn.Module):
    """``B_{>layer} ∘ stitch ∘ A_{<=layer}``. ``forward(x)`` takes float model inputs;
    ``tail(state)`` takes A's state as returned by :meth:`front` or :func:`front_features`."""

    def __init__(self, model_a, model_b, layer: str, stitch_layer: StitchLayer):
        super().__init__()
        self.model_a, self.model_b, self.layer, self.stitch = model_a, model_b, layer, stitch_layer
        if isinstance(model_b, nn.Sequential):
            names = [n for n, _ in model_b.named_children()]
            self.back = model_b[names.index(layer) + 1:]
        # B is the stitched model's own copy; A is shared with the caller and only run under no_grad.
        for p in model_b.parameters():
            p.requires_grad_(False)

    def front(self, x):
        """A's state at the layer for float inputs ``x`` ``(N, 3, H, W)`` (no gradient)."""
        return _capture(self.model_a, self.layer, x)

    def tail(self, state):
        h = self.stitch(state[0].float())
        if isinstance(self.model_b, nn.Sequential):
            return self.back(h)
        return _resnet_tail(self.model_b, self.layer, h, state[1].float() if len(state) > 1 else None)

    def forward(self, x):
        return self.tail(self.front(x))

    def train(self, mode: bool = True):
        # A stays in eval mode; B's layers follow ``mode`` (BatchNorm statistics adapt when True).
        super().train(mode)
        self.model_a.eval()
        return self


def stitch(model_a, model_b, layer: str, layer_kind: str, rank: int | None = None, init: str = "default",
           generator: torch.Generator | None = None, bias: bool = False) -> Stitched:
    """The stitched model ``B_{>layer} ∘ M ∘ A_{<=layer}`` with a new stitching layer of ``layer_kind``.

    ``model_b`` is deep-copied (its BatchNorm statistics may adapt); ``model_a`` is shared and frozen.
    ``init="identity"`` starts full and grelu layers at the identity (stitching a model with itself
    then reproduces it exactly). ``bias`` adds a bias to full and rank layers.
    """
    check_choice("layer_kind", layer_kind, LAYER_KINDS)
    if getattr(model_a, "arch", None) != getattr(model_b, "arch", None):
        raise ValueError(f"model_a and model_b must have the same architecture, got "
                         f"{getattr(model_a, 'arch', type(model_a).__name__)} and "
                         f"{getattr(model_b, 'arch', type(model_b).__name__)}")
    dev_a, dev_b = next(model_a.parameters()).device, next(model_b.parameters()).device
    if dev_a != dev_b:
        raise ValueError(f"model_a and model_b must be on the same device, got {dev_a} and {dev_b}")
    if layer_kind != "rank" and rank is not None:
        raise ValueError(f"rank is only for layer_kind='rank', got rank={rank!r} with {layer_kind!r}")
    layer_ = StitchLayer(layer_kind, channels_at(model_a, layer), rank, init, generator, bias).to(dev_a)
    return Stitched(model_a, copy.deepcopy(model_b), layer, layer_)


# -- Training and the experiment ---------------------------------------------------------------
@torch.no_grad()
def _accuracy(model: Stitched, state: tuple, y: torch.Tensor, batch_size: int = 1000,
              precision: str = "bulk") -> float:
    from .config import autocast

    dev = next(model.stitch.parameters()).device
    was = model.training
    model.eval()
    model.stitch.hard = model.stitch.kind == "grelu"
    correct = 0
    try:
        with autocast(dev, precision):
            for s in range(0, len(y), batch_size):
                out = model.tail(tuple(t[s:s + batch_size].to(dev) for t in state))
                correct += (out.argmax(1).cpu() == y[s:s + batch_size].cpu()).sum().item()
    finally:
        model.stitch.hard = False
        model.train(was)
    return correct / max(1, len(y))


def _check_state(name: str, state: tuple, y: torch.Tensor) -> None:
    counts = sorted({len(t) for t in state})
    if counts != [len(y)]:
        raise ValueError(f"{name} holds fronts of {', '.join(map(str, counts))} images but {len(y)} labels; "
                         f"accepted: one label per front (equal counts)")


# BatchNorm running statistics (momentum 0.1) forget all but the last ~20 batches, so adapting them
# on more batches than this before an evaluation changes nothing but the cost.
_ADAPT_BATCHES = 30


def train_stitch(model: Stitched, train_state: tuple, y_train: torch.Tensor, test_state: tuple,
                 y_test: torch.Tensor, settings: StitchSettings = StitchSettings(), seed: int = 0) -> dict:
    """Train ``model.stitch`` alone on A's precomputed state; evaluate on the test state every epoch.

    Parameters
    ----------
    model : the stitched model (its stitching layer already at its start).
    train_state, test_state : tuples of A's fronts (:func:`front_features`), each ``(n, C, h, w)``.
    y_train, y_test : labels ``(n,)``, one per front.
    settings : the protocol; ``settings.epochs = 0`` evaluates the start only. With ``lr_decay`` the
        learning rate falls linearly from ``lr`` to 0 over all steps.

    Returns
    -------
    dict with ``history`` (one row per epoch, the start as epoch 0: ``epoch``, ``loss`` (mean
    training cross-entropy, nats), ``test_acc`` (fraction)), ``best_acc`` (best test accuracy over
    the rows, the authors' choice), ``final_acc`` (last row), ``matrix`` (final ``(C, C)`` map,
    rounded for grelu) and ``seconds``. grelu: the first ``p_only_fraction`` of the epochs leave D
    fixed; after every step P is clipped and Sinkhorn-projected and D clipped; evaluation rounds P
    with the Hungarian algorithm. With ``bn_adapt`` B's BatchNorm statistics are re-estimated on the
    training fronts before the start is evaluated.
    """
    from .config import autocast

    _check_settings(settings)
    _check_state("train_state", train_state, y_train)
    _check_state("test_state", test_state, y_test)
    layer = model.stitch
    dev = next(layer.parameters()).device
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    if layer.kind == "grelu":
        groups = [dict(params=[layer.p], weight_decay=0.0),
                  dict(params=[layer.d], weight_decay=settings.weight_decay)]
    else:
        groups = [dict(params=list(layer.parameters()), weight_decay=settings.weight_decay)]
    opt = (torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum)
           if settings.optimizer == "sgd" else torch.optim.Adam(groups, lr=settings.lr))
    p_only = round(settings.epochs * settings.p_only_fraction) if layer.kind == "grelu" else 0
    total = max(1, settings.epochs * -(-len(y_train) // settings.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / total if settings.lr_decay else 1.0)
    if settings.bn_adapt:
        model.train(True)
        idx_all = torch.randperm(len(y_train), generator=gen).split(settings.batch_size)[:_ADAPT_BATCHES]
        with torch.no_grad(), autocast(dev, settings.precision):
            for idx in idx_all:
                model.tail(tuple(t[idx].to(dev) for t in train_state))
    evaluate = lambda: _accuracy(model, test_state, y_test, precision=settings.precision)   # noqa: E731
    history = [dict(epoch=0, loss=float("nan"), test_acc=evaluate())]
    for epoch in range(settings.epochs):
        model.train(settings.bn_adapt)
        tot, seen = 0.0, 0
        for idx in torch.randperm(len(y_train), generator=gen).split(settings.batch_size):
            with autocast(dev, settings.precision):
                out = model.tail(tuple(t[idx].to(dev) for t in train_state))
                loss = F.cross_entropy(out.float(), y_train[idx].to(dev))
            tot, seen = tot + loss.item() * len(idx), seen + len(idx)
            if layer.kind == "grelu":
                # The vertex penalty: the Frobenius norm is largest (sqrt C) exactly at permutations.
                loss = loss - settings.alpha * layer.p.norm()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if epoch < p_only:
                layer.d.grad = None
            opt.step()
            sched.step()
            layer.project(settings.sinkhorn_rounds)
        history.append(dict(epoch=epoch + 1, loss=tot / seen, test_acc=evaluate()))
    model.eval()
    layer.hard = layer.kind == "grelu"
    final = layer.matrix().detach().cpu()
    layer.hard = False
    return dict(best_acc=max(h["test_acc"] for h in history), final_acc=history[-1]["test_acc"],
                history=history, matrix=final, seconds=time.perf_counter() - t0)


VARIANT_HELP = ("'full', 'rank<r>' (r in 1..C, e.g. 'rank1'), 'grelu', each optionally with the suffix "
                "'_random' (the paper's random start), and 'matching' (activation matching, not trained)")


def parse_variant(name: str, channels: int, init: str = "closed_form") -> tuple:
    """``(kind, rank, init)`` of a variant name (see :func:`stitch_experiment`); ``init`` is the
    start used when the name has no ``_random`` suffix. Raises ValueError naming the accepted names."""
    check_choice("init", init, INITS)
    base, _, suffix = str(name).partition("_")
    if suffix not in ("", "random") or (suffix and base == "matching"):
        raise ValueError(f"unknown variant {name!r}; accepted: {VARIANT_HELP}")
    start = "random" if suffix else init
    if base in ("full", "grelu"):
        return base, None, start
    if base == "matching":
        return "grelu", None, "matching"
    if base.startswith("rank") and base[4:].isdigit():
        r = int(base[4:])
        if not 1 <= r <= channels:
            raise ValueError(f"variant {name!r}: rank must be in 1..{channels} (the layer's channels); "
                             f"accepted: {VARIANT_HELP}")
        return "rank", r, start
    raise ValueError(f"unknown variant {name!r}; accepted: {VARIANT_HELP}")


def stitch_experiment(model_a, model_b, layer: str, variants, data, n_train: int | None = 10000,
                      n_test: int | None = 2000, settings: StitchSettings = StitchSettings(), seed: int = 0,
                      feature_dtype=torch.float16, device=None) -> dict:
    """Stitch A into B at ``layer`` with each of ``variants``, sharing A's precomputed front.

    Parameters
    ----------
    model_a, model_b : two models of the same architecture (A frozen; B copied per variant).
    layer : a hidden layer of both (``lib.models.hidden_layers``).
    variants : names among ``full``, ``rank<r>`` (``1 <= r <= C``), ``grelu`` (Birkhoff optimiser),
        each optionally suffixed ``_random`` (the paper's random start instead of ``settings.init``),
        and ``matching`` (activation matching, evaluated untrained). Closed-form starts: ``full`` at
        least squares with a bias, ``rank<r>`` at reduced-rank regression with a bias, ``grelu`` at
        activation matching (:func:`least_squares`, :func:`matching_from_moments`), all from one
        streaming pass over the training images (:func:`feature_moments`).
    data : a ``lib.data.Dataset``; ``n_train`` training and ``n_test`` test images are taken with
        ``lib.data.subset`` (None: all). The defaults are the ``cpu``-scale protocol.
    settings : the training protocol (:class:`StitchSettings`, defaults: ``cpu`` scale).
    feature_dtype : storage of A's fronts (float16 halves the memory of early conv layers).

    Returns
    -------
    dict with ``clean`` (A's and B's test accuracies, fractions), ``layer``, ``n_train``, ``n_test``,
    ``moments_seconds`` (A's fronts and the feature sums, one pass) and ``variants[name]``: ``best_acc``, ``final_acc``, ``penalty`` (eq. 4.3 with
    the best accuracy, a fraction), ``final_penalty``, ``history`` (per epoch, the start as epoch 0,
    each row with its ``penalty``), ``matrix``, ``seconds`` and for ``grelu``/``matching`` starts
    ``perm``/``scales``.
    """
    from .train import evaluate

    variants = [variants] if isinstance(variants, str) else list(variants)
    _check_settings(settings)
    C = channels_at(model_a, layer)
    parsed = {v: parse_variant(v, C, settings.init) for v in variants}
    device = get_device(device)
    x_tr, y_tr = subset(data.x_train, data.y_train, n_train)
    x_te, y_te = subset(data.x_test, data.y_test, n_test)
    clean = [evaluate(m, x_te, y_te, device, precision=settings.precision) for m in (model_a, model_b)]
    out = dict(clean=clean, layer=layer, n_train=len(y_tr), n_test=len(y_te), variants={})
    tm = time.perf_counter()
    moments, match = None, None
    if any(init != "random" for _, _, init in parsed.values()):
        moments, train_front = feature_moments(model_a, model_b, layer, x_tr, device=device, front_dtype=feature_dtype)
    else:
        train_front = front_features(model_a, layer, x_tr, dtype=feature_dtype, device=device)
    fronts = dict(train=train_front, test=front_features(model_a, layer, x_te, dtype=feature_dtype, device=device))
    out["moments_seconds"] = time.perf_counter() - tm
    for i, name in enumerate(variants):
        kind, rank, init = parsed[name]
        t0 = time.perf_counter()
        closed = init != "random"
        model = stitch(model_a, model_b, layer, kind, rank, generator=torch.Generator().manual_seed(seed + i),
                       bias=closed and kind != "grelu")
        row = {}
        if closed and kind == "grelu":
            if match is None:
                match = matching_from_moments(moments)
            perm, scales = match
            model.stitch.set_matrix(matching_matrix(perm, scales).to(device))
            row.update(perm=perm.cpu(), scales=scales.cpu())
        elif closed:
            W, b = least_squares(moments, rank)
            model.stitch.set_affine(W.float().to(device), b.float().to(device))
        s = dataclasses.replace(settings, epochs=0) if init == "matching" else settings
        row.update(train_stitch(model, fronts["train"], y_tr, fronts["test"], y_te, s, seed))
        row["seconds"] = time.perf_counter() - t0
        mean_clean = sum(clean) / 2
        for h in row["history"]:
            h["penalty"] = mean_clean - h["test_acc"]
        row["penalty"] = mean_clean - row["best_acc"]
        row["final_penalty"] = mean_clean - row["final_acc"]
        row.update(kind=kind, rank=rank, init=init)
        out["variants"][name] = row
    return out


def cached_experiment(model_a, model_b, layer: str, variants, data, n_train: int | None = 10000,
                      n_test: int | None = 2000, settings: StitchSettings = StitchSettings(), seed: int = 0,
                      feature_dtype=torch.float16) -> dict:
    """:func:`stitch_experiment`, memoised on disk (``lib.zoo.memo``) so a warm rebuild recomputes nothing.

    The memo key holds both models' weight fingerprints (``lib.zoo.fingerprint``), the data, the
    layer, the variants, the image counts, every stitching setting, the seed and the dtype of the
    stored fronts (float16 saves memory; exactness checks such as Theorem 4.2 want float32).
    """
    from .zoo import fingerprint, memo

    variants = [variants] if isinstance(variants, str) else list(variants)
    config = dict(a=fingerprint(model_a), b=fingerprint(model_b), data=data.identity, layer=layer,
                  variants=variants, n_train=n_train, n_test=n_test, settings=dataclasses.asdict(settings), seed=seed,
                  version=2)
    if feature_dtype != torch.float16:
        config["feature_dtype"] = str(feature_dtype)
    return memo("stitching", config, lambda: stitch_experiment(
        model_a, model_b, layer, variants, data, n_train, n_test, settings, seed, feature_dtype=feature_dtype))
