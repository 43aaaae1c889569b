"""Data on the node a Train worker runs on: the driver's slice cache when this node has it, else staged here.

On one machine (or a shared file system) every worker finds the cache the driver built. On a cluster
a worker on another node downloads the entry the driver published on S3 (trainables.data.shared_cache)
into that node's cache folder, once per node: a per-node file lock makes the other trials and workers
on the node wait and then reuse it. No node but the builder's tasks reads the raw cohort.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.data.s3 import DataSource


@dataclass(frozen=True)
class NodeData:
    """A picklable callable handed to each Train worker; returns this node's slice-cache folder."""

    cache_dir: str  # the driver's slice-cache entry (used when this node can see it)
    cache_root: str  # where a node builds its own entry (the same relative settings as the driver's)
    preprocess: dict[str, Any]  # PreprocessConfig fields
    split_seed: int  # SplitConfig seed: same subjects, same splits on every node
    data: DataSource | None = None  # where the driver published the cache (S3); None when the data is local

    def __call__(self) -> str:
        if (Path(self.cache_dir) / "meta.json").is_file():
            return self.cache_dir
        if self.data is None:
            raise FileNotFoundError(f"{self.cache_dir}: slice cache not on this node and no cluster storage to stage")
        from trainables.data.shared_cache import fetch_shared  # boto3 only where the cache is fetched

        # the entry's folder name is its content key, under which the driver published it
        return str(fetch_shared(self.data, Path(self.cache_dir).name, Path(self.cache_root)).entry)
