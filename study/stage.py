"""python -m study.stage: S3-compatible storage <-> the per-node local data cache.

    python -m study.stage --cluster cluster/gpu.yaml                # stage both cohorts into cache_dir
    python -m study.stage --cluster cluster/gpu.yaml --upload DIR   # seed the bucket from DIR/hcp and DIR/brats

The transfers themselves are ``trainables.data.staging`` (Train workers stage on their nodes with it).
Credentials come from the environment or the instance role, never the YAML.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from study.cluster.block import ClusterConfigError, default_cluster_yaml, read_study_block
from trainables.data.s3 import DEFAULT_CONCURRENCY, StageError
from trainables.data.staging import stage_dataset, upload_cohort


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.stage", description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", type=Path, metavar="YAML", help="default: ~/ray_bootstrap_config.yaml")
    parser.add_argument("--cache", type=Path, metavar="DIR", help="cache folder (default: metadata.study.cache_dir)")
    parser.add_argument("--upload", type=Path, metavar="DIR", help="seed the bucket from DIR/hcp and DIR/brats instead")
    parser.add_argument("--create-bucket", action="store_true", help="with --upload: create a missing bucket")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N", help="default 8")
    parser.add_argument("--modality", default="t2", help="modality whose files the layout check expects (default t2)")
    args = parser.parse_args(argv)
    args.cluster = args.cluster or default_cluster_yaml()
    if args.cluster is None:
        parser.error("--cluster YAML is required here (~/ray_bootstrap_config.yaml exists only on a `ray up` head)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Command line: stage into the node's cache, or (``--upload``) seed the bucket."""
    args = parse_args(argv)
    say = lambda message: print(message, flush=True)  # noqa: E731
    start = time.monotonic()
    try:
        study = read_study_block(args.cluster)
        options = {"concurrency": args.concurrency, "modality": args.modality}
        if args.upload is not None:
            count = upload_cohort(study.data, args.upload, say, create_bucket=args.create_bucket, **options)
            print(f"uploaded {count} files in {time.monotonic() - start:.1f} s")
            return 0
        staged = stage_dataset(study.data, args.cache or study.cache_dir, say, **options)
    except (StageError, ClusterConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = f"{staged.downloaded_files} downloaded, {staged.skipped_files} already cached"
    print(f"staged in {time.monotonic() - start:.1f} s ({counts})")
    print(f"healthy: {staged.healthy_dir}\nlesion:  {staged.lesion_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
