"""The parent run's summary of a two-objective study: winner, best values, fronts per family, the baseline row."""

from __future__ import annotations

from study.config import StudyConfig
from study.results import trial_row
from study.tracking.report import study_summary, summary_metrics
from trainables.objective import Objective

OBJECTIVES = [Objective("val_pixel_auroc", "max"), Objective("train_seconds", "min")]


def _row(trial_id: str, family: str, status: str, val: float, seconds: float | None, run_id: str = "") -> dict:
    last = {"val_pixel_auroc": val, "train_seconds": seconds, "test_pixel_auroc": val + 0.01, "test_slice_auroc": 0.5}
    config = {"family": family} if status == "baseline" else {"family": family, "lr": 0.001}
    row = trial_row(trial_id, config, last, status)
    return {**row, "mlflow_run_id": run_id}


def _rows() -> list[dict]:
    return [
        _row("baseline-threshold", "threshold", "baseline", 0.9, None),
        _row("t1", "vae", "completed", 0.8, 5.0, "a" * 32),
        _row("t2", "vae", "completed", 0.7, 3.0, "b" * 32),
        _row("t3", "ae", "completed", 0.75, 6.0, "c" * 32),  # dominated by t1 overall, alone on the ae front
        {**_row("t4", "vae", "failed", float("nan"), None), "failure_reason": "NonFiniteLossError"},
    ]


def test_summary_names_the_winner_fronts_and_baseline() -> None:
    config = StudyConfig(name="demo", families=["vae", "ae"], objectives=OBJECTIVES, num_samples=4)
    text = study_summary(config, _rows(), "sqlite:///results/mlflow.db")
    assert "4 of 4 trials (3 completed, 1 failed) of vae, ae." in text
    assert "**Winner** by `val_pixel_auroc`: trial `t1`, **vae lr=0.001**, MLflow run `" + "a" * 32 + "`" in text
    assert f"python -m study.score --model {'a' * 32} --tracking-uri sqlite:///results/mlflow.db" in text
    assert "the untrained `threshold` baseline scores better on `val_pixel_auroc` (0.9)" in text
    fronts = {tuple(line.split(" | ")[:2]) for line in text.splitlines() if line.startswith("| ")}
    assert {("| overall", "t1"), ("| overall", "t2"), ("| vae", "t1"), ("| vae", "t2"), ("| ae", "t3")} <= fronts
    assert ("| overall", "t3") not in fronts and ("| baseline", "baseline-threshold") in fronts
    metrics = {m.key: m.value for m in summary_metrics(config, _rows())}
    assert metrics["best/val_pixel_auroc"] == 0.8 and metrics["best/train_seconds"] == 3.0
    assert metrics["best_ae/val_pixel_auroc"] == 0.75 and metrics["threshold/val_pixel_auroc"] == 0.9
    assert "threshold/train_seconds" not in metrics  # the baseline trains nothing


def test_summary_without_a_completed_trial_names_no_winner() -> None:
    config = StudyConfig(name="demo", objectives=OBJECTIVES[:1], num_samples=2)
    rows = [r for r in _rows() if r["status"] in ("baseline", "failed")]
    text = study_summary(config, rows, "sqlite:///results/mlflow.db")
    assert "No trial completed, so there is no winner." in text and "study.score" not in text
    assert [m.key for m in summary_metrics(config, rows)][0].startswith("threshold/")


def test_trial_ids_of_digits_stay_text(tmp_path) -> None:
    """Found by the 40-trial load test: an all-digit trial id was read back as an int and broke sorting."""
    from study.results import read_trials_csv

    path = tmp_path / "trials.csv"
    path.write_text("trial_id,family,status,val_pixel_auroc,mlflow_run_id\n00412376,vae,completed,0.9,\nab12cd34,ae,failed,,r1\n")
    rows = read_trials_csv(path)
    assert [r["trial_id"] for r in rows] == ["00412376", "ab12cd34"]
    assert rows[0]["val_pixel_auroc"] == 0.9 and rows[0]["mlflow_run_id"] is None and rows[1]["val_pixel_auroc"] is None
