"""A two-objective study, tracked by a real `mlflow server` on 127.0.0.1, yields the right Pareto front."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.config import load_config
from study.results import read_trials_csv
from study.run import run_study


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real MLflow tracking server with its own SQLite store and artifact folder, on loopback."""
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    command += ["--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(1)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


def _brute_force_front(rows: list[dict], keys: list[tuple[str, str]]) -> set[str]:
    """Non-dominated completed trials by direct pairwise comparison (independent of study.pareto)."""
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
    assert all("train_seconds" in c.data.metrics for c in children)
