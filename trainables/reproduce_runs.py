"""The reproduction's runs and metric sets, shared by the training command (trainables/reproduce.py) and its
tables (trainables/reproduce_table.py), so neither imports the other's module for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LESION, POOLED = "lesion", "pooled"  # metric sets: lesion subjects only / every subject of the split


@dataclass(frozen=True)
class Run:
    key: str  # row name in the tables
    family: str  # registered family
    objective: tuple[str, str]  # (metric set, metric) choosing the epoch on val: the paper's own measure
    hparams: dict[str, Any] = field(default_factory=dict)  # overrides of the family's (paper) defaults


PAPER1 = (LESION, "pixel_auroc")  # first paper: pixel AUROC on BraTS (lesion subjects only)
PAPER2 = (POOLED, "slice_auroc")  # second paper: slice-level AUROC
# In order of priority (runs start in this order; a deadline cuts the last ones first)
RUNS = (
    Run("threshold", "threshold", PAPER1),
    Run("vae", "vae", PAPER1),
    Run("caae_1.0", "caae", PAPER1, {"latent_weight": 1.0}),
    Run("lran", "lran", PAPER2),
    Run("lran_no_rank", "lran", PAPER2, {"use_rank": False}),  # = GANomaly with the paper's weights
    Run("aae", "aae", PAPER1),
    Run("lran_irec_adv", "lran", PAPER2, {"use_rank": False, "use_zrec": False}),
    Run("lran_no_zrec", "lran", PAPER2, {"use_zrec": False}),
    Run("caae_0.5", "caae", PAPER1, {"latent_weight": 0.5}),
    Run("ae", "ae", PAPER1),
    # the modern reference (Kascenas et al. 2022), scored as the first paper's models; last: at the authors'
    # 64 channels and depth 4 an epoch costs about ten of a paper model's on 2 cores
    Run("dae", "dae", PAPER1),
)
