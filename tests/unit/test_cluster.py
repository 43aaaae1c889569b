"""Cluster YAMLs: valid for Ray's own cluster launcher, with a usable metadata.study block; the block's reader."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from study.cluster import ClusterConfigError, default_cluster_yaml, parse_s3_uri, read_study_block

CLUSTER_DIR = Path(__file__).parents[2] / "cluster"
CLUSTER_YAMLS = sorted(CLUSTER_DIR.glob("*.yaml"))
SECRET_WORDS = ("secret", "password", "access_key", "accesskey", "session_token")


def ray_validate(raw: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before touching a cloud: fill in the provider's defaults, check Ray's schema."""
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def test_both_cluster_yamls_exist() -> None:
    assert {p.name for p in CLUSTER_YAMLS} >= {"gpu.yaml", "local.yaml"}


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_ray_accepts_the_cluster_yaml(path: Path) -> None:
    config = ray_validate(yaml.safe_load(path.read_text()))
    assert config["metadata"]["study"]  # Ray keeps the free-form block in ~/ray_bootstrap_config.yaml


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_study_block_has_every_key(path: Path) -> None:
    study = read_study_block(path)
    for uri in (study.healthy_uri, study.lesion_uri):
        assert uri.startswith("s3://") and parse_s3_uri(uri)[1]
    assert study.region and study.cache_dir and study.mlflow_tracking_uri
    block = yaml.safe_load(path.read_text())["metadata"]["study"]
    assert set(block) >= {"storage", "data", "cache_dir", "mlflow"}


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_no_credentials_and_token_auth_on(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())

    def keys(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [str(k) for k in node] + [k for v in node.values() for k in keys(v)]
        return [k for v in node for k in keys(v)] if isinstance(node, list) else []

    assert not [k for k in keys(raw) if any(word in k.lower().replace("-", "_") for word in SECRET_WORDS)]
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in raw[commands] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), commands
    assert raw["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"  # the token, not its value


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_head_serves_mlflow_locally_with_s3_artifacts(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    server = " ".join(c for c in raw["head_start_ray_commands"] if "mlflow server" in c)
    assert "--host 127.0.0.1" in server and "--backend-store-uri sqlite:///" in server
    assert "--artifacts-destination s3://" in server
    assert any("pip install" in c and "lesion-study" in c for c in raw["setup_commands"])


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_node_commands_are_valid_shell(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    keys = [key for key in raw if key.endswith("_commands")]
    assert {"setup_commands", "head_start_ray_commands", "worker_start_ray_commands"} <= set(keys)
    for key in keys:
        for command in raw[key] or []:
            result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
            assert result.returncode == 0, f"{key}: {command}: {result.stderr}"


def test_gpu_yaml_has_cpu_head_and_autoscaling_gpu_workers() -> None:
    raw = yaml.safe_load((CLUSTER_DIR / "gpu.yaml").read_text())
    assert raw["provider"]["type"] == "aws"
    types = raw["available_node_types"]
    assert "GPU" not in types[raw["head_node_type"]]["resources"]
    workers = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 and t["min_workers"] < t["max_workers"] for t in workers)
    assert "endpoint_url" not in raw["metadata"]["study"]["storage"]  # AWS S3


def test_local_yaml_names_its_machines_and_store() -> None:
    raw = yaml.safe_load((CLUSTER_DIR / "local.yaml").read_text())
    assert raw["provider"]["type"] == "local" and raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
    assert read_study_block(CLUSTER_DIR / "local.yaml").endpoint_url.startswith("http")


def test_ray_validator_is_real() -> None:
    """A misspelt top-level key fails Ray's schema: the tests above would catch a broken YAML."""
    raw = yaml.safe_load((CLUSTER_DIR / "gpu.yaml").read_text())
    raw["setup_comands"] = raw.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        ray_validate(raw)


def write(tmp_path: Path, study: Any, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"cluster_name": "x", "metadata": {"study": study}}))
    return path


def block(**changes: Any) -> dict[str, Any]:
    study: dict[str, Any] = {
        "storage": {"endpoint_url": "http://127.0.0.1:9000", "region": "us-east-1"},
        "data": {"healthy": "s3://brain-mri/hcp", "lesion": "s3://brain-mri/brats/"},
        "cache_dir": "~/study-cache",
        "mlflow": {"tracking_uri": "http://127.0.0.1:5000"},
    }
    study.update(changes)
    return study


def test_read_study_block(tmp_path: Path) -> None:
    study = read_study_block(write(tmp_path, block()))
    assert study.endpoint_url == "http://127.0.0.1:9000" and study.region == "us-east-1"
    assert (study.healthy_uri, study.lesion_uri) == ("s3://brain-mri/hcp", "s3://brain-mri/brats/")
    assert study.cache_dir == Path.home() / "study-cache"  # expanded on the node that reads it
    assert study.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert study.source == tmp_path / "cluster.yaml"


def test_optional_keys_may_be_left_out(tmp_path: Path) -> None:
    study = read_study_block(write(tmp_path, block(storage={}, mlflow=None)))
    assert (study.endpoint_url, study.region, study.mlflow_tracking_uri) == (None, None, None)
    assert study.label == "AWS S3 (default region)"


@pytest.mark.parametrize(
    ("study", "message"),
    [
        (block(data={"healthy": "s3://brain-mri/hcp"}), r"key 'metadata.study.data.lesion': missing"),
        (block(data={"healthy": "/data/hcp", "lesion": "s3://b/x"}), r"'metadata.study.data.healthy': expected an s3"),
        (block(data={"healthy": "s3:///hcp", "lesion": "s3://b/x"}), r"data.healthy': .*with a bucket name"),
        (block(cache_dir=""), r"'metadata.study.cache_dir': expected a non-empty string"),
        (block(cache_dir=None), r"'metadata.study.cache_dir': missing"),
        (block(storage={"endpoint_url": "minio:9000"}), r"storage.endpoint_url': expected an http"),
        (block(mlflow={"tracking_uri": 5000}), r"mlflow.tracking_uri': expected a non-empty string, got 5000"),
    ],
)
def test_bad_block_names_file_and_key(tmp_path: Path, study: dict, message: str) -> None:
    path = write(tmp_path, study)
    with pytest.raises(ClusterConfigError, match=message) as info:
        read_study_block(path)
    assert str(info.value).startswith(f"{path}: ")


def test_yaml_without_study_block(tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text("cluster_name: x\nprovider: {type: local}\n")
    with pytest.raises(ClusterConfigError, match=r"plain.yaml: no 'metadata.study' mapping"):
        read_study_block(path)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError, match="nowhere.yaml: cluster YAML not found"):
        read_study_block(tmp_path / "nowhere.yaml")
    (tmp_path / "bad.yaml").write_text("metadata: [unclosed\n")
    with pytest.raises(ClusterConfigError, match="bad.yaml: not valid YAML"):
        read_study_block(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://brain-mri/hcp", ("brain-mri", "hcp/")),
        ("s3://brain-mri/hcp/", ("brain-mri", "hcp/")),
        ("s3://brain-mri/a/b//", ("brain-mri", "a/b/")),
        ("s3://brain-mri", ("brain-mri", "")),
        ("s3://brain-mri/", ("brain-mri", "")),
    ],
)
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["https://brain-mri/hcp", "brain-mri/hcp", "s3://", "s3:///hcp", None])
def test_parse_s3_uri_refuses(uri: Any) -> None:
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        parse_s3_uri(uri)


def test_default_cluster_yaml_only_on_a_ray_up_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cluster_yaml() is None
    (tmp_path / "ray_bootstrap_config.yaml").write_text("metadata: {}\n")
    assert default_cluster_yaml() == tmp_path / "ray_bootstrap_config.yaml"
