"""Stitching variants are named for what runs under a protocol (lib.stitching.describe)."""

import dataclasses

import pytest

from lib.settings import SCALES, StitchSettings
from lib.stitching import describe, fig1_protocol, settings_for_scale

BIRKHOFF = settings_for_scale("smoke")
FIXED = dataclasses.replace(BIRKHOFF, grelu_p="fixed")
PAPER = settings_for_scale("paper")


@pytest.mark.parametrize(
    "name, settings, label, key",
    [
        ("grelu", FIXED, "G_ReLU, matched P + trained D", "grelu_matchedP"),
        ("grelu", BIRKHOFF, "G_ReLU, Birkhoff-trained from matching", "grelu_birkhoff"),
        (
            "grelu_random",
            FIXED,
            "G_ReLU, Birkhoff-trained from a random start",
            "grelu_birkhoff_random",
        ),
        ("grelu", PAPER, "G_ReLU, Birkhoff-trained from a random start", "grelu_birkhoff_random"),
        ("matching", FIXED, "activation matching (one-shot, untrained)", "matching"),
        ("full", BIRKHOFF, "full", "full"),
        ("full", PAPER, "full, random start", "full_random"),
        ("rank4_random", BIRKHOFF, "rank 4, random start", "rank4_random"),
    ],
)
def test_label_and_key_say_what_runs(name, settings, label, key):
    v = describe(name, settings)
    assert (v.label, v.key) == (label, key)


def test_the_two_grelu_protocols_never_share_a_label_or_key():
    a, b = describe("grelu", FIXED), describe("grelu", BIRKHOFF)
    assert (
        a.label != b.label
        and a.key != b.key
        and a.optimiser.endswith("fixed P")
        and b.optimiser.endswith("birkhoff")
    )


def test_unknown_variant_lists_the_accepted_names():
    with pytest.raises(ValueError, match="unknown variant 'grelu_fast'.*'matching'"):
        describe("grelu_fast", BIRKHOFF)


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_fig1_protocol_is_the_scales_fig1_stitching(scale):
    s = SCALES[scale]
    settings, n_train, n_test = fig1_protocol(scale)
    assert isinstance(settings, StitchSettings)
    assert (settings, n_train, n_test) == (s.fig1.protocol, s.fig1.images, s.fig1.eval_images)
    assert fig1_protocol(scale, epochs=7)[0] == dataclasses.replace(s.fig1.protocol, epochs=7)
