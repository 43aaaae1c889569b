"""The whole cluster path on one machine, every part real and reached over loopback; nothing patched.

A moto S3 server holds the synthetic cohort (sent with `python -m study.stage --upload`); an `mlflow server`
keeps its artifacts on that S3; a Ray head and a second node run under `ray start` with token auth; a cluster
YAML (local provider) names them all in metadata.study, Ray storage included. `python -m study.run --cluster`
must then leave every checkpoint in the bucket (none on local disk), an MLflow pyfunc model on each run, the
winner registered as `champion`, and `study.score --model models:/NAME@champion` a map on the input's grid.
Here both nodes see one file system, so Ray Train's refusal of head-local storage cannot show; the test shows
that nothing the study needs after a trial lives outside the bucket and MLflow.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import nibabel as nib
import numpy as np
import pytest
import yaml

from study.results import best_trial, read_trials_csv
from trainables.data.synthetic import generate_cohort
from trainables.objective import Objective

ROOT = Path(__file__).parents[2]
STUDY = "cluster"
MODEL_NAME = "cluster-path-detector"
TRIALS, EPOCHS = 2, 1
pytestmark = pytest.mark.slow  # 266 s measured on 2 shared cores (two Ray nodes, an MLflow server, 2 trials)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check, what: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert process.poll() is None, f"{what}: exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{what}: not ready after {timeout} s"
        time.sleep(1)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group we started (a `ray start --block` then stops its node), SIGKILL what stays."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group (the leader may be gone)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


@dataclass(frozen=True)
class Site:
    endpoint: str  # moto's S3 endpoint
    bucket: str
    cohort: Path  # the local synthetic cohort that was uploaded
    mlflow: str  # tracking URI of the MLflow server
    ray_address: str  # the head's GCS address
    env: dict[str, str]  # environment of every process of the cluster (dummy S3 keys, Ray token)
    ray_temp: Path  # Ray's session folders (logs, spill), searched for stray checkpoints


@pytest.fixture(scope="module")
def site(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Cohort in the bucket, the MLflow server, and a two-node Ray cluster with token auth."""
    tmp = tmp_path_factory.mktemp("site")
    bucket = f"brain-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    cohort = tmp / "cohort"
    generate_cohort(cohort, n_healthy=8, n_lesion=4, seed=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.update(MLFLOW_S3_ENDPOINT_URL=s3_endpoint, OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    ray_temp = Path(tempfile.mkdtemp(prefix="rcp-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    started: list[subprocess.Popen] = []

    def start(command: list[str]) -> subprocess.Popen:
        log = (tmp / f"process-{len(started)}.log").open("w")
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(process)
        return process

    try:
        port = _free_port()
        mlflow = f"http://127.0.0.1:{port}"
        server = start(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            + ["--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}"]
            + ["--artifacts-destination", f"s3://{bucket}/mlflow"]
        )
        gcs = f"127.0.0.1:{_free_port()}"
        ray = [str(Path(sys.executable).with_name("ray")), "start", "--block", "--node-ip-address=127.0.0.1"]
        ray += ["--object-store-memory=100000000", "--num-cpus=1", "--disable-usage-stats"]
        ports = lambda: [  # noqa: E731 -- fresh ports per node: other people's Ray may run on this machine
            f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
        ]  # fmt: skip
        head = start(
            ray + ports() + ["--head", f"--port={gcs.split(':')[1]}", f"--temp-dir={ray_temp}"]
            + ["--include-dashboard=false", f"--ray-client-server-port={_free_port()}"]
        )  # fmt: skip
        _wait(lambda: _gcs_up(gcs), "ray head", head)
        _join_second_node(lambda: start(ray + ports() + [f"--address={gcs}"]), gcs, env)
        _wait(lambda: _answers(f"{mlflow}/health"), "mlflow server", server)
        yield Site(s3_endpoint, bucket, cohort, mlflow, gcs, env, ray_temp)
    finally:
        for process in reversed(started):
            _stop(process)


def _join_second_node(start_node: Callable[[], subprocess.Popen], gcs: str, env: dict[str, str]) -> None:
    """Start the second node; start it once more if it gave up joining. `ray start` allows a joining raylet a fixed
    30 s to register with the GCS and exits after that: on 2 loaded cores that happened once (the slow suite run
    beside the default suite and a training job, load average 14)."""
    for attempt in (1, 2):
        node = start_node()
        try:
            _wait(lambda: _alive_nodes(gcs, env) == 2, f"second ray node (attempt {attempt})", node, timeout=180)
            return
        except AssertionError:
            if node.poll() is None or attempt == 2:
                raise
            _stop(node)  # the raylet it may have left in its process group


def _gcs_up(address: str) -> bool:
    host, port = address.split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
        return True
    except OSError:
        return False


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    probe = f"import ray\nray.init(address={address!r}, log_to_driver=False)\n"
    probe += "print(sum(n['Alive'] for n in ray.nodes()))"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    lines = result.stdout.strip().splitlines()
    return int(lines[-1]) if result.returncode == 0 and lines and lines[-1].isdigit() else 0


def _cluster_yaml(site: Site, folder: Path) -> Path:
    """A local-provider cluster YAML as a site would write it, with the study's metadata block."""
    raw = {
        "cluster_name": "cluster-path-test",
        "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": ["127.0.0.2"]},
        "auth": {"ssh_user": "nobody"},
        "min_workers": 1,
        "max_workers": 1,
        "metadata": {
            "study": {
                "storage": {"endpoint_url": site.endpoint, "region": "us-east-1"},
                "data": {"healthy": f"s3://{site.bucket}/hcp/", "lesion": f"s3://{site.bucket}/brats/"},
                "cache_dir": str(folder / "head-cache"),
                "ray_storage": f"s3://{site.bucket}/ray",
                "mlflow": {"tracking_uri": site.mlflow},
            }
        },
    }
    path = folder / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _study_yaml(folder: Path) -> Path:
    config = {
        "name": STUDY,
        "families": ["vae"],
        "objectives": [{"metric": "val_pixel_auroc", "mode": "max"}],
        "num_samples": TRIALS,
        "results_dir": str(folder / "results"),
        "data": {"root": str(folder / "data")},
        "training": {"epochs": EPOCHS, "workers_per_trial": 2, "cpus_per_worker": 0.5, "cpus_per_trial": 0.2},
        "mlflow": {"registered_model": MODEL_NAME},
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(site: Site, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**site.env, "RAY_ADDRESS": site.ray_address, "MLFLOW_TRACKING_URI": site.mlflow}
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    return result


def _keys(site: Site, prefix: str) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=site.endpoint, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=site.bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_cluster_path_end_to_end(site: Site, tmp_path: Path) -> None:
    cluster_yaml, study_yaml = _cluster_yaml(site, tmp_path), _study_yaml(tmp_path)
    upload = _run(site, "study.stage", "--cluster", str(cluster_yaml), "--upload", str(site.cohort))
    assert upload.returncode == 0, upload.stdout + upload.stderr
    run = _run(site, "study.run", "--cluster", str(cluster_yaml), "--config", str(study_yaml))
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert f"Ray storage (Tune state, Train checkpoints): s3://{site.bucket}/ray/{STUDY}" in output

    rows = read_trials_csv(tmp_path / "results" / STUDY / "trials.csv")
    trials = [r for r in rows if r["status"] != "baseline"]
    assert len(trials) == TRIALS and {r["status"] for r in trials} == {"completed"}, trials

    # Checkpoints: objects in the bucket (num_to_keep=1: one per trial), none on any local disk of the study
    checkpoints = [k for k in _keys(site, f"ray/{STUDY}/train/") if k.endswith("/model.pt")]
    assert len(checkpoints) == TRIALS, checkpoints
    assert _keys(site, f"ray/{STUDY}/tune/{STUDY}/")  # Tune's experiment state, what --resume restores
    local = [p for folder in (tmp_path, site.ray_temp) for p in folder.rglob("*") if p.name in ("model.pt", "state.pt")]
    assert local == []

    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(site.mlflow)  # runs:/ and models:/ are looked up there (artifacts through its proxy)
    client = MlflowClient(site.mlflow)
    experiment = client.get_experiment_by_name(STUDY)
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("role") != "study"]
    assert sorted(r.data.tags["role"] for r in runs) == ["baseline"] + ["trial"] * TRIALS
    batch = np.random.default_rng(0).standard_normal((5, 1, 32, 32)).astype(np.float32)
    for run_info in runs:
        model = mlflow.pyfunc.load_model(f"runs:/{run_info.info.run_id}/model")
        maps = model.predict(batch)
        assert maps.shape == batch.shape and maps.dtype == np.float32 and np.isfinite(maps).all()
        if run_info.data.tags["role"] == "trial":
            assert run_info.data.tags["checkpoint_path"].startswith(f"s3://{site.bucket}/ray/{STUDY}/train/")
    assert any(k.endswith("/artifacts/model.pt") for k in _keys(site, "mlflow/"))  # MLflow's artifacts on S3

    winner = best_trial(rows, Objective("val_pixel_auroc", "max"))
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.run_id == winner["mlflow_run_id"]
    assert f"registered: models:/{MODEL_NAME}@champion (version {champion.version})" in output

    scan = next(site.cohort.glob("brats/*/*_t2.nii.gz"))
    out = tmp_path / "map.nii.gz"
    score = _run(site, "study.score", "--model", f"models:/{MODEL_NAME}@champion", "--tracking-uri", site.mlflow,
                 "--input", str(scan), "--output", str(out), "--device", "cpu")  # fmt: skip
    assert score.returncode == 0, score.stdout + score.stderr
    written, original = nib.load(out), nib.load(scan)
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-6)

    again = _run(site, "study.run", "--cluster", str(cluster_yaml), "--config", str(study_yaml), "--resume")
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    assert f"resuming: {TRIALS} of {TRIALS} trials already finished" in again.stdout
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == champion.version  # not doubled
