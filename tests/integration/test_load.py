"""Load: 40 short trials, 4 at a time, on this 2-core machine; every trial is counted once everywhere.

results/ (trials.csv without the baseline row), Optuna's storage (COMPLETE trials) and MLflow (child runs
with role=trial) must agree exactly: nothing lost, nothing doubled under concurrency. The trials run with the
product's worker-group start timeout (training.worker_start_timeout_s); the longest trial start is printed,
the figure that default was chosen from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import ray
from mlflow.tracking import MlflowClient

from study.bench.study import TrialClock, _with_clock, start_costs
from study.config import load_config
from study.results import read_trials_csv
from study.run import run_study
from study.search import optuna_storage_url

TRIALS = 40
CONCURRENT = 4


@pytest.fixture
def ray_2_cpus() -> Iterator[None]:
    """A local Ray of 2 CPUs."""
    ray.init(num_cpus=2, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_forty_trials_four_at_a_time_are_all_accounted_for(
    write_config: Callable[..., Path], ray_2_cpus: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # 4 x (0.2 trial + 0.25 worker) = 1.8 of the 2 CPUs: four trials really run at once.
    training = {"epochs": 1, "workers_per_trial": 1, "cpus_per_worker": 0.25, "cpus_per_trial": 0.2}
    config = load_config(write_config(num_samples=TRIALS, max_concurrent_trials=CONCURRENT, training=training))
    clock = TrialClock()
    started = time.monotonic()
    with _with_clock(clock):
        outcome = run_study(config)
    wall_s = time.monotonic() - started
    starts = sorted(start_costs(clock))
    with capsys.disabled():
        print(
            f"\nload test: {TRIALS} trials, {CONCURRENT} concurrent, {wall_s:.0f} s wall time; trial start to "
            f"first step: median {starts[len(starts) // 2]:.1f} s, max {starts[-1]:.1f} s "
            f"(worker_start_timeout_s {config.training.worker_start_timeout_s:.0f} s)"
        )
    assert not outcome.interrupted

    rows = [r for r in read_trials_csv(config.study_dir / "trials.csv") if r["status"] != "baseline"]
    assert len(rows) == TRIALS and {r["status"] for r in rows} == {"completed"}
    trial_ids = sorted(r["trial_id"] for r in rows)
    assert len(set(trial_ids)) == TRIALS

    study = optuna.load_study(study_name=config.name, storage=optuna_storage_url(config))
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == TRIALS == len(states)

    client = MlflowClient(config.mlflow.tracking_uri)
    experiment_id = client.get_experiment_by_name(config.name).experiment_id
    children = client.search_runs([experiment_id], "tags.role = 'trial'", max_results=1000)
    assert sorted(c.data.tags["trial_id"] for c in children) == trial_ids
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {outcome.parent_run_id}
