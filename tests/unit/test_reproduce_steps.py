"""The reproduction's step budget (``--steps N``): exactly N auto-encoder steps, the last epoch partial, no plateau
stop, the final and the val-chosen model both reported, the budget in the run's JSON. One real cAAE run on a tiny
cohort through the command line; the recon_norm table (trainables/reproduce/recon_norm.py) of such records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trainables.data.dataset import SliceDataset
from trainables.reproduce.recon_norm import final_auroc, summary, term_ratio
from trainables.reproduce.recon_norm import main as recon_norm_main
from trainables.reproduce.train import Budget, _stop_reason, main

BATCH = 16


@pytest.fixture(scope="module")
def cache(tiny_cache: Path) -> Path:
    return tiny_cache


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


def _record(seed: int, chosen: float, final: float | None, latent_weight: float, bright: bool = False) -> dict:
    """A run record as trainables.reproduce writes it, reduced to what the recon_norm table reads; ``bright``: with
    the bright-lesion subjects' AUROC (chosen + 0.1, final + 0.1), as runs since per-appearance metrics record it."""
    record = {"seed": seed, "hparams": {"latent_weight": latent_weight}, "best_epoch": 1 if final else 2, "epochs": 2,
              "steps": 28, "budget": {"max_steps": 28}, "test": {"lesion": {"pixel_auroc": chosen}},
              "losses": [{"recon": 90.0, "latent": 1.0}, {"recon": 80.0, "latent": 2.0}]}  # fmt: skip
    if final is not None:
        record["test_final"] = {"lesion": {"pixel_auroc": final}}
    if bright:
        for name in ("test", "test_final") if final is not None else ("test",):
            record[name]["lesion"]["pixel_auroc_bright"] = record[name]["lesion"]["pixel_auroc"] + 0.1
    return record


def test_recon_norm_table_reads_final_model_and_last_epoch_balance(tmp_path: Path):
    rows = {"l2": [(0.6, 0.5), (0.7, None)], "squared": [(0.8, 0.9), (0.4, None)]}
    for norm, seeds in rows.items():
        (tmp_path / norm / "runs").mkdir(parents=True)
        for seed, (chosen, final) in enumerate(seeds):
            path = tmp_path / norm / "runs" / f"caae_0.5-seed{seed}.json"
            path.write_text(json.dumps(_record(seed, chosen, final, 0.5, bright=norm == "squared")))
    chosen_is_final = _record(1, 0.7, None, 0.5)
    assert final_auroc(chosen_is_final) == 0.7 and final_auroc(_record(0, 0.6, 0.5, 0.5)) == 0.5
    assert term_ratio(chosen_is_final) == pytest.approx(100 * 0.5 * 2.0 / 80.0)  # the last epoch's terms
    lines = summary(tmp_path)
    row = (
        "| caae_0.5 | l2 | 0.650 ± 0.071 (n=2) | 0.600 ± 0.141 (n=2) | not recorded | not recorded | 1.25 ± 0.00 (n=2) "
        "| 28 steps (2 ep) |"
    )
    assert row in lines
    # bright only: val-chosen 0.9 and 0.5, final 1.0 (seed 0's final model) and 0.5 (seed 1's is its chosen one)
    assert (
        "| caae_0.5 | squared | 0.600 ± 0.283 (n=2) | 0.650 ± 0.354 (n=2) | 0.700 ± 0.283 (n=2) | 0.750 ± 0.354 (n=2) |"
        in "".join(lines)
    )
    assert not any(line.startswith("| caae_1.0") for line in lines)  # no runs, no row
    assert "| caae_0.5 | squared | 0 | 0.800 (1) | 0.900 | 1.25 | 80.00 | 2.000 |" in lines
    with pytest.raises(SystemExit, match="no runs folder"):
        recon_norm_main([str(tmp_path / "elsewhere")])
