"""Fixtures shared by the test files: tiny models, recipes and data, fake data files, interrupted
training runs, and BatchNorm statistics as after training.

Factories are fixtures that return a function, so that a test can ask for several variants.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from lib import data, train
from lib.cache import torch_bytes, write_checked
from lib.models import build
from lib.zoo import model_key

#: The smallest Myrtle CNN (4 channels): trains in a second on a CPU.
TINY = dict(arch="myrtle_cnn", width=0.0625)


class Interrupted(Exception):
    """Raised by :func:`interrupted_checkpoint`'s training run after its first epoch."""


@pytest.fixture()
def tiny_arch() -> dict:
    """The architecture config of the smallest Myrtle CNN, for :func:`lib.zoo.get`."""
    return dict(TINY)


@pytest.fixture()
def tiny_recipe():
    """``tiny_recipe(**fields)``: the fast recipe for tiny runs (1 epoch, batch 32, lr 0.05), fields
    replaced."""

    def make(**fields):
        return train.recipe("fast", **{**dict(epochs=1, batch_size=32, lr=0.05), **fields})

    return make


@pytest.fixture()
def tiny_data() -> data.Dataset:
    """64 training and 32 test images of :func:`lib.data.synthetic_dataset`."""
    return data.synthetic_dataset(n_train=64, n_test=32)


@pytest.fixture()
def cifar_npz():
    """``cifar_npz(folder, n=20, **arrays)``: write a CIFAR-10-shaped ``cifar10.npz`` of ``n``
    random training images (10 test images) into ``folder``, arrays replaced by ``arrays``; returns
    its path."""

    def write(folder: Path, n: int = 20, **overrides) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        x = np.random.default_rng(0).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
        arrays = dict(
            x_train=x,
            y_train=np.arange(n) % 10,
            x_test=x[:10],
            y_test=np.arange(10),
            classes=np.array([f"c{i}" for i in range(10)]),
        )
        np.savez(folder / data.FILENAME, **{**arrays, **overrides})
        return folder / data.FILENAME

    return write


@pytest.fixture()
def interrupted_checkpoint():
    """``interrupted_checkpoint(d, root, recipe, seed=0, arch=TINY)``: train the zoo entry of
    ``arch`` for one epoch, write its checkpoint as the zoo does, and stop there, as if the process
    had died; returns the checkpoint's path."""

    def run(d: data.Dataset, root: Path, r: train.Recipe, seed: int = 0, arch: dict = TINY) -> Path:
        folder = Path(root) / model_key(arch, r, seed, d.identity)
        folder.mkdir(parents=True)

        def stop(state):
            write_checked(folder / "checkpoint.pt", torch_bytes(dict(state, seconds=0.0)))
            raise Interrupted

        with pytest.raises(Interrupted):
            train.train(
                build(arch, seed=seed), d, r, seed=seed, device="cpu", progress=False, on_epoch=stop
            )
        return folder / "checkpoint.pt"

    return run


@pytest.fixture()
def randomize_batchnorm():
    """``randomize_batchnorm(model, seed, spread=0.1, signed=False)``: give every BatchNorm2d
    running statistics and affine parameters as after training, so that eval-mode BatchNorm is not
    the identity: means and biases ``spread * N(0, 1)``, variances ``U(0.5, 1.5)``, weights ``U(0.5,
    1.5)`` (``signed``: ``spread * N(0, 1)``). Returns the model in eval mode."""

    def randomize(model: torch.nn.Module, seed: int, spread: float = 0.1, signed: bool = False):
        g = torch.Generator().manual_seed(seed)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * spread)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.data.copy_(
                    torch.randn(c, generator=g) * spread
                    if signed
                    else torch.rand(c, generator=g) + 0.5
                )
                m.bias.data.copy_(torch.randn(c, generator=g) * spread)
        return model.eval()

    return randomize


@pytest.fixture()
def random_images():
    """``random_images(n=16, seed=0, dtype=torch.float32)``: standard normal model inputs ``(n, 3,
    32, 32)``."""

    def make(n: int = 16, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
        return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)

    return make
