"""Bad inputs are clear errors raised before anything is created (issue 26, items 7 and 8):
widths of every builder, sizes that would not fit in memory, seeds, recipe fields by type, data
that cannot be trained on, LeakyReLU slopes, single samples for the similarity measures; and the
smaller items: a results row without "ours", another user's training lock, a read-only results
folder, and the caller's random state across ``zoo.get``."""

import dataclasses
import errno
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lib import data, metrics, train, zoo
from lib.models import convnext20, convnext_cifar, mlp, myrtle_cnn, resnet20, spec
from lib.results import Recorder, markdown_table

BUILDERS = [myrtle_cnn, resnet20, convnext_cifar, convnext20]


# -- item 7: widths, sizes, seeds, recipe fields, data, slopes, samples --------------------------


@pytest.mark.parametrize("width", [True, "0.25", None, math.inf, math.nan, 0, -0.5], ids=repr)
@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_every_builder_refuses_bad_widths(builder, width):
    with pytest.raises(ValueError, match=f"width must be a finite number > 0 .*; got {width!r}"):
        builder(width=width)


NEEDS = (
    "needs about [0-9.e+]+ GiB for the model's parameters and buffers alone, more than the "
    "[0-9.]+ GiB of memory"
)
TOO_LARGE = "gives layers too large to represent \\(.*\\); use a smaller width"


@pytest.mark.parametrize(
    "builder, width, message",
    [
        (convnext20, 1e7, NEEDS),
        (convnext_cifar, 1e7, TOO_LARGE),
        (myrtle_cnn, 1e4, NEEDS),
        (resnet20, 1e5, NEEDS),
        (myrtle_cnn, 1e300, TOO_LARGE),
    ],
    ids=["convnext20", "convnext_cifar", "myrtle_cnn", "resnet20", "myrtle_1e300"],
)
def test_width_beyond_memory_is_refused_before_allocating(builder, width, message):
    # convnext20 at width 1e7 allocated until the kernel killed the process (22 GB); the others
    # raised the allocator's RuntimeError. The estimate comes from the meta device, in milliseconds.
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"^width={re.escape(repr(width))} {message}"):
        builder(width=width)
    assert time.perf_counter() - t0 < 5


def myrtle_bytes(c: int, classes: int = 10) -> int:
    """Bytes of a Myrtle CNN's parameters and buffers, counted by hand: 3x3 convs 3->c->2c->4c->8c
    without bias, 4 float32 numbers per BatchNorm channel and one int64 counter per BatchNorm, and
    the linear head."""
    convs = 9 * (3 * c + c * 2 * c + 2 * c * 4 * c + 4 * c * 8 * c)
    return 4 * (convs + 4 * 15 * c + 8 * c * classes + classes) + 8 * 4


def test_estimate_is_the_size_of_the_model_and_what_does_not_fit_is_refused(monkeypatch):
    model = myrtle_cnn(width=0.0625)  # c = 4: small enough to count for real
    assert myrtle_bytes(4) == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    monkeypatch.setattr(spec, "available_memory", lambda: 2**30)
    monkeypatch.setattr(spec, "_FITS", set())
    with pytest.raises(
        ValueError,
        match=f"width=16 needs about {myrtle_bytes(1024) / 2**30:.3g} GiB .* than the "
        f"1 GiB of memory available",
    ):
        myrtle_cnn(width=16)  # c = 1024: 1.48 GiB
    assert myrtle_cnn(width=4).fc.in_features == 8 * 256  # 0.09 GiB fits
    with pytest.raises(ValueError, match="sizes=\\(1000000, 1000\\) needs about 3.73 GiB"):
        mlp(sizes=(1000000, 1000))


@pytest.mark.parametrize("sizes", [(8,), (8, 0, 4), (8, 2.5, 4), (8, True, 4)], ids=repr)
def test_mlp_sizes_are_checked(sizes):
    with pytest.raises(ValueError, match="sizes must be a sequence of at least 2 integers >= 1"):
        mlp(sizes=sizes)


@pytest.mark.parametrize("slope", [math.nan, math.inf, "0.1", True, None], ids=repr)
@pytest.mark.parametrize(
    "builder",
    [myrtle_cnn, resnet20, lambda **kw: mlp((4, 8, 2), **kw)],
    ids=["myrtle_cnn", "resnet20", "mlp"],
)
def test_leaky_relu_slope_must_be_finite(builder, slope):
    with pytest.raises(
        ValueError, match=f"negative_slope must be a finite number .*; got {slope!r}"
    ):
        builder(activation="leaky_relu", negative_slope=slope)


def test_zoo_seed_accepts_numpy_integers(tmp_path, tiny_arch, tiny_recipe, tiny_data):
    r = tiny_recipe()
    a = zoo.get(tiny_arch, r, np.int64(3), data=tiny_data, root=tmp_path, progress=False)
    b = zoo.get(tiny_arch, r, 3, data=tiny_data, root=tmp_path, progress=False)
    assert a.zoo_key == b.zoo_key == zoo.model_key(tiny_arch, r, 3, tiny_data.identity)
    assert type(a.zoo_meta["seed"]) is int and a.zoo_meta["seed"] == 3
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("seed", [1.5, True, "3", -1, None], ids=repr)
def test_bad_zoo_seed_is_refused_before_any_folder(
    tmp_path, tiny_arch, tiny_recipe, tiny_data, seed
):
    with pytest.raises(
        ValueError, match=f"seed must be an integer in 0 .. 2\\*\\*63 - 1 .*; got {seed!r}"
    ):
        zoo.get(
            tiny_arch, tiny_recipe(), seed, data=tiny_data, root=tmp_path / "zoo", progress=False
        )
    with pytest.raises(ValueError, match="seed must be an integer"):
        zoo.info(tiny_arch, tiny_recipe(), seed, data=tiny_data, root=tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()


@pytest.mark.parametrize(
    "field, value",
    [
        ("flip", "no"),
        ("keep_best", "yes"),
        ("flip", 1),
        ("keep_best", None),
        ("name", 3),
        ("step_size", 1.5),
    ],
    ids=repr,
)
def test_recipe_fields_are_checked_by_type(field, value):
    accepted = {
        "flip": "True or False \\(a bool\\)",
        "keep_best": "True or False \\(a bool\\)",
        "name": "a str",
        "step_size": "an integer >= 0",
    }[field]
    with pytest.raises(ValueError, match=f"recipe .*: {field} must be {accepted}.*; got {value!r}"):
        dataclasses.replace(train.recipe("fast"), **{field: value})


def shrunk(d: data.Dataset, n_train: int | None = None, size: int | None = None) -> data.Dataset:
    x_train, x_test = d.x_train, d.x_test
    if size is not None:
        x_train, x_test = (
            x_train[:, :size, :size].contiguous(),
            x_test[:, :size, :size].contiguous(),
        )
    n = len(x_train) if n_train is None else n_train
    return data.Dataset(
        x_train[:n], d.y_train[:n], x_test, d.y_test, d.classes, identity=f"{d.identity}:{n}:{size}"
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            dict(n_train=0),
            "data must hold at least 1 training image; .* has none "
            "\\(x_train of shape \\(0, 32, 32, 3\\)\\)",
        ),
        (
            dict(size=1),
            "the images \\(1 x 1 pixels, RGB\\) do not fit architecture 'myrtle_cnn' .*the "
            "smallest square "
            "images it takes are 32 x 32 pixels",
        ),
    ],
    ids=["no training images", "1x1 images"],
)
def test_data_that_cannot_be_trained_on_is_refused_first(
    tmp_path, tiny_arch, tiny_recipe, tiny_data, change, message
):
    d = shrunk(tiny_data, **change)
    with pytest.raises(ValueError, match=message):
        zoo.get(tiny_arch, tiny_recipe(), 0, data=d, root=tmp_path / "zoo", progress=False)
    assert not (tmp_path / "zoo").exists()
    with pytest.raises(ValueError, match=message):
        train.train(myrtle_cnn(width=0.0625), d, tiny_recipe(), progress=False)


def test_image_size_check_knows_each_architecture():
    from lib.models import check_image_size

    check_image_size(dict(arch="resnet20", width=0.25), 1, 1)  # strided convs and a global pool
    with pytest.raises(
        ValueError, match="'convnext20' .*smallest square images it takes are 4 x 4 pixels"
    ):
        check_image_size(dict(arch="convnext20", width=0.25), 2, 2)
    check_image_size(dict(arch="myrtle_cnn", width=0.25), 32, 32)


MEASURES = {
    "rbf_cka": 3,
    "grelu_cka": 4,
    "orthogonal_cka": 4,
    "grelu_procrustes": 2,
    "orthogonal_procrustes": 2,
}


@pytest.mark.parametrize("shape", [(1, 4, 3, 3), (1, 4)], ids=["conv", "dense"])
@pytest.mark.parametrize("measure", list(MEASURES))
def test_single_sample_says_so(measure, shape):
    # Were: "median squared distance is zero" (rbf_cka), "every channel of X is constant" (2-D
    # features).
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        ValueError, match=f"^{measure}: need at least {MEASURES[measure]} samples; got 1$"
    ):
        getattr(metrics, measure)(x, x + 1)


@pytest.mark.parametrize("measure", list(MEASURES))
def test_one_dimensional_input_says_so(measure):
    # Procrustes said "the same spatial shape" for a 1-D X beside a 3-D Y.
    with pytest.raises(
        ValueError, match="X must have shape \\(n_samples, n_features\\) .*; got shape \\(5,\\)"
    ):
        getattr(metrics, measure)(torch.randn(5), torch.randn(5, 2, 3))


# -- item 8: results rows, locks, read-only results, random state -------------------------------


def test_results_row_without_ours_names_the_file_and_key():
    row = dict(
        chapter="stitching",
        seed=2,
        key="penalty",
        std=None,
        paper=1.0,
        paper_std=None,
        unit="%",
        note="",
    )
    with pytest.raises(
        ValueError,
        match="results row 0 \\(key 'penalty'\\) lacks the fields \\['ours'\\]: its results "
        "file stitching-seed2.json \\(in the results folder of its scale\\) .*re-run its chapter",
    ):
        markdown_table([row])
    assert "| stitching | 2 | `penalty` | 1.5% | 1% |" in markdown_table([dict(row, ours=1.5)])


def deny_lock(monkeypatch, modes):
    """Opening a ``.lock`` in one of ``modes`` is refused, as for another user's lock file."""
    real = Path.open

    def fake(self, mode="r", *args, **kwargs):
        if self.name == ".lock" and mode in modes:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", fake)


def test_another_users_readable_lock_is_still_taken(
    tmp_path, tiny_arch, tiny_recipe, tiny_data, monkeypatch
):
    # flock works on a file opened for reading: a lock file we may not write still serialises
    # training.
    deny_lock(monkeypatch, {"a"})
    folder = tmp_path / zoo.model_key(tiny_arch, tiny_recipe(), 0, tiny_data.identity)
    folder.mkdir(parents=True)
    (folder / ".lock").write_text("")
    model = zoo.get(tiny_arch, tiny_recipe(), 0, data=tiny_data, root=tmp_path, progress=False)
    assert (folder / "weights.pt").exists() and model.zoo_meta["seed"] == 0


def test_another_users_unreadable_lock_is_an_error_with_advice(
    tmp_path, tiny_arch, tiny_recipe, tiny_data, monkeypatch
):
    deny_lock(monkeypatch, {"a", "r"})
    with pytest.raises(
        PermissionError,
        match="cannot open the training lock .*/.lock \\(Permission denied\\): it "
        "belongs to another user .*SYMMETRIES_ZOO",
    ):
        zoo.get(tiny_arch, tiny_recipe(), 0, data=tiny_data, root=tmp_path, progress=False)
    assert not list(tmp_path.rglob("weights.pt"))


@pytest.mark.parametrize("where", ["folder", "file"])
def test_read_only_results_folder_names_it(tmp_path, monkeypatch, where):
    results = tmp_path / "results"
    monkeypatch.setenv("SYMMETRIES_RESULTS", str(results))
    rec = Recorder("zoo", "smoke")
    rec.add("acc", 0.5)
    if where == "file":  # the folder exists; nothing may be created in it
        (results / "smoke").mkdir(parents=True)
        real_open = os.open

        def read_only(path, *args, **kwargs):
            if results in Path(path).parents:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only)
    else:
        real_mkdir = Path.mkdir

        def read_only(self, *args, **kwargs):
            if self == results:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(
        OSError,
        match=f"cannot write {results}.*: the folder is read-only or not writable by this "
        f"user .*set SYMMETRIES_RESULTS to a writable folder",
    ):
        rec.save()


def test_zoo_get_leaves_the_callers_random_state_alone(tmp_path, tiny_arch, tiny_recipe, tiny_data):
    torch.manual_seed(123)
    expected = torch.rand(4)
    for _ in ("trains", "loads"):
        torch.manual_seed(123)
        zoo.get(tiny_arch, tiny_recipe(), 0, data=tiny_data, root=tmp_path, progress=False)
        assert torch.equal(torch.rand(4), expected)
