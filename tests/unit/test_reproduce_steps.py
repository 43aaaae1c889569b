"""The reproduction's step budget (``--steps N``): exactly N auto-encoder steps, the last epoch partial, no plateau
stop, the final and the val-chosen model both reported, the budget in the run's JSON. One real cAAE run on a tiny
cohort through the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trainables.data.cache import SplitConfig, prepare_slice_cache
from trainables.data.dataset import SliceDataset
from trainables.data.preprocess import PreprocessConfig
from trainables.data.synthetic import generate_cohort
from trainables.reproduce import Budget, _stop_reason, main

BATCH = 16


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("steps")
    generate_cohort(root / "cohort", n_healthy=6, n_lesion=3, seed=0)
    return prepare_slice_cache(root / "cohort" / "hcp", root / "cohort" / "brats", root / "cache",
                               PreprocessConfig(), SplitConfig())  # fmt: skip


def test_step_budget_rule():
    budget = Budget(max_epochs=2, early_stop=False, max_steps=30)
    assert budget.epochs(14) == 3  # 14 + 14 + 2: the cap in epochs is not used
    assert _stop_reason(budget, 2, 1, steps=28) is None
    assert _stop_reason(budget, 3, 1, steps=30) == "max_steps"
    with pytest.raises(ValueError, match="max_steps"):
        Budget(max_steps=30)  # a step budget never stops on a plateau
    with pytest.raises(ValueError, match="max_steps"):
        Budget(early_stop=False, max_steps=0)


def test_steps_trains_exactly_n_steps_and_reports_both_models(cache: Path, tmp_path: Path):
    per_epoch = len(SliceDataset(cache, "train")) // BATCH
    steps = per_epoch + 2  # two epochs, the second one partial
    argv = ["--cache", str(cache), "--out", str(tmp_path), "--only", "caae_1.0", "--seeds", "0",
            "--steps", str(steps), "--batch-size", str(BATCH), "--recon-norm", "squared", "--no-table"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((tmp_path / "runs" / "caae_1.0-seed0.json").read_text())
    assert record["steps"] == steps and record["stopped"] == "max_steps"
    assert record["epochs"] == math.ceil(steps / per_epoch) == 2
    assert record["budget"]["max_steps"] == steps and record["budget"]["early_stop"] is False
    assert record["hparams"]["recon_norm"] == "squared"
    assert len(record["history"]) == len(record["losses"]) == 2
    assert {"recon", "latent"} <= set(record["losses"][-1])  # the balance of lambda's term, per epoch
    # the final model is scored on test where it is not the val-chosen one (else it is the chosen one)
    assert ("test_final" in record) == (record["best_epoch"] != record["epochs"])
    assert math.isfinite(record["test"]["lesion"]["pixel_auroc"])
