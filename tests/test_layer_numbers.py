"""The layer numbers of the paper's figures (``layer_info``'s ``paper_index``).

The paper numbers layers by their position in ``enumerate(model.named_modules())`` of the authors'
models. Their ResNet20 keeps all nine blocks in one Sequential and registers, in each block, conv1,
bn1, r1, conv2, bn2, r2 and the shortcut; their Myrtle CNN is one Sequential (implementation notes,
"Architectures"). Ours nest the ResNet blocks by stage, so the numbers are pinned here.
"""

import pytest

from lib import models as M

RESNET20 = {
    "act1": 3,
    **{f"layer{s}.{b}.act1": 8 + 8 * (3 * (s - 1) + b) for s in (1, 2, 3) for b in range(3)},
    **{f"layer{s}.{b}.act2": 11 + 8 * (3 * (s - 1) + b) for s in (1, 2, 3) for b in range(3)},
}


@pytest.mark.parametrize("width", [0.25, 1.0])
def test_resnet20_layers_carry_the_authors_numbers(width):
    info = M.layer_info(M.resnet20(width))
    assert len(info) == 19
    assert {i["name"]: i["paper_index"] for i in info} == RESNET20
    # Written out, as in the paper's Figs. 2, 6 and 9.
    assert [i["label"] for i in info] == [
        "3",
        "8*",
        "11",
        "16*",
        "19",
        "24*",
        "27",
        "32*",
        "35",
        "40*",
        "43",
        "48*",
        "51",
        "56*",
        "59",
        "64*",
        "67",
        "72*",
        "75",
    ]
    assert [i["paper_index"] for i in info if i["in_block"]] == list(range(8, 73, 8))
    assert [i["paper_index"] for i in info if not i["in_block"]][1:] == list(range(11, 76, 8))


def test_resnet20_without_residual_activation_keeps_the_in_block_numbers():
    info = M.layer_info(M.resnet20(0.25, residual_activation=False))
    assert [(i["name"], i["paper_index"]) for i in info] == [
        (n, k) for n, k in RESNET20.items() if not n.endswith("act2")
    ]


def test_myrtle_layers_are_the_papers_3_6_10_14():
    info = M.layer_info(M.myrtle_cnn(0.125))
    assert [(i["name"], i["paper_index"], i["label"]) for i in info] == [
        ("act1", 3, "3"),
        ("act2", 6, "6"),
        ("act3", 10, "10"),
        ("act4", 14, "14"),
    ]
    assert not any(i["in_block"] for i in info)
