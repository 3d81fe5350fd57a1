"""CIFAR-10 as tensors, on-device batch augmentation, and a tiny synthetic dataset for unit tests.

Images are kept as ``uint8`` tensors in HWC layout ``(n, 32, 32, 3)`` exactly as stored;
``to_input`` turns them into normalised float ``(n, 3, 32, 32)`` tensors (channels_last memory) on
the training device. Augmentation (random flips and translations) acts on whole batches on that
device, so the training loop never touches PIL or per-image Python code.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
from pathlib import Path

import torch

from .config import cache_dir, check_choice, file_sha256, get_device
from .datafile import check_known, damaged, download_cifar10, read_npz, writable_folder
from .models import check_image_size
from .settings import SUBSET_SEED

__all__ = [
    "Dataset",
    "check_training_data",
    "load_cifar10",
    "load_data",
    "synthetic_dataset",
    "subset",
    "to_input",
    "augment",
    "batches",
    "MEAN",
    "STD",
    "FILENAME",
    "DATASETS",
    "DOWNLOAD_TIMEOUT",
    "DOWNLOAD_DEADLINE",
]

#: The file :func:`load_cifar10` reads (keys x_train, y_train, x_test, y_test, classes).
FILENAME = "cifar10.npz"
#: The datasets :func:`load_data` knows, CIFAR-10 and a small synthetic stand-in for tests.
DATASETS = ("cifar10", "synthetic")
#: Per-channel (R, G, B) mean of the normalisation on the 0-255 scale, as the authors' code
#: (implementation notes).
MEAN = (125.307, 122.961, 113.8575)
#: Per-channel (R, G, B) standard deviation of the normalisation on the 0-255 scale, as
#: :data:`MEAN`.
STD = (51.5865, 50.847, 51.255)


@dataclasses.dataclass
class Dataset:
    """Train and test splits as tensors.

    ``x_train``/``x_test``: uint8 ``(n, H, W, 3)``; ``y_train``/``y_test``: int64 ``(n,)``.
    ``identity`` names the data for cache keys (e.g. ``"cifar10:<sha256 prefix>"``). Any other
    layout (float images, channels first, grayscale, labels outside ``0 .. len(classes) - 1``, a
    label count that differs from the image count) is a ``ValueError`` saying what was expected;
    numpy arrays are converted to tensors.

    Attributes
    ----------
    x_train, x_test : torch.Tensor
        uint8 images ``(n, H, W, 3)``.
    y_train, y_test : torch.Tensor
        int64 labels ``(n,)`` in ``0 .. len(classes) - 1``.
    classes : list of str
    identity : str
        Names the data in cache keys (:func:`lib.zoo.model_key`).
    source : str
        The file the data came from (``""``: built in memory).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list
    identity: str
    source: str = ""

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = (torch.as_tensor(getattr(self, f"{k}_{split}")) for k in "xy")
            _check_images(x, f"x_{split}")
            _check_labels(y, f"y_{split}", len(x), len(self.classes))
            setattr(self, f"x_{split}", x)
            setattr(self, f"y_{split}", y)

    def describe(self) -> str:
        """One line naming the data, where they came from and the split sizes (chapter output)."""
        return (
            f"{self.identity} from {self.source or 'memory'}: {len(self.x_train)} train / "
            f"{len(self.x_test)} test images"
        )


def check_training_data(data: Dataset, arch: dict | None = None) -> None:
    """Raise ``ValueError`` for data that training could only fail on, before anything is allocated.

    Parameters
    ----------
    data : Dataset
        Must hold at least one training and one test image.
    arch : dict, optional
        A model's architecture config (``model.arch``): its pooling and strided layers must take
        images of ``data``'s size (:func:`lib.models.check_image_size`).

    Raises
    ------
    ValueError
        Naming the parameter and what it accepts.
    """
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a lib.data.Dataset; got {type(data).__name__}")
    for split, word in (("train", "training"), ("test", "test")):
        x = getattr(data, f"x_{split}")
        if len(x) == 0:
            raise ValueError(
                f"data must hold at least 1 {word} image; {data.identity} has none "
                f"(x_{split} of shape {tuple(x.shape)})"
            )
    if arch is not None:
        check_image_size(arch, *data.x_train.shape[1:3])


def _check_images(x: torch.Tensor, name: str) -> None:
    """``ValueError`` unless ``x`` holds uint8 images ``(n, H, W, 3)``, saying what it looks like
    instead."""
    hint = ""
    if x.ndim == 4 and x.shape[-1] != 3 and x.shape[1] == 3:
        hint = " It looks channels-first: pass x.permute(0, 2, 3, 1)."
    elif x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 1):
        hint = (
            " It looks grayscale: repeat the channel, "
            "e.g. x.reshape(*x.shape[:3], 1).expand(-1, -1, -1, 3)."
        )
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(
            f"{name} must be images of shape (n, height, width, 3) (channels last, RGB); got shape "
            f"{tuple(x.shape)}.{hint}"
        )
    if x.dtype != torch.uint8:
        raise ValueError(
            f"{name} must have dtype torch.uint8 (pixel values 0..255, as stored in CIFAR-10); got "
            f"{x.dtype}. Images in [0, 1] convert with (x * 255).round().to(torch.uint8)."
        )


def _check_labels(y: torch.Tensor, name: str, n: int, num_classes: int) -> None:
    """``ValueError`` unless ``y`` holds ``n`` integer labels in ``0 .. num_classes - 1``."""
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(
            f"{name} must be a 1-d tensor of integer class labels; got dtype {y.dtype}, shape "
            f"{tuple(y.shape)}"
        )
    if len(y) != n:
        raise ValueError(f"{name} must hold one label per image: {n} images but {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{name} must hold labels 0..{num_classes - 1} (one per class name); got labels "
            f"{int(y.min())}..{int(y.max())}. Labels 1..{num_classes} convert with y - 1."
        )


def _candidates(data_dir) -> list[Path]:
    dirs = [data_dir, os.environ.get("SYMMETRIES_DATA"), cache_dir("data", create=False)]
    return [Path(d) / FILENAME for d in dirs if d]


#: Seconds a download may wait for any answer of the server, to connect or between two reads (a
#: proxy that accepts connections and never answers would otherwise hang forever)...
DOWNLOAD_TIMEOUT = 60.0
#: ...and seconds the whole download may take, so that a server trickling bytes gives up too
#: (CIFAR-10 is 170 MB: this allows down to about 95 kB/s); see :func:`lib.datafile.fetch`.
DOWNLOAD_DEADLINE = 1800.0


@functools.lru_cache(maxsize=2)
def _load(path: str) -> Dataset:
    try:
        sha = file_sha256(path)
    except OSError as exc:  # not damage (permissions): nothing is deleted
        raise OSError(
            exc.errno,
            f"cannot read the data file {path} ({exc.strerror or exc}); "
            f"it was left untouched. Make it readable, or set SYMMETRIES_DATA "
            f"to a folder holding a readable {FILENAME}",
        ) from exc
    check_known(path, sha)
    try:
        arrays = read_npz(path)
        return Dataset(
            torch.from_numpy(arrays["x_train"]),
            torch.from_numpy(arrays["y_train"]).long(),
            torch.from_numpy(arrays["x_test"]),
            torch.from_numpy(arrays["y_test"]).long(),
            [str(c) for c in arrays["classes"]],
            identity=f"cifar10:{sha[:16]}",
            source=path,
        )
    except MemoryError:
        raise
    except Exception as exc:  # every kind of damage: zip, npy header, CRC, layout, labels
        raise damaged(path, f"{type(exc).__name__}: {exc}") from exc


def load_cifar10(data_dir: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-10 from ``cifar10.npz``.

    Looks in ``data_dir``, then ``$SYMMETRIES_DATA``, then the cache's ``data`` folder; if none has
    the file, downloads CIFAR-10 (:func:`lib.datafile.download_cifar10`, within
    :data:`DOWNLOAD_DEADLINE` seconds) and writes the npz into the cache (atomically). The file is
    checked by content before anything is served (:func:`lib.datafile.read_npz`: the zip's CRC-32 of
    every array, npy headers that account for exactly the stored bytes, uint8 images
    ``(n, 32, 32, 3)``, one integer label in 0..9 per image, 10 distinct class names), and the copy
    this project ships by its sha256 (:data:`lib.datafile.KNOWN_FILES`: same name and size). The
    result is cached in memory; its ``identity`` holds the file's sha256 prefix, so every number
    computed from it can say which copy of CIFAR-10 produced it.

    Parameters
    ----------
    data_dir : path-like, optional
        A folder holding ``cifar10.npz``, searched first.

    Returns
    -------
    Dataset
        50,000 training and 10,000 test images, uint8 ``(n, 32, 32, 3)``.

    Raises
    ------
    FileNotFoundError
        If no copy is found and the download fails (offline, or past its deadline).
    PermissionError
        If no copy is found and the cache's data folder is not writable (naming the folder).
    lib.datafile.DamagedDataError
        (a ``ValueError``) If the file is damaged, lacks a key or does not hold CIFAR-10's layout;
        the message names the file and says what to do.
    OSError
        If the file exists but cannot be read (permissions); it is left untouched.
    """
    candidates = _candidates(data_dir)
    for path in candidates:
        if path.is_file():
            return _load(str(path.resolve()))
    target = writable_folder(cache_dir("data", create=False), FILENAME) / FILENAME
    download_cifar10(target, DOWNLOAD_TIMEOUT, DOWNLOAD_DEADLINE)
    return _load(str(target.resolve()))


def load_data(dataset: str = "cifar10") -> Dataset:
    """The dataset every chapter and the zoo use.

    Parameters
    ----------
    dataset : str
        ``"cifar10"`` (:func:`load_cifar10`) or ``"synthetic"`` (512 training and 256 test images of
        :func:`synthetic_dataset`, for tests).

    Returns
    -------
    Dataset

    Raises
    ------
    ValueError
        For another name.
    """
    check_choice("dataset", dataset, DATASETS)
    return load_cifar10() if dataset == "cifar10" else synthetic_dataset(n_train=512, n_test=256)


def synthetic_dataset(
    n_train: int = 256, n_test: int = 128, num_classes: int = 10, size: int = 32, seed: int = 0
) -> Dataset:
    """A learnable stand-in for CIFAR-10 for unit tests: each class is a coloured blob at its own
    place.

    Shapes and dtypes match :func:`load_cifar10`, so every code path can be tested without the data.

    Parameters
    ----------
    n_train, n_test : int
        Images per split.
    num_classes, size : int
        Classes, and the image side in pixels.
    seed : int
        Seeds the blobs' places and colours, the labels and the noise.

    Returns
    -------
    Dataset
        uint8 images ``(n, size, size, 3)``; ``identity`` spells every argument.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.rand(num_classes, 2, generator=g) * (size - 8) + 4
    colours = torch.rand(num_classes, 3, generator=g) * 200 + 30

    def make(n):
        y = torch.randint(num_classes, (n,), generator=g)
        c = centres[y] + torch.randn(n, 2, generator=g)
        d2 = (yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2
        blob = torch.exp(-d2 / 18.0)[..., None]  # (n, H, W, 1)
        img = (
            60
            + blob * colours[y][:, None, None, :]
            + 20 * torch.randn(n, size, size, 3, generator=g)
        )
        return img.clamp(0, 255).to(torch.uint8), y

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return Dataset(
        xtr,
        ytr,
        xte,
        yte,
        [f"class{i}" for i in range(num_classes)],
        identity=f"synthetic:{n_train}:{n_test}:{num_classes}:{size}:{seed}",
    )


def subset(x: torch.Tensor, y: torch.Tensor, n: int | None):
    """The first ``n`` items of a fixed shuffle of ``(x, y)`` (all of them if ``n`` is None).

    The stored splits are sorted by class, so a plain ``x[:n]`` would hold one class only; the
    shuffle is seeded independently of any experiment (:data:`lib.settings.SUBSET_SEED`), so every
    chapter sees the same subset.

    Parameters
    ----------
    x, y : torch.Tensor
        Items and labels, of the same length.
    n : int or None
        How many (>= 1).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
    """
    if n is None or n >= len(x):
        return x, y
    if n < 1:
        raise ValueError(f"subset size n must be positive or None, got {n}")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(SUBSET_SEED))[:n]
    return x[idx], y[idx]


def to_input(x: torch.Tensor, device=None) -> torch.Tensor:
    """Model inputs from stored images: normalised by :data:`MEAN` and :data:`STD`.

    Parameters
    ----------
    x : torch.Tensor
        uint8 images ``(n, H, W, 3)``.
    device : optional
        For :func:`lib.config.get_device`.

    Returns
    -------
    torch.Tensor
        float32 ``(n, 3, H, W)`` in channels_last memory, on ``device``.
    """
    _check_images(x, "x")
    device = get_device(device)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    x = x.to(device).permute(0, 3, 1, 2).float()  # (n, H, W, 3) -> (n, 3, H, W)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def augment(
    x: torch.Tensor, generator: torch.Generator, flip: bool = True, translate: int = 2
) -> torch.Tensor:
    """Random horizontal flips and translations (zero fill), per image, on a whole batch on its
    device.

    Parameters
    ----------
    x : torch.Tensor
        A batch ``(n, C, H, W)``.
    generator : torch.Generator
        A CPU generator, so that the same seed gives the same augmentation on every device.
    flip : bool
        Flip each image horizontally with probability 1/2.
    translate : int
        Shift each image by up to this many pixels in each direction.

    Returns
    -------
    torch.Tensor
        The same shape as ``x``.
    """
    if not (isinstance(translate, numbers.Integral) and translate >= 0):
        raise ValueError(f"translate must be an integer >= 0 (pixels); got {translate!r}")
    n, _, h, w = x.shape
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    if translate:
        t = translate
        padded = torch.nn.functional.pad(x, (t, t, t, t))
        shifts = torch.randint(0, 2 * t + 1, (n, 2), generator=generator)
        out = torch.empty_like(x)
        # One slice per distinct shift (at most (2t+1)^2 of them) instead of one per image.
        keys = (shifts[:, 0] * (2 * t + 1) + shifts[:, 1]).tolist()
        groups: dict = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        for k, idx in groups.items():
            dy, dx = divmod(k, 2 * t + 1)
            idx_t = torch.tensor(idx, device=x.device)
            out[idx_t] = padded[idx_t, :, dy : dy + h, dx : dx + w]
        x = out
    return x


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
):
    """Minibatches of tensors already on the device.

    Parameters
    ----------
    x, y : torch.Tensor
        Items and labels, of the same length.
    batch_size : int
    generator : torch.Generator, optional
        Shuffles the order (CPU generator).
    shuffle, drop_last : bool
        Shuffle first; drop a last, smaller batch.

    Yields
    ------
    (torch.Tensor, torch.Tensor)
        ``(x[idx], y[idx])``.
    """
    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    if len(y) != len(x):
        raise ValueError(f"x and y must have the same length; got {len(x)} and {len(y)}")
    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(x.device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]
