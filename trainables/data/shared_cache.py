"""The slice cache of a cluster study, built once from S3 and shared through S3 by every node.

The driver lists both cohorts in the bucket and finds the subjects in that listing (the ``.csv`` files, a
manifest or ``appearance.csv``, are read; every other object is a name only), so no raw volume reaches its
disk. The entry's content key hashes the preprocessing and split settings and every input object's bucket,
key, size and ETag. When ``<cache prefix>/<key>/COMPLETE`` exists the entry is downloaded; otherwise Ray tasks
build it (each downloads its own subject, ``trainables.data.build``), and the driver publishes every file
of the entry and then, last, the ``COMPLETE`` marker listing them: a cache published half way is never used.
Every other node downloads the published entry (``fetch_shared``), never the raw cohort.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainables.data.cache import (
    CACHE_VERSION,
    Progress,
    SplitConfig,
    _discover,
    assign_splits,
    build_entry,
    read_appearances,
)
from trainables.data.layouts import SubjectRecord
from trainables.data.locks import node_lock
from trainables.data.preprocess import PreprocessConfig
from trainables.data.s3 import (
    DataSource,
    RemoteObject,
    StageError,
    check_buckets,
    list_prefix,
    parse_s3_uri,
    s3_client,
)
from trainables.data.staging import _download, local_path, upload_files

MARKER = "COMPLETE"  # published last: {"files": {relative path: size}}; an entry without it does not exist
READ_SUFFIXES = (".csv",)  # listing files whose content discovery needs (manifest, appearance.csv)


@dataclass(frozen=True)
class SharedCache:
    entry: Path  # this node's copy of the entry (complete: meta.json)
    key: str  # content key: the entry's folder name here and on S3
    built: bool  # preprocessed by this call (else downloaded or already here)
    downloaded_bytes: int  # bytes of the published entry this call downloaded


@dataclass(frozen=True)
class S3Fetch:
    """Downloads one subject's objects in the task that preprocesses it; paths are ``<listing>/<bucket>/<key>``."""

    data: DataSource
    listing: str  # the driver's listing folder: a record path's part below it is ``<bucket>/<key>``
    objects: Any  # {"bucket/key": RemoteObject}, or a Ray ObjectRef to that dict (sent once, not per task)

    def _object(self, path: Path) -> RemoteObject:
        table = self.objects
        if not isinstance(table, dict):
            import ray

            table = ray.get(table)
        return table[Path(path).relative_to(self.listing).as_posix()]

    def __call__(self, record: SubjectRecord, workdir: Path) -> SubjectRecord:
        files = {f.name: f for f in dataclasses.fields(record) if f.name in ("image", "lesion_mask", "brain_mask")}
        remote = {name: self._object(getattr(record, name)) for name in files if getattr(record, name) is not None}
        _download(s3_client(self.data), workdir, list(remote.values()), len(remote), lambda obj: None)
        local = {name: local_path(workdir, obj.bucket, obj.key) for name, obj in remote.items()}
        return dataclasses.replace(record, **local)

    def source(self, path: Path) -> str:
        return "s3://" + Path(path).relative_to(self.listing).as_posix()


def _entry_uri(data: DataSource, key: str) -> tuple[str, str]:
    """(bucket, prefix ending in /) of one published entry."""
    bucket, prefix = parse_s3_uri(data.shared_cache_uri)
    return bucket, f"{prefix}{key}/"


def _listing(client: Any, data: DataSource, folder: Path) -> dict[str, RemoteObject]:
    """Mirror both cohorts' object names as empty files under ``folder`` (``.csv`` files with their content)."""
    objects = {o.id: o for uri in (data.healthy_uri, data.lesion_uri) for o in list_prefix(client, data, uri)}
    read = [o for o in objects.values() if o.key.endswith(READ_SUFFIXES)]
    _download(client, folder, read, 8, lambda obj: None)
    for obj in objects.values():
        path = local_path(folder, obj.bucket, obj.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    return objects


def shared_key(healthy, lesion, objects, listing: Path, pre: PreprocessConfig, split: SplitConfig, appearance) -> str:
    """Hash of settings and every input object (bucket, key, size, ETag): not of any node's paths or mtimes."""
    import hashlib

    files = []
    for role, records in (("healthy", healthy), ("lesion", lesion)):
        for r in records:
            for path in (r.image, r.brain_mask, r.lesion_mask):
                if path is not None:
                    obj = objects[Path(path).relative_to(listing).as_posix()]
                    files.append([role, r.subject_id, obj.id, obj.size, obj.etag])
    payload = {"version": CACHE_VERSION, "shared": 1, "pre": pre.key(), "split": asdict(split), "files": files}
    payload["appearance"] = dict(sorted(appearance.items()))
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def shared_slice_cache(
    data: DataSource, pre: PreprocessConfig, split: SplitConfig, cache_root: Path, progress: Progress | None = None
) -> SharedCache:
    """This node's copy of the study's slice cache: here already, downloaded when published, else built and
    published. Raises StageError (the store) or DataError (the data), naming the object or file."""
    say = progress or (lambda message: None)
    cache_root = Path(cache_root).expanduser().resolve()
    cache_root.mkdir(parents=True, exist_ok=True)
    client = s3_client(data)
    buckets = [parse_s3_uri(u)[0] for u in (data.healthy_uri, data.lesion_uri, data.shared_cache_uri)]
    check_buckets(data, buckets)
    listing = Path(tempfile.mkdtemp(prefix=".listing-", dir=cache_root))
    try:
        objects = _listing(client, data, listing)
        healthy_dir, lesion_dir = (listing.joinpath(*parse_s3_uri(u)) for u in (data.healthy_uri, data.lesion_uri))
        healthy, lesion = _discover(healthy_dir, lesion_dir, pre.modality)
        appearance = read_appearances(lesion_dir, [r.subject_id for r in lesion])
        key = shared_key(healthy, lesion, objects, listing, pre, split, appearance)
        with node_lock(cache_root / f"{key}.shared.lock", f"waiting for another process on slice cache {key}", say):
            if _published(client, data, key):  # a local entry not yet published is published below
                fetched = fetch_shared(data, key, cache_root, say)
                return SharedCache(fetched.entry, key, False, fetched.downloaded_bytes)
            ids = [r.subject_id for r in healthy], [r.subject_id for r in lesion]
            assignment = assign_splits(*ids, split, appearance)
            fetch = S3Fetch(data, str(listing), _shareable(objects))
            entry = build_entry(cache_root, key, healthy, lesion, assignment, pre, split, appearance, say, fetch)
            publish(client, data, entry, key, say)
            return SharedCache(entry, key, True, 0)
    finally:
        shutil.rmtree(listing, ignore_errors=True)


def _shareable(objects: dict[str, RemoteObject]) -> Any:
    """The object table once in Ray's object store (every task reads it there), or as is without Ray."""
    import ray

    return ray.put(objects) if ray.is_initialized() else objects


def _published(client: Any, data: DataSource, key: str) -> bool:
    bucket, prefix = _entry_uri(data, key)
    return any(o.key == prefix + MARKER for o in list_prefix(client, data, f"s3://{bucket}/{prefix}", allow_empty=True))


def publish(client: Any, data: DataSource, entry: Path, key: str, say: Progress) -> None:
    """Upload every file of ``entry`` to ``<cache prefix>/<key>/``, then the marker that makes it usable."""
    bucket, prefix = _entry_uri(data, key)
    files = sorted(p for p in entry.rglob("*") if p.is_file())
    sizes = {p.relative_to(entry).as_posix(): p.stat().st_size for p in files}
    say(f"publishing slice cache {key} to s3://{bucket}/{prefix}")
    upload_files(client, [(p, bucket, prefix + p.relative_to(entry).as_posix()) for p in files], 8, say)
    client.put_object(Bucket=bucket, Key=prefix + MARKER, Body=json.dumps({"files": sizes}).encode())


@dataclass(frozen=True)
class Fetched:
    entry: Path
    downloaded_bytes: int


def fetch_shared(data: DataSource, key: str, cache_root: Path, progress: Progress | None = None) -> Fetched:
    """This node's copy of the published entry ``key`` (downloaded once per node, under a node lock).

    StageError when the entry is not published completely (no marker, or files missing against it).
    """
    say = progress or (lambda message: None)
    cache_root = Path(cache_root).expanduser().resolve()
    cache_root.mkdir(parents=True, exist_ok=True)
    entry = cache_root / key
    with node_lock(cache_root / f"{key}.lock", f"waiting for another process fetching slice cache {entry}", say):
        if (entry / "meta.json").is_file():
            say(f"reusing slice cache {entry}")
            return Fetched(entry, 0)
        client = s3_client(data)
        bucket, prefix = _entry_uri(data, key)
        where = f"s3://{bucket}/{prefix}"
        remote = {o.key[len(prefix) :]: o for o in list_prefix(client, data, where, allow_empty=True)}
        if MARKER not in remote:
            raise StageError(f"{where}: slice cache {key} is not published completely (no {MARKER} marker)")
        expected = json.loads(client.get_object(Bucket=bucket, Key=prefix + MARKER)["Body"].read())["files"]
        wrong = [name for name, size in expected.items() if name not in remote or remote[name].size != size]
        if wrong:
            raise StageError(f"{where}: published slice cache lacks or differs in {wrong[:3]}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_root))
        try:
            todo = [remote[name] for name in expected]
            _download(client, tmp, todo, 8, lambda obj: None)
            shutil.rmtree(entry, ignore_errors=True)  # an incomplete copy (no meta.json) of an earlier try
            local_path(tmp, bucket, prefix.rstrip("/")).rename(entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    nbytes = sum(o.size for o in todo)
    say(f"downloaded slice cache {key}: {nbytes / 1e6:.1f} MB from {where}")
    return Fetched(entry, nbytes)
