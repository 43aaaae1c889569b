"""Faults injected for real: a killed Train worker, a diverging trial, a staging run killed mid-download,
an unreachable MLflow server, a Ray node that leaves mid-study. Each must be survived or refused cleanly.

(The killed study driver is tests/integration/test_resume.py.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import ray
from mlflow.tracking import MlflowClient

from study.cluster.block import read_study_block
from study.config import load_config
from study.data import prepare_data
from study.results import read_trials_csv
from study.run import main, run_study
from trainables.data.nifti import load_volume
from trainables.data.staging import stage_dataset, upload_cohort
from trainables.data.synthetic import generate_cohort

if TYPE_CHECKING:
    from conftest import RayProcesses  # tests/conftest.py

ROOT = Path(__file__).parents[2]


def _trial_rows(study_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read_trials_csv(study_dir / "trials.csv") if r["status"] != "baseline"]


def _child_runs(tracking_uri: str, experiment: str) -> list[Any]:
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], "tags.role = 'trial'")


def _epoch_steps(tracking_uri: str, run_id: str) -> list[int]:
    """Steps at which the trial reported `epoch` (one entry per report, repeats included)."""
    return sorted(m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, "epoch"))


def _wait_for(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---------------------------------------------------------------- 4. staging killed mid-download


class _Trickle:
    """WSGI middleware: object bodies leave the server in 64 KiB pieces with a pause between them.

    A slow link, so that a kill lands while files are half-downloaded; the S3 API itself is moto's.
    """

    def __init__(self, app: Callable, pause_s: float) -> None:
        self.app, self.pause_s = app, pause_s

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        body = self.app(environ, start_response)
        if environ["REQUEST_METHOD"] != "GET" or environ.get("QUERY_STRING"):
            return body  # listings and bucket calls answer at once
        return self._pieces(body)

    def _pieces(self, body: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for block in body:
                for start in range(0, len(block), 1 << 16):
                    time.sleep(self.pause_s)
                    yield block[start : start + (1 << 16)]
        finally:
            getattr(body, "close", lambda: None)()


@pytest.fixture
def slow_s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 behind a slow link; dummy keys in the environment (no profile, no IMDS)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    app = _Trickle(DomainDispatcherApplication(create_backend_app), pause_s=0.03)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=30)


def _larger_cohort(folder: Path, healthy: int) -> Path:
    """A real synthetic cohort (2 healthy, 2 lesion), its healthy scans copied to `healthy` subjects."""
    generate_cohort(folder, n_healthy=2, n_lesion=2, seed=0)
    scans = sorted((folder / "hcp").rglob("*.nii.gz"))
    for i in range(2, healthy):
        target = folder / "hcp" / f"{100000 + i}" / "T1w" / scans[0].name
        target.parent.mkdir(parents=True)
        shutil.copyfile(scans[i % 2], target)
    return folder


def _cluster_yaml(folder: Path, endpoint: str, bucket: str) -> Path:
    block = {
        "storage": {"endpoint_url": endpoint, "region": "us-east-1"},
        "data": {"healthy": f"s3://{bucket}/hcp/", "lesion": f"s3://{bucket}/brats/"},
        "cache_dir": str(folder / "cache"),
    }
    path = folder / "cluster.yaml"
    path.write_text(json.dumps({"metadata": {"study": block}}))  # JSON is YAML
    return path


def _files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(complete files, temporary .part files) under a stage cache folder."""
    every = [p for p in folder.rglob("*") if p.is_file()]
    return [p for p in every if not p.name.startswith(".")], [p for p in every if p.name.endswith(".part")]


def test_staging_killed_mid_download_resumes_with_only_the_missing_files(slow_s3: str, tmp_path: Path) -> None:
    cohort = _larger_cohort(tmp_path / "cohort", healthy=20)
    cluster_yaml = _cluster_yaml(tmp_path, slow_s3, "brain-interrupted")
    study = read_study_block(cluster_yaml)
    total = upload_cohort(study.data, cohort, create_bucket=True)
    uploaded = [p for p in cohort.rglob("*") if p.is_file() and p.name != "cohort.json"]  # the generator's record stays
    originals = {p.relative_to(cohort): p.read_bytes() for p in uploaded}
    assert total == len(originals) == 20 + 2 * 3 + 1  # + the BraTS layout's appearance.csv
    cache = tmp_path / "cache" / "brain-interrupted"

    command = [sys.executable, "-m", "study.stage", "--cluster", str(cluster_yaml), "--concurrency", "2"]
    stager = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Kill it once some files are complete while others are still being written.
        _wait_for(lambda: len(_files(cache)[0]) >= 4 and _files(cache)[1], 120, "a half-finished staging")
        os.kill(stager.pid, signal.SIGKILL)
    finally:
        stager.kill()
        stager.wait(timeout=60)
    complete, partial = _files(cache)
    assert partial and 4 <= len(complete) < total, (len(complete), partial)
    for path in complete:  # nothing under a final name is a partial file
        assert path.read_bytes() == originals[path.relative_to(cache)], path

    again = stage_dataset(study.data, study.cache_dir)
    assert (again.downloaded_files, again.skipped_files) == (total - len(complete), len(complete))
    complete, partial = _files(cache)
    assert not partial  # the killed stager's temporary files are gone
    assert {p.relative_to(cache): p.read_bytes() for p in complete} == originals
    for path in complete:
        if path.name.endswith(".nii.gz"):
            assert load_volume(path)[0].ndim == 3


# ---------------------------------------------------------------- 5. MLflow unreachable at start


def _closed_port() -> int:
    """A port that was free a moment ago: nothing listens there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_mlflow_refuses_the_study_quickly(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    config_path = write_config(mlflow={"tracking_uri": uri})
    config = load_config(config_path)
    prepare_data(config)  # the shared slice cache, built outside the timed part
    started = time.monotonic()
    assert main(["--config", str(config_path)]) == 2
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert uri in err and "not reachable" in err, err
    assert elapsed < 20, f"took {elapsed:.0f} s to refuse (MLflow's HTTP retries?)"
    assert not ray.is_initialized()  # refused before Ray, so before any training
    study_dir = config.study_dir
    assert not any((study_dir / name).exists() for name in ("train", "tune", "trials.csv", "trials.jsonl"))


# ---------------------------------------------------------------- 3. a diverging trial


@pytest.fixture
def local_ray(ray_processes: RayProcesses) -> Iterator[RayProcesses]:
    """A local Ray of 2 CPUs for one in-process study, shut down afterwards; yields its processes."""
    ray.init(num_cpus=2, log_to_driver=False)
    try:
        yield ray_processes
    finally:
        ray.shutdown()


# Adam steps every weight by about lr: at 1e6 the VAE's log-variance overflows at the second step (checked).
DIVERGING_VAE = {"lr": 1.0e6, "latent_dim": 32, "kl_weight": 1.0, "batch_size": 32, "width": 8}


def test_diverging_trial_fails_with_its_reason_and_the_others_finish(
    write_config: Callable[..., Path], local_ray: RayProcesses
) -> None:
    # No retries: Ray Train V2 (max_failures) and Tune (trial_max_failures) retry every error alike, with no
    # per-error-type policy, and a divergence is deterministic: a retry would only diverge again.
    config = load_config(
        write_config(
            points_to_evaluate=[DIVERGING_VAE], training={"epochs": 1, "max_failures": 0, "trial_max_failures": 0}
        )
    )
    outcome = run_study(config)
    assert not outcome.interrupted
    rows = {r["param_lr"]: r for r in _trial_rows(config.study_dir)}
    assert len(rows) == config.num_samples
    diverged = rows.pop(DIVERGING_VAE["lr"])
    assert diverged["status"] == "failed"
    assert "NonFiniteLossError" in diverged["failure_reason"] and "non-finite loss" in diverged["failure_reason"]
    assert {r["status"] for r in rows.values()} == {"completed"}
    runs = {run.data.tags["trial_id"]: run for run in _child_runs(config.mlflow.tracking_uri, config.name)}
    failed = runs[diverged["trial_id"]]
    assert failed.info.status == "FAILED" and failed.data.tags["status"] == "failed"
    assert "non-finite loss" in failed.data.tags["failure_reason"]
    assert {runs[r["trial_id"]].data.tags["status"] for r in rows.values()} == {"completed"}


# ---------------------------------------------------------------- 1. a Train worker killed mid-trial


class WorkerKiller(threading.Thread):
    """Once `ready()` holds, SIGKILLs one Train worker; then notes every worker pid seen until stopped."""

    def __init__(self, processes: RayProcesses, ready: Callable[[], bool]) -> None:
        super().__init__(daemon=True)
        self.processes, self.ready = processes, ready
        self.before: set[int] = set()  # workers alive at the kill
        self.killed: int | None = None
        self.seen: set[int] = set()  # every worker pid seen, before and after
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            if self.ready() and (workers := self.processes.train_workers()):
                self.before = set(workers)
                self.killed = min(workers)
                os.kill(self.killed, signal.SIGKILL)
            self.stop.wait(0.5)
        while not self.stop.is_set():
            self.seen |= set(self.processes.train_workers())
            self.stop.wait(0.5)


def _first_epoch_reported(tracking_uri: str, experiment: str) -> Callable[[], bool]:
    """True once a trial's epoch 1 reached MLflow (so Ray Train had registered its checkpoint)."""
    client = MlflowClient(tracking_uri)

    def ready() -> bool:
        found = client.get_experiment_by_name(experiment)
        return found is not None and bool(client.search_runs([found.experiment_id], "metrics.epoch >= 1"))

    return ready


def test_killed_train_worker_restarts_from_the_checkpoint(
    write_config: Callable[..., Path], local_ray: RayProcesses
) -> None:
    config = load_config(write_config(num_samples=1, training={"epochs": 3, "max_failures": 1}))
    killer = WorkerKiller(local_ray, _first_epoch_reported(config.mlflow.tracking_uri, config.name))
    killer.start()
    try:
        run_study(config)
    finally:
        killer.stop.set()
        killer.join(timeout=30)
    assert killer.killed is not None and len(killer.before) == config.training.workers_per_trial
    restarted = killer.seen - killer.before
    assert len(restarted) == config.training.workers_per_trial, "the worker group was not started again"
    (row,) = _trial_rows(config.study_dir)
    assert row["status"] == "completed", row
    (run,) = _child_runs(config.mlflow.tracking_uri, config.name)
    # Each epoch reported once: the new workers went on from epoch 1's state.pt instead of starting over.
    assert _epoch_steps(config.mlflow.tracking_uri, run.info.run_id) == [1, 2, 3]
    assert run.data.tags["status"] == "completed" and 1 <= int(row["best_epoch"]) <= 3


# ---------------------------------------------------------------- 6. a node leaves a two-node cluster


@pytest.fixture
def two_nodes(ray_processes: RayProcesses) -> Iterator[tuple[Any, Any, RayProcesses]]:
    """A head and a worker node (2 CPUs each) on this machine, this process connected; (cluster, worker, processes)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        worker = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, worker, ray_processes
    finally:
        ray.shutdown()
        cluster.shutdown()


class NodeRemover(threading.Thread):
    """Removes `node` from `cluster` once Train workers run on it (children of its raylet) and every running
    trial has reported an epoch: the node then leaves in the middle of training, after a checkpoint."""

    def __init__(self, cluster: Any, node: Any, processes: RayProcesses, training: Callable[[], bool]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.node, self.processes, self.training = cluster, node, processes, training
        self.raylet = node.all_processes["raylet"][0].process.pid
        self.removed_workers: list[int] = []  # Train workers that were on the node when it left
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            on_node = [pid for pid, parent in self.processes.train_workers().items() if parent == self.raylet]
            if on_node and self.training():
                self.removed_workers = on_node
                self.cluster.remove_node(self.node)
                return
            self.stop.wait(0.5)


def _all_running_trials_reported(tracking_uri: str, experiment: str) -> Callable[[], bool]:
    """True once MLflow has running trial runs and each of them has reported epoch 1."""
    client = MlflowClient(tracking_uri)

    def training() -> bool:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return False
        running = client.search_runs([found.experiment_id], "tags.role = 'trial' and attributes.status = 'RUNNING'")
        return bool(running) and all(r.data.metrics.get("epoch", 0) >= 1 for r in running)

    return training


@pytest.mark.timeout(1200)
def test_trials_of_a_removed_node_are_retried_elsewhere(
    write_config: Callable[..., Path], two_nodes: tuple[Any, Any, RayProcesses]
) -> None:
    cluster, worker, processes = two_nodes
    # Two concurrent trials of 1.2 CPUs cannot both fit on the head's 2 CPUs: one must use the worker node.
    config = load_config(write_config(num_samples=2, max_concurrent_trials=2, training={"epochs": 3}))
    training = _all_running_trials_reported(config.mlflow.tracking_uri, config.name)
    remover = NodeRemover(cluster, worker, processes, training)
    remover.start()
    try:
        outcome = run_study(config)
    finally:
        remover.stop.set()
        remover.join(timeout=60)
    assert remover.removed_workers, "no Train worker was training on the worker node"
    assert [node["Alive"] for node in ray.nodes() if node["NodeID"] == worker.node_id] == [False]
    assert not outcome.interrupted
    rows = _trial_rows(config.study_dir)
    assert len(rows) == config.num_samples and {r["status"] for r in rows} == {"completed"}, rows
    runs = _child_runs(config.mlflow.tracking_uri, config.name)
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(r["trial_id"] for r in rows)
    assert {r.data.tags["status"] for r in runs} == {"completed"}
    for run in runs:  # the trial that lost its workers went on from its checkpoint: no epoch twice
        assert _epoch_steps(config.mlflow.tracking_uri, run.info.run_id) == [1, 2, 3]
