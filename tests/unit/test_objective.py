"""trainables.objective: every max/min decision of the project, on given numbers."""

import math

from trainables.objective import Objective

AUROC = Objective("val_pixel_auroc", "max")
LOSS = Objective("val_loss", "min")


def test_better_follows_the_mode():
    assert AUROC.better(0.9, 0.8) and not AUROC.better(0.8, 0.9) and not AUROC.better(0.8, 0.8)
    assert LOSS.better(0.1, 0.2) and not LOSS.better(0.2, 0.1)


def test_a_nan_never_improves_and_anything_improves_on_a_nan():
    assert not AUROC.better(math.nan, 0.5) and not AUROC.better(math.inf, 0.5)
    assert AUROC.better(0.1, math.nan) and LOSS.better(9.0, math.nan)


def test_best_skips_missing_and_non_finite_values_and_keeps_the_first_of_a_tie():
    rows = [{"id": 0, "val_pixel_auroc": None}, {"id": 1, "val_pixel_auroc": 0.7}, {"id": 2, "val_pixel_auroc": 0.9},
            {"id": 3, "val_pixel_auroc": 0.9}, {"id": 4, "val_pixel_auroc": math.nan}, {"id": 5}]  # fmt: skip
    assert AUROC.best(rows, lambda r: r.get("val_pixel_auroc"))["id"] == 2
    assert Objective("val_pixel_auroc", "min").best(rows, lambda r: r.get("val_pixel_auroc"))["id"] == 1
    assert AUROC.best([{"val_pixel_auroc": None}], lambda r: r["val_pixel_auroc"]) is None
    assert LOSS.best([3.0, 1.0, 2.0], float) == 1.0


def test_oriented_makes_larger_better():
    assert AUROC.oriented(0.3) == 0.3 and LOSS.oriented(0.3) == -0.3
