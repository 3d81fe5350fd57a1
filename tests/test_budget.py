"""The `cpu` scale's time budget: the book from empty caches within 2 h on 2 cores.

The zoo's training is most of that time. Its estimate comes from a short calibration of each
architecture's training throughput on this machine (``lib.train.throughput``), times the images
and epochs of every model the book trains at ``cpu`` scale. Adding models or epochs that cannot fit
makes this test fail.
"""
import pytest

from lib import zoo
from lib.config import BUDGET_SECONDS

# The chapters themselves (similarity, stitching, fine-tuning, dissection) measured about 15 min in
# a cold `cpu` build; the zoo gets the rest of the 2 h with a margin for a loaded machine.
ZOO_SHARE = 0.65


def test_cpu_zoo_training_fits_the_book_budget():
    est = zoo.estimate_book_seconds("cpu", steps=2)
    total = sum(e["seconds"] for e in est.values())
    detail = ", ".join(f"{k}: {e['models']} x {e['seconds'] / max(1, e['models']) / 60:.1f} min"
                       for k, e in est.items())
    assert total <= ZOO_SHARE * BUDGET_SECONDS["cpu"], (
        f"the cpu-scale zoo needs about {total / 60:.0f} min of training ({detail}), more than "
        f"{ZOO_SHARE:.0%} of the book's {BUDGET_SECONDS['cpu'] / 60:.0f}-min budget")


def test_estimate_counts_epochs_and_images():
    r = zoo.recipe_for_scale("cpu", epochs=4, n_train=1000, n_test=300)
    assert zoo.estimate_seconds({"arch": "myrtle_cnn"}, r, images_per_second=100.0) == pytest.approx(4 * 11.0)


def test_replicates_use_distinct_models():
    assert zoo.replicate_seeds(2, 0) == [0, 1] and zoo.replicate_seeds(2, 3) == [6, 7]
    seeds = [set(e["seeds"]) for e in (zoo.book_models("smoke", k)["myrtle"] for k in range(3))]
    assert not (seeds[0] & seeds[1] or seeds[1] & seeds[2] or seeds[0] & seeds[2])
    with pytest.raises(ValueError, match="seed"):
        zoo.replicate_seeds(2, -1)
