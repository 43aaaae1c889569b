"""The background check (trainables/reproduce/background_check.py): its regions split the brain mask into interior
and rim, and one real epoch of the plain AE at each background scores every region."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainables.reproduce.background_check import check, main, regions


def test_regions_split_the_brain_into_interior_and_rim():
    brain = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    brain[..., 1:5, 1:5] = True  # a 4x4 square: its 2x2 centre is the interior, the other 12 pixels the rim
    parts = regions(brain)
    assert parts["interior"].sum().item() == 4 and parts["rim"].sum().item() == 12
    assert torch.equal(parts["interior"] | parts["rim"], brain) and not (parts["interior"] & parts["rim"]).any()


def test_one_epoch_scores_every_region_and_sees_the_background_in_the_residual(tiny_cache: Path):
    official, zero = (check("ae", tiny_cache, epochs=1, background=bg) for bg in (-3.5, 0.0))
    for figures in (official, zero):
        assert all(0.0 <= figures[f"auroc_{name}"] <= 1.0 for name in ("brain", "interior", "rim"))
        assert all(math.isfinite(figures[f"healthy_mu_{name}"]) for name in ("brain", "interior", "rim"))
    # measured after 1 epoch: outside the brain 95 % of the squared residual at -3.5, 0.6 % at 0 (this cohort; the
    # default cohort: 96 % and 1 %)
    assert official["outside_share"] > 0.6 and zero["outside_share"] < 0.2


def test_an_unknown_run_is_named():
    with pytest.raises(SystemExit, match="'nope' is not a run"):
        main(["--cache", "nowhere", "--run", "nope"])
