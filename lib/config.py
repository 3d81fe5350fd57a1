"""Runtime configuration: the compute device, the three scales, cache locations, atomic writes.

Every other module asks this one which device to use and where to put files, so that one
environment variable (or one argument) changes the behaviour of the whole library.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import os
import secrets
from pathlib import Path

import torch

__all__ = [
    "get_device", "Scale", "SCALES", "DEFAULT_SCALE", "resolve_scale", "scale_settings", "cache_dir", "atomic_path",
    "check_choice", "file_sha256",
    "PRECISIONS", "autocast", "exact_mode", "BUDGET_SECONDS",
]


def check_choice(param: str, value, accepted) -> None:
    """Raise ``ValueError`` naming ``param`` and the accepted values unless ``value`` is one of them."""
    accepted = list(accepted)
    if value not in accepted:
        raise ValueError(f"unknown {param} {value!r}; accepted values: {', '.join(map(repr, accepted))}")


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device every allocation of the library goes to.

    ``None`` picks CUDA when it is available and the CPU otherwise; this is the one place that
    decides. An explicit ``"cuda"`` on a machine without CUDA is an error, not a silent fallback.
    """
    if device is None:
        # $SYMMETRIES_DEVICE lets one run (e.g. lib.devicecheck --device cpu) pin the default.
        device = os.environ.get("SYMMETRIES_DEVICE") or None
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use device='cpu' or None")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(device)!r}; accepted values: 'cpu', 'cuda', None")
    return device


# The precision policy. "bulk" work (training, features for similarity, stitching-layer training)
# may run in bfloat16 autocast: on CUDA, and on CPUs with AMX or AVX512-BF16, where it measured
# 1.4-2.4x faster per training step for the Myrtle CNN and ResNet20 (it is slower for the
# LayerNorm/depthwise ConvNeXt, whose recipe asks for "float32"). Everything whose result is
# asserted to be exact runs under ``exact_mode``: float32 with autocast and TF32 off.
PRECISIONS = ("bulk", "float32")


@functools.lru_cache(maxsize=None)
def _cpu_has_fast_bf16() -> bool:
    # Read once: autocast() asks on every training step and evaluation batch.
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def autocast(device: torch.device, precision: str = "bulk"):
    """The autocast context for work of kind ``precision`` on ``device``.

    Parameters
    ----------
    device : the device the work runs on.
    precision : ``"bulk"`` (bfloat16 autocast on CUDA and on CPUs with fast bfloat16 units) or
        ``"float32"`` (autocast off).

    Returns
    -------
    A ``torch.autocast`` context manager.
    """
    check_choice("precision", precision, PRECISIONS)
    device = torch.device(device)
    if precision == "bulk" and (device.type == "cuda" or _cpu_has_fast_bf16()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@contextlib.contextmanager
def exact_mode():
    """Run the block in exact float arithmetic on every device: autocast off (CPU and CUDA) and
    TF32 off for CUDA matmuls and convolutions; the previous settings are restored afterwards.
    Checks of exact identities (Prop. 3.4, Theorem 4.2, G_ReLU compensation) run inside it."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast("cpu", enabled=False):
            if torch.cuda.is_available():
                with torch.autocast("cuda", enabled=False):
                    yield
            else:
                yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclasses.dataclass(frozen=True)
class Scale:
    """How big every experiment is at one scale. Chapters read their defaults from here.

    ``smoke`` runs each chapter in well under a minute on 2 CPU cores (tests); ``cpu`` is the default
    of the book build (the whole book from empty caches within 2 h on 2 cores); ``gpu`` is full width
    with a fast recipe, for one GPU; ``paper`` is the paper's published protocol (a GPU, hours).
    """

    name: str
    # -- the model zoo --------------------------------------------------------------------------
    recipe: str                    # training recipe name in lib.train.RECIPES
    epochs: int                    # training epochs per model
    n_train: int | None            # training images (None: all 50,000)
    n_test: int | None             # test images for accuracies (None: all 10,000)
    myrtle_width: float            # width multiplier of the Myrtle CNN (1.0: c = 64)
    resnet_width: float            # width multiplier of ResNet20 (1.0: 16/32/64 channels)
    n_pairs: int                   # distinct-seed model pairs per experiment
    # -- similarity (Section 5) -------------------------------------------------------------------
    n_feature_images: int          # test images whose features are compared
    # -- stitching (Section 4) and the rotation penalty (Section 3.3) -----------------------------
    stitch_epochs: int             # epochs of stitching-layer training (paper: 20)
    stitch_images: int             # training images for the stitching layer
    eval_images: int | None        # test images for stitched / fine-tuned accuracies (None: all)
    rotation_trials: int           # random transforms per layer (paper: 10)
    finetune_epochs: int           # fine-tuning epochs after the transform (paper: 50)
    finetune_images: int | None    # training images for the fine-tuning (None: all 50,000)
    slopes: tuple                  # LeakyReLU negative slopes of the appendix D.3 sweep
    slope_width: float             # ResNet20 width used in the slope sweep
    slope_epochs: int              # training epochs of each slope-sweep model
    slope_pairs: int               # model pairs per slope
    convnext_width: float          # width multiplier of the ConvNeXt-style network of Section 6
    dissection_width: float        # width of Section 6's two ResNet20s (with and without residual ReLU)
    # -- network dissection (Section 6) ---------------------------------------------------------
    dissection_images: int         # images of the concept dataset
    n_rotations: int               # random rotations per alpha
    alphas: tuple                  # geodesic positions between I and Q


SCALES: dict[str, Scale] = {
    "smoke": Scale(
        name="smoke", recipe="fast", epochs=1, n_train=512, n_test=512,
        myrtle_width=0.125, resnet_width=0.25, n_pairs=1,
        n_feature_images=128,
        stitch_epochs=1, stitch_images=256, eval_images=512, rotation_trials=1, finetune_epochs=1, finetune_images=256,
        slopes=(0.0, 1.0), slope_width=0.25, slope_epochs=1, slope_pairs=1, convnext_width=0.125,
        dissection_width=0.25,
        dissection_images=64, n_rotations=2, alphas=(0.0, 0.5, 1.0),
    ),
    "cpu": Scale(
        name="cpu", recipe="fast", epochs=8, n_train=None, n_test=None,
        myrtle_width=0.25, resnet_width=0.5, n_pairs=1,
        n_feature_images=2000,
        stitch_epochs=4, stitch_images=5000, eval_images=2000, rotation_trials=3, finetune_epochs=3, finetune_images=5000,
        slopes=(0.0, 0.9, 1.0), slope_width=0.25, slope_epochs=8, slope_pairs=1, convnext_width=0.25,
        dissection_width=0.25,
        dissection_images=1000, n_rotations=5, alphas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    ),
    # Full width with the fast recipe on one GPU. Not yet run on a GPU: its cost is a projection from
    # throughputs measured on an H200 (see the README's "On a GPU").
    "gpu": Scale(
        name="gpu", recipe="fast", epochs=16, n_train=None, n_test=None,
        myrtle_width=1.0, resnet_width=1.0, n_pairs=4,
        n_feature_images=10000,
        stitch_epochs=5, stitch_images=50000, eval_images=None, rotation_trials=5, finetune_epochs=5,
        finetune_images=None,
        slopes=(0.0, 0.01, 0.1, 0.5, 0.9, 1.0), slope_width=1.0, slope_epochs=8, slope_pairs=3, convnext_width=1.0,
        dissection_width=1.0,
        dissection_images=10000, n_rotations=10, alphas=tuple(i / 10 for i in range(11)),
    ),
    "paper": Scale(
        name="paper", recipe="paper", epochs=50, n_train=None, n_test=None,
        myrtle_width=1.0, resnet_width=1.0, n_pairs=32,
        n_feature_images=10000,
        stitch_epochs=20, stitch_images=50000, eval_images=None, rotation_trials=10, finetune_epochs=50, finetune_images=None,
        slopes=(0.0, 0.01, 0.1, 0.5, 0.9, 1.0), slope_width=1.0, slope_epochs=50, slope_pairs=3, convnext_width=1.0,
        dissection_width=1.0,
        dissection_images=10000, n_rotations=10, alphas=tuple(i / 10 for i in range(11)),
    ),
}


# Wall-clock budget of a whole book build from empty caches, in seconds, where one is set (the
# design card: the `cpu` book within 2 h on 2 CPU cores). tests/test_budget.py guards it.
BUDGET_SECONDS = {"cpu": 2 * 3600}

# The scale a chapter runs at when neither its parameters nor $SYMMETRIES_SCALE name one.
DEFAULT_SCALE = "cpu"


def resolve_scale(scale: str | None = None) -> str:
    """The name of the scale to run at: ``scale`` if given, else ``$SYMMETRIES_SCALE``, else ``"cpu"``.

    Every chapter's parameters cell says ``scale = None`` and calls this right after it, so that one
    environment variable sets the scale of the whole book while papermill's ``-p scale smoke`` (which
    injects a literal after the parameters cell) still wins for one chapter.

    Parameters
    ----------
    scale : str or None
        A name in :data:`SCALES`, or ``None`` to read ``$SYMMETRIES_SCALE`` (unset or empty: ``"cpu"``).

    Returns
    -------
    str
        A key of :data:`SCALES`.

    Raises
    ------
    ValueError
        If the chosen name is not a scale; the message names where it came from and lists the scales.
    """
    if scale is not None:
        check_choice("scale", scale, SCALES)
        return scale
    env = os.environ.get("SYMMETRIES_SCALE", "").strip()
    if not env:
        return DEFAULT_SCALE
    # Named as the variable, so that a typo in the environment is not mistaken for one in a chapter.
    check_choice("scale from $SYMMETRIES_SCALE", env, SCALES)
    return env


def scale_settings(scale: str) -> Scale:
    """The :class:`Scale` called ``scale`` (``"smoke"``, ``"cpu"`` or ``"paper"``)."""
    check_choice("scale", scale, SCALES)
    return SCALES[scale]


def cache_dir(kind: str = "", root: str | os.PathLike | None = None, create: bool = True) -> Path:
    """A per-user cache folder, created on demand.

    The root is ``root`` if given, else ``$SYMMETRIES_CACHE``, else ``~/.cache/symmetries``.
    ``kind`` names a subfolder (``"zoo"``, ``"results"``, ``"data"``, ...). ``create=False`` only
    names the folder, so that readers work on a read-only cache.
    """
    if root is None:
        root = os.environ.get("SYMMETRIES_CACHE") or Path.home() / ".cache" / "symmetries"
    path = Path(root) / kind if kind else Path(root)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _write_error(exc: OSError, path: Path) -> OSError:
    """``exc`` reworded to say what went wrong while writing ``path`` and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no disk space left (or the disk quota is exhausted)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = "the folder is read-only or not writable by this user"
    else:
        return exc
    # OSError(errno, ...) builds the matching subclass (PermissionError for EACCES), keeping errno.
    return OSError(exc.errno, f"cannot write {path}: {what} ({exc.strerror or exc}); free disk space or "
                              f"set SYMMETRIES_CACHE (or pass root=) to a writable folder with space")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers therefore see either the old file or the complete new one, never half of it. The file
    gets the permissions of any file the user creates (``0o666`` less the umask), so a shared cache
    stays readable by its group. A full disk or a read-only folder raises an ``OSError`` (with the
    original ``errno``) whose message names ``path`` and says so.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with mode 0o666 lets the kernel apply the umask; mkstemp would force 0o600 and hide
        # the entries of a shared cache from its other users. The temporary name keeps the final
        # suffix so that writers which append one (np.savez) do not.
        while tmp is None:
            candidate = path.parent / f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}"
            try:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                tmp = candidate
            except FileExistsError:
                continue
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        reworded = _write_error(exc, path)
        if reworded is exc:
            raise
        raise reworded from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (data files are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
