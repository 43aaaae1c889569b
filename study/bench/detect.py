"""Bench section `detect`: what learning buys. The default study's best trial (chosen on val by the study's
first objective, read from results/default/trials.csv) beside the untrained `threshold` baseline, both on the
default study's test split: pixel AUROC and AUPRC overall and per lesion appearance, Dice at the val threshold,
slice AUROC. ``detect_margin_<metric>`` is learned minus threshold (positive: learning buys something).
Targets (issue 14): best test pixel AUROC >= 0.95 and pixel AUPRC >= 0.5 on the default cohort.
"""

from __future__ import annotations

from typing import Any

from study.bench.common import DEFAULT_CONFIG, REPO, BenchPlan, say, slice_cache, study_config

NOTE = "no results/default/trials.csv: run python -m study.run first"
# Test metrics compared, overall; the pixel ones also per appearance where the cohort records appearances.
OVERALL = ("pixel_auroc", "pixel_auprc", "dice", "slice_auroc")
PER_APPEARANCE = ("pixel_auroc", "pixel_auprc")


def compared_metrics(appearances: list[str]) -> list[str]:
    """The test metric names (without ``test_``) the section reports for both detectors."""
    return list(OVERALL) + [f"{m}_{a}" for a in appearances for m in PER_APPEARANCE]


def best_of_study(config: Any, names: list[str]) -> dict[str, Any]:
    """Test figures of the study's best completed trial by its first objective (a val metric), or a note."""
    from study.results import TRIALS_CSV, best_trial, read_trials_csv

    path = REPO / config.results_dir / config.name / TRIALS_CSV
    if not path.is_file():
        return {"detection_note": NOTE}
    best = best_trial(read_trials_csv(path), config.primary_objective)
    if best is None:
        return {"detection_note": f"{path}: no completed trial"}
    figures = {"best_trial_id": str(best["trial_id"]), "best_family": best["family"]}
    figures["detection_chosen_by"] = config.primary_objective.metric
    figures.update({f"best_test_{name}": best.get(f"test_{name}") for name in names})
    return figures


def margins(figures: dict[str, Any], names: list[str]) -> dict[str, float]:
    """``detect_margin_<name>``: best trial minus threshold baseline, where both were measured."""
    from trainables.numbers import is_finite

    out = {}
    for name in names:
        learned, baseline = figures.get(f"best_test_{name}"), figures.get(f"threshold_test_{name}")
        if is_finite(learned) and is_finite(baseline):
            out[f"detect_margin_{name}"] = learned - baseline
    return out


def run(plan: BenchPlan) -> dict[str, Any]:
    """Section figures: best_test_* of the default study (when it has run), threshold_test_* (always), margins."""
    from trainables.baseline import evaluate_untrained
    from trainables.data.dataset import SliceDataset

    config = study_config(DEFAULT_CONFIG)
    cache = slice_cache(DEFAULT_CONFIG)
    names = compared_metrics(SliceDataset(cache, "test").appearances)
    figures = best_of_study(config, names)
    baseline = evaluate_untrained("threshold", cache)
    figures.update({f"threshold_test_{name}": baseline.get(f"test_{name}") for name in names})
    figures.update(margins(figures, names))
    learned = figures.get("best_test_pixel_auroc")
    shown = f"{learned:.4f}" if isinstance(learned, float) else figures.get("detection_note")
    say(f"detect: best trial test pixel AUROC {shown}; threshold {baseline['test_pixel_auroc']:.4f}")
    return figures
