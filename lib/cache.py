"""Checked files and a memo for expensive results: what the zoo and the chapters cache on disk.

A checked file starts with a magic line and the sha256 of the rest (the payload), so that a damaged
file is detected and never used (:func:`write_checked`, :func:`read_checked`). :func:`memo` caches
any picklable result under a hash of its configuration; :func:`fingerprint` is the cache key of a
model's weights and :func:`tensor_digest` that of a tensor (images). JSON files that people
read (the zoo's ``meta.json``, results files, sweep markers) stay JSON and carry the sha256 of
their other fields in a ``"sha256"`` field instead (:func:`checked_json`,
:func:`read_checked_json`). Every file is written atomically with the user's umask
(:func:`lib.config.atomic_path`).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import warnings
from pathlib import Path

import torch

from .config import atomic_path, cache_dir

__all__ = [
    "CorruptedError",
    "write_checked",
    "read_checked",
    "JSON_CHECKSUM",
    "json_digest",
    "checked_json",
    "read_checked_json",
    "unreadable_error",
    "torch_bytes",
    "fingerprint",
    "tensor_digest",
    "MEMO_VERSION",
    "memo_key",
    "memo",
]

# Checked files (zoo checkpoints, memo entries) start with this line and the sha256 of the payload.
_MAGIC = b"symmetries-checked-v1\n"

#: The field of a checked JSON file holding the sha256 of its other fields (:func:`checked_json`).
JSON_CHECKSUM = "sha256"


class CorruptedError(ValueError):
    """A cache file whose content is damaged (as opposed to one that cannot be read at all)."""


def write_checked(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically, behind a header that holds its sha256.

    Parameters
    ----------
    path : pathlib.Path
        The file; its folder is created.
    payload : bytes
        The content, read back by :func:`read_checked`.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def read_checked(path: Path) -> bytes:
    """The payload of a file written by :func:`write_checked`.

    Parameters
    ----------
    path : pathlib.Path

    Returns
    -------
    bytes

    Raises
    ------
    CorruptedError
        If the header is missing or the payload does not match its checksum.
    FileNotFoundError
        (or ``NotADirectoryError``) if there is no such file; other ``OSError`` (permissions, I/O)
        propagate unchanged.
    """
    raw = path.read_bytes()
    head, digest = len(_MAGIC), len(_MAGIC) + 64
    if not raw.startswith(_MAGIC) or raw[digest : digest + 1] != b"\n":
        raise CorruptedError(
            f"{path} lacks its checksum header (damaged, or written by an older version)"
        )
    payload = raw[digest + 1 :]
    if hashlib.sha256(payload).hexdigest().encode() != raw[head:digest]:
        raise CorruptedError(f"{path} does not match its sha256 checksum")
    return payload


def json_digest(obj) -> str:
    """The sha256 of ``obj`` spelled as canonical JSON (sorted keys, no spaces).

    Parameters
    ----------
    obj : object
        JSON-serialisable, as read back by ``json.loads`` (tuples are lists, keys are strings).

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def checked_json(obj: dict) -> str:
    """``obj`` as indented JSON text with a :data:`JSON_CHECKSUM` field: the sha256 of the rest.

    The file stays readable JSON; :func:`read_checked_json` verifies it. The checksum covers the
    values as parsed, so only changes that alter a value (or a key) are damage.

    Parameters
    ----------
    obj : dict
        JSON-serialisable, without a :data:`JSON_CHECKSUM` key.

    Returns
    -------
    str
    """
    # Checksum what a reader will parse: through JSON, tuples become lists and keys strings.
    plain = json.loads(json.dumps(obj))
    if not isinstance(plain, dict) or JSON_CHECKSUM in plain:
        raise ValueError(f"obj must be a dict without a {JSON_CHECKSUM!r} key")
    return json.dumps({**plain, JSON_CHECKSUM: json_digest(plain)}, indent=1)


def read_checked_json(path: Path, legacy_fields=None) -> tuple[dict, bool]:
    """The object of a JSON file written with :func:`checked_json`, verified.

    Parameters
    ----------
    path : pathlib.Path
    legacy_fields : collection of str, optional
        The exact keys of the files of this kind written before they carried a checksum: such a file
        is returned unverified. Any other file without a checksum is damaged (a flipped bit in the
        checksum's own key must not pass for an old file).

    Returns
    -------
    obj : dict
        Without its :data:`JSON_CHECKSUM` field.
    verified : bool
        False for an old file without a checksum.

    Raises
    ------
    CorruptedError
        Naming ``path``: not UTF-8, not JSON, not an object, or not matching its checksum.
    FileNotFoundError
        (or another ``OSError``) if the file cannot be read; not corruption.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptedError(f"{path} is not UTF-8 text ({exc})") from exc
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise CorruptedError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise CorruptedError(f"{path} does not hold a JSON object")
    if JSON_CHECKSUM in obj:
        digest = obj.pop(JSON_CHECKSUM)
        if digest != json_digest(obj):
            raise CorruptedError(f"{path} does not match its sha256 checksum")
        return obj, True
    if legacy_fields is not None and set(obj) == set(legacy_fields):
        return obj, False
    raise CorruptedError(
        f"{path} lacks its {JSON_CHECKSUM!r} checksum field (damaged, or written "
        f"by an older version)"
    )


def unreadable_error(path: Path, exc: OSError) -> OSError:
    """The error to raise for a cache file that exists but cannot be read (permissions, I/O).

    Not corruption: the file may be fine for its owner, so nothing is deleted and the user decides.

    Parameters
    ----------
    path : pathlib.Path
        The file.
    exc : OSError
        The error reading it raised.

    Returns
    -------
    OSError
        With ``exc``'s ``errno`` and a message that names ``path`` and says what to do.
    """
    return OSError(
        exc.errno,
        f"cannot read the cache file {path} ({exc.strerror or exc}); it was left "
        f"untouched. Make it readable (a shared cache needs group read permission) "
        f"or use your own cache (root=, SYMMETRIES_ZOO or SYMMETRIES_CACHE)",
    )


def torch_bytes(obj) -> bytes:
    """``torch.save(obj)`` as bytes, identical for identical objects.

    Saved into a buffer, the archive is always named "archive" (saved to a file it takes the file's
    name, a random temporary one), so identical runs give identical bytes; writing the bytes
    ourselves also turns a full disk into an ``OSError`` that says so.

    Parameters
    ----------
    obj : object
        Anything ``torch.save`` accepts (a state_dict, a checkpoint dict).

    Returns
    -------
    bytes
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def fingerprint(model: torch.nn.Module) -> str:
    """A cache key that follows a model's weights and buffers themselves.

    A transformed copy of a zoo model can therefore never be mistaken for the original.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    str
        The first 20 hexadecimal digits of the sha256 of every state_dict entry's name and bytes.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def tensor_digest(t: torch.Tensor) -> str:
    """A cache key that follows a tensor's values, shape and dtype (for inputs such as images).

    Parameters
    ----------
    t : torch.Tensor
        Any shape and dtype, on any device (copied to the CPU to be hashed).

    Returns
    -------
    str
        The first 20 hexadecimal digits of the sha256 of the shape, the dtype and the bytes.
    """
    h = hashlib.sha256(f"{tuple(t.shape)} {t.dtype}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


#: The version of every memo key. Keys are derived from everything a result depends on (its settings
#: as ``dataclasses.asdict``, model and image digests), never curated; bump this when the code
#: changes what a result means, so that every cached result is computed again.
MEMO_VERSION = 3


def memo_key(config: dict) -> str:
    """The key of :func:`memo`'s entry for ``config``: a hash of it and :data:`MEMO_VERSION`.

    Parameters
    ----------
    config : dict
        JSON-serialisable (other values are spelled with ``str``): everything the result depends on.

    Returns
    -------
    str
        The first 20 hexadecimal digits of the sha256 of ``{"memo_version": MEMO_VERSION, "config":
        config}`` as JSON with sorted keys.
    """
    keyed = dict(memo_version=MEMO_VERSION, config=config)
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:20]


def memo(kind: str, config: dict, compute, root=None):
    """``compute()``, cached on disk under a hash of ``(kind, config)``.

    For experiment results that are expensive to recompute (stitching penalties, features): a warm
    rebuild of the book reads them back. Each entry carries the sha256 of its pickle: a damaged
    entry is reported (naming the file) and recomputed, never returned. An entry that exists but
    cannot be read (permissions) is an ``OSError`` and is left alone. A value that cannot be stored
    (read-only cache, full disk) is returned all the same, with one warning.

    Parameters
    ----------
    kind : str
        The kind of result, a subfolder of the memo (``"similarity"``, ``"stitching"``).
    config : dict
        Everything the result depends on (JSON-serialisable), e.g. model fingerprints and settings.
    compute : callable
        Called without arguments when there is no valid entry; its value must be picklable.
    root : path-like, optional
        The memo folder; default the cache's ``memo`` folder (:func:`lib.config.cache_dir`).

    Returns
    -------
    object
        The cached or computed value.
    """
    key = memo_key(config)
    path = (
        (Path(root) if root is not None else cache_dir("memo", create=False)) / kind / f"{key}.pkl"
    )
    try:
        return pickle.loads(read_checked(path))
    except (FileNotFoundError, NotADirectoryError):  # no entry (NotADirectory: nor a cache folder)
        pass
    except OSError as exc:
        raise unreadable_error(path, exc) from exc
    except Exception as exc:  # damaged, or pickled by code that has changed since
        msg = f"memo entry {path} is corrupted ({type(exc).__name__}: {exc}); recomputing it"
        warnings.warn(msg)
        print(msg)
    value = compute()
    try:
        write_checked(path, pickle.dumps(value))
    except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:
        warnings.warn(
            f"the result {kind}/{key} was computed but could not be cached ({exc}); "
            f"it is returned, and will be computed again next time"
        )
    return value
