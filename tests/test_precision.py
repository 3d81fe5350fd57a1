"""The precision policy (lib.config): bulk work may run in bfloat16, exact identities never do.

A GPU runs bulk work under bfloat16 autocast and TF32. The CPU's bfloat16 autocast reproduces that
reduced precision here, so these tests show on any machine that an exact check made through the
policy (``exact_mode``) holds under it, and that the same check made past the policy fails.
"""

import pytest
import torch

from lib.config import PRECISIONS, autocast, exact_mode
from lib.models import build
from lib.symmetry import random_transform
from lib.train import recipe


def _pair(random_images):
    model = build(dict(arch="myrtle_cnn", width=0.25, batchnorm=False), seed=0).eval()
    moved, _ = random_transform(model, torch.Generator().manual_seed(3))
    return model, moved.eval(), random_images(seed=4)


@torch.no_grad()
def test_exact_check_holds_under_emulated_reduced_precision_only_through_the_policy(random_images):
    model, moved, x = _pair(random_images)
    # Emulate the GPU's bulk precision for everything, as a chapter running under autocast would.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with exact_mode():
            exact = (model(x) - moved(x)).abs().max().item()
        bypassed = (model(x).float() - moved(x).float()).abs().max().item()
    scale = model(x).abs().max().item()
    # Proposition 3.4: a G_ReLU element leaves the function unchanged, to float32 rounding.
    assert exact < 1e-5 * max(1.0, scale)
    # Past the policy, bfloat16's 8-bit mantissa moves the logits far beyond that tolerance.
    assert bypassed > 100 * exact and bypassed > 1e-4 * scale


def test_exact_mode_restores_the_tf32_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with exact_mode():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            assert not torch.is_autocast_enabled("cpu")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_float32_mode_turns_autocast_off():
    with autocast(torch.device("cpu"), "float32"):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("bad", ["half", "fp16", "", None])
def test_unknown_precision_names_the_accepted_modes(bad):
    with pytest.raises(ValueError, match="precision.*'bulk', 'float32'"):
        autocast(torch.device("cpu"), bad)
    with pytest.raises(ValueError, match="precision"):
        recipe("fast", precision=bad)
    assert PRECISIONS == ("bulk", "float32")
