"""Two-objective studies, one tracked by a real `mlflow server` on 127.0.0.1, one searching two families, yield
the right Pareto fronts: overall and per family, equal to a brute-force filter of trials.csv."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.config import load_config
from study.results import read_trials_csv
from study.run import run_study


def _brute_force_front(rows: list[dict], keys: list[tuple[str, str]]) -> set[str]:
    """Non-dominated completed trials by direct pairwise comparison (independent of study.tracking.pareto)."""
    done = [r for r in rows if r["status"] == "completed"]

    def better_or_equal(a: dict, b: dict, key: str, mode: str) -> bool:
        return a[key] >= b[key] if mode == "max" else a[key] <= b[key]

    def strictly_better(a: dict, b: dict, key: str, mode: str) -> bool:
        return a[key] > b[key] if mode == "max" else a[key] < b[key]

    front = set()
    for b in done:
        dominated = any(
            all(better_or_equal(a, b, k, m) for k, m in keys) and any(strictly_better(a, b, k, m) for k, m in keys)
            for a in done
            if a is not b
        )
        if not dominated:
            front.add(b["trial_id"])
    return front


def test_two_objective_front_matches_brute_force(write_config: Callable[..., Path], mlflow_server: str) -> None:
    objectives = [{"metric": "val_pixel_auroc", "mode": "max"}, {"metric": "train_seconds", "mode": "min"}]
    path = write_config(
        objectives=objectives,
        sampler="nsga2",
        num_samples=4,
        training={"epochs": 1},
        mlflow={"tracking_uri": mlflow_server},
    )
    config = load_config(path)
    outcome = run_study(config)
    assert not outcome.interrupted

    rows = [r for r in read_trials_csv(outcome.study_dir / "trials.csv") if r["status"] != "baseline"]
    assert len(rows) == 4 and all(r["train_seconds"] > 0 for r in rows)
    pareto = read_trials_csv(outcome.study_dir / "pareto.csv")
    expected = _brute_force_front(rows, [("val_pixel_auroc", "max"), ("train_seconds", "min")])
    assert {r["trial_id"] for r in pareto if r["front"] == "overall"} == expected
    assert {r["trial_id"] for r in pareto if r["front"] == "vae"} == expected  # one family: same front
    assert (outcome.study_dir / "pareto.png").stat().st_size > 10_000

    client = MlflowClient(mlflow_server)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"pareto.csv", "pareto.png", "trials.csv"} <= artifacts
    query = f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.role = 'trial'"
    children = client.search_runs([parent.info.experiment_id], query)
    assert len(children) == 4
    assert all("1_objectives/train_seconds" in c.data.metrics for c in children)  # study.tracking.keys


@pytest.mark.slow  # four trials (about 3 minutes on a busy 2-core machine): run by .ci/run
def test_two_family_fronts_match_brute_force(write_config: Callable[..., Path], study_on_local_ray: Callable) -> None:
    objectives = [{"metric": "val_pixel_auroc", "mode": "max"}, {"metric": "train_seconds", "mode": "min"}]
    keys = [("val_pixel_auroc", "max"), ("train_seconds", "min")]
    path = write_config(
        families=["vae", "ae"],
        objectives=objectives,
        sampler="nsga2",
        num_samples=4,
        points_to_evaluate=[{"family": "vae"}, {"family": "ae"}],  # both families are trained whatever NSGA-II draws
        training={"epochs": 1},
    )
    config = load_config(path)
    outcome = study_on_local_ray(config)
    assert not outcome.interrupted

    rows = [r for r in read_trials_csv(outcome.study_dir / "trials.csv") if r["status"] != "baseline"]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert {r["family"] for r in rows} == {"vae", "ae"}
    pareto = read_trials_csv(outcome.study_dir / "pareto.csv")
    assert {r["front"] for r in pareto} == {"overall", "vae", "ae"}
    assert {r["trial_id"] for r in pareto if r["front"] == "overall"} == _brute_force_front(rows, keys)
    for family in ("vae", "ae"):
        expected = _brute_force_front([r for r in rows if r["family"] == family], keys)
        assert {r["trial_id"] for r in pareto if r["front"] == family} == expected, family
