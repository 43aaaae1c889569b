"""Shared fixtures: a study YAML writer pointing every output into a temporary folder."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

# Tests run on 2 cores: keep torch in each process to one thread so Ray workers do not fight.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Studies under test start their own local Ray rather than attaching to one a developer left running.
os.environ["RAY_ADDRESS"] = "local"


def _run_on_local_ray(config: Any) -> Any:
    """``run_study(config)`` on a fresh local Ray of 2 CPUs, shut down afterwards (a Ray left by an earlier test
    in this process would otherwise be reused with its own resources)."""
    import ray

    from study.run import run_study  # here: collecting tests should not import Ray and MLflow

    ray.shutdown()
    ray.init(num_cpus=2, log_to_driver=False)
    try:
        return run_study(config)
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def study_on_local_ray() -> Callable[[Any], Any]:
    """Runs a study in this process as `python -m study.run` would, on its own local Ray; returns its outcome."""
    return _run_on_local_ray


def _run_smoke_study(tmp: Path, data_root: Path, edit: Callable[[str], str] = lambda text: text) -> tuple[Any, Any]:
    """(config, outcome) of study/configs/smoke.yaml (its text passed through ``edit``) run on a local Ray, with
    results and MLflow under ``tmp``, the cohort under ``data_root``; what it printed in ``tmp/console.txt``."""
    import contextlib
    import io

    from study.config import load_config

    path = tmp / "smoke.yaml"
    path.write_text(edit((Path(__file__).parents[1] / "study/configs/smoke.yaml").read_text()))
    config = load_config(path)
    config.results_dir = str(tmp / "results")
    config.data.root = str(data_root)
    config.mlflow.tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    console = io.StringIO()
    try:
        with contextlib.redirect_stdout(console):
            outcome = _run_on_local_ray(config)
    finally:
        (tmp / "console.txt").write_text(console.getvalue())
    return config, outcome


@pytest.fixture(scope="session")
def smoke_study() -> Callable[..., tuple[Any, Any]]:
    """Runs the smoke study, optionally edited, into a temporary folder (see _run_smoke_study)."""
    return _run_smoke_study


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic cohort and slice cache per test session, shared by the study tests."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-healthy, 3-lesion synthetic cohort's 32x32 slice cache, read-only, for tests that train a few steps
    outside a study (the reproduction's command, the train loop's pieces)."""
    from trainables.data.cache import SplitConfig, prepare_slice_cache
    from trainables.data.preprocess import PreprocessConfig
    from trainables.data.synthetic import generate_cohort

    root = tmp_path_factory.mktemp("tiny")
    generate_cohort(root / "cohort", n_healthy=6, n_lesion=3, seed=0)
    return prepare_slice_cache(root / "cohort" / "hcp", root / "cohort" / "brats", root / "cache",
                               PreprocessConfig(), SplitConfig())  # fmt: skip


@pytest.fixture
def write_config(tmp_path: Path, data_root: Path) -> Callable[..., Path]:
    """Write a smoke-sized study YAML with results and MLflow under tmp_path; keyword overrides merge in."""

    def write(**overrides: object) -> Path:
        config = {
            "name": "smoke",
            "families": ["vae"],
            "objectives": [{"metric": "val_pixel_auroc", "mode": "max"}],
            "num_samples": 2,
            "max_concurrent_trials": 1,
            "results_dir": str(tmp_path / "results"),
            "data": {"root": str(data_root), "synthetic": {"healthy": 8, "lesion": 4, "seed": 0}},
            "training": {"epochs": 2, "workers_per_trial": 2, "cpus_per_worker": 0.5, "cpus_per_trial": 0.2},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


@pytest.fixture(scope="module")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dummy keys in the environment (where boto3 looks first); no profile files, no instance metadata."""
    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", str(home / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254 for a role
        yield


@pytest.fixture(scope="module")
def s3_endpoint(aws_env: None) -> Iterator[str]:
    """An S3-compatible server (moto) on a free port of 127.0.0.1, for one test module; real HTTP."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


MARKER_VAR = "LESION_STUDY_TEST_MARKER"  # in the environment of every process a test's Ray starts (inherited)


class RayProcesses:
    """The processes of the Ray (or study driver) one test starts, told apart from anyone else's on this machine
    by a marker in their environment, which they inherit from the test process."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def find(self) -> dict[int, tuple[bytes, int]]:
        """{pid: (command line, parent pid)} of the processes whose environment carries the marker."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes()
                environ = (entry / "environ").read_bytes().split(b"\0")
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile, or not ours to read
            if f"{MARKER_VAR}={self.marker}".encode() in environ and int(entry.name) != os.getpid():
                found[int(entry.name)] = (command, parent)
        return found

    def train_workers(self) -> dict[int, int]:
        """{pid: parent pid} of the Ray Train worker processes."""
        return {pid: parent for pid, (command, parent) in self.find().items() if b"RayTrainWorker" in command}

    def kill_leftovers(self, grace_s: float = 2.0) -> list[bytes]:
        """SIGKILL every marked process still alive after `grace_s` (never anyone else's); their command lines."""
        time.sleep(grace_s)
        killed = []
        for _ in range(5):  # a process may start another while the first round kills
            found = self.find()
            for pid, (command, _) in found.items():
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(command)
                except ProcessLookupError:
                    pass
            if not found:
                break
            time.sleep(0.5)
        return killed


@pytest.fixture
def ray_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[RayProcesses]:
    """Marks every process started from here on (Ray's, a study driver's); kills those left over after the test."""
    processes = RayProcesses(uuid.uuid4().hex)
    monkeypatch.setenv(MARKER_VAR, processes.marker)
    try:
        yield processes
    finally:
        processes.kill_leftovers()


@dataclass(frozen=True)
class MlflowServer:
    uri: str  # http://127.0.0.1:PORT
    store: Path  # its backend store and artifacts (what a secret scan reads)
    username: str | None = None  # basic-auth credentials, where the server demands them
    password: str | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _serve_mlflow(store: Path, extra_args: list[str], env: dict[str, str]) -> Iterator[str]:
    """A real `mlflow server` on loopback with its SQLite store and artifacts under `store`; yields its URI."""
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), *extra_args]
    command += ["--backend-store-uri", f"sqlite:///{store / 'server.db'}"]
    command += ["--artifacts-destination", str(store / "artifacts"), "--workers", "1"]
    with (store / "server.log").open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, f"mlflow server exited: {(store / 'server.log').read_text()[-3000:]}"
                assert time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(1)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server with its own SQLite store and artifact folder, on loopback."""
    with _serve_mlflow(tmp_path_factory.mktemp("mlflow-server"), [], {}) as uri:
        yield uri


@pytest.fixture
def protected_mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` that refuses any request without its user's password (MLflow's basic-auth app).

    The password reaches the server only through its environment; its auth settings file (outside `store`)
    names the user store and the admin, and gives unauthenticated users no permission.
    """
    store = tmp_path_factory.mktemp("mlflow-protected")
    settings = tmp_path_factory.mktemp("mlflow-auth") / "auth.ini"
    settings.write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{store / 'auth.db'}\nadmin_username = study-admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    password = "mlflow-password-" + secrets.token_hex(16)
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(settings),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),  # the auth app's CSRF key
    }
    with _serve_mlflow(store, ["--app-name", "basic-auth"], env) as uri:
        yield MlflowServer(uri, store, "study-admin", password)
