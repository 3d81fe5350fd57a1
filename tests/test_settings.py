"""The settings (``lib.settings``, issue 25): typed concerns composed into scales derived from one
another, one ``resolve`` for chapter parameters, the paper's numbers in one table, and no protocol
number or scale name typed anywhere else."""

import dataclasses
import io
import json
import re
import tokenize
from pathlib import Path

import pytest

from lib import settings
from lib.devicecheck import chapter_files, chapter_script
from lib.settings import (
    PAPER,
    SCALES,
    Dissection,
    FinetuneSettings,
    Scale,
    StitchSettings,
    Zoo,
    derive,
    resolve,
)

ROOT = Path(__file__).resolve().parents[1]

# The literals of every scale before the settings were split into concerns (lib/settings.py of
# commit 8ac0987), field by field under their old names. The derived scales must equal them exactly:
# every zoo key and memo key is computed from these values.
_FAST = dict(
    optimizer="adam",
    lr=1e-3,
    lr_decay=True,
    momentum=0.0,
    weight_decay=1e-4,
    batch_size=128,
    alpha=0.1,
    sinkhorn_rounds=16,
    p_only_fraction=0.5,
    bn_adapt=True,
    init="closed_form",
    grelu_p="birkhoff",
    grelu_lr=None,
    precision="bulk",
    fronts="cached",
    bn_epoch="none",
    random_bias=False,
    evals_per_epoch=1,
)
_PAPER_STITCH = dict(
    _FAST,
    optimizer="sgd",
    lr_decay=False,
    batch_size=32,
    init="random",
    fronts="augmented",
    bn_epoch="grelu",
)
_FT_FAST = dict(
    batch_size=256, lr=1e-3, schedule="linear", step_size=0, gamma=1.0, evals_per_epoch=1
)
_FT_PAPER = dict(
    batch_size=32, lr=1e-3, schedule="step", step_size=12, gamma=0.5, evals_per_epoch=1
)
_NOBN = dict(optimizer="adam", lr=2e-3, weight_decay=5e-5)
_RL = ("act1", "layer1.0.act1", "layer2.0.act1", "layer2.2.act2", "layer3.2.act2")
_SL = ("layer2.2.act2", "layer3.0.act1")
_V4 = ("full", "rank1", "grelu", "matching")
_ALPHAS11 = tuple(i / 10 for i in range(11))
OLD = {
    "smoke": dict(
        recipe="fast",
        epochs=1,
        n_train=512,
        n_test=512,
        myrtle_width=0.125,
        resnet_width=0.25,
        n_pairs=1,
        nobn_recipe=_NOBN,
        convnext_arch=dict(arch="convnext20"),
        convnext_recipe={},
        n_feature_images=128,
        stitch=dict(_FAST, epochs=1),
        stitch_images=256,
        fig1={},
        eval_images=512,
        rotation_trials=1,
        finetune_epochs=1,
        finetune_images=256,
        finetune_eval_images=512,
        finetune=_FT_FAST,
        slopes=(0.0, 1.0),
        slope_width=0.25,
        slope_epochs=1,
        slope_pairs=1,
        slope_layers=_SL,
        resnet_layers=_RL,
        resnet_variants=_V4,
        resnet_pairs=1,
        convnext_width=0.25,
        dissection_width=0.25,
        dissection_images=64,
        n_rotations=2,
        alphas=(0.0, 0.5, 1.0),
    ),
    "cpu": dict(
        recipe="fast",
        epochs=8,
        n_train=None,
        n_test=None,
        myrtle_width=0.25,
        resnet_width=0.5,
        n_pairs=1,
        nobn_recipe=_NOBN,
        convnext_arch=dict(arch="convnext20"),
        convnext_recipe={},
        n_feature_images=2000,
        stitch=dict(_FAST, epochs=4),
        stitch_images=5000,
        fig1=dict(
            stitch_images=50000,
            eval_images=None,
            epochs=2,
            lr=1e-2,
            grelu_p="fixed",
            grelu_lr=3e-3,
            evals_per_epoch=2,
        ),
        eval_images=2000,
        rotation_trials=3,
        finetune_epochs=3,
        finetune_images=5000,
        finetune_eval_images=None,
        finetune=dict(_FT_FAST, lr=3e-4, evals_per_epoch=4),
        slopes=(0.0, 0.9, 1.0),
        slope_width=0.25,
        slope_epochs=8,
        slope_pairs=1,
        slope_layers=_SL,
        resnet_layers=_RL,
        resnet_variants=_V4,
        resnet_pairs=1,
        convnext_width=0.25,
        dissection_width=0.25,
        dissection_images=1000,
        n_rotations=5,
        alphas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    ),
    "gpu": dict(
        recipe="fast",
        epochs=16,
        n_train=None,
        n_test=None,
        myrtle_width=1.0,
        resnet_width=1.0,
        n_pairs=4,
        nobn_recipe=_NOBN,
        convnext_arch=dict(arch="convnext20"),
        convnext_recipe={},
        n_feature_images=10000,
        stitch=dict(_FAST, epochs=5),
        stitch_images=50000,
        fig1={},
        eval_images=None,
        rotation_trials=5,
        finetune_epochs=5,
        finetune_images=None,
        finetune_eval_images=None,
        finetune=_FT_FAST,
        slopes=(0.0, 0.01, 0.1, 0.5, 0.9, 1.0),
        slope_width=1.0,
        slope_epochs=8,
        slope_pairs=3,
        slope_layers=_SL,
        resnet_layers=_RL,
        resnet_variants=_V4,
        resnet_pairs=4,
        convnext_width=1.0,
        dissection_width=1.0,
        dissection_images=10000,
        n_rotations=10,
        alphas=_ALPHAS11,
    ),
    "paper": dict(
        recipe="paper",
        epochs=50,
        n_train=None,
        n_test=None,
        myrtle_width=1.0,
        resnet_width=1.0,
        n_pairs=32,
        nobn_recipe={},
        convnext_arch=dict(arch="convnext_cifar", layer_scale=0.1),
        convnext_recipe={},
        n_feature_images=10000,
        stitch=dict(_PAPER_STITCH, epochs=20),
        stitch_images=50000,
        fig1={},
        eval_images=None,
        rotation_trials=10,
        finetune_epochs=50,
        finetune_images=None,
        finetune_eval_images=None,
        finetune=_FT_PAPER,
        slopes=(0.0, 0.01, 0.1, 0.5, 0.9, 1.0),
        slope_width=1.0,
        slope_epochs=50,
        slope_pairs=3,
        slope_layers="all",
        resnet_layers="all",
        resnet_variants=("full", "rank1", "rank2", "rank4", "grelu", "matching"),
        resnet_pairs=16,
        convnext_width=1.0,
        dissection_width=1.0,
        dissection_images=10000,
        n_rotations=10,
        alphas=_ALPHAS11,
    ),
}


def _old_view(s: Scale) -> dict:
    # The new settings under the old flat names; Fig. 1 as the old dict of replacements.
    z, st, f1, ft, sl, r, d = (
        s.zoo,
        s.stitching,
        s.fig1,
        s.finetune,
        s.slope,
        s.resnet,
        s.dissection,
    )
    protocol = dataclasses.asdict(st.protocol)
    fig1 = {k: v for k, v in dataclasses.asdict(f1.protocol).items() if v != protocol[k]}
    fig1.update(
        {
            old: getattr(f1, new)
            for old, new in (("stitch_images", "images"), ("eval_images", "eval_images"))
            if getattr(f1, new) != getattr(st, new)
        }
    )
    return dict(
        recipe=z.recipe,
        epochs=z.epochs,
        n_train=z.n_train,
        n_test=z.n_test,
        myrtle_width=z.myrtle_width,
        resnet_width=z.resnet_width,
        n_pairs=z.n_pairs,
        nobn_recipe=z.nobn_recipe,
        convnext_arch=z.convnext_arch,
        convnext_recipe=z.convnext_recipe,
        n_feature_images=s.similarity.n_feature_images,
        stitch=protocol,
        stitch_images=st.images,
        fig1=fig1,
        eval_images=st.eval_images,
        rotation_trials=ft.trials,
        finetune_epochs=ft.epochs,
        finetune_images=ft.images,
        finetune_eval_images=ft.eval_images,
        finetune={k: getattr(ft, k) for k in _FT_FAST},
        slopes=sl.slopes,
        slope_width=sl.width,
        slope_epochs=sl.epochs,
        slope_pairs=sl.pairs,
        slope_layers=sl.layers,
        resnet_layers=r.layers,
        resnet_variants=r.variants,
        resnet_pairs=r.pairs,
        convnext_width=z.convnext_width,
        dissection_width=d.width,
        dissection_images=d.images,
        n_rotations=d.n_rotations,
        alphas=d.alphas,
    )


@pytest.mark.parametrize("scale", list(OLD))
def test_derived_scales_equal_the_old_literals_field_by_field(scale):
    new = _old_view(SCALES[scale])
    assert set(new) == set(OLD[scale])
    for field, old in OLD[scale].items():
        # JSON with sorted keys tells 1 from 1.0 and a tuple from "all", as the memo keys do.
        assert json.dumps(new[field], sort_keys=True) == json.dumps(old, sort_keys=True), field
        assert type(new[field]) is type(old), field
    assert list(SCALES) == ["smoke", "cpu", "gpu", "paper"] and SCALES[scale].name == scale


def test_behaviours_that_hid_behind_scale_names_are_fields():
    assert [s.dissection.source for s in SCALES.values()] == [
        "cifar10",
        "cifar10",
        "cifar10",
        "imagenet",
    ]
    assert SCALES["paper"].dissection.relu_model == "resnet50"
    assert SCALES["gpu"].dissection.relu_model == "resnet20_dissection"
    assert [s.checks.trained for s in SCALES.values()] == [False, True, True, True]
    assert [s.checks.detector_target for s in SCALES.values()] == [None, 0.25, None, None]
    assert [s.checks.myrtle_target_acc for s in SCALES.values()] == [None, 80.0, None, None]
    assert {(s.dissection.quantile, s.dissection.iou_threshold) for s in SCALES.values()} == {
        (0.005, 0.04)
    }


def test_derive_replaces_only_the_fields_given_and_names_a_bad_one():
    cpu = SCALES["cpu"]
    s = derive(cpu, "tiny", zoo=dict(epochs=2), fig1=dict(protocol=dict(lr=0.5)))
    assert s.name == "tiny" and s.zoo == dataclasses.replace(cpu.zoo, epochs=2)
    assert (
        s.fig1.protocol == dataclasses.replace(cpu.fig1.protocol, lr=0.5)
        and s.fig1.images == cpu.fig1.images
    )
    assert (s.stitching, s.finetune, s.dissection) == (cpu.stitching, cpu.finetune, cpu.dissection)
    # A dict given to a dict-typed field replaces it whole (the recipe changes are data, not a
    # concern).
    assert derive(cpu.zoo, nobn_recipe={}).nobn_recipe == {}
    with pytest.raises(TypeError, match="epoch"):
        derive(cpu, zoo=dict(epoch=2))
    with pytest.raises(
        ValueError, match="unknown source 'broden'; accepted values: 'cifar10', 'imagenet'"
    ):
        derive(cpu.dissection, source="broden")


def test_no_protocol_is_chosen_silently():
    for cls in (StitchSettings, FinetuneSettings, Zoo, Dissection, Scale):
        with pytest.raises(TypeError, match="missing"):
            cls()
    assert StitchSettings.paper() == SCALES["paper"].stitching.protocol
    fast = StitchSettings(epochs=3)
    assert dataclasses.asdict(fast) == dict(_FAST, epochs=3)


@pytest.mark.parametrize(
    "value, default, expected",
    [
        (None, 5, 5),
        (0, 5, 0),
        (0.0, 1e-3, 0.0),
        ([], ("a",), []),
        ("", "x", ""),
        (False, True, False),
        (7, 5, 7),
    ],
)
def test_resolve_treats_only_none_as_the_default(value, default, expected):
    out = resolve(value, default)
    assert out == expected and type(out) is type(expected)


def test_paper_numbers_have_a_source_and_feed_the_model_families():
    assert all(isinstance(r, settings.Reported) and r.source for r in PAPER.values())
    families = settings.model_families(SCALES["smoke"])
    assert families["myrtle"]["paper_acc"] == (91.3, 0.2)
    assert families["resnet20"]["paper_acc"] == (89.9, None)
    # The Fig. 4 caption's "≈ 87%" (the implementation notes' 87.4 is not in the paper's text).
    assert families["myrtle_nobn"]["paper_acc"] == (87.0, None)
    assert str(PAPER["myrtle_acc"]) == "91.3 ± 0.2" and str(PAPER["resnet20_acc"]) == "89.9"
    assert (
        len(PAPER["table2_grelu_procrustes"].value)
        == len(PAPER["table2_grelu_procrustes"].std)
        == 4
    )


# -- nothing outside lib/settings defines a protocol number or branches on a scale's name ----------

#: Distinctive numbers defined in lib/settings: the paper's reference numbers, NetDissect's
#: settings, the subset seed. A numeric literal equal to one of them elsewhere in lib or in a
#: chapter's code is a second definition.
PROTOCOL_NUMBERS = {
    91.3,
    89.9,
    87.4,
    87.0,
    0.005,
    0.04,
    20221128,
    0.6208,
    0.5106,
    0.4432,
    0.4899,
    0.7724,
    0.5743,
    0.5087,
    0.5825,
}
SETTINGS = ROOT / "lib" / "settings"
LIB_FILES = [p for p in sorted((ROOT / "lib").rglob("*.py")) if SETTINGS not in p.parents]
CHAPTERS = chapter_files(ROOT / "book")


def _code(path: Path) -> str:
    return chapter_script(path) if path.suffix == ".md" else path.read_text(encoding="utf-8")


def _numbers(source: str, *, strings: bool):
    # Numeric tokens; with strings=True also the numbers written inside string literals (what a
    # chapter prints), which docstrings and error messages of lib may quote.
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NUMBER:
            yield tok.start[0], tok.string
        elif strings and tok.type == tokenize.STRING:
            yield from (
                (tok.start[0], m) for m in re.findall(r"(?<![\w.])\d+\.?\d*(?![\w.])", tok.string)
            )


def _duplicates(source: str, *, strings: bool) -> list:
    found = []
    for line, text in _numbers(source, strings=strings):
        try:
            value = float(text)
        except ValueError:
            continue
        if value in PROTOCOL_NUMBERS:
            found.append((line, text))
    return found


@pytest.mark.parametrize("path", LIB_FILES + CHAPTERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_protocol_number_is_typed_outside_settings(path):
    assert _duplicates(_code(path), strings=path.suffix == ".md") == []


def test_the_number_check_finds_a_typed_paper_number():
    assert _duplicates("rec.add('acc', a, paper=91.3)\nq = 0.005\n", strings=False) == [
        (1, "91.3"),
        (2, "0.005"),
    ]
    assert _duplicates("print(f'paper {x} (91.3 %)')\n", strings=True) == [(1, "91.3")]
    assert _duplicates("print(f'paper {x} (91.3 %)')\n", strings=False) == []


SCALE_NAME_TEST = re.compile(
    r"""scale\s*[!=]=\s*["']|["']\w+["']\s*[!=]=\s*scale\b|scale\s+(not\s+)?in\s*[(\[{]"""
)


@pytest.mark.parametrize("path", LIB_FILES + CHAPTERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_behaviour_hides_behind_a_scale_name(path):
    hits = [
        f"{i}: {line.strip()}"
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SCALE_NAME_TEST.search(line)
    ]
    assert hits == []


def test_the_scale_name_check_finds_a_branch():
    assert all(
        SCALE_NAME_TEST.search(s)
        for s in (
            'if scale == "paper":',
            "x = 1 if scale != 'smoke' else 2",
            'if "cpu" == scale:',
            'if scale in ("cpu", "gpu"):',
        )
    )
    assert not any(
        SCALE_NAME_TEST.search(s)
        for s in ("S = scale_settings(scale)", "scale = resolve_scale(scale)")
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_chapters_resolve_parameters_with_resolve_not_or(path):
    # `x or S.x` turns a parameter of 0 (or an empty list) into the scale's default.
    hits = [line.strip() for line in _code(path).splitlines() if re.search(r"\bor\s+S\.", line)]
    assert hits == []
