"""Where Ray keeps a study's Tune and Train state: ``ray_storage`` (shared by every node) or results/<study>/.

``ray_storage: s3://bucket/prefix`` (study config, or ``metadata.study.ray_storage`` of the cluster YAML) is
opened as a pyarrow S3FileSystem on the store's endpoint: the cluster block's ``storage.endpoint_url``, else
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (MinIO, Ceph, moto), else AWS S3. Ray Tune and every Ray Train
run get that filesystem beside their storage path, so checkpoints written on any node land in the bucket.
The filesystem is given no credentials: each process finds its own (environment, instance role), and a
pickled filesystem (Tune keeps one in its experiment state) carries none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from study.cluster.block import ClusterStudy
from study.config import ConfigError, StudyConfig
from trainables.data.s3 import parse_s3_uri

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # as boto3 reads them, service-specific first
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")
S3 = "s3://"


@dataclass(frozen=True)
class RayStorage:
    """The study's storage root, as Ray's RunConfig takes it: a path and, for S3, the filesystem it is on."""

    root: str  # "bucket/prefix/<study>" on S3 (a path of `filesystem`); else a folder or a URI Ray resolves itself
    filesystem: Any = None  # pyarrow.fs.S3FileSystem for s3:// storage; None lets Ray infer it from the path
    label: str = ""  # the root as the user writes it (s3://..., a folder), for messages

    def path(self, *parts: str) -> str:
        """A path below the root, for RunConfig(storage_path=...) together with ``filesystem``."""
        return "/".join([self.root.rstrip("/"), *parts])

    def uri(self, path: str) -> str:
        """A path of this storage as a URI a person (or MLflow) can read: s3://bucket/key, or the path itself."""
        return f"{S3}{path.lstrip('/')}" if self.on_s3 else path

    @property
    def on_s3(self) -> bool:
        return self.filesystem is not None

    def checkpoint(self, path: str) -> Any:
        """A Ray Train checkpoint at ``path`` of this storage (for to_directory / as_directory)."""
        from ray.train import Checkpoint

        return Checkpoint(path, filesystem=self.filesystem)

    def clear(self) -> None:
        """Delete the study's state below the root (a fresh run of the study replaces the previous one)."""
        if not self.on_s3:
            return
        try:
            self.filesystem.delete_dir_contents(self.root, missing_dir_ok=True)
        except OSError as err:  # no such bucket, endpoint down, access denied: pyarrow says which
            raise ConfigError(f"ray_storage {self.uri(self.root)}: cannot replace the previous state: {err}") from err


def ray_storage(config: StudyConfig, cluster: ClusterStudy | None = None) -> RayStorage:
    """The study's Ray storage: ``<ray_storage>/<study>`` when set, else the local results/<study>/ folder."""
    uri = config.ray_storage
    if not uri:
        folder = str(config.study_dir.resolve())
        return RayStorage(root=folder, label=folder)
    if not uri.startswith(S3):
        return RayStorage(root=f"{uri.rstrip('/')}/{config.name}", label=uri)
    try:
        bucket, prefix = parse_s3_uri(uri)
    except ValueError as err:
        raise ConfigError(f"{config.source}: key 'ray_storage': {err}") from err
    filesystem = s3_filesystem(_endpoint(cluster), _region(cluster))
    return RayStorage(root=f"{bucket}/{prefix}{config.name}", filesystem=filesystem, label=uri)


def s3_filesystem(endpoint_url: str | None, region: str | None) -> Any:
    """A pyarrow S3FileSystem on ``endpoint_url`` (None: AWS S3), path-style, with no credentials in it."""
    from pyarrow import fs  # here: only S3 storage pays for it

    # Delayed open: a file smaller than one part (checkpoints usually are) goes up in a single PutObject, not a
    # multipart upload: fewer round trips, and moto's server answers Arrow's CompleteMultipartUpload with an
    # empty body that Arrow reads as an error (so larger files cannot be tested against moto).
    if endpoint_url is None:
        return fs.S3FileSystem(region=region, allow_delayed_open=True)
    parts = urlsplit(endpoint_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"S3 endpoint {endpoint_url!r}: expected an http:// or https:// URL")
    return fs.S3FileSystem(
        endpoint_override=parts.netloc,
        scheme=parts.scheme,
        region=region or "us-east-1",  # MinIO/Ceph/moto ignore it, but SigV4 signs with some region
        force_virtual_addressing=False,  # buckets as paths, as MinIO/Ceph serve them
        allow_delayed_open=True,
    )


def _endpoint(cluster: ClusterStudy | None) -> str | None:
    if cluster is not None and cluster.data.endpoint_url:
        return cluster.data.endpoint_url
    return next((os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)), None)


def _region(cluster: ClusterStudy | None) -> str | None:
    if cluster is not None and cluster.data.region:
        return cluster.data.region
    return next((os.environ[name] for name in REGION_VARIABLES if os.environ.get(name)), None)
