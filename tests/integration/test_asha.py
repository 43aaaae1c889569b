"""An ASHA study end to end: the scheduler stops weak trials after their first epoch; they are recorded as
stopped_early (in trials.csv and MLflow), never scored on test, and never on the front."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.config import load_config
from study.results import read_trials_csv


@pytest.mark.slow  # four trials (about 3 minutes on a busy 2-core machine): run by .ci/run
def test_asha_stops_weak_trials_and_keeps_them_off_the_front(
    write_config: Callable[..., Path], study_on_local_ray: Callable, capsys: pytest.CaptureFixture[str]
) -> None:
    # 3 epochs, so ASHA's only rung (after epoch 1; max_t is 3 epochs + the final report) can stop a trial.
    config = load_config(write_config(scheduler="asha", num_samples=4, training={"epochs": 3}))
    outcome = study_on_local_ray(config)
    assert not outcome.interrupted
    rows = [r for r in read_trials_csv(outcome.study_dir / "trials.csv") if r["status"] != "baseline"]
    assert len(rows) == config.num_samples
    stopped = [r for r in rows if r["status"] == "stopped_early"]
    completed = [r for r in rows if r["status"] == "completed"]
    assert stopped and completed and len(stopped) + len(completed) == len(rows), [r["status"] for r in rows]
    printed = capsys.readouterr().out  # the progress lines say the same as trials.csv
    assert printed.count("stopped early by the scheduler after epoch 1/3") == len(stopped), printed
    assert printed.count(": completed") == len(completed), printed

    client = MlflowClient(config.mlflow.tracking_uri)
    for row in stopped:  # one epoch, then stopped: no chosen checkpoint, no test score
        run = client.get_run(row["mlflow_run_id"])
        assert run.data.tags["status"] == "stopped_early"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1]
        assert row["test_pixel_auroc"] is None and "test/pixel_auroc" not in run.data.metrics
    for row in completed:
        steps = [m.step for m in client.get_metric_history(row["mlflow_run_id"], "epoch")]
        assert steps == [1, 2, 3] and 0.0 <= row["test_pixel_auroc"] <= 1.0

    pareto = read_trials_csv(outcome.study_dir / "pareto.csv")
    front_ids = {r["trial_id"] for r in pareto}
    assert front_ids and front_ids.isdisjoint(r["trial_id"] for r in stopped)
    best = max(r["val_pixel_auroc"] for r in completed)  # one objective: the front is the best completed trial
    assert front_ids == {r["trial_id"] for r in completed if r["val_pixel_auroc"] == best}
