"""What a study needs from its Ray cluster, read from the cluster YAML's free-form ``metadata.study`` block.

The block (see cluster/gpu.yaml) names the object store, the two dataset prefixes, the per-node cache
folder and the MLflow tracking URI. Credentials never live there: boto3 finds them in the environment
or the instance's role. ``s3_client`` opens the store the block names.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from study.config import ConfigError, StudyConfig

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")  # Ray's copy of the cluster YAML on a `ray up` head
BLOCK = "metadata.study"
DEFAULT_CONCURRENCY = 8  # parallel transfers per node


class ClusterConfigError(ConfigError):
    """A cluster YAML whose ``metadata.study`` block cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class ClusterStudy:
    """The ``metadata.study`` block of one cluster YAML, validated."""

    endpoint_url: str | None  # S3-compatible endpoint (MinIO, Ceph); None = AWS S3
    region: str | None  # S3 region; None lets boto3 decide (environment, profile)
    healthy_uri: str  # s3://bucket/prefix/ of the healthy cohort (HCP, BraTS or manifest layout)
    lesion_uri: str  # s3://bucket/prefix/ of the lesion cohort (BraTS layout)
    cache_dir: Path  # per-node folder the data is staged into, shared by every trial on that node
    mlflow_tracking_uri: str | None  # tracking URI the driver logs to; None keeps the study config's
    source: Path  # the YAML this came from, for messages

    @property
    def label(self) -> str:
        """The store, for messages: its endpoint, or AWS S3 and the region."""
        return self.endpoint_url or f"AWS S3 ({self.region or 'default region'})"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix`` into ``("bucket", "some/prefix/")``.

    The prefix is a folder: it gains a trailing ``/`` (so ``hcp`` never matches ``hcp2/``), and is ``""``
    for the whole bucket. Raises ValueError for anything but an s3:// URI with a bucket name.
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"expected an s3://bucket/prefix URI, got {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"expected an s3://bucket/prefix URI with a bucket name, got {uri!r}")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def s3_client(study: ClusterStudy, probe: bool = False, concurrency: int = DEFAULT_CONCURRENCY) -> Any:
    """A boto3 S3 client for the study's store. ``probe`` fails fast: short timeouts and a single attempt."""
    from botocore.config import Config

    if probe:  # first call: an unreachable endpoint or a bad key should answer in seconds, not minutes
        config = Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "total_max_attempts": 1})
    else:
        retries = {"mode": "standard", "total_max_attempts": 5}
        config = Config(connect_timeout=10, read_timeout=60, retries=retries, max_pool_connections=concurrency + 2)
    region = study.region
    if study.endpoint_url is not None:
        # MinIO/Ceph serve buckets as paths, not as DNS names; SigV4 still needs some region. Their S3 APIs may
        # not know the CRC checksums botocore adds to every request by default: send and check them only when
        # an operation requires it
        checksums = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
        config = config.merge(Config(s3={"addressing_style": "path"}, **checksums))
        region = region or "us-east-1"
    with _SESSION_LOCK:  # a session is not thread-safe; the clients it makes are
        return _session().client("s3", endpoint_url=study.endpoint_url, region_name=region, config=config)


_SESSION_LOCK = threading.Lock()
_SESSIONS: dict[tuple, Any] = {}
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                   "AWS_DEFAULT_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")  # fmt: skip


def _session() -> Any:
    """This process's boto3 session (call under _SESSION_LOCK), made again when the credentials' source changed.

    One session per process: each new one parses botocore's endpoint and service files again (about 0.5 s
    per client on 2 cores). A session keeps the keys it first resolved, so the key is the credential source:
    the environment's keys and profile names and the shared files' modification times. A rotated key in the
    environment or in ~/.aws/credentials gets a fresh session; an instance role's or SSO's credentials
    refresh themselves inside the session.
    """
    import boto3  # here: reading a YAML should not pay for boto3

    key = tuple(os.environ.get(name) for name in _CREDENTIAL_ENV) + tuple(_stamp(path) for path in _aws_files())
    session = _SESSIONS.get(key)
    if session is None:
        _SESSIONS.clear()
        session = _SESSIONS[key] = boto3.session.Session()
    return session


def _aws_files() -> tuple[Path, Path]:
    credentials = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
    return Path(credentials).expanduser(), Path(os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")).expanduser()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


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
    return ClusterStudy(
        endpoint_url=endpoint,
        region=reader.text("storage.region", required=False),
        healthy_uri=reader.s3_uri("data.healthy"),
        lesion_uri=reader.s3_uri("data.lesion"),
        cache_dir=Path(reader.text("cache_dir")).expanduser(),
        mlflow_tracking_uri=reader.text("mlflow.tracking_uri", required=False),
        source=path,
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

    def s3_uri(self, key: str) -> str:
        uri = self.text(key)
        try:
            parse_s3_uri(uri)
        except ValueError as err:
            self.fail(key, str(err))
        return uri


def default_cluster_yaml() -> Path | None:
    """Ray's copy of the cluster YAML on a head node started by ``ray up``, if this is one; else None."""
    path = BOOTSTRAP_CONFIG.expanduser()
    return path if path.is_file() else None


def apply_cluster(config: StudyConfig, cluster_yaml: str | Path, progress: Any = print) -> StudyConfig:
    """Stage the cluster's datasets on this node and return ``config`` reading them (and its MLflow URI).

    ``data.healthy``/``data.lesion`` become the staged folders and ``mlflow.tracking_uri`` the block's
    URI (when given); everything else is kept. Raises ClusterConfigError or stage.StageError.
    """
    from study.stage import stage_dataset  # boto3 is imported only when a cluster is used

    study = read_study_block(cluster_yaml)
    staged = stage_dataset(study, study.cache_dir, progress=progress, modality=config.data.modality)
    data = dataclasses.replace(config.data, healthy=str(staged.healthy_dir), lesion=str(staged.lesion_dir))
    mlflow = config.mlflow
    if study.mlflow_tracking_uri is not None:
        mlflow = dataclasses.replace(mlflow, tracking_uri=study.mlflow_tracking_uri)
    return dataclasses.replace(config, data=data, mlflow=mlflow)
