"""Tests of lib.dissection: thresholds and IoU by hand, the Broden reader, the concept dataset,
rotations, planted detectors and the dissection loop."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
import torchvision.models._api as torchvision_api
from PIL import Image
from torch import nn

from lib import dissection as D
from lib import models, zoo


# --------------------------------------------------------------------------------------------
# Thresholds and IoU
# --------------------------------------------------------------------------------------------
def test_threshold_hand_example():
    acts = torch.arange(8.0).reshape(2, 1, 2, 2)
    # 1 - 0.25 = 0.75 quantile of 0..7: position 0.75 * 7 = 5.25 -> 5.25.
    assert D.quantile_thresholds(acts, 0.25).item() == pytest.approx(5.25)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_match_numpy(seed):
    acts = torch.randn(7, 5, 3, 4, generator=torch.Generator().manual_seed(seed))
    for q in (0.005, 0.1, 0.5):
        ours = D.quantile_thresholds(acts, q).numpy()
        ref = np.quantile(acts.transpose(0, 1).reshape(5, -1).numpy(), 1 - q, axis=1)
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
        # The fraction of values strictly above the threshold is q up to one value in N = 84.
        above = (acts > torch.from_numpy(ours)[None, :, None, None]).float().mean((0, 2, 3))
        assert ((above - q).abs() <= 1 / 84 + 1e-9).all()


def test_iou_hand_example_with_annotation():
    acts = torch.arange(8.0).reshape(2, 1, 2, 2)  # threshold 5.25 at q=0.25: pixels 6, 7 on
    masks = torch.zeros(2, 3, 2, 2, dtype=torch.bool)
    masks[1, 0, 0, 0] = masks[1, 0, 1, 0] = True  # A: one of two on-pixels, 2 mask pixels
    masks[0, 1, 1, 1] = masks[1, 1, 1, 1] = True  # B: one on-pixel hit, 2 mask pixels
    iou = D.iou_scores(acts, masks, quantile=0.25)
    assert iou.shape == (1, 3)
    # A: 1 / (2 + 2 - 1); B: 1 / (2 + 2 - 1); C: empty mask, nothing in common -> 0.
    np.testing.assert_allclose(iou[0].numpy(), [1 / 3, 1 / 3, 0.0])
    # B annotated only in image 2: its mask pixel in image 1 no longer counts -> 1 / (2 + 1 - 1).
    annotated = torch.tensor([[True, False, True], [True, True, True]])
    iou = D.iou_scores(acts, masks, quantile=0.25, annotated=annotated)
    np.testing.assert_allclose(iou[0].numpy(), [1 / 3, 1 / 2, 0.0])
    # Unit pixels of unannotated images do not count either: A annotated only in image 1.
    annotated = torch.tensor([[True, True, True], [False, True, True]])
    iou = D.iou_scores(acts, masks, quantile=0.25, annotated=annotated)
    assert iou[0, 0] == 0.0


def test_iou_bilinear_upsampling_hand_example():
    # [0, 1] upsampled to width 4 (align_corners=False) is [0, .25, .75, 1]; the 0.5 quantile of
    # {0, 1} is 0.5, so the last two pixels are on.
    acts = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)
    masks = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool).reshape(
        1, 3, 1, 4
    )
    iou = D.iou_scores(acts, masks, quantile=0.5)
    np.testing.assert_allclose(iou[0].numpy(), [1 / 2, 2 / 3, 0.0])


def test_iou_matches_slow_reference():
    g = torch.Generator().manual_seed(3)
    acts = torch.randn(6, 4, 3, 4, generator=g)
    masks = torch.rand(6, 5, 7, 9, generator=g) < 0.3
    annotated = torch.rand(6, 5, generator=g) < 0.7
    q = 0.1
    iou = D.iou_scores(acts, masks, quantile=q, annotated=annotated, batch_size=4).numpy()
    t = np.quantile(acts.transpose(0, 1).reshape(4, -1).numpy(), 1 - q, axis=1)
    up = nn.functional.interpolate(acts, size=(7, 9), mode="bilinear", align_corners=False).numpy()
    for u in range(4):
        for c in range(5):
            inter = union = 0
            for i in range(6):
                if not annotated[i, c]:
                    continue
                a, m = up[i, u] > t[u], masks[i, c].numpy()
                inter += (a & m).sum()
                union += (a | m).sum()
            assert iou[u, c] == pytest.approx(inter / union if union else 0.0)


def test_planted_detectors():
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(10, 3, 8, 8, dtype=torch.bool)
    for i in range(10):
        y, x = torch.randint(0, 5, (2,), generator=g)
        masks[i, 0, y : y + 3, x : x + 3] = True  # concept 0: a 3x3 square somewhere
        masks[i, 1, :, i % 8] = True  # concept 1: one column
    masks[:, 2] = torch.rand(10, 8, 8, generator=g) < 0.2
    acts = torch.randn(10, 4, 8, 8, generator=g) * 0.1 - 1.0
    acts[:, 1] = masks[:, 0].float()  # unit 1 is concept 0's mask
    left = masks[:, 1].clone()
    left[:, 4:] = False
    acts[:, 3] = left.float()  # unit 3: concept 1's mask on rows 0-3 only
    # With quantile above both masks' coverage the threshold of units 1, 3 is 0: on-pixels = mask.
    iou = D.iou_scores(acts, masks, quantile=0.2)
    assert iou[1].argmax() == 0 and iou[1, 0] == pytest.approx(1.0)
    assert iou[3].argmax() == 1
    # Hand count: 10 columns of 8 pixels in the mask, 4 of each column on -> 40 / 80.
    assert iou[3, 1] == pytest.approx(40 / 80)


# --------------------------------------------------------------------------------------------
# Rotations
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rotation_power_properties(n, seed):
    q = D.random_rotation(n, seed)
    eye = torch.eye(n, dtype=torch.float64)
    assert torch.allclose(q @ q.T, eye, atol=1e-12) and torch.linalg.det(q) == pytest.approx(1.0)
    assert torch.allclose(D.rotation_power(q, 0.0), eye, atol=1e-10)
    assert torch.allclose(D.rotation_power(q, 1.0), q, atol=1e-10)
    for a, b in [(0.3, 0.5), (0.25, 0.75), (0.1, 0.1)]:
        qa, qb = D.rotation_power(q, a), D.rotation_power(q, b)
        assert qa.dtype == torch.float64
        assert torch.allclose(qa @ qa.T, eye, atol=1e-10)
        assert torch.linalg.det(qa) == pytest.approx(1.0)
        assert torch.allclose(qa @ qb, D.rotation_power(q, a + b), atol=1e-10)


def test_rotation_power_plane_rotation_and_minus_one_eigenvalues():
    theta = 2.5
    q = torch.tensor(
        [[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
        dtype=torch.float64,
    )
    half = D.rotation_power(q, 0.5)
    ref = torch.tensor(
        [[math.cos(theta / 2), -math.sin(theta / 2)], [math.sin(theta / 2), math.cos(theta / 2)]],
        dtype=torch.float64,
    )
    assert torch.allclose(half, ref, atol=1e-12)
    # Rotations by pi: eigenvalue -1 pairs, in a 3-d rotation and in -I_4.
    for q in (
        torch.diag(torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)),
        -torch.eye(4, dtype=torch.float64),
    ):
        h = D.rotation_power(q, 0.5)
        n = len(q)
        assert torch.allclose(h @ h, q, atol=1e-10)
        assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-10)
        assert torch.linalg.det(h) == pytest.approx(1.0)
        assert torch.allclose(D.rotation_power(q, 1.0), q, atol=1e-10)


def test_random_rotation_is_haar_like():
    g = torch.Generator().manual_seed(0)
    qs = torch.stack([D.random_rotation(3, g) for _ in range(2000)])
    # Haar on SO(3): entries have mean 0 (std of the mean 0.013 here) and second moment 1/3
    # (std 0.007); the rotation angle has density (1 - cos t) / pi on [0, pi], so
    # E[trace] = E[1 + 2 cos t] = 0 (std 0.022).
    assert qs.mean(0).abs().max() < 0.05
    assert ((qs**2).mean(0) - 1 / 3).abs().max() < 0.03
    assert abs(qs.diagonal(dim1=1, dim2=2).sum(1).mean()) < 0.08
    assert torch.allclose(torch.linalg.det(qs), torch.ones(2000, dtype=torch.float64))
    assert not torch.equal(D.random_rotation(4, 0), D.random_rotation(4, 1))
    assert torch.equal(D.random_rotation(4, 5), D.random_rotation(4, 5))


# --------------------------------------------------------------------------------------------
# The Broden reader on a hand-written fixture
# --------------------------------------------------------------------------------------------
def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _png_labels(path, labels):
    labels = np.asarray(labels)
    rgb = np.zeros(labels.shape + (3,), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1] = labels % 256, labels // 256
    Image.fromarray(rgb).save(path)


@pytest.fixture
def broden(tmp_path):
    root = tmp_path / "broden"
    (root / "images").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(
            root / "images" / f"im{i}.jpg"
        )
    # Label 300 exercises the green channel (300 = 44 + 256); "wood" is in material and object,
    # primary category material (larger count).
    obj0 = np.zeros((4, 4), int)
    obj0[:2] = 1
    obj0[3, 3] = 300
    obj0b = np.zeros((4, 4), int)
    obj0b[:, 0] = 2  # a second object layer of image 0
    mat1 = np.zeros((4, 4), int)
    mat1[1:3, 1:3] = 2
    _png_labels(root / "images" / "o0.png", obj0)
    _png_labels(root / "images" / "o0b.png", obj0b)
    _png_labels(root / "images" / "m1.png", mat1)
    _write(
        root / "index.csv",
        ["image", "split", "ih", "iw", "sh", "sw", "object", "material", "scene"],
        [
            ["im0.jpg", "train", 8, 8, 4, 4, "o0.png;o0b.png", "", "3"],
            ["im1.jpg", "val", 8, 8, 4, 4, "", "m1.png", ""],
            ["im2.jpg", "train", 8, 8, 4, 4, "", "", "3;4"],
        ],
    )
    _write(
        root / "category.csv",
        ["name", "first", "last", "count", "frequency"],
        [["object", 1, 300, 2, 1], ["material", 2, 2, 1, 1], ["scene", 3, 4, 2, 2]],
    )
    _write(
        root / "label.csv",
        ["number", "name", "category", "frequency", "coverage", "syns"],
        [
            [1, "car", "object(1)", 1, 0.5, ""],
            [2, "wood", "object(1);material(5)", 2, 0.5, "timber"],
            [3, "kitchen", "scene(2)", 2, 2.0, ""],
            [4, "street", "scene(1)", 1, 1.0, ""],
            [300, "tyre", "object(1)", 1, 0.1, ""],
        ],
    )
    _write(
        root / "c_object.csv",
        ["code", "number", "name", "frequency", "coverage"],
        [[1, 1, "car", 1, 0.5], [2, 2, "wood", 1, 0.2], [3, 300, "tyre", 1, 0.1]],
    )
    _write(
        root / "c_material.csv",
        ["code", "number", "name", "frequency", "coverage"],
        [[1, 2, "wood", 1, 0.3]],
    )
    _write(
        root / "c_scene.csv",
        ["code", "number", "name", "frequency", "coverage"],
        [[1, 3, "kitchen", 2, 2.0], [2, 4, "street", 1, 1.0]],
    )
    return root


def test_broden_reader(broden):
    ds = D.BrodenDataset(broden)
    assert len(ds) == 3 and ds.mask_size == (4, 4) and ds.image_size == (8, 8)
    assert ds.concepts == ["car", "wood", "kitchen", "street", "tyre"]
    assert ds.concept_categories == ["object", "material", "scene", "scene", "object"]
    ((x, masks, annotated),) = list(ds.batches(8))
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    mean, std = torch.tensor(D.CIFAR10_MEAN), torch.tensor(D.CIFAR10_STD)
    assert torch.allclose(x[1, :, 0, 0], (40 / 255 - mean) / std, atol=1e-6)
    assert masks.shape == (3, 5, 4, 4) and masks.dtype == torch.bool
    car, wood, kitchen, street, tyre = range(5)
    assert masks[0, car].sum() == 8 and masks[0, car, :2].all()
    assert masks[0, tyre].sum() == 1 and masks[0, tyre, 3, 3]
    # Wood appears in image 0's second object layer and in image 1's material mask.
    assert masks[0, wood].sum() == 4 and masks[0, wood, :, 0].all()
    assert masks[1, wood].sum() == 4 and masks[1, wood, 1:3, 1:3].all()
    assert masks[0, kitchen].all() and not masks[0, street].any()
    assert masks[2, kitchen].all() and masks[2, street].all() and not masks[1, kitchen].any()
    expected = torch.tensor(
        [
            [True, False, True, True, True],  # object and scene, no material
            [False, True, False, False, False],  # material only
            [False, False, True, True, False],
        ]
    )  # scene only
    assert torch.equal(annotated, expected)

    only = D.BrodenDataset(broden, categories=["object"], resolution=6, split="train")
    assert len(only) == 2 and only.concepts == ["car", "wood", "tyre"]
    assert only.concept_categories == ["object", "object", "object"]
    x, masks, annotated = next(only.batches(1, normalize=False))
    assert x.shape == (1, 3, 6, 6) and x.min() >= 0 and x.max() <= 1
    assert masks.shape == (1, 3, 4, 4) and annotated.tolist() == [[True, True, True]]
    assert only.category_concepts("object") == [0, 1, 2]


def test_broden_reader_errors(broden, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        D.BrodenDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown category 'colour'.*'object'"):
        D.BrodenDataset(broden, categories=["colour"])
    (broden / "c_scene.csv").unlink()
    with pytest.raises(ValueError, match="c_scene.csv"):
        D.BrodenDataset(broden)
    ds = D.BrodenDataset(broden, categories=["object"])
    (broden / "images" / "o0b.png").unlink()
    with pytest.raises(ValueError, match="o0b.png"):
        next(ds.batches(2))
    with pytest.raises(ValueError, match="batch_size"):
        next(ds.batches(0))
    (broden / "index.csv").rename(broden / "moved.csv")
    with pytest.raises(ValueError, match="missing file .*index.csv"):
        D.BrodenDataset(broden, categories=["object"])
    (broden / "moved.csv").rename(broden / "index.csv")
    _write(broden / "label.csv", ["number", "label"], [[1, "car"]])
    with pytest.raises(ValueError, match="label.csv.*missing column"):
        D.BrodenDataset(broden, categories=["object"])


# --------------------------------------------------------------------------------------------
# The generated concept dataset
# --------------------------------------------------------------------------------------------
def _cifar_like(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def test_make_concept_dataset(tmp_path):
    images, labels = _cifar_like(30)
    root = D.make_concept_dataset(tmp_path / "c", 24, seed=1, images=images, labels=labels)
    ds = D.BrodenDataset(root)
    assert len(ds) == 24 and ds.categories == ["color", "texture", "shape", "class"]
    assert ds.concepts == list(D.COLOR_NAMES + D.TEXTURE_NAMES + D.SHAPE_NAMES + D.CIFAR10_CLASSES)
    x, masks, annotated = next(ds.batches(24, normalize=False))
    pixels = np.round(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    color = ds.category_concepts("color")
    # Every pixel carries exactly one colour, the nearest reference colour of its value.
    assert (masks[:, color].sum(1) == 1).all()
    np.testing.assert_array_equal(
        masks[:, color].int().argmax(1).numpy(), D.quantize_colors(pixels)
    )
    # Textures and shapes: at most one concept per pixel, disjoint, annotated iff present.
    tex, shp = ds.category_concepts("texture"), ds.category_concepts("shape")
    assert (masks[:, tex].sum(1) <= 1).all() and (masks[:, shp].sum(1) <= 1).all()
    assert not (masks[:, tex].any(1) & masks[:, shp].any(1)).any()
    for cat in (tex, shp):
        assert torch.equal(annotated[:, cat[0]], masks[:, cat].flatten(1).any(1))
    assert annotated[:, tex].any() and annotated[:, shp].any() and not annotated[:, tex].all()
    # A shape is drawn in one solid colour: all its pixels share one quantised colour.
    for i in range(24):
        m = masks[i, shp].any(0).numpy()
        if m.any():
            assert len(np.unique(D.quantize_colors(pixels[i][m]))) == 1
    # The image-level class: the whole image, the label of the image that was picked.
    cls = masks[:, ds.category_concepts("class")]
    assert cls.flatten(2).all(2).sum(1).eq(1).all()
    picked = sorted(np.nonzero(cls[:, :, 0, 0].numpy())[1].tolist())
    assert len(picked) == 24
    # Same arguments: reused without rewriting; a foreign non-empty directory is refused.
    stamp = (root / "index.csv").stat().st_mtime_ns
    assert D.make_concept_dataset(tmp_path / "c", 24, seed=1, images=images, labels=labels) == root
    assert (root / "index.csv").stat().st_mtime_ns == stamp
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not written by make_concept_dataset"):
        D.make_concept_dataset(tmp_path / "other", 4)


def test_make_concept_dataset_synthetic_and_errors(tmp_path):
    textures = D.ConceptSpec(p_texture=1.0, p_shape=0.0)
    root = D.make_concept_dataset(tmp_path / "s", 6, seed=0, concepts=textures)
    ds = D.BrodenDataset(root)
    # A category of probability 0 is left out, as Broden lists only annotated categories.
    assert ds.categories == ["color", "texture"]
    _, masks, annotated = next(ds.batches(6))
    assert annotated[:, ds.category_concepts("texture")].all()
    meta = json.loads((root / "make_concept_dataset.json").read_text())
    assert meta["n_images"] == 6
    with pytest.raises(ValueError, match="n_images"):
        D.make_concept_dataset(tmp_path / "e", 0)
    with pytest.raises(ValueError, match="images must be uint8"):
        D.make_concept_dataset(tmp_path / "e", 2, images=np.zeros((4, 32, 32, 3)))
    with pytest.raises(ValueError, match="exceeds"):
        D.make_concept_dataset(tmp_path / "e", 5, images=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="p_shape"):
        D.ConceptSpec(p_shape=1.5)
    with pytest.raises(ValueError, match="object_radius must be a radius in pixels > 0 or None"):
        D.ConceptSpec(object_radius=0)


# --------------------------------------------------------------------------------------------
# Dissection end to end
# --------------------------------------------------------------------------------------------
class ColourUnits(nn.Module):
    """Unit k is 1 where the (de-normalised) input pixel's nearest reference colour is k."""

    def __init__(self):
        super().__init__()
        self.units = nn.Identity()
        self.register_buffer("ref", torch.tensor(D.COLOR_RGB, dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(D.CIFAR10_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(D.CIFAR10_STD).view(1, 3, 1, 1))

    def forward(self, x):
        pix = torch.round((x * self.std + self.mean) * 255).permute(0, 2, 3, 1)  # (B, H, W, 3)
        k = ((pix[..., None, :] - self.ref) ** 2).sum(-1).argmin(-1)  # (B, H, W)
        return self.units(nn.functional.one_hot(k, len(D.COLOR_NAMES)).permute(0, 3, 1, 2).float())


@pytest.fixture(scope="module")
def concept_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("dissect") / "concepts"
    return D.BrodenDataset(D.make_concept_dataset(root, 32, seed=0))


def test_dissect_planted_colour_detectors(concept_ds):
    loose = D.NetDissectSettings(quantile=0.6)
    res = D.dissect(
        ColourUnits(),
        "units",
        concept_ds,
        D.Rotations((0.0, 1.0), 2, seed=0),
        loose,
        device="cpu",
        batch_size=10,
        progress=False,
    )
    present = set()
    for _, masks, _ in concept_ds.batches(32):
        present |= {D.COLOR_NAMES[k] for k in range(11) if masks[:, k].any()}
    for lab in res.labels:
        name = D.COLOR_NAMES[lab["unit"]]
        if name in present:
            assert lab["concept"] == name and lab["iou"] == pytest.approx(1.0) and lab["detector"]
        else:
            assert not lab["detector"] and lab["iou"] == 0.0
    assert res.interpretable[0].tolist() == [len(present)] * 2
    assert res.unique[0].tolist() == [len(present)] * 2
    assert res.by_category[0, 0].tolist() == [len(present), 0, 0]
    # A full random rotation mixes the one-hot colour units: no longer all perfect detectors.
    rotated = D.dissect(
        ColourUnits(),
        "units",
        concept_ds,
        D.Rotations((1.0,), 2, seed=0),
        loose,
        device="cpu",
        batch_size=10,
        progress=False,
    )
    assert (rotated.interpretable <= len(present)).all()
    assert np.array_equal(rotated.interpretable[0], res.interpretable[1])


def _tiny_convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.Flatten(),
        nn.Linear(5 * 16 * 16, 10),
    )


def test_dissect_random_model_shapes_and_consistency(concept_ds):
    model = _tiny_convnet()
    alphas = (0.0, 0.5, 1.0)
    res = D.dissect(
        model,
        "3",
        concept_ds,
        D.Rotations(alphas, 3, seed=1),
        D.NetDissectSettings(quantile=0.01),
        device="cpu",
        batch_size=12,
        progress=False,
    )
    n_c = len(concept_ds.concepts)
    assert res.interpretable.shape == res.unique.shape == (3, 3)
    assert res.by_category.shape == (3, 3, 3)
    assert res.iou.shape == (5, n_c) and len(res.labels) == 5 and res.n_units == 5
    assert (res.interpretable[0] == res.interpretable[0, 0]).all()
    assert (res.unique <= res.interpretable).all()
    assert np.array_equal(res.by_category.sum(2), res.interpretable)
    assert res.interpretable_mean.shape == (3,) and res.unique_std[0] == 0
    # alpha = 0 is the plain NetDissect IoU of the layer's activations.
    x, masks, annotated = next(concept_ds.batches(len(concept_ds)))
    acts = models.features(model, x, ["3"])["3"]
    np.testing.assert_allclose(
        res.iou, D.iou_scores(acts, masks, 0.01, annotated).numpy(), atol=1e-12
    )
    np.testing.assert_allclose(
        res.iou, D.layer_iou(model, "3", concept_ds, 0.01, device="cpu"), atol=1e-12
    )
    back = D.DissectionResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert np.array_equal(back.interpretable, res.interpretable) and back.labels == res.labels
    mean, std = res.interpretable_fraction()
    np.testing.assert_allclose(mean * 5, res.interpretable.mean(1))
    assert std[0] == 0
    assert all(res.invariants().values()) and len(res.invariants()) == 5


def test_invariants_catch_broken_results(concept_ds):
    res = D.dissect(
        _tiny_convnet(),
        "3",
        concept_ds,
        D.Rotations((0.0, 1.0), 2),
        D.NetDissectSettings(quantile=0.01),
        device="cpu",
        progress=False,
    )
    more_concepts = res.unique.copy()
    more_concepts[1, 0] = res.interpretable[1, 0] + 1
    assert not dataclasses.replace(res, unique=more_concepts).invariants()[
        "0 <= concepts <= detectors"
    ]
    rotated_alpha0 = res.interpretable.copy()
    rotated_alpha0[0, 1] += 1
    broken = dataclasses.replace(res, interpretable=rotated_alpha0).invariants()
    assert (
        not broken["alpha 0 equal for every rotation"]
        and not broken["categories add up to detectors"]
    )


def test_dissect_residual_outputs_of_builders(concept_ds):
    for model in (
        models.resnet20(width=0.25, residual_activation=False),
        models.convnext_cifar(width=0.25),
    ):
        layer = models.residual_outputs(model)[-1]
        res = D.dissect(
            model,
            layer,
            concept_ds,
            D.Rotations((0.0, 1.0), 1),
            device="cpu",
            batch_size=32,
            progress=False,
        )
        assert res.iou.shape[0] == res.n_units == (16 if "layer" in layer else 32)


def test_convnext_cifar_builder():
    model = models.convnext_cifar(width=0.25, depths=(1, 2))
    assert models.residual_outputs(model) == ["stage1.0.out", "stage2.0.out", "stage2.1.out"]
    assert models.hidden_layers(model) == ["stage1.0.act", "stage2.0.act", "stage2.1.act"]
    x = torch.randn(2, 3, 32, 32)
    f = models.features(model, x, ["stage2.1.out"])["stage2.1.out"]
    assert f.shape == (2, 16, 16, 16) and model(x).shape == (2, 10)
    # The block output is the residual sum itself (no activation after the addition).
    block = model.stage2[1]
    with torch.no_grad():
        block.gamma.fill_(0.0)
        inp = torch.randn(2, 16, 4, 4)
        assert torch.equal(block(inp), inp)
    assert type(models.build(model.arch)) is type(model)
    assert models.residual_outputs(models.resnet20(width=0.25))[0] == "layer1.0"
    with pytest.raises(ValueError, match="no residual blocks"):
        models.residual_outputs(models.mlp())
    with pytest.raises(ValueError, match="depths"):
        models.convnext_cifar(depths=())
    # The CPU variant of Section 6: BatchNorm and 3x3 depthwise kernels, still no residual
    # activation.
    bn = models.convnext_cifar(width=0.25, depths=(1, 1), kernel_size=3, norm="batch")
    assert bn.stage1[0].dw.kernel_size == (3, 3) and isinstance(bn.stage1[0].norm, nn.BatchNorm2d)
    assert models.build(bn.arch).arch == bn.arch and bn(x).shape == (2, 10)
    with pytest.raises(ValueError, match="kernel_size must be an odd"):
        models.convnext_cifar(kernel_size=4)
    with pytest.raises(ValueError, match="norm.*'layer', 'batch'"):
        models.convnext_cifar(norm="group")


def test_convnext20_mirrors_resnet20():
    model = models.build(dict(arch="convnext20", width=0.25), seed=0).eval()
    resnet = models.resnet20(width=0.25)
    assert models.residual_outputs(model) == [
        f"stage{s}.{b}.out" for s in (1, 2, 3) for b in range(3)
    ]
    assert models.hidden_layers(model) == [f"stage{s}.{b}.act" for s in (1, 2, 3) for b in range(3)]
    x = torch.randn(3, 3, 32, 32)
    ours = models.features(model, x, D.stage_outputs(model))
    theirs = models.features(resnet, x, D.stage_outputs(resnet))
    assert [f.shape for f in ours.values()] == [
        f.shape for f in theirs.values()
    ]  # 4/8/16 ch at 32/16/8 px
    assert (
        model(x).shape == (3, 10)
        and model.stage1[0].gamma is None
        and model.stage1[0].dw.bias is None
    )
    # The cut after every hidden layer reproduces the model.
    for layer in ("stage1.0.act", "stage2.1.act", "stage3.2.act"):
        front, back = models.split(model, layer)
        assert torch.allclose(back(front(x)), model(x), atol=1e-6)
    # No activation after the addition: with pw2 zeroed a block is the identity.
    block = model.stage3[2]
    with torch.no_grad():
        block.pw2.weight.zero_(), block.pw2.bias.zero_()
        inp = torch.randn(2, 16, 8, 8)
        assert torch.equal(block(inp), inp)
    assert models.build(model.arch).arch == model.arch
    for bad in (dict(width=0), dict(depth=0), dict(depth=1.5)):
        with pytest.raises(ValueError, match="width|depth"):
            models.convnext20(**bad)


def test_dissection_layer_is_the_last_residual_output_with_enough_units():
    assert D.dissection_layer(models.resnet20(width=0.25)) == ("layer3.2", 16)
    assert D.dissection_layer(models.convnext20(width=0.25)) == ("stage3.2.out", 16)
    with pytest.raises(
        ValueError, match="'stage3.2.out' has 8 units; dissection needs at least 16"
    ):
        D.dissection_layer(models.convnext20(width=0.125))


def test_head_absorbs_any_invertible_map_at_the_last_residual_output():
    model = models.convnext20(width=0.25).eval()
    with torch.no_grad():
        model.norm.running_mean.normal_(), model.norm.running_var.uniform_(0.5, 2.0)
        x = torch.randn(4, 3, 32, 32)
        h = models.features(model, x, ["stage3.2.out"])["stage3.2.out"]
        a = torch.randn(16, 16, generator=torch.Generator().manual_seed(1))
        out = model(x)
        assert (D.head_after_basis_change(model, h, a) - out).abs().max() < 1e-5 * out.abs().max()
        # Without A^-1 in the head the same change of basis does change the outputs.
        moved = model.classify(torch.einsum("ij,njhw->nihw", a, h))
        assert (moved - out).abs().max() > 0.1 * out.abs().max()
    with pytest.raises(ValueError, match=r"a must be \(16, 16\)"):
        D.head_after_basis_change(model, h, torch.eye(3))


def test_object_concept_is_the_class_in_a_central_disc(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), np.arange(6) % 3
    ds = D.BrodenDataset(
        D.make_concept_dataset(
            tmp_path / "o",
            6,
            seed=0,
            images=images,
            labels=labels,
            concepts=D.ConceptSpec(object_radius=10),
            class_names=("cat", "dog", "ship"),
        )
    )
    assert "object" in ds.categories and "dog-object" in ds.concepts and "dog" in ds.concepts
    x, masks, annotated = next(ds.batches(6))
    obj = np.array(ds.concept_categories) == "object"
    m = masks[:, obj].numpy()
    assert (m.sum(1) <= 1).all() and m.any(1).sum((1, 2)).tolist() == [
        316
    ] * 6  # pi 10^2 on the pixel grid
    assert m[:, :, 16, 16].any(1).all() and not m[:, :, 0, 0].any()
    with pytest.raises(ValueError, match="object_radius needs labels"):
        D.make_concept_dataset(
            tmp_path / "p", 2, images=images, concepts=D.ConceptSpec(object_radius=10)
        )
    with pytest.raises(ValueError, match=r"object_radius must be a radius in pixels in \(0, 16\]"):
        D.make_concept_dataset(
            tmp_path / "q",
            2,
            images=images,
            labels=labels,
            concepts=D.ConceptSpec(object_radius=20),
            class_names=("a", "b", "c"),
        )


def test_bad_inputs(concept_ds):
    acts = torch.randn(2, 3, 4, 4)
    masks = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="quantile"):
        D.iou_scores(acts, masks, quantile=1.0)
    with pytest.raises(ValueError, match="masks must be a boolean"):
        D.iou_scores(acts, masks.float())
    with pytest.raises(ValueError, match="masks has 1 images"):
        D.iou_scores(acts, masks[:1])
    with pytest.raises(ValueError, match=r"annotated must be .* \(2, 2\)"):
        D.iou_scores(acts, masks, annotated=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"activations must have shape \(n, units, h, w\)"):
        D.iou_scores(acts.flatten(1), masks)
    with pytest.raises(ValueError, match="rotation"):
        D.rotation_power(torch.diag(torch.tensor([-1.0, 1.0, 1.0])), 0.5)
    with pytest.raises(ValueError, match="rotation"):
        D.rotation_power(2 * torch.eye(3), 0.5)
    with pytest.raises(ValueError, match="generator"):
        D.random_rotation(3, "seed")
    with pytest.raises(ValueError, match="alphas"):
        D.Rotations(alphas=(1.5,))
    with pytest.raises(ValueError, match="n_rotations must be a positive int, got 0"):
        D.Rotations(n_rotations=0)
    with pytest.raises(ValueError, match=r"quantile must be a number in \(0, 1\)"):
        D.NetDissectSettings(quantile=1.0)
    with pytest.raises(ValueError, match=r"iou_threshold must be a number in \[0, 1\)"):
        D.NetDissectSettings(iou_threshold=-0.1)
    with pytest.raises(ValueError, match="convolutional layer"):
        D.dissect(_tiny_convnet(), "4", concept_ds, device="cpu", progress=False)
    with pytest.raises(ValueError, match="unknown layer"):
        D.dissect(_tiny_convnet(), "nope", concept_ds, device="cpu", progress=False)
    with pytest.raises(ValueError, match="BrodenDataset"):
        D.dissect(_tiny_convnet(), "3", "some/dir", device="cpu", progress=False)
    with pytest.raises(ValueError, match="alphas must be a non-empty"):
        D.Rotations(alphas=())


def test_non_finite_activations_are_refused():
    # One NaN used to move a unit's threshold and IoU silently; now it is an error naming the unit.
    acts = torch.randn(4, 3, 4, 4)
    masks = torch.rand(4, 2, 8, 8) > 0.5
    for bad in (float("nan"), float("inf"), -float("inf")):
        a = acts.clone()
        a[1, 2, 0, 3] = bad
        with pytest.raises(ValueError, match=r"activations must be finite; units \[2\]"):
            D.iou_scores(a, masks)
        with pytest.raises(ValueError, match="finite"):
            D.quantile_thresholds(a)
    assert D.iou_scores(acts, masks).shape == (3, 2)


def test_empty_and_mismatched_inputs_name_what_was_expected():
    masks = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    for empty in (torch.zeros(0, 3, 4, 4), torch.zeros(2, 0, 4, 4), torch.zeros(2, 3, 0, 4)):
        with pytest.raises(ValueError, match=r"activations must be non-empty \(n, units, h, w"):
            D.iou_scores(empty, masks[: len(empty)])
    acts = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"at least one concept.*\(n, concepts >= 1"):
        D.iou_scores(acts, torch.zeros(2, 0, 4, 4, dtype=torch.bool))
    with pytest.raises(
        ValueError, match=r"masks has 3 images, activations 2; masks must have shape"
    ):
        D.iou_scores(acts, torch.zeros(3, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(
        ValueError, match=r"masks must be a boolean tensor of shape \(n, concepts, H, W\)"
    ):
        D.iou_scores(acts, torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"masks must be a boolean tensor .* got ndarray"):
        D.iou_scores(acts, np.zeros((2, 2, 4, 4), dtype=bool))
    with pytest.raises(
        ValueError, match=r"activations must have shape \(n, units, h, w\), got ndarray"
    ):
        D.iou_scores(np.zeros((2, 3, 4, 4)), masks)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), float("inf"), "0.5", True])
def test_rotation_power_alpha_outside_unit_interval(alpha):
    q = D.random_rotation(4, 0)
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]"):
        D.rotation_power(q, alpha)


def test_rotation_power_accepts_numpy_alphas():
    q = D.random_rotation(4, 0)
    assert torch.allclose(D.rotation_power(q, np.float64(0.5)), D.rotation_power(q, 0.5))


# --------------------------------------------------------------------------------------------
# Section 6's models, data and summaries
# --------------------------------------------------------------------------------------------
def test_natural_concept_dataset_keeps_the_photographs(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    root = D.make_concept_dataset(
        tmp_path / "n",
        3,
        seed=1,
        images=images,
        labels=np.arange(5) % 2,
        concepts=D.ConceptSpec(p_texture=0.0, p_shape=0.0),
        class_names=("cat", "dog"),
    )
    ds = D.BrodenDataset(root)
    assert ds.categories == ["color", "class"]
    x, masks, annotated = next(ds.batches(3, normalize=False))
    picks = np.random.default_rng(1).choice(5, 3, replace=False)
    np.testing.assert_array_equal(
        (x.permute(0, 2, 3, 1) * 255).round().byte().numpy(), images[picks]
    )
    colour = masks[:, ds.category_concepts("color")].numpy()
    assert (colour.sum(1) == 1).all() and annotated.all()  # every pixel has exactly one colour name


def test_stage_outputs():
    assert D.stage_outputs(models.resnet20(width=0.25)) == ["layer1.2", "layer2.2", "layer3.2"]
    assert D.stage_outputs(models.convnext_cifar(width=0.25)) == [
        "stage1.1.out",
        "stage2.1.out",
        "stage3.1.out",
    ]


def test_stage_scan_and_choice(concept_ds, tmp_path, monkeypatch):
    monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path))
    torch.manual_seed(0)
    nets = {"relu": dict(model=models.resnet20(width=0.25), key="tiny-relu")}
    scan = D.stage_scan(nets, concept_ds, {"data": "test"}, seed=0, quantile=0.01)
    assert [r.layer for r in scan["relu"]] == ["layer1.2", "layer2.2", "layer3.2"]
    direct = D.dissect(
        nets["relu"]["model"],
        "layer2.2",
        concept_ds,
        D.Rotations((0.0,), 1),
        D.NetDissectSettings(quantile=0.01),
        device="cpu",
        progress=False,
    )
    np.testing.assert_array_equal(scan["relu"][1].iou, direct.iou)
    # The stage with the largest fraction of detectors (not the largest count); the first on ties.
    fake = [
        dataclasses.replace(scan["relu"][0], interpretable=np.array([[k]]), n_units=n)
        for k, n in ((2, 16), (6, 32), (1, 64))
    ]
    assert D.most_interpretable_stage(fake) == 2
    assert D.most_interpretable_stage(fake[:1] * 2) == 1
    assert D.most_interpretable_stage(list(reversed(fake))) == 2


def test_layers_agree(concept_ds):
    model = models.resnet20(width=0.25)
    # A block with residual ReLU outputs its act2; act1 (inside the block) differs.
    assert D.layers_agree(model, concept_ds, ["layer3.2", "layer3.2.act2"], device="cpu")
    assert not D.layers_agree(model, concept_ds, ["layer3.2", "layer3.2.act1"], device="cpu")
    nores = models.resnet20(width=0.25, residual_activation=False)
    assert not D.layers_agree(
        nores, concept_ds, ["layer3.2", "layer3.2.act1"], n_images=4, device="cpu"
    )


@pytest.mark.parametrize("n", [2, 5, 16])
def test_geodesic_checks(n):
    checks = D.geodesic_checks(D.random_rotation(n, n), [0.0, 0.3, 1.0])
    assert set(checks) == {"Q^alpha orthogonal", "det Q^alpha = 1", "Q^0 = I", "Q^1 = Q"}
    assert all(checks.values())


def test_rotation_slope_test_known_values_and_power():
    alphas = [0.0, 0.5, 1.0]
    # Every rotation's curve falls by 4 units from alpha 0 to 1: slope -4, zero spread.
    t = D.rotation_slope_test(alphas, [[10] * 5, [8] * 5, [6] * 5], n_permutations=2000)
    assert t["slope"] == pytest.approx(-4.0) and t["ci"] == pytest.approx((-4.0, -4.0))
    assert t["verdict"] == "falls" and t["p_value"] < 0.05
    # Counts that do not depend on alpha: no significant slope, the interval covers 0.
    rng = np.random.default_rng(0)
    flat = np.vstack([np.full(6, 7.0), rng.integers(5, 10, (5, 6))])
    t = D.rotation_slope_test(np.linspace(0, 1, 6), flat, n_permutations=2000)
    assert t["verdict"] == "flat" and t["ci"][0] <= 0 <= t["ci"][1] and t["p_value"] > 0.05
    assert len(t["slopes"]) == 6 and t["n_rotations"] == 6
    rises = D.rotation_slope_test(alphas, [[1, 1, 1], [3, 4, 3], [6, 5, 6]], n_permutations=2000)
    assert rises["verdict"] == "rises" and rises["slope"] == pytest.approx(14 / 3)
    one = D.rotation_slope_test(alphas, [[1], [2], [3]], n_permutations=100)
    assert np.isnan(one["ci"][0]) and one["verdict"] == "flat"
    with pytest.raises(ValueError, match="n_alphas"):
        D.rotation_slope_test([0, 1], [[1, 2]])
    with pytest.raises(ValueError, match="finite"):
        D.rotation_slope_test([0, 1], [[1], [float("nan")]])
    with pytest.raises(ValueError, match="level"):
        D.rotation_slope_test([0, 1], [[1], [2]], level=1.0)
    with pytest.raises(ValueError, match="n_permutations"):
        D.rotation_slope_test([0, 1], [[1], [2]], n_permutations=0)


def test_rotation_trend_known_values():
    t = D.rotation_trend([0, 0.5, 1], [[10, 10], [8, 6], [4, 6]])
    assert t["start"] == 10 and t["end"] == 5 and t["relative_change"] == pytest.approx(-0.5)
    assert t["slope"] == pytest.approx(-5.0) and t["verdict"] == "falls"
    assert D.rotation_trend([0, 1], [[10], [10.5]])["verdict"] == "flat"
    assert D.rotation_trend([0, 1], [[10], [12]])["verdict"] == "rises"
    zero = D.rotation_trend([0, 1], [[0, 0], [1, 0]])
    assert math.isnan(zero["relative_change"]) and zero["verdict"] == "rises"
    assert D.rotation_trend([0, 1], [[0], [0]])["verdict"] == "flat"
    with pytest.raises(ValueError, match="n_alphas"):
        D.rotation_trend([0, 1], [[1, 2, 3]])
    with pytest.raises(ValueError, match="tolerance"):
        D.rotation_trend([0, 1], [[1], [2]], tolerance=-1)


def test_strip_residual_relu_removes_only_the_residual_relu():
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    block = model.layer4[2]
    x = torch.randn(2, 2048, 4, 4)
    with torch.no_grad():
        before = block(x)
        D.strip_residual_relu(model)
        after = block(x)
        inner = block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))
        expected = block.bn3(block.conv3(inner)) + x
    assert (before >= 0).all() and (after < 0).any()
    torch.testing.assert_close(after, expected)
    torch.testing.assert_close(torch.relu(after), before)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    with pytest.raises(ValueError, match="Bottleneck"):
        D.strip_residual_relu(models.resnet20(width=0.25))


def test_imagenet_models_offline_error(monkeypatch):
    # No download is ever attempted: torchvision's weight loader is replaced by one that fails as
    # an offline machine does.
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torchvision_api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="ImageNet weights.*resnet50.*checkpoints.*TORCH_HOME"):
        D.imagenet_models()
    # A missing state dict is reported before any weights are loaded.
    with pytest.raises(ValueError, match="noresrelu_weights"):
        D.imagenet_models(noresrelu_weights="/nonexistent/weights.pt")


def test_concept_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="broden_dir"):
        D.concept_dataset("paper")
    with pytest.raises(ValueError, match="broden_dir"):
        D.concept_dataset("paper", broden_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="scale.*gpu"):  # every scale of lib.config is accepted
        D.concept_dataset("huge")


def test_unit_examples(concept_ds):
    model = _tiny_convnet()
    ex = D.unit_examples(
        model, "3", concept_ds, unit=2, concept="red", k=5, quantile=0.05, device="cpu"
    )
    assert ex["images"].shape == (5, 32, 32, 3) and ex["images"].dtype == np.uint8
    assert ex["unit_masks"].shape == ex["concept_masks"].shape == (5, 1, 32, 32)
    x, masks, _ = next(concept_ds.batches(len(concept_ds), normalize=False))
    np.testing.assert_array_equal(
        ex["images"][0], (x[ex["indices"][0]].permute(1, 2, 0) * 255).round().byte().numpy()
    )
    np.testing.assert_array_equal(
        ex["concept_masks"][:, 0], masks[ex["indices"], concept_ds.concepts.index("red")].numpy()
    )
    # The images come in decreasing order of the unit's peak activation.
    xs, _, _ = next(concept_ds.batches(len(concept_ds)))
    peak = models.features(model, xs, ["3"])["3"][:, 2].amax((1, 2))
    assert torch.equal(peak.topk(5).indices, torch.from_numpy(ex["indices"]))
    with pytest.raises(ValueError, match="unknown concept"):
        D.unit_examples(model, "3", concept_ds, unit=0, concept="unicorn")
    with pytest.raises(ValueError, match="unit"):
        D.unit_examples(model, "3", concept_ds, unit=5, concept="red")


def test_dissect_memo_caches(concept_ds, tmp_path, monkeypatch):
    monkeypatch.setenv("SYMMETRIES_CACHE", str(tmp_path))
    net = dict(model=_tiny_convnet(), key="tiny")
    kwargs = dict(alphas=(0.0, 1.0), n_rotations=2, seed=3, quantile=0.01, device="cpu")
    first = D.dissect_memo(net, "3", concept_ds, {"data": "test"}, **kwargs)
    direct = D.dissect(
        net["model"],
        "3",
        concept_ds,
        D.Rotations((0.0, 1.0), 2, seed=3),
        D.NetDissectSettings(quantile=0.01),
        device="cpu",
        progress=False,
    )
    assert (
        np.array_equal(first.interpretable, direct.interpretable) and first.labels == direct.labels
    )
    # A cached result runs no forward pass; other data is another key, computed anew.
    calls = []
    net["model"].register_forward_hook(lambda *a: calls.append(1))
    again = D.dissect_memo(net, "3", concept_ds, {"data": "test"}, **kwargs)
    assert not calls and np.array_equal(again.iou, first.iou)
    other = D.dissect_memo(net, "3", concept_ds, {"data": "other"}, **kwargs)
    assert calls and np.array_equal(other.iou, first.iou)


def test_trio_families_at_cpu_share_and_compare():
    book = zoo.book_models("cpu")

    def key(name, i=0):
        return zoo.model_key(
            book[name]["arch"], book[name]["recipe"], book[name]["seeds"][i], "data"
        )

    # The ReLU ResNet of Section 6 is the slope sweep's first model: trained once by the zoo step.
    assert key("resnet20_dissection") == key("resnet20_slope0")
    assert book["resnet20_noresrelu"]["arch"] == dict(
        book["resnet20_dissection"]["arch"], residual_activation=False
    )
    assert book["resnet20_noresrelu"]["recipe"] == book["resnet20_dissection"]["recipe"]
    # The ConvNeXt-style network mirrors ResNet20 and trains with the ResNets' recipe, bfloat16
    # included.
    assert book["convnext"]["arch"] == dict(
        arch="convnext20", width=book["resnet20_dissection"]["arch"]["width"]
    )
    assert book["convnext"]["recipe"] == book["resnet20_dissection"]["recipe"]
    assert book["convnext"]["recipe"].precision == "bulk"
    assert zoo.book_models("paper")["convnext"]["arch"]["arch"] == "convnext_cifar"
    assert [name for name, *_ in D.ZOO_TRIO] == [
        "resnet20_dissection",
        "resnet20_noresrelu",
        "convnext",
    ]
    # Sections 4-5's ResNet20 is untouched.
    assert book["resnet20"]["arch"] == dict(arch="resnet20", width=0.5)
