"""What a study needs from its Ray cluster, read from the cluster YAML's free-form ``metadata.study`` block.

The block (see cluster/gpu.yaml) names the object store, the two dataset prefixes, the per-node cache
folder, where Ray keeps checkpoints, and where MLflow and Optuna keep their records. Credentials never live
there: boto3 finds them in the environment or the instance's role, databases in ~/.pgpass or PGPASSWORD.
``ClusterStudy`` holds the block; its ``data`` (``trainables.data.s3.DataSource``: where the cohorts and the
published slice caches are) is all that travels to Train workers and build tasks: the head's own settings stay here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlparse

import yaml

from study.config import ConfigError, StudyConfig
from trainables.data.s3 import DataSource, parse_s3_uri

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")  # Ray's copy of the cluster YAML on a `ray up` head
# The head's setup copies Ray's copy here, into the repository folder the head syncs to each worker: the workers
# read the cluster YAML in use (whatever its name on the user's machine) from it. Made on the head only.
IN_USE = ".cluster-in-use.yaml"
BLOCK = "metadata.study"
DEFAULT_BACKEND_STORE = "sqlite:///~/mlflow/mlflow.db"  # the head's MLflow server: on the head's disk


@dataclass(frozen=True)
class ClusterStudy:
    """The ``metadata.study`` block of one cluster YAML, validated: read on the head (driver, MLflow server)."""

    data: DataSource  # where the cohorts and the shared slice caches are: what workers receive
    cache_dir: Path  # per-node folder the slice caches (and `study.stage`'s copies) go into
    mlflow_tracking_uri: str | None  # tracking URI the driver logs to; None keeps the study config's
    source: Path  # the YAML this came from, for messages
    ray_storage: str | None = None  # Tune/Train state and checkpoints (s3://... or a shared folder); None: config's
    optuna_storage: str | None = None  # Optuna RDB URL (sqlite, postgresql); None: the config's (SQLite on the head)
    mlflow_backend_store: str = DEFAULT_BACKEND_STORE  # what the head's MLflow server keeps runs in
    mlflow_artifacts: str | None = None  # where that server puts artifacts (s3://...); None: beside its store


class ClusterConfigError(ConfigError):
    """A cluster YAML whose ``metadata.study`` block cannot be used; the message names the file and key."""


def read_study_block(path: str | Path) -> ClusterStudy:
    """Read and validate ``metadata.study`` of a Ray cluster YAML; ClusterConfigError names the file and key."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ClusterConfigError(f"{path}: cluster YAML not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ClusterConfigError(f"{path}: not valid YAML: {err}") from err
    metadata = raw.get("metadata") if isinstance(raw, dict) else None
    block = metadata.get("study") if isinstance(metadata, dict) else None
    if not isinstance(block, dict):
        raise ClusterConfigError(f"{path}: no '{BLOCK}' mapping; see cluster/README.md for its keys")
    reader = _Reader(path, block)
    endpoint = reader.text("storage.endpoint_url", required=False)
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        reader.fail("storage.endpoint_url", f"expected an http:// or https:// URL, got {endpoint!r}")
    data = DataSource(
        endpoint_url=endpoint,
        region=reader.text("storage.region", required=False),
        healthy_uri=reader.s3_uri("data.healthy"),
        lesion_uri=reader.s3_uri("data.lesion"),
        source=path,
        cache_uri=reader.s3_uri("cache_prefix", required=False),
    )
    return ClusterStudy(
        data=data,
        cache_dir=Path(reader.text("cache_dir")).expanduser(),
        mlflow_tracking_uri=reader.text("mlflow.tracking_uri", required=False),
        source=path,
        ray_storage=reader.storage_path("ray_storage"),
        optuna_storage=reader.database("optuna_storage"),
        mlflow_backend_store=reader.database("mlflow.backend_store_uri") or DEFAULT_BACKEND_STORE,
        mlflow_artifacts=reader.s3_uri("mlflow.artifacts_destination", required=False),
    )


@dataclass
class _Reader:
    """Looks up dotted keys in the block and raises errors that name the file and the full key."""

    path: Path
    block: dict[str, Any]

    def fail(self, key: str, message: str) -> NoReturn:
        raise ClusterConfigError(f"{self.path}: key '{BLOCK}.{key}': {message}")

    def text(self, key: str, required: bool = True) -> str | None:
        value: Any = self.block
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            if required:
                self.fail(key, "missing")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected a non-empty string, got {value!r}")
        return value.strip()

    def s3_uri(self, key: str, required: bool = True) -> str | None:
        uri = self.text(key, required)
        if uri is None:
            return None
        try:
            parse_s3_uri(uri)
        except ValueError as err:
            self.fail(key, str(err))
        return uri

    def storage_path(self, key: str) -> str | None:
        """Ray's storage: an s3:// URI (every node reaches it) or an absolute folder (a shared file system)."""
        value = self.text(key, required=False)
        if value is None or not value.startswith("s3://"):
            if value is not None and not value.startswith(("/", "~")):
                self.fail(key, f"expected s3://bucket/prefix or an absolute shared folder, got {value!r}")
            return value
        return self.s3_uri(key)

    def database(self, key: str) -> str | None:
        """A database URL (sqlite:///..., postgresql://user@host/db) without a password in it."""
        url = self.text(key, required=False)
        if url is None:
            return None
        scheme, sep, rest = url.partition("://")
        if not sep or not scheme:
            self.fail(key, f"expected a database URL such as sqlite:///path or postgresql://user@host/db, got {url!r}")
        userinfo = rest.split("/", 1)[0].rpartition("@")[0]
        if ":" in userinfo:
            self.fail(key, "no password in a cluster YAML: put it in ~/.pgpass (or PGPASSWORD) on the head")
        return url


def default_cluster_yaml() -> Path | None:
    """Ray's copy of the cluster YAML, when Ray on this node was started by the launcher from it and still runs.

    The file alone is not enough: `ray down` of a local-provider cluster leaves it behind, and a later plain
    study on that machine must not run in cluster mode. The head that `ray up` starts runs Ray's autoscaler
    (monitor) with ``--autoscaling-config=~/ray_bootstrap_config.yaml``; that process is the evidence.
    """
    path = BOOTSTRAP_CONFIG.expanduser()
    return path if path.is_file() and launcher_ray_running(path) else None


def launcher_ray_running(bootstrap: Path) -> bool:
    """Whether a Ray autoscaler on this machine runs from ``bootstrap`` (a head started by the launcher)."""
    import psutil  # a Ray dependency

    flag = "--autoscaling-config="
    for proc in psutil.process_iter(["cmdline"]):
        for arg in proc.info.get("cmdline") or []:
            if arg.startswith(flag) and Path(arg[len(flag) :]).expanduser().resolve() == bootstrap.resolve():
                return True
    return False


def cluster_settings(config: StudyConfig, study: ClusterStudy) -> StudyConfig:
    """``config`` with what the block decides: MLflow's tracking URI, Ray's and Optuna's storage (when given)."""
    mlflow = config.mlflow
    if study.mlflow_tracking_uri is not None:
        mlflow = dataclasses.replace(mlflow, tracking_uri=study.mlflow_tracking_uri)
    return dataclasses.replace(
        config,
        mlflow=mlflow,
        ray_storage=study.ray_storage or config.ray_storage,
        optuna_storage=study.optuna_storage or config.optuna_storage,
    )


def mlflow_ui_hint(tracking_uri: str, cluster_yaml: Path | None = None) -> str:
    """How to see the study's runs, for the store they are in.

    A database is opened by ``mlflow ui``; a server is already a UI: its URL, and for a server on the head's
    loopback, the ``ray attach`` that forwards its port to the user's machine.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return f"mlflow ui --backend-store-uri {tracking_uri}"
    url = urlparse(tracking_uri)
    if cluster_yaml is None or url.hostname not in ("127.0.0.1", "localhost"):
        return f"open {tracking_uri}"
    port = url.port or (443 if url.scheme == "https" else 80)
    yaml_name = launcher_yaml(Path(cluster_yaml))
    return f"{tracking_uri} on the head; from your machine: ray attach {yaml_name} --port-forward {port}, then open it"


def launcher_yaml(cluster_yaml: Path) -> str:
    """The name to give ``ray attach`` on the user's machine: for Ray's copy on the head, the YAML of the
    repository (synced to the head) that it was made from, else the path as given.

    Ray does not keep the name `ray up` was given, so the copy is matched by what a site edits: cluster_name, the
    provider's machines and region, and the ``metadata.study`` block (a renamed site copy is told from the
    cluster/local.yaml it came from).
    """
    if cluster_yaml.expanduser() != BOOTSTRAP_CONFIG.expanduser():
        return str(cluster_yaml)
    try:
        wanted = _fingerprint(yaml.safe_load(cluster_yaml.expanduser().read_text()))
        candidates = sorted(Path("cluster").glob("*.yaml")) + sorted(Path(".").glob("*.yaml"))
        for candidate in candidates:
            if candidate.name != IN_USE and _fingerprint(yaml.safe_load(candidate.read_text())) == wanted:
                return str(candidate)
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    return "<your cluster YAML>"


def _fingerprint(raw: dict[str, Any]) -> tuple:
    provider = raw.get("provider") or {}
    where = tuple(str(provider.get(key)) for key in ("type", "head_ip", "worker_ips", "region"))
    return raw.get("cluster_name"), where, yaml.safe_dump(raw.get("metadata"), sort_keys=True)
