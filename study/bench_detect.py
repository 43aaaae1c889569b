"""Bench section `detect`: what learning buys. The default study's best trial (chosen on val, read from
results/default/trials.csv) beside the untrained `threshold` baseline, both on the default study's test split.
"""

from __future__ import annotations

from typing import Any

from study.bench_common import DEFAULT_CONFIG, REPO, BenchPlan, say, slice_cache, study_config

NOTE = "no results/default/trials.csv: run python -m study.run first"


def best_of_study(config: Any) -> dict[str, Any]:
    """Test AUROCs of the study's best completed trial by its first objective (a val metric), or a note."""
    from study.results import TRIALS_CSV, best_trial, read_trials_csv

    path = REPO / config.results_dir / config.name / TRIALS_CSV
    if not path.is_file():
        return {"detection_note": NOTE}
    best = best_trial(read_trials_csv(path), config.objectives[0])
    if best is None:
        return {"detection_note": f"{path}: no completed trial"}
    return {
        "best_trial_id": str(best["trial_id"]),
        "best_family": best["family"],
        "best_test_pixel_auroc": best.get("test_pixel_auroc"),
        "best_test_slice_auroc": best.get("test_slice_auroc"),
        "detection_chosen_by": config.objectives[0].metric,
    }


def run(plan: BenchPlan) -> dict[str, Any]:
    """Section figures: best_test_* of the default study (when it has run) and threshold_test_* (always)."""
    from trainables.baseline import evaluate_untrained

    config = study_config(DEFAULT_CONFIG)
    figures = best_of_study(config)
    baseline = evaluate_untrained("threshold", slice_cache(DEFAULT_CONFIG))
    figures["threshold_test_pixel_auroc"] = baseline["test_pixel_auroc"]
    figures["threshold_test_slice_auroc"] = baseline["test_slice_auroc"]
    learned = figures.get("best_test_pixel_auroc")
    shown = f"{learned:.4f}" if isinstance(learned, float) else figures.get("detection_note")
    say(f"detect: best trial test pixel AUROC {shown}; threshold {baseline['test_pixel_auroc']:.4f}")
    return figures
