"""Shared fixtures: a study YAML writer pointing every output into a temporary folder."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

# Tests run on 2 cores: keep torch in each process to one thread so Ray workers do not fight.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Studies under test start their own local Ray rather than attaching to one a developer left running.
os.environ["RAY_ADDRESS"] = "local"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic cohort and slice cache per test session, shared by the study tests."""
    return tmp_path_factory.mktemp("data")


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
