"""Cluster YAMLs: valid for Ray's own cluster launcher, with a usable metadata.study block; the block's reader."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from study.cluster.block import (
    IN_USE,
    ClusterConfigError,
    cluster_settings,
    default_cluster_yaml,
    mlflow_ui_hint,
    read_study_block,
)
from study.config import StudyConfig
from trainables.data.s3 import parse_s3_uri

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
    for uri in (study.data.healthy_uri, study.data.lesion_uri):
        assert uri.startswith("s3://") and parse_s3_uri(uri)[1]
    assert study.data.region and study.cache_dir and study.mlflow_tracking_uri
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
    starts = raw["head_start_ray_commands"]
    server = [i for i, c in enumerate(starts) if "study.mlflow_server start" in c]
    ray_start = [i for i, c in enumerate(starts) if "ray start --head" in c]
    assert server and ray_start and server[0] < ray_start[0]  # MLflow answers before any study can start
    study = read_study_block(path)
    assert study.mlflow_backend_store.startswith("sqlite:///") and study.mlflow_artifacts.startswith("s3://")
    assert study.ray_storage.startswith("s3://")  # checkpoints every node reaches
    assert any("pip install" in c and "lesion-study" in c for c in raw["setup_commands"])


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_repeatable_boot(path: Path) -> None:
    """Pinned installs, apt that waits for the dpkg lock, no virtualenv copied, no raw cohort staged at boot."""
    raw = yaml.safe_load(path.read_text())
    installs = [c for c in raw["setup_commands"] if "pip install" in c and "lesion-study" in c]
    assert installs and all("-c ~/lesion-study/cluster/constraints.txt" in c for c in installs)
    commands = [c for key, value in raw.items() if key.endswith("_commands") for c in value or []]
    for command in commands:
        for apt in command.split("apt-get")[1:]:
            assert apt.lstrip().startswith("-o DPkg::Lock::Timeout="), command
    assert {".venv/", "venv/", "env/"} <= set(raw["rsync_exclude"]) and raw["rsync_filter"] == [".gitignore"]
    assert not any("study.stage" in c for c in raw["worker_setup_commands"] or [])  # nodes fetch the shared cache


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_no_command_names_a_cluster_yaml(path: Path) -> None:
    """A site's renamed copy runs the same commands: none of them may name cluster/<something>.yaml."""
    raw = yaml.safe_load(path.read_text())
    commands = [c for key, value in raw.items() if key.endswith("_commands") for c in value or []]
    assert not [c for c in commands if re.search(r"cluster/[\w.-]+\.yaml", c)]


def test_a_renamed_copy_is_the_yaml_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A site's cluster/site.yaml (local.yaml with its edits): the head's setup commands, run as Ray runs them,
    leave the site's block where `study.stage --cluster` on a node reads it, and the closing hint names site.yaml."""
    monkeypatch.setenv("HOME", str(tmp_path))
    repo = tmp_path / "lesion-study"
    (repo / "cluster").mkdir(parents=True)
    shipped = yaml.safe_load((CLUSTER_DIR / "local.yaml").read_text())
    (repo / "cluster" / "local.yaml").write_text(yaml.safe_dump(shipped))
    site = copy.deepcopy(shipped)
    site["provider"].update(head_ip="10.0.0.5", worker_ips=["10.0.0.6"])
    site["metadata"]["study"]["data"]["healthy"] = "s3://site-bucket/hcp/"
    (repo / "cluster" / "site.yaml").write_text(yaml.safe_dump(site))
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"  # Ray writes its prepared copy as JSON
    bootstrap.write_text(json.dumps(ray_validate(site)))
    for command in site["head_setup_commands"]:
        subprocess.run(["bash", "-c", command], check=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert read_study_block(repo / IN_USE).data.healthy_uri == "s3://site-bucket/hcp/"  # the site's, not local.yaml's
    monkeypatch.chdir(repo)
    assert "ray attach cluster/site.yaml --port-forward 5000" in mlflow_ui_hint("http://127.0.0.1:5000", bootstrap)


def test_gpu_yaml_pins_its_image_and_has_a_fallback() -> None:
    raw = yaml.safe_load((CLUSTER_DIR / "gpu.yaml").read_text())
    images = [raw["docker"]["image"], raw["docker"]["head_image"]]
    assert all(image.startswith("rayproject/ray:2.60.0-py311-") for image in images)
    assert not any("latest" in image for image in images)
    workers = {n: t for n, t in raw["available_node_types"].items() if n != raw["head_node_type"]}
    spot = [n for n, t in workers.items() if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType")]
    on_demand = [n for n in workers if n not in spot]
    assert len({workers[n]["node_config"]["InstanceType"] for n in spot}) >= 2 and on_demand
    # autoscaler v2 breaks ties between equally fitting types by priority (tests/unit/test_autoscaler.py)
    assert min(workers[n]["priority"] for n in spot) > max(workers[n]["priority"] for n in on_demand)
    one_gpu = [t for t in workers.values() if t["resources"]["GPU"] == 1]
    assert len(one_gpu) == len(spot) + len(on_demand) - 1  # and one 4-GPU type for the DDP variant
    assert all(t["resources"] == {"CPU": 4, "GPU": 1} for t in one_gpu)


def test_constraints_pin_every_dependency_as_tested() -> None:
    from importlib import metadata

    from packaging.utils import canonicalize_name

    from study.pins import project_requirements, read_constraints

    pins = read_constraints()
    for req in project_requirements(extras=("test",)):  # README's set-up and CI install the test extra too
        name = canonicalize_name(req.name)
        assert name in pins and req.specifier.contains(pins[name], prereleases=True), (req, pins.get(name))
    assert pins["ray"] == "2.60.0" and pins["torch"] == "2.13.0" and "aiohttp-cors" in pins  # ray[default]
    assert pins["mlflow"] == metadata.version("mlflow")  # made from this environment
    assert "moto" in pins and "pytest" in pins


def test_pins_diff_names_each_change() -> None:
    from study.pins import diff

    changes = diff({"optuna": "5.1.0", "ray": "2.60.0", "new": "1.0"}, {"optuna": "5.0.0", "ray": "2.60.0", "old": "2"})
    assert changes == ["new - -> 1.0", "old 2 -> -", "optuna 5.0.0 -> 5.1.0"]


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
    assert read_study_block(CLUSTER_DIR / "local.yaml").data.endpoint_url.startswith("http")


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
    assert study.data.endpoint_url == "http://127.0.0.1:9000" and study.data.region == "us-east-1"
    assert (study.data.healthy_uri, study.data.lesion_uri) == ("s3://brain-mri/hcp", "s3://brain-mri/brats/")
    assert study.cache_dir == Path.home() / "study-cache"  # expanded on the node that reads it
    assert study.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert study.source == tmp_path / "cluster.yaml"


def test_optional_keys_may_be_left_out(tmp_path: Path) -> None:
    study = read_study_block(write(tmp_path, block(storage={}, mlflow=None)))
    assert (study.data.endpoint_url, study.data.region, study.mlflow_tracking_uri) == (None, None, None)
    assert study.data.label == "AWS S3 (default region)"


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
    """The file alone (left behind by `ray down` of a local cluster) is not enough: Ray must run from it.

    The positive case, a head started with --autoscaling-config, is in tests/integration/test_ray_job.py.
    """
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cluster_yaml() is None
    (tmp_path / "ray_bootstrap_config.yaml").write_text("metadata: {}\n")
    assert default_cluster_yaml() is None


def test_block_storage_and_tracking_keys(tmp_path: Path) -> None:
    study = read_study_block(
        write(
            tmp_path,
            block(
                ray_storage="s3://brain-mri/ray",
                optuna_storage="postgresql://optuna@db.internal:5432/optuna",
                mlflow={
                    "tracking_uri": "http://127.0.0.1:5000",
                    "backend_store_uri": "postgresql://mlflow@db/mlflow",
                    "artifacts_destination": "s3://brain-mri/mlflow-artifacts/",
                },
            ),
        )
    )
    assert study.ray_storage == "s3://brain-mri/ray" and study.optuna_storage.startswith("postgresql://optuna@")
    assert study.mlflow_backend_store == "postgresql://mlflow@db/mlflow"
    config = cluster_settings(StudyConfig(), study)
    assert (config.ray_storage, config.optuna_storage) == (study.ray_storage, study.optuna_storage)
    assert config.mlflow.tracking_uri == "http://127.0.0.1:5000"
    defaults = read_study_block(write(tmp_path, block(), "plain.yaml"))
    assert (defaults.ray_storage, defaults.optuna_storage) == (None, None)
    assert defaults.mlflow_backend_store == "sqlite:///~/mlflow/mlflow.db"
    assert cluster_settings(StudyConfig(ray_storage="/shared/ray"), defaults).ray_storage == "/shared/ray"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optuna_storage": "postgresql://optuna:hunter2@db/optuna"}, r"optuna_storage': no password"),
        ({"mlflow": {"backend_store_uri": "postgresql://u:p@db/m"}}, r"backend_store_uri': no password"),
        ({"optuna_storage": "results/optuna.db"}, r"optuna_storage': expected a database URL"),
        ({"ray_storage": "relative/ray"}, r"ray_storage': expected s3://bucket/prefix or an absolute"),
        ({"ray_storage": "s3:///ray"}, r"ray_storage': .*bucket name"),
        ({"mlflow": {"artifacts_destination": "/tmp/a"}}, r"artifacts_destination': expected an s3"),
    ],
)
def test_bad_storage_keys(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ClusterConfigError, match=message):
        read_study_block(write(tmp_path, block(**changes)))


@pytest.mark.parametrize(
    ("uri", "cluster_yaml", "expected"),
    [
        ("sqlite:///results/mlflow.db", None, "mlflow ui --backend-store-uri sqlite:///results/mlflow.db"),
        ("postgresql://m@db/mlflow", None, "mlflow ui --backend-store-uri postgresql://m@db/mlflow"),
        ("http://127.0.0.1:5000", "cluster/gpu.yaml", "ray attach cluster/gpu.yaml --port-forward 5000"),
        ("http://localhost:5001", "site.yaml", "ray attach site.yaml --port-forward 5001"),
        ("https://mlflow.example.org", "cluster/gpu.yaml", "open https://mlflow.example.org"),
        ("http://127.0.0.1:5000", None, "open http://127.0.0.1:5000"),
    ],
)
def test_mlflow_ui_hint_matches_the_store(uri: str, cluster_yaml: str | None, expected: str) -> None:
    hint = mlflow_ui_hint(uri, Path(cluster_yaml) if cluster_yaml else None)
    assert expected in hint and ("mlflow ui" in hint) == (not uri.startswith("http"))


def test_hint_on_the_head_names_the_repository_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the head the study reads Ray's copy; the user's machine knows it as cluster/gpu.yaml."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(CLUSTER_DIR.parent)
    copy_of_gpu = tmp_path / "ray_bootstrap_config.yaml"
    copy_of_gpu.write_text((CLUSTER_DIR / "gpu.yaml").read_text())
    hint = mlflow_ui_hint("http://127.0.0.1:5000", copy_of_gpu)
    assert "ray attach cluster/gpu.yaml --port-forward 5000" in hint
