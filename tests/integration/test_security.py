"""Secrets stay secret and doors stay shut.

A smoke study stages its scans from S3 (moto's server, over HTTP) and logs to an `mlflow server` that demands a
password, with secret values in its environment (S3 keys, MLflow password and token, Ray's auth token). None may
reach MLflow (the server's store, artifacts and log), results/ (with Ray's Tune and Train state), the staged data,
the Ray session's own logs (/tmp/ray/session_*/logs of the Ray the study started) or the output. The Ray the study
starts keeps token authentication on: a client with another token is turned away. MLflow servers and dashboards
listen on loopback only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.cluster.block import read_study_block
from study.config import TrainingConfig, load_config
from study.data import data_folders
from trainables.data.staging import upload_cohort

if TYPE_CHECKING:
    from conftest import MlflowServer  # tests/conftest.py

ROOT = Path(__file__).parents[2]
CLUSTER_YAMLS = sorted((ROOT / "cluster").glob("*.yaml"))

# Runs the study through its entry point; just before the study shuts down the Ray it started, reports how
# that Ray is guarded (token auth on, another client turned away, dashboard on loopback).
PROBE = """
import json, os, subprocess, sys
import ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled
from study.run import main

report = {}
real_shutdown = ray.shutdown


def inspect_then_shutdown(*args, **kwargs):
    if ray.is_initialized() and not report:
        gcs = ray.get_runtime_context().gcs_address
        connect = f"import ray; ray.init(address={gcs!r}, log_to_driver=False); print('CONNECTED')"
        env = {**os.environ, "RAY_AUTH_TOKEN": "another-token-" + "0" * 24}
        intruder = subprocess.run([sys.executable, "-c", connect], env=env, capture_output=True, text=True, timeout=300)
        report.update(
            token_auth=is_token_auth_enabled(),
            dashboard=ray._private.worker._global_node.address_info.get("webui_url"),
            intruder_code=intruder.returncode,
            intruder_output=intruder.stdout + intruder.stderr,
            session=ray._private.worker._global_node.get_session_dir_path(),
        )
    real_shutdown(*args, **kwargs)


ray.shutdown = inspect_then_shutdown
report["code"] = main(sys.argv[1:])
print("PROBE " + json.dumps(report))
"""


def _secrets() -> dict[str, str]:
    """Fresh, unmistakable secret values for every credential the study could meet."""
    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
        "MLFLOW_TRACKING_TOKEN": "mlflow-token-" + secrets.token_hex(16),
        "MLFLOW_TRACKING_PASSWORD": "mlflow-password-" + secrets.token_hex(16),
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }


def _leaks(folder: Path, output: str, values: dict[str, str]) -> list[str]:
    """Every (place, secret name) where a secret's value appears: files' bytes, then the output."""
    found = []
    for path in (p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path}: {name}" for name, value in values.items() if value.encode() in data]
    return found + [f"output: {name}" for name, value in values.items() if value in output]


def _mlflow_text(tracking_uri: str) -> str:
    """Every param, tag and metric name of every run, as MLflow serves them (a store may compress pages)."""
    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert runs, "the study logged no run"
    return json.dumps([[r.data.params, r.data.tags, sorted(r.data.metrics)] for r in runs])


def _seeded_cluster_yaml(folder: Path, config_path: Path, endpoint: str, tracking_uri: str) -> tuple[Path, int]:
    """A cluster YAML whose datasets live in a fresh bucket of `endpoint`, seeded with the study's own cohort;
    (its path, the number of scans uploaded)."""
    bucket = f"brain-{uuid.uuid4().hex[:10]}"
    block = {
        "storage": {"endpoint_url": endpoint, "region": "us-east-1"},
        "data": {"healthy": f"s3://{bucket}/hcp/", "lesion": f"s3://{bucket}/brats/"},
        "cache_dir": str(folder / "staged"),
        "mlflow": {"tracking_uri": tracking_uri},
    }
    path = folder / "cluster.yaml"
    path.write_text(json.dumps({"metadata": {"study": block}}))  # JSON is YAML
    healthy, lesion = data_folders(load_config(config_path))  # the synthetic cohort, generated once per session
    scans = len([*healthy.rglob("*.nii.gz"), *lesion.rglob("*.nii.gz")])
    assert scans > 0 and upload_cohort(read_study_block(path).data, healthy.parent, create_bucket=True) >= scans
    return path, scans


def _refuses_anonymous(uri: str) -> bool:
    """True when the server answers an unauthenticated API call with 401."""
    try:
        urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    except urllib.error.HTTPError as err:
        return err.code == 401
    return False


def test_no_secret_leaves_the_environment_and_ray_stays_locked(
    tmp_path: Path,
    write_config: Callable[..., Path],
    s3_endpoint: str,
    protected_mlflow_server: MlflowServer,
) -> None:
    server = protected_mlflow_server
    assert _refuses_anonymous(server.uri)
    values = {**_secrets(), "MLFLOW_TRACKING_PASSWORD": server.password}
    config_path = write_config(num_samples=1, training={"epochs": 1})
    cluster_yaml, scans = _seeded_cluster_yaml(tmp_path, config_path, s3_endpoint, server.uri)
    env = {**os.environ, **values, "RAY_AUTH_MODE": "token", "MLFLOW_TRACKING_USERNAME": server.username}
    script = [sys.executable, "-c", PROBE, "--config", str(config_path), "--cluster", str(cluster_yaml)]
    run = subprocess.run(script, cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    report = json.loads(output.split("PROBE ", 1)[1].splitlines()[0])
    assert report["code"] == 0, output[-5000:]
    assert "token_auth" in report, "the study did not start (and shut down) a Ray of its own"

    # The scan covered a real study that read its cohort from S3 (Ray tasks built the shared slice cache from the
    # bucket's scans: the node holds the cache, no raw scan) and logged to the protected server.
    assert (tmp_path / "results" / "smoke" / "trials.csv").is_file()
    assert scans > 0 and list((tmp_path / "staged").rglob("meta.json"))
    assert not list((tmp_path / "staged").rglob("*.nii.gz"))
    assert not (tmp_path / "mlflow.db").exists()  # the cluster's tracking URI replaced the YAML's
    logged = _mlflow_text(f"sqlite:///{server.store / 'server.db'}")  # read from the server's store directly
    assert "smoke" in logged and [name for name, value in values.items() if value in logged] == []

    assert _leaks(tmp_path, output, values) == []
    assert _leaks(server.store, "", values) == []  # the server's store, artifacts, user database and log
    session_logs = Path(report["session"]) / "logs"
    assert session_logs.is_dir() and _leaks(session_logs, "", values) == []
    # What Ray does record there: the Train controller's runtime_env, carrying the product's start timeout.
    value = re.escape(f'"{TrainingConfig().worker_start_timeout_s}"')
    agent_log = (session_logs / "runtime_env_agent.log").read_text()
    assert re.search(f'"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": ?{value}', agent_log)

    assert report["token_auth"] is True
    assert report["intruder_code"] != 0 and "CONNECTED" not in report["intruder_output"]
    assert "Authentication token is missing or incorrect" in report["intruder_output"], report["intruder_output"]
    assert report["dashboard"] in (None, "") or report["dashboard"].startswith("127.0.0.1:")


def test_the_leak_scan_finds_a_planted_secret(tmp_path: Path) -> None:
    """The scan above can fail: a secret written anywhere below the folder, or printed, is reported."""
    values = _secrets()
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "params.json").write_text(json.dumps({"key": values["AWS_SECRET_ACCESS_KEY"]}))
    leaks = _leaks(tmp_path, f"token={values['RAY_AUTH_TOKEN']}", values)
    assert leaks == [f"{tmp_path / 'deep' / 'er' / 'params.json'}: AWS_SECRET_ACCESS_KEY", "output: RAY_AUTH_TOKEN"]


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_servers_on_the_head_listen_on_loopback_only(path: Path) -> None:
    """MLflow's server and Ray's dashboard bind 127.0.0.1 (reached through `ray attach --port-forward`)."""
    raw = yaml.safe_load(path.read_text())
    commands = [c for key, value in raw.items() if key.endswith("_commands") for c in value or []]
    assert "0.0.0.0" not in " ".join(commands) and "0.0.0.0" not in path.read_text()
    mlflow = [c for c in commands if "study.mlflow_server start" in c]  # it passes --host 127.0.0.1 (below)
    heads = [c for c in raw["head_start_ray_commands"] if "ray start" in c]
    assert mlflow and not [c for c in commands if "mlflow server" in c]
    assert '"--host", "127.0.0.1"' in (ROOT / "study" / "mlflow_server.py").read_text()
    assert heads and all("--dashboard-host=127.0.0.1" in c for c in heads)


def test_the_study_code_starts_no_server() -> None:
    """No module the study runs launches an MLflow server or binds a wildcard address.

    study/mlflow_server.py is the head's start/stop command (cluster YAMLs), never imported by the study.
    """
    sources = [p for folder in ("study", "trainables", "search_spaces") for p in (ROOT / folder).rglob("*.py")]
    sources = [p for p in sources if p.name != "mlflow_server.py"]
    assert sources
    offenders = [
        str(p)
        for p in sources
        if any(s in p.read_text() for s in ("mlflow server", "mlflow.server", "0.0.0.0", "ThreadingHTTPServer"))
    ]
    assert offenders == []
