"""Data files are checked by content (issue 26, item 5): whatever happens to the bytes of a
``cifar10.npz`` (bit flips in the arrays, the npy headers or the zip directory; compressed or not),
``load_cifar10`` either serves exactly the arrays that were written or raises the one "damaged data
file" error naming the file. Also: the known digest of the shipped copy, an unreadable file, a
read-only data folder and a download that trickles bytes past its deadline."""

import errno
import os
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lib import data, datafile
from lib.config import file_sha256
from lib.datafile import DamagedDataError

N_TRAIN, N_TEST = 6, 4


def arrays() -> dict:
    g = np.random.default_rng(0)
    return dict(
        x_train=g.integers(0, 256, (N_TRAIN, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(N_TRAIN) % 10,
        x_test=g.integers(0, 256, (N_TEST, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(N_TEST) * 2,
        classes=np.array(
            [
                "airplane",
                "automobile",
                "bird",
                "cat",
                "deer",
                "dog",
                "frog",
                "horse",
                "ship",
                "truck",
            ]
        ),
    )


def write_npz(folder: Path, compressed: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(folder / data.FILENAME, **arrays())
    return folder / data.FILENAME


def load(path: Path):
    """``load_cifar10`` of the file as it is now (the in-memory cache is keyed by path only)."""
    data._load.cache_clear()
    return data.load_cifar10(path.parent)


def assert_intact_or_refused(path: Path, good: dict, causes: dict) -> None:
    """The file loads with exactly the written arrays, or raises the damaged-data error."""
    try:
        d = load(path)
    except DamagedDataError as exc:
        assert f"the data file {path.resolve()} is damaged (" in str(exc)
        assert "SYMMETRIES_DATA" in str(exc)
        cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else "checksum"
        causes[cause] = causes.get(cause, 0) + 1
        return
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(d, key).numpy(), good[key]), key
    assert d.classes == list(good["classes"])
    causes["served intact"] = causes.get("served intact", 0) + 1


def flip(raw: bytes, offset: int, bit: int) -> bytes:
    out = bytearray(raw)
    out[offset] ^= 1 << bit
    return bytes(out)


def regions(path: Path) -> dict:
    """Byte ranges of the file: the zip's central directory (to the end) and the start of each
    member's data."""
    with zipfile.ZipFile(path) as z:
        starts = []
        raw = path.read_bytes()
        for info in z.infolist():
            name_len = int.from_bytes(
                raw[info.header_offset + 26 : info.header_offset + 28], "little"
            )
            extra_len = int.from_bytes(
                raw[info.header_offset + 28 : info.header_offset + 30], "little"
            )
            starts.append(info.header_offset + 30 + name_len + extra_len)
        return dict(
            directory=range(z.start_dir, len(raw)),
            npy_headers=[o for s in starts for o in range(s, s + 128)],
        )


@pytest.mark.parametrize("compressed", [False, True], ids=["savez", "savez_compressed"])
def test_fuzzed_data_file_is_served_intact_or_refused(tmp_path, monkeypatch, compressed):
    monkeypatch.delenv("SYMMETRIES_DATA", raising=False)
    monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path / "cache"))
    path = write_npz(tmp_path / "data", compressed)
    good, raw = arrays(), path.read_bytes()
    assert_intact_or_refused(path, good, {})  # the undamaged file loads
    rng = np.random.default_rng(26)
    where = regions(path)
    # Every byte of the zip directory and of the npy headers (uncompressed: the headers' own bytes;
    # compressed: the start of each deflate stream), one random bit each, and 300 flips anywhere.
    offsets = list(where["directory"]) + where["npy_headers"] + list(rng.integers(0, len(raw), 300))
    causes: dict = {}
    for offset in offsets:
        path.write_bytes(flip(raw, int(offset), int(rng.integers(0, 8))))
        assert_intact_or_refused(path, good, causes)
    refused = sum(n for cause, n in causes.items() if cause != "served intact")
    assert refused > len(offsets) // 2, causes
    # The escapes of the issue ("encrypted", compression method, npy headers) are among the causes
    # now reported as damage, beside CRC and layout failures.
    assert {
        "BadZipFile",
        "ValueError",
        "RuntimeError",
        "NotImplementedError",
        "TokenError",
        "OSError",
    } <= set(causes)


@pytest.mark.parametrize(
    "shape, message",
    [
        # np.load served x_train as (6, 32, 22, 3) from such a file, without an error.
        (
            b"(6, 32, 22, 3)",
            "x_train must hold uint8 images of shape \\(n >= 1, 32, 32, 3\\); its header says "
            "shape "
            "\\(6, 32, 22, 3\\)",
        ),
        (
            b"(4, 32, 32, 3)",
            "x_train.npy holds 18432 bytes of data, but its header says shape \\(4, 32, 32, 3\\)",
        ),
    ],
)
def test_npy_header_flip_to_another_shape_is_refused(tmp_path, monkeypatch, shape, message):
    monkeypatch.delenv("SYMMETRIES_DATA", raising=False)
    path = write_npz(tmp_path, compressed=False)
    raw = path.read_bytes()
    at = raw.index(b"(6, 32, 32, 3)")  # x_train's header comes first
    path.write_bytes(raw[:at] + shape + raw[at + len(shape) :])
    with pytest.raises(DamagedDataError, match=f"{path.resolve()} is damaged .*{message}"):
        load(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(x_train=np.zeros((6, 32, 32), np.uint8)),
            "x_train must hold uint8 images of shape \\(n >= 1, 32, 32, 3\\)",
        ),
        (dict(x_test=np.zeros((0, 32, 32, 3), np.uint8)), "x_test must hold uint8 images"),
        (dict(y_test=np.arange(4.0)), "y_test must hold integer labels"),
        (dict(y_train=np.arange(6) + 5), "y_train must hold labels 0..9"),
        (dict(classes=np.array(["a"] * 10)), "classes must be 10 distinct non-empty names"),
        (dict(classes=np.arange(10)), "classes must hold 10 class names"),
    ],
)
def test_wrong_content_is_the_damaged_data_error(tmp_path, change, message):
    np.savez(tmp_path / data.FILENAME, **{**arrays(), **change})
    with pytest.raises(
        DamagedDataError, match=f"data file {tmp_path.resolve()}/cifar10.npz is damaged .*{message}"
    ):
        load(tmp_path / data.FILENAME)


def test_the_shipped_copy_is_checked_by_its_digest_and_other_copies_by_content(
    tmp_path, monkeypatch
):
    path = write_npz(tmp_path, compressed=True)
    size = path.stat().st_size
    # A file with the shipped copy's name and size must have its sha256: a wrong one is damage...
    monkeypatch.setattr(datafile, "KNOWN_FILES", {(data.FILENAME, size): "0" * 64})
    with pytest.raises(
        DamagedDataError, match="sha256 .* is not that of the copy this project ships, 0000"
    ):
        load(path)
    # ...the right one loads, and a copy of another size (a user's own) is checked by content only.
    monkeypatch.setattr(datafile, "KNOWN_FILES", {(data.FILENAME, size): file_sha256(path)})
    assert load(path).x_train.shape == (N_TRAIN, 32, 32, 3)
    monkeypatch.setattr(datafile, "KNOWN_FILES", {(data.FILENAME, size + 1): "0" * 64})
    assert load(path).y_test.tolist() == [0, 2, 4, 6]
    shipped = Path("/work/shared/data/README.md")
    if shipped.exists():  # the digest is the README's
        monkeypatch.undo()
        (digest,) = datafile.KNOWN_FILES.values()
        assert (
            f"sha256 `{digest}`" in shipped.read_text()
            and "170,462,232 bytes" in shipped.read_text()
        )


def test_unreadable_data_file_is_an_error_naming_it_and_kept(tmp_path, monkeypatch):
    path = write_npz(tmp_path, compressed=True)
    before = path.read_bytes()
    real_open = open

    def fake_open(file, *args, **kwargs):
        if Path(file) == path.resolve():
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("lib.config.open", fake_open, raising=False)
    with pytest.raises(
        PermissionError, match=f"cannot read the data file {path.resolve()} .*left untouched"
    ):
        load(path)
    assert path.read_bytes() == before


def test_read_only_data_folder_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMMETRIES_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        datafile, "fetch", lambda *a: pytest.fail("downloaded into a read-only folder")
    )
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if tmp_path / "cache" in (self, *self.parents):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    folder = tmp_path / "cache" / "data"
    with pytest.raises(
        PermissionError,
        match=f"cannot be downloaded into {folder}: that folder is not writable "
        f"\\(Read-only file system\\).*SYMMETRIES_DATA",
    ):
        data.load_cifar10()


class TricklingServer:
    """An HTTP server that answers HEAD at once and sends a GET's body a byte per 50 ms for 4 s."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.stop = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn):
        with conn:
            request = conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\n"
            )
            end = time.monotonic() + 4.0
            while (
                not request.startswith(b"HEAD")
                and time.monotonic() < end
                and not self.stop.is_set()
            ):
                conn.sendall(b"x")
                time.sleep(0.05)

    def close(self):
        self.stop.set()
        self.sock.close()


def test_download_deadline_is_overall_not_per_read(tmp_path, monkeypatch):
    import torchvision

    server = TricklingServer()
    try:
        port = server.sock.getsockname()[1]
        monkeypatch.setattr(
            torchvision.datasets.CIFAR10, "url", f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
        )
        monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT", 0.5)  # each read is answered within 50 ms
        monkeypatch.setattr(data, "DOWNLOAD_DEADLINE", 1.0, raising=False)
        monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("SYMMETRIES_DATA", raising=False)
        t0 = time.perf_counter()
        with pytest.raises(
            FileNotFoundError,
            match="CIFAR-10 not found.*timed out.*within 1 s.*Set SYMMETRIES_DATA",
        ):
            data.load_cifar10(tmp_path / "none")
        assert time.perf_counter() - t0 < 3.0
        assert not [
            p for p in (tmp_path / "cache").rglob("*") if p.is_file()
        ]  # nothing half-written left
    finally:
        server.close()
