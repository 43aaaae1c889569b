"""A study whose driver is killed mid-way resumes with --resume: nothing re-run, nothing lost, nothing doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest
from mlflow.tracking import MlflowClient

from study.config import load_config
from study.results import load_rows, read_trials_csv

if TYPE_CHECKING:
    from conftest import RayProcesses  # tests/conftest.py

ROOT = Path(__file__).parents[2]


def _start(config_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "study.run", "--config", str(config_path), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the kill below takes the driver and the local Ray it started
    )


def _wait_for_rows(study_dir: Path, count: int, process: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while len([r for r in load_rows(study_dir) if r["status"] != "baseline"]) < count:
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "study made no progress"
        time.sleep(1)


def _epoch_steps(client: MlflowClient, run_id: str) -> list[int]:
    """Steps at which a trial's run logged `epoch`, one entry per report: a trial trained again repeats them."""
    return sorted(m.step for m in client.get_metric_history(run_id, "epoch"))


@pytest.mark.timeout(1200)
def test_killed_driver_resumes_without_rerun_or_duplicates(
    write_config: Callable[..., Path], ray_processes: RayProcesses, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(num_samples=3, training={"epochs": 1})
    config = load_config(config_path)
    study_dir = config.study_dir
    first = _start(config_path)  # it and every Ray process it starts carry ray_processes' marker
    _wait_for_rows(study_dir, 1, first)
    os.killpg(first.pid, signal.SIGKILL)  # the driver dies without any chance to clean up
    first.wait(timeout=60)
    finished_before = {r["trial_id"]: r for r in load_rows(study_dir) if r["status"] != "baseline"}
    # What a user's machine would be left with: the killed driver's Ray (GCS, raylet, workers) may outlive it.
    orphans = ray_processes.kill_leftovers(grace_s=3)
    assert ray_processes.find() == {}
    with capsys.disabled():
        print(f"\nresume: {len(orphans)} Ray processes outlived the killed driver and were killed")

    second = _start(config_path, "--resume")
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output
    assert "resuming:" in output

    rows = [r for r in read_trials_csv(study_dir / "trials.csv") if r["status"] != "baseline"]
    assert len(rows) == config.num_samples
    assert {r["status"] for r in rows} == {"completed"}
    by_id = {r["trial_id"]: r for r in rows}
    client = MlflowClient(config.mlflow.tracking_uri)
    for trial_id, before in finished_before.items():
        # Kept under the same id and not trained again: its run holds each epoch once (Tune may restart a trial
        # whose end it had not yet saved; the trial then finds its final checkpoint and reports the recorded
        # result without any epoch).
        assert _epoch_steps(client, before["mlflow_run_id"]) == [1], trial_id
        assert by_id[trial_id]["test_pixel_auroc"] == before["test_pixel_auroc"]
    for row in rows:  # and no trial, finished or continued from its checkpoint, trained an epoch twice
        assert _epoch_steps(client, row["mlflow_run_id"]) == [1], row["trial_id"]

    storage = optuna.storages.RDBStorage(f"sqlite:///{(study_dir / 'optuna.db').resolve()}")
    study = optuna.load_study(study_name=config.name, storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == config.num_samples

    experiment = client.get_experiment_by_name(config.name)
    parents = client.search_runs([experiment.experiment_id], "tags.role = 'study'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], "tags.role = 'trial'")
    assert sorted(c.data.tags["trial_id"] for c in children) == sorted(r["trial_id"] for r in rows)
    assert {c.info.status for c in children} == {"FINISHED"}


def test_resume_without_a_study_is_refused(write_config: Callable[..., Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "study.run", "--config", str(write_config()), "--resume"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "nothing to resume" in result.stderr
