"""The CIFAR-10 data file, ``cifar10.npz``: read by content, and downloaded within a deadline.

:func:`read_npz` trusts none of the file's bytes. It reads the five arrays itself (not
``np.load``): each npy header must fit CIFAR-10's layout and account for exactly the bytes the
archive holds, which is checked before anything is allocated; every byte is then read, so that the
zip's CRC-32 of every array is checked; the class names must be 10 distinct names.
:func:`check_known` compares the copy this project ships with its published sha256
(:data:`KNOWN_FILES`). Every failure is one :class:`DamagedDataError` naming the file and saying
what to do (:func:`damaged`); ``lib.data`` turns any exception of :func:`read_npz` into it, so a
damaged file is never served, whatever the damage.

:func:`download_cifar10` writes the npz from torchvision's archive, fetched by :func:`fetch`, which
gives up at an overall deadline as well as after a silent wait.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format

from .config import atomic_path

__all__ = [
    "KEYS",
    "KNOWN_FILES",
    "DamagedDataError",
    "damaged",
    "check_known",
    "check_layout",
    "read_npz",
    "writable_folder",
    "fetch",
    "download_cifar10",
]

#: The arrays of a CIFAR-10 npz.
KEYS = ("x_train", "y_train", "x_test", "y_test", "classes")

#: The copy of CIFAR-10 this project ships (``shared/data/cifar10.npz``; its README gives the size
#: and the sha256): a file of that name and size must have that sha256, or it is damaged. A file of
#: any other size (the npz the download writes, a user's own copy) is checked by content only, so
#: that any good copy of CIFAR-10 loads.
KNOWN_FILES = {
    (
        "cifar10.npz",
        170_462_232,
    ): "b93ecaf99859869b3fa64698411136fd2ebb848ff0c44e200a29b31316eda162",
}


class DamagedDataError(ValueError):
    """A data file that cannot be used: not an npz archive, bytes that fail a checksum, or arrays
    that are not CIFAR-10's layout. The message names the file and says what to do."""


def damaged(path: str | Path, reason: str) -> DamagedDataError:
    """The error for a damaged data file.

    Parameters
    ----------
    path : path-like
        The file.
    reason : str
        What is wrong with it.

    Returns
    -------
    DamagedDataError
        ``the data file <path> is damaged (<reason>); replace it with a good copy: ...``.
    """
    return DamagedDataError(
        f"the data file {path} is damaged ({reason}); replace it with a good copy: delete it "
        f"(CIFAR-10 is then downloaded again into the cache) or set SYMMETRIES_DATA to a folder "
        f"holding a good {Path(path).name}"
    )


def check_known(path: str | Path, sha256: str) -> None:
    """Raise :class:`DamagedDataError` for the shipped copy (by name and size) with another sha256.

    Parameters
    ----------
    path : path-like
        The data file.
    sha256 : str
        Its sha256 (64 hexadecimal digits).
    """
    path = Path(path)
    known = KNOWN_FILES.get((path.name, path.stat().st_size))
    if known is not None and sha256 != known:
        raise damaged(
            path, f"its sha256 {sha256} is not that of the copy this project ships, {known}"
        )


def check_layout(key: str, shape: tuple, dtype: np.dtype) -> None:
    """Raise ``ValueError`` unless an npy header's ``shape`` and ``dtype`` fit CIFAR-10's ``key``.

    Parameters
    ----------
    key : str
        One of :data:`KEYS`: images ``x_*`` are uint8 ``(n >= 1, 32, 32, 3)``, labels ``y_*``
        integer ``(n,)``, ``classes`` unicode ``(10,)``.
    shape : tuple of int
    dtype : numpy.dtype
    """
    if key.startswith("x_"):
        ok = dtype == np.uint8 and len(shape) == 4 and shape[0] >= 1 and shape[1:] == (32, 32, 3)
        want = "uint8 images of shape (n >= 1, 32, 32, 3)"
    elif key.startswith("y_"):
        ok, want = dtype.kind in "iu" and len(shape) == 1, "integer labels of shape (n,)"
    else:
        ok = dtype.kind == "U" and shape == (10,)
        want = "10 class names (a unicode array of shape (10,))"
    if not ok:
        raise ValueError(f"{key} must hold {want}; its header says shape {shape}, dtype {dtype}")


def _read_member(z: zipfile.ZipFile, key: str) -> np.ndarray:
    """Array ``key`` of an npz archive: its header checked before anything is allocated, then every
    byte read, so that zipfile checks the member's CRC-32 at its end."""
    info = z.getinfo(f"{key}.npy")
    headers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    with z.open(info) as f:
        version = npy_format.read_magic(f)
        if version not in headers:
            raise ValueError(f"{key}.npy has npy format version {version}; expected 1.0 or 2.0")
        shape, fortran, dtype = headers[version](f)
        check_layout(key, shape, dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if f.tell() + nbytes != info.file_size:
            raise ValueError(
                f"{key}.npy holds {info.file_size - f.tell()} bytes of data, but its "
                f"header says shape {shape} of {dtype} ({nbytes} bytes)"
            )
        out = np.empty(nbytes, np.uint8)
        view, pos = memoryview(out), 0
        while pos < nbytes:
            chunk = f.read(min(1 << 22, nbytes - pos))
            if not chunk:
                raise EOFError(f"{key}.npy ends after {pos} of {nbytes} bytes")
            view[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        if f.read(1):
            raise ValueError(f"{key}.npy holds more bytes than its header says")
    arr = out.view(dtype).reshape(shape, order="F" if fortran else "C")
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def read_npz(path: str | Path) -> dict:
    """The arrays of a CIFAR-10 npz, each checked as the module docstring says.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    dict
        ``{key: numpy.ndarray}`` for every key of :data:`KEYS`; labels are not yet range-checked
        (:class:`lib.data.Dataset` does that).

    Raises
    ------
    Exception
        Any damage raises: ``ValueError`` for a missing key or a wrong layout,
        ``zipfile.BadZipFile`` for a bad CRC-32, and whatever zipfile and numpy raise on damage
        (``RuntimeError``, ``NotImplementedError``, ``tokenize.TokenError``, ``OSError``, ...).
    """
    with zipfile.ZipFile(path) as z:
        missing = [k for k in KEYS if f"{k}.npy" not in z.namelist()]
        if missing:
            raise ValueError(f"it lacks the keys {missing}")
        arrays = {k: _read_member(z, k) for k in KEYS}
    names = [str(c) for c in arrays["classes"]]
    if len(set(names)) != 10 or not all(names):
        raise ValueError(f"classes must be 10 distinct non-empty names; got {names}")
    return arrays


def writable_folder(folder: Path, filename: str) -> Path:
    """``folder``, created, once a file could be written in it; else a ``PermissionError``.

    Parameters
    ----------
    folder : pathlib.Path
        Where ``filename`` is to be downloaded (the cache's ``data`` folder).
    filename : str
        The data file that was not found, named in the error.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    PermissionError
        The folder is read-only (or cannot be made): it names the folder and says what to do.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PermissionError(
            f"CIFAR-10 not found (no {filename} in data_dir, in $SYMMETRIES_DATA or in {folder}), "
            f"and it cannot be downloaded into {folder}: that folder is not writable "
            f"({exc.strerror or exc}). Set SYMMETRIES_DATA to a folder holding {filename}, or "
            f"SYMMETRIES_CACHE to a writable folder"
        ) from exc
    return folder


def fetch(url: str, target: Path, timeout: float, deadline: float) -> None:
    """Download ``url`` into ``target`` (atomically), giving up when it takes too long.

    Parameters
    ----------
    url : str
    target : pathlib.Path
    timeout : float
        Seconds to wait for any answer (to connect, or for the next bytes).
    deadline : float
        Seconds the whole download may take; checked between reads, so a server that trickles bytes
        gives up too (at most ``timeout`` later).

    Raises
    ------
    TimeoutError
        ``timed out: ...`` past the deadline; ``OSError`` (urllib's) for other failures.
    """
    end = time.monotonic() + deadline
    request = urllib.request.Request(url, headers={"User-Agent": "symmetries-lib"})
    with (
        atomic_path(target) as tmp,
        open(tmp, "wb") as out,
        urllib.request.urlopen(request, timeout=timeout) as response,
    ):
        while True:
            if time.monotonic() > end:
                raise TimeoutError(f"timed out: {url} was not downloaded within {deadline:g} s")
            # read1 returns what one read of the socket gives, so the deadline is checked often.
            chunk = response.read1(1 << 16)
            if not chunk:
                return
            out.write(chunk)


def download_cifar10(target: Path, timeout: float, deadline: float) -> None:
    """Write CIFAR-10 as an npz of :data:`KEYS` into ``target``, from torchvision's archive.

    The original CIFAR-10 archive is fetched (:func:`fetch`: torchvision's own download waits per
    read, with no overall deadline) into ``target.parent / "torchvision"``, checked against
    torchvision's md5, unpacked, read by torchvision and converted once.

    Parameters
    ----------
    target : pathlib.Path
        The npz to write (atomically).
    timeout, deadline : float
        As for :func:`fetch`.

    Raises
    ------
    FileNotFoundError
        "CIFAR-10 not found ..." when the download fails (offline, past the deadline, a bad md5).
    """
    import torchvision
    from torchvision.datasets.utils import check_integrity, extract_archive

    raw = target.parent / "torchvision"
    try:
        cifar = torchvision.datasets.CIFAR10
        archive = raw / cifar.filename
        if not check_integrity(str(archive), cifar.tgz_md5):
            fetch(cifar.url, archive, timeout, deadline)
            if not check_integrity(str(archive), cifar.tgz_md5):
                raise ValueError(f"{archive} does not match torchvision's md5 for CIFAR-10")
        extract_archive(str(archive), str(raw))
        train = cifar(raw, train=True, download=False)
        test = cifar(raw, train=False, download=False)
    except Exception as exc:  # offline: urllib raises several kinds of errors
        raise FileNotFoundError(
            f"CIFAR-10 not found: looked for {target.name} in data_dir, in $SYMMETRIES_DATA and in "
            f"{target.parent}, and the download failed ({exc}). Set SYMMETRIES_DATA to a directory "
            f"holding {target.name} (keys {', '.join(KEYS)})."
        ) from exc
    with atomic_path(target) as tmp:
        np.savez_compressed(
            tmp,
            x_train=train.data,
            y_train=np.array(train.targets, dtype=np.int64),
            x_test=test.data,
            y_test=np.array(test.targets, dtype=np.int64),
            classes=np.array(train.classes),
        )
