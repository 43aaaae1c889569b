"""Two studies on one machine, the second started while the first runs (a user debugging a small study beside a
long one): each runs on its own private Ray and both finish. Before, the second attached to the first one's Ray
(``address="auto"`` finds any local Ray), waited for its CPUs and died with it ("Failed to connect to GCS"),
leaving its MLflow parent run RUNNING for ever."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.config import load_config

if TYPE_CHECKING:
    from conftest import RayProcesses  # tests/conftest.py

ROOT = Path(__file__).parents[2]


def _start(config_path: Path, log: Path, ray_tmp: str) -> subprocess.Popen:
    """``python -m study.run`` as a user starts it: no RAY_ADDRESS (conftest sets "local" for in-process studies).
    Both share one Ray temp folder of their own (``RAY_TMPDIR``), as two studies share /tmp/ray on a user's machine,
    so no other Ray on this machine (another test's, a developer's ``ray start``) takes part."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "study.run", "--config", str(config_path)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_line(log: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in {log}"
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_second_study_runs_beside_the_first(
    write_config: Callable[..., Path], ray_processes: RayProcesses, tmp_path: Path
) -> None:
    long_path = write_config(name="long", num_samples=2, training={"epochs": 3})
    short_path = tmp_path / "short.yaml"
    short = {**yaml.safe_load(long_path.read_text()), "name": "short", "num_samples": 1}
    short["training"] = {**short["training"], "epochs": 1}
    short["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path / 'short-mlflow.db'}"}  # Ray is what is tested here
    short_path.write_text(yaml.safe_dump(short))

    logs = {name: tmp_path / f"{name}.log" for name in ("long", "short")}
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        first = _start(long_path, logs["long"], ray_tmp)
        _wait_for_line(logs["long"], "Ray: ", first)  # the first study's private Ray is up
        second = _start(short_path, logs["short"], ray_tmp)
        assert first.wait(timeout=1200) == 0, logs["long"].read_text()[-3000:]
        assert second.wait(timeout=600) == 0, logs["short"].read_text()[-3000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    short_log = logs["short"].read_text()
    assert "attached to" not in short_log and "Ray: " in short_log, short_log[-2000:]
    for path in (long_path, short_path):
        config = load_config(path)
        client = MlflowClient(config.mlflow.tracking_uri)
        experiment = client.get_experiment_by_name(config.name)
        parents = client.search_runs([experiment.experiment_id], "tags.role = 'study'")
        assert [p.info.status for p in parents] == ["FINISHED"], config.name
        trials = client.search_runs([experiment.experiment_id], "tags.role = 'trial'")
        assert len(trials) == config.num_samples and {t.info.status for t in trials} == {"FINISHED"}
