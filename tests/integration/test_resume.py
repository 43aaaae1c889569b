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


def _epochs_logged(client: MlflowClient, study_dir: Path, experiment: str) -> dict[str, list[int]]:
    """trial_id -> steps of its `epoch` history, for the trial runs MLflow has so far."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs = client.search_runs([found.experiment_id], "tags.role = 'trial'")
    return {r.data.tags["trial_id"]: _epoch_steps(client, r.info.run_id) for r in runs}


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_unfinished_trial_continues_from_its_checkpoint(
    write_config: Callable[..., Path], ray_processes: RayProcesses, study_on_local_ray: Callable, tmp_path: Path
) -> None:
    """A driver killed after a trial's first epoch (its checkpoint saved): --resume continues that trial at epoch
    2, and its test metrics equal those of the same study run without interruption (each epoch's random draws
    depend on the seed, rank and epoch only: trainables.train_loop.epoch_seed)."""
    epochs = 3
    config_path = write_config(num_samples=1, training={"epochs": epochs})
    config = load_config(config_path)
    first = _start(config_path)
    client = MlflowClient(config.mlflow.tracking_uri)
    deadline = time.monotonic() + 600
    while not any(steps for steps in _epochs_logged(client, config.study_dir, config.name).values()):
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read() if first.poll() else "slow"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # epoch 1 reported (with its checkpoint); the trial is unfinished
    first.wait(timeout=60)
    ray_processes.kill_leftovers(grace_s=3)
    assert not [r for r in load_rows(config.study_dir) if r["status"] != "baseline"], "the trial had finished"

    second = _start(config_path, "--resume")
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output
    (row,) = [r for r in read_trials_csv(config.study_dir / "trials.csv") if r["status"] != "baseline"]
    assert row["status"] == "completed"
    steps = _epoch_steps(client, row["mlflow_run_id"])
    # Continued, not restarted: no epoch logged twice, the last one last. An epoch whose result reached its
    # checkpoint but not yet the killed driver's MLflow logger is trained once and never logged (seen: [1, 3]).
    assert steps == sorted(set(steps)) and steps[0] == 1 and steps[-1] == epochs, steps

    reference = load_config(write_config(num_samples=1, training={"epochs": epochs}, name="uninterrupted"))
    study_on_local_ray(reference)
    (expected,) = [r for r in read_trials_csv(reference.study_dir / "trials.csv") if r["status"] != "baseline"]
    for key in ("val_pixel_auroc", "test_pixel_auroc", "test_slice_auroc", "test_pixel_auprc"):
        assert abs(row[key] - expected[key]) <= 1e-3, (key, row[key], expected[key])
