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


def test_run_names_tell_trials_apart() -> None:
    """Short run names: Tune's trial number, the family, its one or two settings that matter; settings in params."""
    from types import SimpleNamespace

    from study.tracking.names import row_run_name, run_name, trial_number

    caae = {"family": "caae", "latent_weight": 1.0, "lr": 3e-4, "batch_size": 32, "width": 16, "latent_dim": 16}
    assert trial_number(SimpleNamespace(experiment_tag="3_family=caae,latent_weight=1.0000")) == 3
    assert trial_number(SimpleNamespace(experiment_tag="")) is None
    assert run_name(3, caae) == "03 caae λ=1.00 lr=0.0003"
    assert run_name(4, {**caae, "latent_weight": 0.25}) == "04 caae λ=0.25 lr=0.0003"
    assert run_name(1, {"family": "dae", "noise_std": 1.4, "noise_res": 16}) == "01 dae σ=1.40 res=16"
    assert run_name(5, {"family": "dae", "image_size": 64, "noise_std": 1.4}) == "05 dae 64px σ=1.40"  # searched
    assert run_name(12, {"family": "lran", "w_a": "5.0", "w_r": "0.05"}) == "12 lran w_a=5.00 w_r=0.05"
    assert run_name(None, {"family": "new", "b": 2, "a": 1, "c": 3}) == "new a=1 b=2"  # unknown family: 2 settings
    named = {"trial_id": "t1", "status": "completed", "run_name": "02 vae β=0.50 lr=0.001"}
    assert row_run_name(named) == "02 vae β=0.50 lr=0.001"
    assert row_run_name({"trial_id": "baseline-threshold", "status": "baseline"}) == "baseline-threshold"


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
    path.write_text(
        "trial_id,family,status,val_pixel_auroc,mlflow_run_id\n00412376,vae,completed,0.9,\nab12cd34,ae,failed,,r1\n"
    )
    rows = read_trials_csv(path)
    assert [r["trial_id"] for r in rows] == ["00412376", "ab12cd34"]
    assert rows[0]["val_pixel_auroc"] == 0.9 and rows[0]["mlflow_run_id"] is None and rows[1]["val_pixel_auroc"] is None


def test_pareto_pictures_mark_the_front_winners_and_baseline(tmp_path) -> None:
    """pareto.png and pareto.html: a step line for the front (an L for a single point), each objective's winner,
    the threshold row as a reference, points labelled by run name."""
    from study.tracking.pareto import front_view, write_pareto

    objectives = [Objective("val_pixel_auroc"), Objective("val_slice_auroc")]

    def row(number: int, family: str, pixel: float, slice_: float, status: str = "completed") -> dict:
        last = {"val_pixel_auroc": pixel, "val_slice_auroc": slice_}
        name = "baseline-threshold" if status == "baseline" else f"{number:02d} {family}"
        return {**trial_row(name, {"family": family}, last, status), "run_name": name}

    rows = [row(0, "threshold", 0.55, 0.5, "baseline"), row(1, "caae", 0.8, 0.7), row(2, "lran", 0.76, 0.78)]
    rows += [row(3, "dae", 0.9, 0.6), row(4, "caae", 0.7, 0.65)]  # 04 is dominated by 01
    view = front_view(rows, objectives)
    assert [p["name"] for p in view.points if p["on_front"]] == ["01 caae", "02 lran", "03 dae"]
    winners = {metric: point["name"] for metric, point in view.winners.items()}
    assert winners == {"val_pixel_auroc": "03 dae", "val_slice_auroc": "02 lran"}
    assert [b["name"] for b in view.baseline] == ["baseline-threshold"]
    # the staircase: from left of every point at the best slice AUROC, down through the front to below every point
    assert view.step[0][1] == 0.78 and view.step[0][0] < 0.55 and view.step[-1][0] == 0.9 and view.step[-1][1] < 0.5
    assert (0.76, 0.7) in view.step and (0.8, 0.6) in view.step  # the corners between front points
    files = write_pareto(rows, objectives, tmp_path)
    assert [f.name for f in files] == ["pareto.csv", "pareto.png", "pareto.html"]
    page = (tmp_path / "pareto.html").read_text()
    assert all(name in page for name in ("01 caae", "02 lran", "03 dae", "04 caae", "baseline-threshold"))
    assert "<polyline" in page and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # offline
    one = front_view(rows[:2], objectives)  # a single trial: still a front, drawn as an L through its point
    assert len(one.step) == 3 and one.step[1] == (0.8, 0.7)
