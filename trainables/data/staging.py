"""S3-compatible storage <-> a node's local folder: a mirror of the two raw cohorts (``stage_dataset``), the
bucket seeded from local folders (``upload_cohort``), and the transfers both use (the shared slice cache's too).

Objects keep the bucket's layout under ``<cache>/<bucket>/<key>``, so the staged folders are dataset folders.
A study never stages the raw cohorts onto a node: its Ray tasks fetch one subject each to build the slice cache,
and every node gets that cache from ``trainables.data.shared_cache.fetch_shared``, the one function that brings
a slice cache onto a node (the driver's ``shared_slice_cache`` and a worker's ``NodeData`` both call it).
``stage_dataset`` is what ``python -m study.stage --cluster`` runs, by hand, to look at the data on a node.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from uuid import uuid4

from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber
from s3transfer.utils import OSUtils

from trainables.data.errors import DataError
from trainables.data.layouts import discover_subjects
from trainables.data.locks import node_lock
from trainables.data.s3 import (
    DEFAULT_CONCURRENCY,
    DataSource,
    RemoteObject,
    StageError,
    check_buckets,
    explain_error,
    list_prefix,
    parse_s3_uri,
    s3_client,
)

MANIFEST = ".stage-manifest.json"  # {"bucket/key": {"size": n, "etag": "..."}} of every file staged here
LOCK = ".stage.lock"  # one stager per node: every other trial on the node waits, then finds all cached
CHUNK = 1 << 20
SINGLE_PUT_MAX = 5 * 1024**3  # S3's largest single-part upload
COHORT_DIRS = {"healthy": ("hcp", "healthy"), "lesion": ("brats", "lesion")}  # --upload DIR's sub-folders

Progress = Callable[[str], None]


@dataclass(frozen=True)
class StagedData:
    healthy_dir: Path  # <cache>/<bucket>/<prefix> of data.healthy
    lesion_dir: Path  # <cache>/<bucket>/<prefix> of data.lesion
    downloaded_bytes: int
    downloaded_files: int
    skipped_files: int  # already cached with the bucket's size and ETag


def local_path(cache_dir: Path, bucket: str, key: str) -> Path:
    """``<cache>/<bucket>/<key>``; refuses keys that would land outside the cache (``..``, absolute)."""
    parts = PurePosixPath(key).parts
    if not parts or key.startswith("/") or any(part in ("..", ".") for part in parts):
        raise StageError(f"s3://{bucket}/{key}: refusing a key that does not map to a file under {cache_dir}")
    return cache_dir.joinpath(bucket, *parts)


def _load_manifest(cache_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        manifest = json.loads((cache_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}  # missing or unreadable: files are fetched again, never trusted unchecked
    return manifest if isinstance(manifest, dict) else {}


def _save_manifest(cache_dir: Path, manifest: dict[str, dict[str, Any]]) -> None:
    """Atomic: a reader sees the old or the new manifest, never half of one."""
    tmp = cache_dir / f".{MANIFEST}.{uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps(manifest, indent=0, sort_keys=True))
    os.replace(tmp, cache_dir / MANIFEST)


def _is_cached(obj: RemoteObject, path: Path, manifest: dict[str, dict[str, Any]]) -> bool:
    entry = manifest.get(obj.id)
    return path.is_file() and path.stat().st_size == obj.size and entry == {"size": obj.size, "etag": obj.etag}


def _is_cached_or_adopted(obj: RemoteObject, path: Path, manifest: dict[str, dict[str, Any]]) -> bool:
    """Cached, or a complete file a killed stager renamed into place but never recorded (its manifest is
    saved at the end): adopted when its MD5 is the object's ETag, so only missing or damaged files are fetched.

    Multipart (or SSE-KMS) ETags are not MD5s: such a file is fetched again rather than trusted unchecked.
    """
    if _is_cached(obj, path, manifest):
        return True
    if "-" in obj.etag or not (path.is_file() and path.stat().st_size == obj.size) or _md5(path) != obj.etag:
        return False
    manifest[obj.id] = {"size": obj.size, "etag": obj.etag}
    return True


class _PartNames(OSUtils):
    """s3transfer's file operations, but a download in flight is named ``.<name>.<8 hex>.part``.

    s3transfer already writes each download to a temporary sibling and renames it into place when complete,
    so no reader ever opens half a file under its final name. Its own temporary name (``<name>.<8 hex>``) is
    visible to a folder listing and a glob like ``*.nii.gz*``; ours is hidden, and after a killed stager
    every leftover is found by one pattern (``_sync`` removes them under the node lock).
    """

    def get_temp_filename(self, filename: str) -> str:
        path = Path(filename)
        return str(path.with_name(f".{path.name}.{uuid4().hex[:8]}.part"))


def _transfer_config(concurrency: int, upload: bool = False) -> Any:
    """s3transfer's settings: ``concurrency`` requests at a time; its retries of a body cut short (on top of
    botocore's request retries) replace the ones this module used to hand-write. Uploads go in one part
    (S3 allows up to 5 GB), so an object's ETag stays its file's MD5, which a second ``--upload`` and the
    adoption of a killed stager's files compare against; downloads of large files use ranged GETs."""
    from boto3.s3.transfer import TransferConfig

    single = {"multipart_threshold": SINGLE_PUT_MAX} if upload else {}
    return TransferConfig(max_concurrency=max(1, concurrency), num_download_attempts=5, **single)


def _pin_etags(client: Any, objects: list[RemoteObject]) -> None:
    """Every GetObject of a listed object carries ``IfMatch`` with the listed ETag: an object replaced since
    the listing fails (412) instead of being stored under the old ETag. s3transfer sends IfMatch itself only
    on the ranged GETs of a multipart download; this covers the single GETs too."""
    etags = {(o.bucket, o.key): f'"{o.etag}"' for o in objects}

    def add_if_match(params: dict[str, Any], **kwargs: Any) -> None:
        etag = etags.get((params.get("Bucket"), params.get("Key")))
        if etag is not None:
            params.setdefault("IfMatch", etag)

    client.meta.events.register("before-parameter-build.s3.GetObject", add_if_match)


class _Listed(BaseSubscriber):
    """Gives s3transfer the listed size and ETag (no HEAD request per object) and reports each completion."""

    def __init__(self, obj: RemoteObject, done: Callable[[RemoteObject], None]) -> None:
        self.obj, self.done = obj, done

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self.obj.size)
        future.meta.provide_object_etag(f'"{self.obj.etag}"')

    def on_done(self, future: Any, **kwargs: Any) -> None:
        try:
            future.result()  # done already: returns at once, or raises the transfer's error (reported by _download)
        except BaseException:
            return
        self.done(self.obj)


class _Meter:
    """Files and bytes done, said at most once a second and at the end, so a person can follow."""

    def __init__(self, verb: str, files: int, total_bytes: int, say: Progress) -> None:
        self.verb, self.files, self.total, self.say = verb, files, total_bytes, say
        self.done = self.bytes = 0
        self.start = self.last = time.monotonic()

    def add(self, nbytes: int) -> None:
        self.done += 1
        self.bytes += nbytes
        if time.monotonic() - self.last >= 1.0 or self.done == self.files:
            self.last = time.monotonic()
            self.say(self.line())

    def line(self) -> str:
        seconds = max(time.monotonic() - self.start, 1e-6)
        return (
            f"{self.verb} {self.done}/{self.files} files, {self.bytes / 1e6:.1f}/{self.total / 1e6:.1f} MB, "
            f"{self.bytes / 1e6 / seconds:.1f} MB/s"
        )


def _prune(cache_dir: Path, prefixes: set[str], listed: set[str], manifest: dict[str, dict[str, Any]]) -> None:
    """Drop files this tool staged under ``prefixes`` that the bucket no longer has (never anything else)."""
    for object_id in [i for i in manifest if i not in listed and any(i.startswith(p) for p in prefixes)]:
        bucket, _, key = object_id.partition("/")
        local_path(cache_dir, bucket, key).unlink(missing_ok=True)
        del manifest[object_id]


def _verify(cache_dir: Path, objects: list[RemoteObject], manifest: dict[str, dict[str, Any]]) -> None:
    """Every listed object is on disk with the listed size and ETag; StageError listing the first misfits."""
    bad = [o for o in objects if not _is_cached(o, local_path(cache_dir, o.bucket, o.key), manifest)]
    if bad:
        names = ", ".join(str(local_path(cache_dir, o.bucket, o.key)) for o in bad[:3])
        raise StageError(f"{cache_dir}: {len(bad)} of {len(objects)} staged files do not match the bucket: {names}")


def _sync(
    client: Any, cache_dir: Path, objects: list[RemoteObject], concurrency: int, say: Progress
) -> tuple[int, int, int, dict[str, dict[str, Any]]]:
    """Download what is missing or changed; return (bytes, files downloaded, files skipped, manifest)."""
    manifest = _load_manifest(cache_dir)
    for stale in cache_dir.rglob(".*.part"):  # left by a killed stager; we hold the node's lock
        stale.unlink(missing_ok=True)
    unique = list({o.id: o for o in objects}.values())  # healthy and lesion prefixes may overlap
    todo = [o for o in unique if not _is_cached_or_adopted(o, local_path(cache_dir, o.bucket, o.key), manifest)]
    total = sum(o.size for o in unique)
    say(f"{len(unique)} objects, {total / 1e6:.1f} MB: {len(unique) - len(todo)} cached, {len(todo)} to download")
    meter = _Meter("downloaded", len(todo), sum(o.size for o in todo), say)
    lock = threading.Lock()

    def done(obj: RemoteObject) -> None:  # on s3transfer's threads, as each file is renamed into place
        with lock:
            manifest[obj.id] = {"size": obj.size, "etag": obj.etag}
            meter.add(obj.size)

    try:
        _download(client, cache_dir, todo, concurrency, done)
    finally:
        _save_manifest(cache_dir, manifest)  # keep what finished even when something failed
    return meter.bytes, len(todo), len(unique) - len(todo), manifest


def _download(
    client: Any, cache_dir: Path, todo: list[RemoteObject], concurrency: int, done: Callable[[RemoteObject], None]
) -> None:
    """Every object of ``todo`` through one s3transfer TransferManager; StageError naming the first failure
    (the queued transfers are then cancelled, the running ones end)."""
    from botocore.exceptions import BotoCoreError, ClientError

    _pin_etags(client, todo)
    with TransferManager(client, _transfer_config(concurrency), osutil=_PartNames()) as manager:
        futures = []
        for obj in todo:
            path = local_path(cache_dir, obj.bucket, obj.key)
            path.parent.mkdir(parents=True, exist_ok=True)
            futures.append((obj, manager.download(obj.bucket, obj.key, str(path), subscribers=[_Listed(obj, done)])))
        for obj, future in futures:
            try:
                future.result()
            except (BotoCoreError, ClientError, OSError) as err:
                raise explain_error(err, f"s3://{obj.bucket}/{obj.key}") from err


def _check_layout(folder: Path, uri: str, modality: str, lesion: bool) -> None:
    """The staged (or to-be-uploaded) folder is a dataset the study can read; StageError otherwise."""
    try:
        discover_subjects(folder, modality, require_lesion_mask=lesion)
    except DataError as err:
        raise StageError(f"{uri} (local {folder}): layout not recognised: {err}") from err


def stage_dataset(
    data: DataSource,
    cache_dir: Path,
    progress: Progress | None = None,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    modality: str = "t2",
) -> StagedData:
    """Mirror ``data.healthy`` and ``data.lesion`` into ``cache_dir/<bucket>/<prefix>`` on this node.

    Once per node: a file lock in ``cache_dir`` makes concurrent callers wait, and files already cached
    with the bucket's size and ETag (the manifest ``.stage-manifest.json``) are not fetched again.
    Downloads go through s3transfer's TransferManager, ``concurrency`` requests at a time, each written to
    a hidden temporary name and renamed when complete (s3transfer retries a body cut short, botocore a
    failed request). At the end every file's size and ETag is checked and both folders must hold a
    known dataset layout. Raises StageError naming the endpoint, bucket, prefix or file.
    """
    say = progress or (lambda message: None)
    cache_dir = Path(cache_dir).expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    uris = {"healthy": data.healthy_uri, "lesion": data.lesion_uri}
    dirs = {role: cache_dir.joinpath(*parse_s3_uri(uri)) for role, uri in uris.items()}
    say(f"staging {' and '.join(uris.values())} from {data.label} into {cache_dir}")
    with node_lock(cache_dir / LOCK, f"waiting for another process staging into {cache_dir}", say):
        check_buckets(data, [parse_s3_uri(uri)[0] for uri in uris.values()])
        client = s3_client(data, concurrency=concurrency)
        objects = [o for uri in uris.values() for o in list_prefix(client, data, uri)]
        nbytes, fetched, skipped, manifest = _sync(client, cache_dir, objects, concurrency, say)
        prefixes = {"/".join(parse_s3_uri(uri)) for uri in uris.values()}
        _prune(cache_dir, prefixes, {o.id for o in objects}, manifest)
        _save_manifest(cache_dir, manifest)
        _verify(cache_dir, objects, manifest)
        for role, uri in uris.items():
            _check_layout(dirs[role], uri, modality, lesion=role == "lesion")
    return StagedData(dirs["healthy"], dirs["lesion"], nbytes, fetched, skipped)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cohort_dir(folder: Path, role: str) -> Path:
    for name in COHORT_DIRS[role]:
        if (folder / name).is_dir():
            return folder / name
    raise StageError(f"{folder}: --upload needs a sub-folder {' or '.join(COHORT_DIRS[role])}/ for the {role} cohort")


def _upload_plan(client: Any, data: DataSource, local: Path, uri: str) -> list[tuple[Path, str, str]]:
    """(file, bucket, key) for every visible file under ``local`` not already in the bucket unchanged."""
    bucket, prefix = parse_s3_uri(uri)
    remote = {o.key: o for o in list_prefix(client, data, uri, allow_empty=True)}
    plan = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = path.relative_to(local)
        if any(part.startswith(".") for part in rel.parts):
            continue  # locks, temporary files and editor litter are not data
        key = prefix + rel.as_posix()
        known = remote.get(key)
        if known is None or known.size != path.stat().st_size or known.etag != _md5(path):
            plan.append((path, bucket, key))
    return plan


def upload_cohort(
    data: DataSource,
    folder: Path,
    progress: Progress | None = None,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    create_bucket: bool = False,
    modality: str = "t2",
) -> int:
    """Seed the store from ``folder/hcp`` (or ``healthy``) and ``folder/brats`` (or ``lesion``), same layout.

    Files already in the bucket with the same size and MD5 ETag are left alone. Returns files uploaded.
    """

    say = progress or (lambda message: None)
    folder = Path(folder).expanduser()
    uris = {"healthy": data.healthy_uri, "lesion": data.lesion_uri}
    sources = {role: (_cohort_dir(folder, role), uri) for role, uri in uris.items()}
    for role, (local, uri) in sources.items():
        _check_layout(local, uri, modality, lesion=role == "lesion")  # refuse before anything is sent
    check_buckets(data, [parse_s3_uri(uri)[0] for _, uri in sources.values()], create=create_bucket)
    client = s3_client(data, concurrency=concurrency)
    plan = [item for local, uri in sources.values() for item in _upload_plan(client, data, local, uri)]
    say(f"uploading {len(plan)} files to {data.label}")
    upload_files(client, plan, concurrency, say)
    return len(plan)


def upload_files(client: Any, plan: list[tuple[Path, str, str]], concurrency: int, say: Progress) -> None:
    """Upload every (file, bucket, key) of ``plan`` in one part each (ETag = MD5); StageError naming a failure."""
    from botocore.exceptions import BotoCoreError, ClientError

    meter = _Meter("uploaded", len(plan), sum(p.stat().st_size for p, _, _ in plan), say)
    lock = threading.Lock()

    class Sent(BaseSubscriber):
        def on_done(self, future: Any, **kwargs: Any) -> None:
            with lock:
                meter.add(future.meta.size or 0)

    with TransferManager(client, _transfer_config(concurrency, upload=True)) as manager:
        futures = [(f"s3://{bucket}/{key}", manager.upload(str(path), bucket, key, subscribers=[Sent()]))
                   for path, bucket, key in plan]  # fmt: skip
        for where, future in futures:
            try:
                future.result()
            except (BotoCoreError, ClientError, OSError) as err:
                raise explain_error(err, where) from err
