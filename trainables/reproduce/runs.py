"""The reproduction's runs and metric sets, shared by the training command (trainables/reproduce/train.py) and its
tables (trainables/reproduce/table.py), so neither imports the other's module for them. Each run is a family's
named preset (its published setting, declared in its module: trainables/families/<family>.py ``presets``);
study/configs/reproduce.yaml names the same presets, in this order (tests/unit/test_search_spaces.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainables.families import preset_setting

LESION, POOLED = "lesion", "pooled"  # metric sets: lesion subjects only / every subject of the split


@dataclass(frozen=True)
class Run:
    key: str  # row name in the tables
    family: str  # registered family
    objective: tuple[str, str]  # (metric set, metric) choosing the epoch on val: the paper's own measure
    hparams: dict[str, Any] = field(default_factory=dict)  # overrides of the family's (paper) defaults
    preset: str = ""  # the family preset the hparams come from, "<family>/<preset>"


def preset_run(key: str, preset: str, objective: tuple[str, str]) -> Run:
    """The run of table row ``key`` at family preset ``preset`` ("caae/paper-lambda-1.0")."""
    family, hparams = preset_setting(preset)
    return Run(key, family, objective, hparams, preset)


PAPER1 = (LESION, "pixel_auroc")  # first paper: pixel AUROC on BraTS (lesion subjects only)
PAPER2 = (POOLED, "slice_auroc")  # second paper: slice-level AUROC
# In order of priority (runs start in this order; a deadline cuts the last ones first)
RUNS = (
    preset_run("threshold", "threshold/baseline", PAPER1),
    preset_run("vae", "vae/paper", PAPER1),
    preset_run("caae_1.0", "caae/paper-lambda-1.0", PAPER1),
    preset_run("lran", "lran/paper", PAPER2),
    preset_run("lran_no_rank", "lran/no-rank", PAPER2),  # = GANomaly with the paper's weights
    preset_run("aae", "aae/paper", PAPER1),
    preset_run("lran_irec_adv", "lran/irec-adv", PAPER2),
    preset_run("lran_no_zrec", "lran/no-zrec", PAPER2),
    preset_run("caae_0.5", "caae/paper-lambda-0.5", PAPER1),
    preset_run("ae", "ae/paper-nets", PAPER1),
    # the modern reference (Kascenas et al. 2022), scored as the first paper's models; last: at the authors'
    # 64 channels and depth 4 an epoch costs about ten of a paper model's on 2 cores
    preset_run("dae", "dae/kascenas-2022", PAPER1),
)
