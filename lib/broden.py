"""Concept datasets in the Broden layout of NetDissect (Bau et al. 2017): a reader and a generator.

* :class:`BrodenDataset` reads ``index.csv``, ``category.csv``, ``label.csv``, ``c_<category>.csv``
  and the images and PNG label masks (label = R + 256 G) under ``images/``, as NetDissect-Lite's
  loader does, and streams batches of images, boolean concept masks and annotation flags.
* :func:`make_concept_dataset` writes a small offline dataset in the same layout from CIFAR-10 (or
  synthetic) images with procedurally generated concepts and exact masks, because the real Broden
  dataset cannot be downloaded here; the same reader then reads it.

:mod:`lib.dissection` runs network dissection on either.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .data import MEAN as _DATA_MEAN, STD as _DATA_STD

__all__ = [
    "BrodenDataset", "make_concept_dataset", "quantize_colors", "COLOR_NAMES", "COLOR_RGB",
    "TEXTURE_NAMES", "SHAPE_NAMES", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The normalisation the zoo's models are trained with (lib.data, on the 0-255 scale), on [0, 1].
CIFAR10_MEAN = tuple(m / 255.0 for m in _DATA_MEAN)
CIFAR10_STD = tuple(s / 255.0 for s in _DATA_STD)

_META = ("image", "split", "ih", "iw", "sh", "sw")


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
            raise ValueError(f"malformed Broden file {str(path)!r}: missing column(s) {missing}; "
                             f"found {reader.fieldnames}")
        return list(reader)


def _category_counts(field: str, path: Path) -> dict:
    # label.csv's category field reads e.g. "object(1021);part(43)": category name and image count.
    out = {}
    for item in filter(None, field.split(";")):
        name, _, count = item.partition("(")
        if not count.endswith(")"):
            raise ValueError(f"malformed Broden file {str(path)!r}: category field {field!r} is not "
                             f"of the form 'name(count);...'")
        out[name] = int(count[:-1] or 0)
    return out


class BrodenDataset:
    """A concept dataset in the Broden layout (NetDissect-Lite), read lazily in batches.

    Parameters
    ----------
    root : the dataset directory (holding ``index.csv``, ``category.csv``, ``label.csv``,
        ``c_<category>.csv`` and ``images/``).
    resolution : side of the square images given to the network (bilinear resize); ``None`` keeps
        the stored size, which must then be the same for all images.
    categories : the categories to use (default: all in ``category.csv``).
    split : keep only the rows of ``index.csv`` with this split (default: all rows).
    mean, std : per-channel normalisation of images scaled to [0, 1] (default: lib.data's CIFAR-10
        normalisation, the one the zoo's models are trained with).

    Attributes
    ----------
    concepts : concept (label) names, in the order of the mask axis.
    concept_categories : each concept's category: the one in which ``label.csv`` counts it most often
        (NetDissect's "primary category"). A pixel counts for a concept whatever selected category's
        mask it appears in; an image counts for the concept's IoU only if it has annotation in that category.
    mask_size : ``(sh, sw)``, the mask resolution, identical for all images.
    """

    def __init__(self, root, resolution: int | None = None, categories=None, split: str | None = None,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"Broden dataset directory {str(self.root)!r} does not exist")
        if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
            raise ValueError(f"resolution must be a positive int or None, got {resolution!r}")
        cat_rows = _read_csv(self.root / "category.csv", ("name",))
        known = [r["name"] for r in cat_rows]
        if categories is None:
            categories = known
        categories = [categories] if isinstance(categories, str) else list(categories)
        for c in categories:
            if c not in known:
                raise ValueError(f"unknown category {c!r}; accepted values: {', '.join(map(repr, known))}")
        self.categories = categories

        label_path = self.root / "label.csv"
        labels = _read_csv(label_path, ("number", "name", "category"))
        # Only labels listed in a selected category's c_<category>.csv are concepts; each one goes to
        # its primary category (the selected category counting it most often in label.csv).
        in_category: dict = {}
        for cat in categories:
            path = self.root / f"c_{cat}.csv"
            for row in _read_csv(path, ("code", "number", "name")):
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

        index_path = self.root / "index.csv"
        rows = _read_csv(index_path, _META)
        if split is not None:
            rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise ValueError(f"{str(index_path)!r} lists no images" + (f" of split {split!r}" if split else ""))
        for c in categories:
            if c not in rows[0]:
                raise ValueError(f"malformed Broden file {str(index_path)!r}: no column for category {c!r}")
        self._rows = rows
        sizes = {(int(r["sh"]), int(r["sw"])) for r in rows}
        if len(sizes) != 1:
            raise ValueError(f"{str(index_path)!r}: masks of different sizes {sorted(sizes)}; "
                             f"this reader needs one mask size")
        self.mask_size = sizes.pop()
        if resolution is None:
            isizes = {(int(r["ih"]), int(r["iw"])) for r in rows}
            if len(isizes) != 1:
                raise ValueError(f"{str(index_path)!r}: images of different sizes {sorted(isizes)}; "
                                 f"pass resolution=<int> to resize them")
            self.image_size = isizes.pop()
        else:
            self.image_size = (resolution, resolution)
        self.resolution = resolution
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self._rows)

    def category_concepts(self, category: str) -> list[int]:
        """Indices (on the mask axis) of the concepts whose primary category is ``category``."""
        if category not in self.categories:
            raise ValueError(f"unknown category {category!r}; accepted values: "
                             f"{', '.join(map(repr, self.categories))}")
        return [i for i, c in enumerate(self.concept_categories) if c == category]

    def _file(self, name: str) -> Path:
        path = self.root / "images" / name
        if not path.is_file():
            raise ValueError(f"Broden dataset {str(self.root)!r}: missing file {str(path)!r}")
        return path

    def _load(self, i: int):
        from PIL import Image

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
                    raise ValueError(f"mask {str(path)!r} has size {png.shape[:2]}, index.csv says {(sh, sw)}")
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

        ``images``: float32 ``(B, 3, H, W)``, normalised with ``mean``/``std`` (or in [0, 1] when
        ``normalize=False``); ``masks``: bool ``(B, n_concepts, sh, sw)``; ``annotated``: bool
        ``(B, n_concepts)``, whether the image has annotation in the concept's category.
        ``indices`` restricts to those images (default: all).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        indices = range(len(self)) if indices is None else list(indices)
        for start in range(0, len(indices), batch_size):
            loaded = [self._load(i) for i in indices[start:start + batch_size]]
            imgs = [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im, _, _ in loaded]
            if len({tuple(t.shape) for t in imgs}) > 1 and self.resolution is None:
                raise ValueError(f"images of {str(self.root)!r} differ in size; pass resolution=<int>")
            x = torch.stack([self._resize(t.float() / 255.0) for t in imgs])
            if normalize:
                x = (x - self.mean) / self.std
            masks = torch.from_numpy(np.stack([m for _, m, _ in loaded]))
            annotated = torch.from_numpy(np.stack([a for _, _, a in loaded]))
            yield x, masks, annotated

    def _resize(self, img: torch.Tensor) -> torch.Tensor:
        if tuple(img.shape[-2:]) == self.image_size:
            return img
        return F.interpolate(img[None], size=self.image_size, mode="bilinear", align_corners=False,
                             antialias=True)[0]


# --------------------------------------------------------------------------------------------
# A small offline concept dataset in the Broden layout
# --------------------------------------------------------------------------------------------
# Broden's eleven colour names; reference RGB values (COLOR_RGB, float (11, 3)) picked by hand as
# typical sRGB renderings.
COLOR_NAMES = ("black", "blue", "brown", "grey", "green", "orange", "pink", "purple", "red", "white", "yellow")
COLOR_RGB = np.array([
    (20, 20, 20), (40, 70, 200), (120, 75, 35), (128, 128, 128), (40, 160, 50), (240, 140, 30),
    (240, 150, 190), (130, 50, 160), (200, 30, 30), (235, 235, 235), (230, 220, 40)], dtype=np.float64)
TEXTURE_NAMES = ("striped", "chequered", "dotted")
SHAPE_NAMES = ("disc", "square", "triangle")


def quantize_colors(images: np.ndarray) -> np.ndarray:
    """Index into :data:`COLOR_NAMES` of each pixel's nearest reference colour (Euclidean in RGB).

    ``images``: uint8 ``(..., 3)``; returns int64 of shape ``images.shape[:-1]``.
    """
    images = np.asarray(images)
    if images.shape[-1] != 3:
        raise ValueError(f"images must have a trailing RGB axis of size 3, got shape {images.shape}")
    d = ((images[..., None, :].astype(np.float64) - COLOR_RGB) ** 2).sum(-1)
    return d.argmin(-1)


def _jitter_colour(rng, k: int) -> np.ndarray:
    return np.clip(COLOR_RGB[k] + rng.uniform(-15, 15, 3), 0, 255)


def _texture(rng, kind: int, size: int, y0: int, x0: int, h: int, w: int):
    """Texture ``TEXTURE_NAMES[kind]`` in the rectangle: (boolean foreground, rectangle mask)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if kind == 0:
        angle = rng.choice([0.0, 45.0, 90.0, 135.0]) * math.pi / 180
        period = rng.uniform(4, 7)
        fg = ((xx * math.cos(angle) + yy * math.sin(angle)) % period) < period / 2
    elif kind == 1:
        cell = int(rng.integers(2, 5))
        fg = ((xx // cell + yy // cell) % 2).astype(bool)
    else:
        spacing, radius = rng.uniform(6, 8), rng.uniform(1.4, 2.0)
        dy = (yy % spacing) - spacing / 2
        dx = (xx % spacing) - spacing / 2
        fg = dx * dx + dy * dy < radius * radius
    region = np.zeros((size, size), dtype=bool)
    region[y0:y0 + h, x0:x0 + w] = True
    return fg, region


def _shape(rng, kind: int, size: int) -> np.ndarray:
    """Boolean mask of shape ``SHAPE_NAMES[kind]`` with a random size and position inside the image."""
    r = rng.uniform(0.14, 0.25) * size
    cy, cx = rng.uniform(r + 1, size - r - 1, 2)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if kind == 0:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == 1:
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    # An upright isosceles triangle: apex at the top, half-width growing linearly to r at the base.
    t = (yy - (cy - r)) / (2 * r)
    return (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= r * t)


def _synthetic_base(rng, size: int) -> np.ndarray:
    # A linear gradient between two random colours plus pixel noise: a background without concepts
    # of its own beyond colour.
    c0, c1 = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    t = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t + rng.normal(0, 8, (size, size, 3))
    return np.clip(img, 0, 255)


def _encode_mask(number: np.ndarray) -> np.ndarray:
    out = np.zeros(number.shape + (3,), dtype=np.uint8)
    out[..., 0] = number % 256
    out[..., 1] = number // 256
    return out


def make_concept_dataset(root, n_images: int, seed: int = 0, images: np.ndarray | None = None,
                         labels: np.ndarray | None = None, class_names=CIFAR10_CLASSES,
                         p_texture: float = 0.5, p_shape: float = 0.5, size: int = 32) -> Path:
    """Write a small concept dataset in the Broden layout to ``root`` (read it with :class:`BrodenDataset`).

    Images are ``images[k]`` for ``n_images`` distinct random ``k`` (uint8 ``(N, S, S, 3)``, e.g.
    CIFAR-10 test images, kept at their native S x S, 32 for CIFAR, so that a CIFAR-trained network
    sees them at its training resolution; masks have the same size), or, when ``images`` is None,
    synthetic ``size`` x ``size`` colour gradients with noise. Into each image are pasted, with
    exact pixel masks:

    * category ``texture`` (pixel-level; probability ``p_texture``): a rectangle (12-24 px sides at
      S = 32) filled with a two-colour texture, one of :data:`TEXTURE_NAMES` (stripes at 0/45/90/135
      degrees with period 4-7 px, a checkerboard of 2-4 px cells, dots of radius 1.4-2 px on a 6-8 px grid); its mask
      is the rectangle minus any shape drawn over it. Broden's textures come from DTD and are
      image-level; ours are local patches.
    * category ``shape`` (pixel-level; probability ``p_shape``): a solid-colour disc, square or
      upright triangle (:data:`SHAPE_NAMES`) of radius 14-25 % of the side, entirely inside the image.
      It plays the role of Broden's object/part categories, with exact masks.
    * category ``color`` (pixel-level, every image): each pixel of the final image labelled with the
      nearest of eleven reference colours named as Broden's (:data:`COLOR_NAMES`,
      :func:`quantize_colors`). Broden's colour labels are likewise computed from pixels, with a
      learned colour-naming model; nearest-reference is a cruder stand-in.
    * category ``class`` (image-level, only if ``labels`` is given): the image's class,
      ``class_names[labels[k]]``, in the role of Broden's image-level scene category.

    Images without a texture (or shape) have no annotation in that category, as in Broden, so they
    do not count for those concepts' IoU. If ``root`` already holds a dataset written by this
    function with the same arguments it is reused; one written with other arguments is replaced;
    any other existing directory is an error. Returns ``root`` as a ``Path``.
    """
    from PIL import Image

    root = Path(root)
    if not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive int, got {n_images!r}")
    for name, p in (("p_texture", p_texture), ("p_shape", p_shape)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    if images is not None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be uint8 of shape (N, S, S, 3), got {images.dtype} {images.shape}")
        if n_images > len(images):
            raise ValueError(f"n_images={n_images} exceeds the {len(images)} images given")
        size = images.shape[1]
    elif labels is not None:
        raise ValueError("labels need images: pass images=<uint8 (N, S, S, 3)> with labels")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= len(class_names):
            raise ValueError(f"labels must be ints in [0, {len(class_names)}) of shape ({len(images)},)")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")

    meta = dict(n_images=n_images, seed=seed, p_texture=p_texture, p_shape=p_shape, size=size,
                class_names=list(class_names) if labels is not None else None,
                images=hashlib.sha256(images.tobytes()).hexdigest() if images is not None else None,
                labels=hashlib.sha256(labels.astype(np.int64).tobytes()).hexdigest() if labels is not None else None)
    meta_path = root / "make_concept_dataset.json"
    if root.exists():
        if meta_path.is_file():
            if json.loads(meta_path.read_text()) == meta:
                return root
        elif any(root.iterdir()):
            raise ValueError(f"root {str(root)!r} exists and was not written by make_concept_dataset; "
                             f"pass a new or empty directory")

    # Label numbers: colours, textures, shapes, classes, in that order, from 1 (0 means "none").
    cats = [("color", COLOR_NAMES), ("texture", TEXTURE_NAMES), ("shape", SHAPE_NAMES)]
    if labels is not None:
        cats.append(("class", tuple(class_names)))
    names = [n for _, ns in cats for n in ns]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must not repeat or reuse colour/texture/shape names: {list(class_names)}")
    first, number = {}, 1
    for cat, ns in cats:
        first[cat] = number
        number += len(ns)

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(images), n_images, replace=False) if images is not None else None
    freq = np.zeros(number, dtype=np.int64)
    cover = np.zeros(number)
    cat_freq = {cat: 0 for cat, _ in cats}
    index_rows = []
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        (tmp / "images").mkdir()
        for i in range(n_images):
            img = images[picks[i]].astype(np.float64) if images is not None else _synthetic_base(rng, size)
            stem = f"{i:05d}"
            row = dict(image=f"{stem}.png", split="train", ih=size, iw=size, sh=size, sw=size,
                       color=f"{stem}_color.png", texture="", shape="")
            texture = shape = None
            if rng.random() < p_texture:
                kind = int(rng.integers(len(TEXTURE_NAMES)))
                h, w = rng.integers(size * 3 // 8, size * 3 // 4 + 1, 2)
                y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
                fg, region = _texture(rng, kind, size, y0, x0, h, w)
                c_fg, c_bg = rng.choice(len(COLOR_NAMES), 2, replace=False)
                img[region & fg] = _jitter_colour(rng, c_fg)
                img[region & ~fg] = _jitter_colour(rng, c_bg)
                texture = (kind, region)
            if rng.random() < p_shape:
                kind = int(rng.integers(len(SHAPE_NAMES)))
                mask = _shape(rng, kind, size)
                img[mask] = _jitter_colour(rng, int(rng.integers(len(COLOR_NAMES))))
                shape = (kind, mask)
            img = np.round(img).astype(np.uint8)
            Image.fromarray(img).save(tmp / "images" / row["image"])

            colour = quantize_colors(img) + first["color"]
            layers = {"color": colour}
            if texture is not None:
                region = texture[1] & ~(shape[1] if shape is not None else False)
                if region.any():
                    layers["texture"] = np.where(region, first["texture"] + texture[0], 0)
            if shape is not None:
                layers["shape"] = np.where(shape[1], first["shape"] + shape[0], 0)
            for cat, lab in layers.items():
                Image.fromarray(_encode_mask(lab)).save(tmp / "images" / f"{stem}_{cat}.png")
                row[cat] = f"{stem}_{cat}.png"
                cat_freq[cat] += 1
                counts = np.bincount(lab.ravel(), minlength=number)
                freq[counts > 0] += 1
                cover += counts / lab.size
            if labels is not None:
                k = first["class"] + int(labels[picks[i]])
                row["class"] = str(k)
                cat_freq["class"] += 1
                freq[k] += 1
                cover[k] += 1.0
            index_rows.append(row)
        freq[0], cover[0] = 0, 0.0
        _write_broden_csvs(tmp, index_rows, cats, first, freq, cover, cat_freq)
        meta_path_tmp = tmp / meta_path.name
        meta_path_tmp.write_text(json.dumps(meta, indent=1))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


def _write_broden_csvs(root: Path, index_rows, cats, first, freq, cover, cat_freq) -> None:
    def write(name, fields, rows):
        with open(root / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    write("index.csv", list(_META) + [c for c, _ in cats], index_rows)
    write("category.csv", ["name", "first", "last", "count", "frequency"],
          [dict(name=c, first=first[c], last=first[c] + len(ns) - 1, count=len(ns), frequency=cat_freq[c])
           for c, ns in cats])
    label_rows = []
    for cat, ns in cats:
        rows = []
        for j, name in enumerate(ns):
            k = first[cat] + j
            label_rows.append(dict(number=k, name=name, category=f"{cat}({freq[k]})", frequency=freq[k],
                                   coverage=f"{cover[k]:.4f}", syns=""))
            rows.append(dict(code=j + 1, number=k, name=name, frequency=freq[k], coverage=f"{cover[k]:.4f}"))
        write(f"c_{cat}.csv", ["code", "number", "name", "frequency", "coverage"], rows)
    write("label.csv", ["number", "name", "category", "frequency", "coverage", "syns"], label_rows)
