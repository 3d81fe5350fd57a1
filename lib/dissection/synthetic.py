"""A small offline concept dataset in the Broden layout of NetDissect (Bau et al. 2017).

:func:`make_concept_dataset` writes CIFAR-10 (or synthetic) images with procedurally generated
concepts (colours, textures, shapes, classes) and exact masks, in the layout that
:class:`lib.dissection.BrodenDataset` reads, because the real Broden dataset cannot be
downloaded here.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .broden import CIFAR10_CLASSES, INDEX_COLUMNS

__all__ = ["ConceptSpec", "make_concept_dataset", "quantize_colors", "COLOR_NAMES", "COLOR_RGB",
           "TEXTURE_NAMES", "SHAPE_NAMES"]

#: Broden's eleven colour names, in the order of :data:`COLOR_RGB`.
COLOR_NAMES = ("black", "blue", "brown", "grey", "green", "orange", "pink", "purple", "red", "white", "yellow")
#: Reference sRGB values of :data:`COLOR_NAMES` on the 0-255 scale, float64 ``(11, 3)``, picked by
#: hand as typical renderings of each name.
COLOR_RGB = np.array([
    (20, 20, 20), (40, 70, 200), (120, 75, 35), (128, 128, 128), (40, 160, 50), (240, 140, 30),
    (240, 150, 190), (130, 50, 160), (200, 30, 30), (235, 235, 235), (230, 220, 40)], dtype=np.float64)
#: The pasted textures' names (category ``texture``).
TEXTURE_NAMES = ("striped", "chequered", "dotted")
#: The pasted shapes' names (category ``shape``).
SHAPE_NAMES = ("disc", "square", "triangle")
# The record of make_concept_dataset's arguments in the folder it writes (reused when they match).
_META = "make_concept_dataset.json"


def quantize_colors(images: np.ndarray) -> np.ndarray:
    """Name each pixel by its nearest reference colour (Euclidean distance in RGB).

    Parameters
    ----------
    images : numpy.ndarray
        uint8 ``(..., 3)``, RGB on the 0-255 scale.

    Returns
    -------
    numpy.ndarray
        int64 of shape ``images.shape[:-1]``: indices into :data:`COLOR_NAMES`.

    Raises
    ------
    ValueError
        If the trailing axis is not of size 3.
    """
    images = np.asarray(images)
    if images.shape[-1] != 3:
        raise ValueError(f"images must have a trailing RGB axis of size 3, got shape {images.shape}")
    d = ((images[..., None, :].astype(np.float64) - COLOR_RGB) ** 2).sum(-1)
    return d.argmin(-1)


def _jitter_color(rng, k: int) -> np.ndarray:
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


@dataclasses.dataclass(frozen=True)
class ConceptSpec:
    """What :func:`make_concept_dataset` puts into each image, with exact pixel masks, by category.

    * ``texture`` (pixel-level; probability ``p_texture``): a rectangle (12-24 px sides at S = 32)
      filled with a two-colour texture, one of :data:`TEXTURE_NAMES` (stripes at 0/45/90/135 degrees
      with period 4-7 px, a checkerboard of 2-4 px cells, dots of radius 1.4-2 px on a 6-8 px grid);
      its mask is the rectangle minus any shape drawn over it. Broden's textures come from DTD and
      are image-level; ours are local patches.
    * ``shape`` (pixel-level; probability ``p_shape``): a solid-colour disc, square or upright
      triangle (:data:`SHAPE_NAMES`) of radius 14-25 % of the side, entirely inside the image. It
      plays the role of Broden's object/part categories, with exact masks.
    * ``color`` (pixel-level, every image): each pixel of the final image labelled with the nearest
      of eleven reference colours named as Broden's (:data:`COLOR_NAMES`, :func:`quantize_colors`).
      Broden's colour labels are likewise computed from pixels, with a learned colour-naming model;
      nearest-reference is a cruder stand-in.
    * ``class`` (image-level, only with labels): the image's class, ``class_names[labels[k]]``, in
      the role of Broden's image-level scene category.
    * ``object`` (pixel-level, only with labels and ``object_radius``): the image's class restricted
      to the central disc of radius ``object_radius`` pixels, named
      ``f"{class_names[labels[k]]}-object"``.
      A crude stand-in for Broden's object masks, resting on CIFAR-10's objects being roughly
      centred (radius 10 at S = 32 covers about 31 % of the pixels); there are no object masks to be
      had offline.

    Images without a texture (or shape) have no annotation in that category, as in Broden, so they
    do not count for those concepts' IoU; with ``p_texture=0`` (``p_shape=0``) the category is left
    out altogether and the images are the photographs unchanged. Checked when made.

    Parameters
    ----------
    p_texture, p_shape : float
        Probability (fraction of images, in [0, 1]) that an image gets a texture patch / a shape;
        0 leaves the category out.
    object_radius : float, optional
        Radius in pixels of the central disc of the ``object`` category (None: no such category;
        needs labels).

    Raises
    ------
    ValueError
        If a probability is outside [0, 1] or the radius is not positive.
    """

    p_texture: float = 0.5
    p_shape: float = 0.5
    object_radius: float | None = None

    def __post_init__(self):
        for name, p in (("p_texture", self.p_texture), ("p_shape", self.p_shape)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        if self.object_radius is not None and not self.object_radius > 0:
            raise ValueError(f"object_radius must be a radius in pixels > 0 or None, "
                             f"got {self.object_radius!r}")


def _check_sources(n_images: int, images, labels, class_names, size: int,
                   concepts: ConceptSpec) -> tuple:
    # The source images and labels as arrays, checked, and the side of the images.
    if not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive int, got {n_images!r}")
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
    radius = concepts.object_radius
    if radius is not None:
        if labels is None:
            raise ValueError("object_radius needs labels: the object concept is the image's class in a central disc")
        if not 0 < radius <= size / 2:
            raise ValueError(f"object_radius must be a radius in pixels in (0, {size / 2:g}], "
                             f"got {radius!r}")
    return images, labels, size


def _meta(n_images: int, seed: int, images, labels, class_names, size: int,
          concepts: ConceptSpec) -> dict:
    # Every argument that changes the files written (the arrays by their sha256).
    radius = concepts.object_radius
    labelled = labels is not None
    digest = (hashlib.sha256(images.tobytes()).hexdigest() if images is not None else None,
              hashlib.sha256(labels.astype(np.int64).tobytes()).hexdigest() if labelled else None)
    return dict(n_images=n_images, seed=seed, p_texture=concepts.p_texture,
                p_shape=concepts.p_shape, size=size,
                class_names=list(class_names) if labelled else None, images=digest[0],
                labels=digest[1], object_radius=None if radius is None else float(radius))


def _reusable(root: Path, meta: dict) -> bool:
    # Whether root holds a dataset written with these arguments (a foreign non-empty folder is an
    # error).
    meta_path = root / _META
    if root.exists():
        if meta_path.is_file():
            if json.loads(meta_path.read_text()) == meta:
                return True
        elif any(root.iterdir()):
            raise ValueError(f"root {str(root)!r} exists and was not written by make_concept_dataset; "
                             f"pass a new or empty directory")
    return False


def _categories(concepts: ConceptSpec, class_names, *, labelled: bool) -> tuple:
    # Label numbers: colours, textures, shapes, classes, in that order, from 1 (0 means "none").
    # A category that no image can have (probability 0) is left out, as Broden lists only annotated ones.
    pasted = (("texture", TEXTURE_NAMES, concepts.p_texture),
              ("shape", SHAPE_NAMES, concepts.p_shape))
    cats = [("color", COLOR_NAMES)] + [(c, ns) for c, ns, p in pasted if p > 0]
    if labelled:
        cats.append(("class", tuple(class_names)))
    if concepts.object_radius is not None:
        cats.append(("object", tuple(f"{c}-object" for c in class_names)))
    names = [n for _, ns in cats for n in ns]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must not repeat or reuse colour/texture/shape names: {list(class_names)}")
    first, number = {}, 1
    for cat, ns in cats:
        first[cat] = number
        number += len(ns)
    return cats, first, number


class _ConceptWriter:
    """Paints the concepts into each image, writes it and its masks, and counts every label."""

    def __init__(self, folder: Path, cats: list, first: dict, number: int, concepts: ConceptSpec,
                 size: int):
        self.folder, self.cats, self.first = folder, cats, first
        self.concepts, self.size = concepts, size
        self.freq = np.zeros(number, dtype=np.int64)
        self.cover = np.zeros(number)
        self.cat_freq = {cat: 0 for cat, _ in cats}
        self.rows = []
        yy, xx = np.mgrid[0:size, 0:size] + 0.5
        radius = concepts.object_radius or 0
        self.disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2

    def paste(self, rng, img: np.ndarray) -> tuple:
        """Paste a texture and a shape into ``img`` (float, in place) with their probabilities:
        ``(kind, region)`` of each, or None."""
        size, texture, shape = self.size, None, None
        # Draws happen only for categories in use, so p = 0 leaves the random stream of the rest
        # alone.
        if self.concepts.p_texture > 0 and rng.random() < self.concepts.p_texture:
            kind = int(rng.integers(len(TEXTURE_NAMES)))
            h, w = rng.integers(size * 3 // 8, size * 3 // 4 + 1, 2)
            y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
            fg, region = _texture(rng, kind, size, y0, x0, h, w)
            c_fg, c_bg = rng.choice(len(COLOR_NAMES), 2, replace=False)
            img[region & fg] = _jitter_color(rng, c_fg)
            img[region & ~fg] = _jitter_color(rng, c_bg)
            texture = (kind, region)
        if self.concepts.p_shape > 0 and rng.random() < self.concepts.p_shape:
            kind = int(rng.integers(len(SHAPE_NAMES)))
            mask = _shape(rng, kind, size)
            img[mask] = _jitter_color(rng, int(rng.integers(len(COLOR_NAMES))))
            shape = (kind, mask)
        return texture, shape

    def layers(self, img: np.ndarray, texture, shape, label) -> dict:
        """The pixel-level label maps of the final uint8 ``img``, by category."""
        first = self.first
        layers = {"color": quantize_colors(img) + first["color"]}
        if texture is not None:
            region = texture[1] & ~(shape[1] if shape is not None else False)
            if region.any():
                layers["texture"] = np.where(region, first["texture"] + texture[0], 0)
        if shape is not None:
            layers["shape"] = np.where(shape[1], first["shape"] + shape[0], 0)
        if self.concepts.object_radius is not None:
            layers["object"] = np.where(self.disc, first["object"] + int(label), 0)
        return layers

    def write(self, i: int, img: np.ndarray, layers: dict, label) -> None:
        """Save image ``i``, its masks and its index row; count its labels."""
        stem, size = f"{i:05d}", self.size
        optional = {c: "" for c in self.first if c in ("texture", "shape", "object")}
        row = dict(image=f"{stem}.png", split="train", ih=size, iw=size, sh=size, sw=size,
                   color=f"{stem}_color.png", **optional)
        Image.fromarray(img).save(self.folder / "images" / row["image"])
        for cat, lab in layers.items():
            Image.fromarray(_encode_mask(lab)).save(self.folder / "images" / f"{stem}_{cat}.png")
            row[cat] = f"{stem}_{cat}.png"
            self.cat_freq[cat] += 1
            counts = np.bincount(lab.ravel(), minlength=len(self.freq))
            self.freq[counts > 0] += 1
            self.cover += counts / lab.size
        if label is not None:
            k = self.first["class"] + int(label)
            row["class"] = str(k)
            self.cat_freq["class"] += 1
            self.freq[k] += 1
            self.cover[k] += 1.0
        self.rows.append(row)

    def finish(self, meta: dict) -> None:
        """The Broden CSV files and this function's record of its arguments."""
        self.freq[0], self.cover[0] = 0, 0.0
        _write_broden_csvs(self.folder, self.rows, self.cats, self.first, self.freq, self.cover,
                           self.cat_freq)
        (self.folder / _META).write_text(json.dumps(meta, indent=1))


def _write_images(writer: _ConceptWriter, n_images: int, seed: int, images, labels) -> None:
    # The random stream: the picks first, then each image's base (synthetic only) and concepts.
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(images), n_images, replace=False) if images is not None else None
    (writer.folder / "images").mkdir()
    for i in range(n_images):
        if images is None:
            img = _synthetic_base(rng, writer.size)
        else:
            img = images[picks[i]].astype(np.float64)
        texture, shape = writer.paste(rng, img)
        img = np.round(img).astype(np.uint8)
        label = labels[picks[i]] if labels is not None else None
        writer.write(i, img, writer.layers(img, texture, shape, label), label)


def make_concept_dataset(root, n_images: int, seed: int = 0, images: np.ndarray | None = None,
                         labels: np.ndarray | None = None, concepts: ConceptSpec = ConceptSpec(),
                         class_names=CIFAR10_CLASSES, size: int = 32) -> Path:
    """Write a small concept dataset in the Broden layout to ``root`` (for :class:`BrodenDataset`).

    Images are ``images[k]`` for ``n_images`` distinct random ``k`` (uint8 ``(N, S, S, 3)``, e.g.
    CIFAR-10 test images, kept at their native S x S, 32 for CIFAR, so that a CIFAR-trained network
    sees them at its training resolution; masks have the same size), or, when ``images`` is None,
    synthetic ``size`` x ``size`` colour gradients with noise. Every pixel is labelled with its
    colour's name; textures and shapes are pasted in with exact pixel masks, and with ``labels``
    each image has its class (the categories: :class:`ConceptSpec`). If ``root`` already holds a
    dataset written by this function with the same arguments it is reused; one written with other
    arguments is replaced; any other existing directory is an error.

    Parameters
    ----------
    root : str or os.PathLike
        The directory to write (written atomically: built beside it, then renamed).
    n_images : int
        Number of images, at most ``len(images)``.
    seed : int
        Seed of the image choice and of every pasted concept.
    images : numpy.ndarray, optional
        uint8 ``(N, S, S, 3)`` source images (S >= 16); None: synthetic gradients.
    labels : numpy.ndarray, optional
        ``(N,)`` ints in ``[0, len(class_names))``, the class of each of ``images``.
    concepts : ConceptSpec
        What is pasted into the images (textures, shapes) and the ``object`` category's disc.
    class_names : sequence of str
        Names of the classes (default: :data:`CIFAR10_CLASSES`).
    size : int
        Side of the synthetic images (pixels, >= 16); ignored when ``images`` is given.

    Returns
    -------
    pathlib.Path
        ``root``.

    Raises
    ------
    ValueError
        If an argument is out of range or of the wrong shape, or ``root`` is a non-empty directory
        that this function did not write.
    """
    root = Path(root)
    images, labels, size = _check_sources(n_images, images, labels, class_names, size, concepts)
    meta = _meta(n_images, seed, images, labels, class_names, size, concepts)
    if _reusable(root, meta):
        return root
    cats, first, number = _categories(concepts, class_names, labelled=labels is not None)

    def fill(folder: Path) -> None:
        writer = _ConceptWriter(folder, cats, first, number, concepts, size)
        _write_images(writer, n_images, seed, images, labels)
        writer.finish(meta)
    _write_atomically(root, fill)
    return root


def _write_atomically(root: Path, fill) -> None:
    # fill(folder) builds the dataset in a new folder beside root, which then replaces root; an
    # error leaves root as it was and removes the new folder.
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_dir(root.parent, f".{root.name}.")
    try:
        fill(tmp)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _new_dir(parent: Path, prefix: str) -> Path:
    """A new empty folder in ``parent`` whose name starts with ``prefix``.

    As ``tempfile.mkdtemp``, but with the permissions of any folder the user creates (``0o777`` less
    the umask): mkdtemp forces ``0o700``, which would hide a shared cache's dataset from its group.
    """
    while True:
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


def _write_broden_csvs(root: Path, index_rows, cats, first, freq, cover, cat_freq) -> None:
    def write(name, fields, rows):
        with open(root / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    write("index.csv", list(INDEX_COLUMNS) + [c for c, _ in cats], index_rows)
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
