"""Shared fixtures: a study YAML writer pointing every output into a temporary folder."""

from __future__ import annotations

import os
from collections.abc import Callable
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
