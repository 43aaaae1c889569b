"""The S3-compatible store a cluster study reads its datasets from: where the data is (``DataSource``, built from the
cluster YAML's block by ``study.cluster.block``), one boto3 client per call on one session per process, and the
first calls that fail fast with the cause in words.

Credentials never live in the YAML: boto3 finds them in the environment or the instance's role.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONCURRENCY = 8  # parallel transfers per node
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "403"}


@dataclass(frozen=True)
class DataSource:
    """Where a cluster study's data is read: the two cohorts and the published slice caches on one S3 store.

    All a Train worker or a build task needs, built on the driver from the cluster YAML's block
    (``study.cluster.block.ClusterStudy.data``); the head's settings (MLflow, Optuna, Ray storage) stay there.
    Credentials are not part of it: boto3's standard chain finds them on each node.
    """

    endpoint_url: str | None  # S3-compatible endpoint (MinIO, Ceph); None = AWS S3
    region: str | None  # S3 region; None lets boto3 decide (environment, profile)
    healthy_uri: str  # s3://bucket/prefix/ of the healthy cohort (HCP, BraTS or manifest layout)
    lesion_uri: str  # s3://bucket/prefix/ of the lesion cohort (BraTS layout)
    source: Path  # the cluster YAML these settings came from, for messages
    cache_uri: str | None = None  # s3://... the shared slice caches live under; None: slice-cache/ beside the data

    @property
    def shared_cache_uri(self) -> str:
        """Where finished slice caches are published: ``cache_uri``, else ``slice-cache/`` beside data.healthy."""
        if self.cache_uri is not None:
            return self.cache_uri
        bucket, prefix = parse_s3_uri(self.healthy_uri)
        parent = prefix.rstrip("/").rpartition("/")[0]
        return f"s3://{bucket}/{parent + '/' if parent else ''}slice-cache/"

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


def s3_client(data: DataSource, probe: bool = False, concurrency: int = DEFAULT_CONCURRENCY) -> Any:
    """A boto3 S3 client for the study's store. ``probe`` fails fast: short timeouts and a single attempt."""
    from botocore.config import Config

    if probe:  # first call: an unreachable endpoint or a bad key should answer in seconds, not minutes
        config = Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "total_max_attempts": 1})
    else:
        retries = {"mode": "standard", "total_max_attempts": 5}
        config = Config(connect_timeout=10, read_timeout=60, retries=retries, max_pool_connections=concurrency + 2)
    region = data.region
    if data.endpoint_url is not None:
        # MinIO/Ceph serve buckets as paths, not as DNS names; SigV4 still needs some region. Their S3 APIs may
        # not know the CRC checksums botocore adds to every request by default: send and check them only when
        # an operation requires it
        checksums = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
        config = config.merge(Config(s3={"addressing_style": "path"}, **checksums))
        region = region or "us-east-1"
    with _SESSION_LOCK:  # a session is not thread-safe; the clients it makes are
        return _session().client("s3", endpoint_url=data.endpoint_url, region_name=region, config=config)


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


class StageError(RuntimeError):
    """Staging cannot proceed; the message names the endpoint, bucket, prefix or file and what is wrong."""


@dataclass(frozen=True)
class RemoteObject:
    bucket: str
    key: str
    size: int
    etag: str  # without quotes

    @property
    def id(self) -> str:
        return f"{self.bucket}/{self.key}"


def explain_error(err: Exception, where: str) -> StageError:
    """A StageError naming ``where`` for a boto3/botocore error, with the likely cause in words."""
    from botocore import exceptions as bce

    if isinstance(err, bce.NoCredentialsError):
        why = "no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or use an instance role"
    elif isinstance(err, bce.EndpointConnectionError | bce.ConnectTimeoutError):
        why = f"cannot reach the endpoint ({err}); is the server up and the URL right?"
    elif isinstance(err, bce.ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        message = err.response.get("Error", {}).get("Message", "")
        if code == "NoSuchBucket":
            why = "no such bucket"
        elif code in ("PreconditionFailed", "412"):
            why = "the object changed in the bucket after it was listed; run the staging again"
        elif code in CREDENTIAL_CODES:
            why = f"credentials rejected ({code}: {message}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            why += "or the instance role, and that they may read this bucket"
        else:
            why = f"{code or type(err).__name__}: {message or err}"
    else:
        why = f"{type(err).__name__}: {err}"
    return StageError(f"{where}: {why}")


def check_buckets(data: DataSource, buckets: Iterable[str], create: bool = False) -> None:
    """The first calls to the store, failing fast: each bucket exists (or is created) and the keys may use it."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(data, probe=True)
    # AWS wants the region named when creating a bucket anywhere but us-east-1
    location = {"LocationConstraint": data.region} if data.region not in (None, "us-east-1") else None
    for bucket in sorted(set(buckets)):
        where = f"{data.label}, bucket '{bucket}' (from {data.source})"
        try:
            try:
                client.head_bucket(Bucket=bucket)
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                    raise
                if not create:
                    raise StageError(f"{where}: no such bucket (create it, or use --upload --create-bucket)") from err
                client.create_bucket(Bucket=bucket, **({"CreateBucketConfiguration": location} if location else {}))
        except (BotoCoreError, ClientError) as err:
            raise explain_error(err, where) from err


def list_prefix(client: Any, data: DataSource, uri: str, allow_empty: bool = False) -> list[RemoteObject]:
    """Every object under ``uri`` (paginated), skipping folder markers; StageError if there are none."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_uri(uri)
    where = f"{data.label}, bucket '{bucket}', prefix '{prefix}'"
    objects = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):  # zero-byte "folders" some tools create
                    objects.append(RemoteObject(bucket, item["Key"], int(item["Size"]), item["ETag"].strip('"')))
    except (BotoCoreError, ClientError) as err:
        raise explain_error(err, where) from err
    if not objects and not allow_empty:
        raise StageError(f"{where}: no objects under this prefix (a typo in {data.source}, or not uploaded yet?)")
    return objects
