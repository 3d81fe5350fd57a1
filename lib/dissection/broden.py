"""Reading concept datasets in the Broden layout of NetDissect (Bau et al. 2017).

:class:`BrodenDataset` reads ``index.csv``, ``category.csv``, ``label.csv``, ``c_<category>.csv``
and the images and PNG label masks (label = R + 256 G) under ``images/``, as NetDissect-Lite's
loader does, and streams batches of images, boolean concept masks and annotation flags. It reads
the real Broden dataset and the small offline one written by
:func:`lib.dissection.make_concept_dataset` alike.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ..config import check_choice
from ..data import MEAN, STD

__all__ = [
    "BrodenDataset",
    "INDEX_COLUMNS",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

#: CIFAR-10's class names, in label order (label ``k`` is ``CIFAR10_CLASSES[k]``).
CIFAR10_CLASSES = (
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
)
#: Per-channel (R, G, B) mean of the normalisation the zoo's models are trained with
#: (:data:`lib.data.MEAN`, on the 0-255 scale), for images scaled to [0, 1].
CIFAR10_MEAN = tuple(m / 255.0 for m in MEAN)
#: Per-channel (R, G, B) standard deviation of that normalisation, for images scaled to [0, 1].
CIFAR10_STD = tuple(s / 255.0 for s in STD)
#: Per-channel (R, G, B) mean of torchvision's ImageNet normalisation, for images scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: Per-channel (R, G, B) standard deviation of torchvision's ImageNet normalisation.
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The per-image metadata columns of a Broden ``index.csv``, before one column per category (image
#: file, split, image height and width, mask height and width, in pixels).
INDEX_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")


# --------------------------------------------------------------------------------------------
# Reading a Broden-layout dataset
# --------------------------------------------------------------------------------------------
def _read_csv(path: Path, required: tuple) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"not a Broden dataset: missing file {str(path)!r}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"malformed Broden file {str(path)!r}: missing column(s) {missing}; "
                f"found {reader.fieldnames}"
            )
        return list(reader)


def _category_counts(field: str, path: Path) -> dict:
    # label.csv's category field reads e.g. "object(1021);part(43)": category name and image count.
    out = {}
    for item in filter(None, field.split(";")):
        name, _, count = item.partition("(")
        if not count.endswith(")"):
            raise ValueError(
                f"malformed Broden file {str(path)!r}: category field {field!r} is not "
                f"of the form 'name(count);...'"
            )
        out[name] = int(count[:-1] or 0)
    return out


class BrodenDataset:
    """A concept dataset in the Broden layout (NetDissect-Lite), read lazily in batches.

    Parameters
    ----------
    root : str or os.PathLike
        The dataset directory, holding ``index.csv``, ``category.csv``, ``label.csv``,
        ``c_<category>.csv`` and ``images/``.
    resolution : int, optional
        Side (pixels) of the square images given to the network, after a bilinear resize. ``None``
        keeps the stored size, which must then be the same for all images.
    categories : str or sequence of str, optional
        The categories to use (default: all in ``category.csv``).
    split : str, optional
        Keep only the rows of ``index.csv`` with this split (default: all rows).
    mean, std : sequence of 3 floats
        Per-channel normalisation of images scaled to [0, 1] (default: :data:`CIFAR10_MEAN` and
        :data:`CIFAR10_STD`, the one the zoo's models are trained with).

    Attributes
    ----------
    categories : list of str
        The categories in use.
    concepts : list of str
        Concept (label) names, in the order of the mask axis.
    concept_categories : list of str
        Each concept's category: the one in which ``label.csv`` counts it most often (NetDissect's
        "primary category"). A pixel counts for a concept whatever selected category's mask it
        appears in; an image counts for the concept's IoU only if it has annotation in that
        category.
    label_numbers : numpy.ndarray
        ``(n_concepts,)`` int, each concept's label number in ``label.csv``.
    mask_size : tuple of int
        ``(sh, sw)``, the mask resolution (pixels), identical for all images.
    image_size : tuple of int
        ``(H, W)`` of the images :meth:`batches` yields (pixels).

    Raises
    ------
    ValueError
        If ``root`` is not a directory, a file is missing or malformed, ``resolution`` is not a
        positive int, a category is unknown, or no concept or image is selected.
    """

    def __init__(
        self,
        root,
        resolution: int | None = None,
        categories=None,
        split: str | None = None,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"Broden dataset directory {str(self.root)!r} does not exist")
        if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
            raise ValueError(f"resolution must be a positive int or None, got {resolution!r}")
        known = [r["name"] for r in _read_csv(self.root / "category.csv", ("name",))]
        if categories is None:
            categories = known
        categories = [categories] if isinstance(categories, str) else list(categories)
        for c in categories:
            check_choice("category", c, known)
        self.categories = categories
        self._read_concepts()
        self._read_index(split, resolution)
        self.resolution = resolution
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def _read_concepts(self) -> None:
        # Only labels listed in a selected category's c_<category>.csv are concepts; each one goes
        # to its primary category (the selected category counting it most often in label.csv).
        categories = self.categories
        label_path = self.root / "label.csv"
        labels = _read_csv(label_path, ("number", "name", "category"))
        in_category: dict = {}
        for cat in categories:
            for row in _read_csv(self.root / f"c_{cat}.csv", ("code", "number", "name")):
                if int(row["number"]) > 0:
                    in_category.setdefault(int(row["number"]), []).append(cat)
        self.concepts, self.concept_categories, numbers = [], [], []
        for row in labels:
            number = int(row["number"])
            if number not in in_category:
                continue
            counts = _category_counts(row["category"], label_path)
            cats = in_category[number]
            primary = max(cats, key=lambda c: (counts.get(c, 0), -cats.index(c)))
            self.concepts.append(row["name"])
            self.concept_categories.append(primary)
            numbers.append(number)
        if not numbers:
            raise ValueError(f"no concepts found in {str(self.root)!r} for categories {categories}")
        self.label_numbers = np.array(numbers)
        self._lookup = np.full(max(numbers) + 1, -1, dtype=np.int64)
        self._lookup[self.label_numbers] = np.arange(len(numbers))
        self._concept_cat_index = np.array([categories.index(c) for c in self.concept_categories])

    def _read_index(self, split: str | None, resolution: int | None) -> None:
        # The rows of index.csv in use, the one mask size and the size of the images given out.
        index_path = self.root / "index.csv"
        rows = _read_csv(index_path, INDEX_COLUMNS)
        if split is not None:
            rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise ValueError(
                f"{str(index_path)!r} lists no images" + (f" of split {split!r}" if split else "")
            )
        for c in self.categories:
            if c not in rows[0]:
                raise ValueError(
                    f"malformed Broden file {str(index_path)!r}: no column for category {c!r}"
                )
        self._rows = rows
        sizes = {(int(r["sh"]), int(r["sw"])) for r in rows}
        if len(sizes) != 1:
            raise ValueError(
                f"{str(index_path)!r}: masks of different sizes {sorted(sizes)}; "
                f"this reader needs one mask size"
            )
        self.mask_size = sizes.pop()
        if resolution is None:
            isizes = {(int(r["ih"]), int(r["iw"])) for r in rows}
            if len(isizes) != 1:
                raise ValueError(
                    f"{str(index_path)!r}: images of different sizes {sorted(isizes)}; "
                    f"pass resolution=<int> to resize them"
                )
            self.image_size = isizes.pop()
        else:
            self.image_size = (resolution, resolution)

    def __len__(self) -> int:
        return len(self._rows)

    def category_concepts(self, category: str) -> list[int]:
        """The concepts whose primary category is ``category``.

        Parameters
        ----------
        category : str
            One of ``categories``.

        Returns
        -------
        list of int
            Their indices on the mask axis (into ``concepts``).
        """
        check_choice("category", category, self.categories)
        return [i for i, c in enumerate(self.concept_categories) if c == category]

    def _file(self, name: str) -> Path:
        path = self.root / "images" / name
        if not path.is_file():
            raise ValueError(f"Broden dataset {str(self.root)!r}: missing file {str(path)!r}")
        return path

    def _load(self, i: int):
        row = self._rows[i]
        with Image.open(self._file(row["image"])) as im:
            img = np.asarray(im.convert("RGB"))
        sh, sw = self.mask_size
        mask = np.zeros((len(self.concepts), sh, sw), dtype=bool)
        flags = np.zeros(len(self.categories), dtype=bool)
        for ci, cat in enumerate(self.categories):
            items = [s for s in (row.get(cat) or "").split(";") if s]
            flags[ci] = bool(items)
            for item in items:
                if item.isdigit():
                    # An image-level label (scene, texture in Broden) covers the whole mask.
                    k = self._concept(int(item))
                    if k >= 0:
                        mask[k] = True
                    continue
                path = self._file(item)
                with Image.open(path) as im:
                    png = np.asarray(im.convert("RGB")).astype(np.int64)
                if png.shape[:2] != (sh, sw):
                    raise ValueError(
                        f"mask {str(path)!r} has size {png.shape[:2]}, index.csv says {(sh, sw)}"
                    )
                number = png[..., 0] + 256 * png[..., 1]
                k = self._lookup[np.minimum(number, len(self._lookup) - 1)]
                k[number >= len(self._lookup)] = -1
                ys, xs = np.nonzero(k >= 0)
                mask[k[ys, xs], ys, xs] = True
        return img, mask, flags[self._concept_cat_index]

    def _concept(self, number: int) -> int:
        return int(self._lookup[number]) if number < len(self._lookup) else -1

    def batches(self, batch_size: int = 128, normalize: bool = True, indices=None):
        """Yield ``(images, masks, annotated)`` batches in index order.

        Parameters
        ----------
        batch_size : int
            Images per batch (the last batch may be smaller).
        normalize : bool
            Normalise the images with ``mean``/``std`` (True) or leave them in [0, 1] (False).
        indices : sequence of int, optional
            Restrict to these images, in this order (default: all).

        Yields
        ------
        images : torch.Tensor
            float32 ``(B, 3, H, W)``, ``(H, W)`` = ``image_size``.
        masks : torch.Tensor
            bool ``(B, n_concepts, sh, sw)``, ``(sh, sw)`` = ``mask_size``.
        annotated : torch.Tensor
            bool ``(B, n_concepts)``, whether the image has annotation in the concept's category.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        indices = range(len(self)) if indices is None else list(indices)
        for start in range(0, len(indices), batch_size):
            loaded = [self._load(i) for i in indices[start : start + batch_size]]
            imgs = [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im, _, _ in loaded]
            if len({tuple(t.shape) for t in imgs}) > 1 and self.resolution is None:
                raise ValueError(
                    f"images of {str(self.root)!r} differ in size; pass resolution=<int>"
                )
            x = torch.stack([self._resize(t.float() / 255.0) for t in imgs])
            if normalize:
                x = (x - self.mean) / self.std
            masks = torch.from_numpy(np.stack([m for _, m, _ in loaded]))
            annotated = torch.from_numpy(np.stack([a for _, _, a in loaded]))
            yield x, masks, annotated

    def _resize(self, img: torch.Tensor) -> torch.Tensor:
        if tuple(img.shape[-2:]) == self.image_size:
            return img
        return F.interpolate(
            img[None], size=self.image_size, mode="bilinear", align_corners=False, antialias=True
        )[0]
