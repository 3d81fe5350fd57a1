"""Runtime configuration: the compute device, the precision policy, cache locations, atomic writes.

Every other module asks this one which device to use, in which precision, and where to put files, so
that one environment variable (or one argument) changes the behaviour of the whole library. The
settings of the experiments (scales, recipes, model families) live in :mod:`lib.settings`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import numbers
import os
import secrets
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "check_choice",
    "check_seed",
    "available_memory",
    "get_device",
    "PRECISIONS",
    "autocast",
    "exact_mode",
    "cache_dir",
    "atomic_path",
    "file_sha256",
    "check_chunk_size",
]


def check_choice(param: str, value, accepted) -> None:
    """Raise ``ValueError`` naming ``param`` and the accepted values unless ``value`` is one of
    them.

    Parameters
    ----------
    param : str
        The parameter's name, as the caller spells it (``"scale"``, ``"optimizer"``).
    value : object
        The value given.
    accepted : iterable
        The accepted values (a dict's keys count).

    Raises
    ------
    ValueError
        ``unknown <param> <value>; accepted values: ...``.
    """
    accepted = list(accepted)
    if value not in accepted:
        raise ValueError(
            f"unknown {param} {value!r}; accepted values: {', '.join(map(repr, accepted))}"
        )


def check_seed(seed, param: str = "seed") -> int:
    """``seed`` as a Python int, or a ``ValueError`` naming ``param`` and what it accepts.

    Python and numpy integers are accepted; ``bool`` (an ``int`` to Python, but never meant as a
    seed), floats (``1.5`` would be rounded or refused deep inside torch) and strings are not.
    Callers check before they create or allocate anything, so that a bad seed leaves no folder.

    Parameters
    ----------
    seed : int or numpy integer
        In ``0 .. 2**63 - 1``.
    param : str
        The parameter's name, as the caller spells it.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        ``<param> must be an integer in 0 .. 2**63 - 1 (a Python or numpy integer); got ...``.
    """
    integer = isinstance(seed, numbers.Integral) and not isinstance(seed, bool)
    if not (integer and 0 <= int(seed) < 2**63):
        raise ValueError(
            f"{param} must be an integer in 0 .. 2**63 - 1 (a Python or numpy "
            f"integer, not bool, float or str); got {seed!r}"
        )
    return int(seed)


def check_chunk_size(value, param: str = "chunk_size") -> int:
    """Check a number of images per chunk (or per forward pass): a positive integer.

    Parameters
    ----------
    value : object
        The value given.
    param : str
        The parameter's name, as the caller spells it (``"chunk_size"``, ``"batch_size"``).

    Returns
    -------
    int
        ``value`` as a Python int.

    Raises
    ------
    ValueError
        ``<param> must be a positive integer (images per chunk); got <value>`` for a bool, a
        non-integer or a value below 1.
    """
    # bool is an int subclass, and True would silently mean one image per chunk.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{param} must be a positive integer (images per chunk); got {value!r}")
    return int(value)


def available_memory() -> int | None:
    """Bytes of main memory the system can still give a process (``MemAvailable``), if known.

    Builders compare their estimate with it before allocating, so that a huge width is an error
    rather than a process the kernel kills.

    Returns
    -------
    int or None
        ``MemAvailable`` of ``/proc/meminfo`` (Linux), else the physical memory, else ``None``.
    """
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The device every allocation of the library goes to.

    ``None`` picks CUDA when it is available and the CPU otherwise; this is the one place that
    decides. An explicit ``"cuda"`` on a machine without CUDA is an error, not a silent fallback.

    Parameters
    ----------
    device : str, torch.device or None
        ``"cpu"``, ``"cuda"`` (or ``"cuda:<i>"``), or ``None``: ``$SYMMETRIES_DEVICE`` if set, else
        CUDA when available, else the CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        For CUDA without CUDA, or a device type other than CPU and CUDA.
    """
    if device is None:
        # $SYMMETRIES_DEVICE lets one run (e.g. lib.devicecheck --device cpu) pin the default.
        device = os.environ.get("SYMMETRIES_DEVICE") or None
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' was requested but CUDA is not available; use device='cpu' or None"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"unsupported device {str(device)!r}; accepted values: 'cpu', 'cuda', None"
        )
    return device


#: The precision policy. "bulk" work (training, features for similarity, stitching-layer training)
#: may run in bfloat16 autocast: on CUDA, and on CPUs with AMX or AVX512-BF16, where it measured
#: 1.4-2.4x faster per training step for the Myrtle CNN and ResNet20 (it is slower for the
#: LayerNorm/depthwise ConvNeXt, whose recipe asks for "float32"). Everything whose result is
#: asserted to be exact runs under :func:`lib.config.exact_mode`: float32 with autocast and TF32
#: off.
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
    device : torch.device
        The device the work runs on.
    precision : str
        ``"bulk"`` (bfloat16 autocast on CUDA and on CPUs with fast bfloat16 units) or ``"float32"``
        (autocast off); see :data:`PRECISIONS`.

    Returns
    -------
    torch.autocast
        The context manager.
    """
    check_choice("precision", precision, PRECISIONS)
    device = torch.device(device)
    if precision == "bulk" and (device.type == "cuda" or _cpu_has_fast_bf16()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@contextlib.contextmanager
def exact_mode():
    """Run the block in exact float arithmetic on every device.

    Autocast is off (CPU and CUDA) and TF32 off for CUDA matmuls and convolutions; the previous
    settings are restored afterwards. Checks of exact identities (Prop. 3.4, Theorem 4.2, G_ReLU
    compensation) run inside it.

    Yields
    ------
    None
    """
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


def cache_dir(
    kind: str = "",
    root: str | os.PathLike | None = None,
    create: bool = True,
    *,
    advice: str | None = None,
) -> Path:
    """A per-user cache folder, created on demand.

    Parameters
    ----------
    kind : str
        A subfolder (``"zoo"``, ``"results"``, ``"data"``, ``"memo"``), or ``""`` for the root.
    root : path-like, optional
        The cache root; default ``$SYMMETRIES_CACHE``, else ``~/.cache/symmetries``.
    create : bool
        Create the folder; ``False`` only names it, so that readers work on a read-only cache.
    advice : str, optional
        What to do if it cannot be created (default: set ``SYMMETRIES_CACHE`` or pass ``root=``).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OSError
        If the folder cannot be created (read-only parent, full disk): the message names the folder
        and says what to do; the ``errno`` is kept.
    """
    if root is None:
        root = os.environ.get("SYMMETRIES_CACHE") or Path.home() / ".cache" / "symmetries"
    path = Path(root) / kind if kind else Path(root)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reworded = _write_error(exc, path, advice)
            if reworded is exc:
                raise
            raise reworded from exc
    return path


def _write_error(exc: OSError, path: Path, advice: str | None = None) -> OSError:
    """``exc`` reworded to say what went wrong while writing ``path``, and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no disk space left (or the disk quota is exhausted)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = "the folder is read-only or not writable by this user"
    else:
        return exc
    # OSError(errno, ...) builds the matching subclass (PermissionError for EACCES), keeping errno.
    advice = advice or "set SYMMETRIES_CACHE (or pass root=) to a writable folder with space"
    return OSError(
        exc.errno,
        f"cannot write {path}: {what} ({exc.strerror or exc}); free disk space or {advice}",
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, advice: str | None = None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers therefore see either the old file or the complete new one, never half of it. The file
    gets the permissions of any file the user creates (``0o666`` less the umask), so a shared cache
    stays readable by its group.

    Parameters
    ----------
    path : path-like
        The file to write.
    advice : str, optional
        What to do when the folder is read-only or full, e.g. ``"set SYMMETRIES_RESULTS to a
        writable folder"`` (default: set ``SYMMETRIES_CACHE`` or pass ``root=``).

    Yields
    ------
    pathlib.Path
        The temporary file to write to.

    Raises
    ------
    OSError
        A full disk or a read-only folder, with the original ``errno`` and a message that names
        ``path`` and says what to do.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with mode 0o666 lets the kernel apply the umask; mkstemp would force 0o600 and
        # hide the entries of a shared cache from its other users. The temporary name keeps the
        # final suffix so that writers which append one (np.savez) do not.
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
        reworded = _write_error(exc, path, advice)
        if reworded is exc:
            raise
        raise reworded from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 4 MiB chunks (data files are large).

    Parameters
    ----------
    path : path-like

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
