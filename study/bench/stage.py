"""Bench section `stage`: `trainables.data.staging.stage_dataset` from an S3-compatible server against a plain boto3
download of the same objects with the same concurrency.

The bench starts moto's S3 server as a child process on 127.0.0.1 (its own process, so the server does not
share our interpreter lock with the downloads being timed), seeds a bucket with a synthetic cohort through
`trainables.data.staging.upload_cohort`, then alternates: a staging into an empty cache folder, and a plain download
(one boto3 client, list both prefixes, `download_file` per object on a pool of the same size) into another.
Both timings include creating the client and listing; MB/s are medians over repeats. Finally a second
staging into a warm cache must download nothing (`restage_bytes`).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from study.bench.common import DEFAULT_CONFIG, SMOKE_CONFIG, BenchPlan, environment, say, study_config
from study.bench.report import median, ratio

BUCKET = "bench-brain-mri"
CREDENTIALS = {  # dummy keys for the local server; nothing else is ever contacted
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's S3 server in a child process on 127.0.0.1; a context manager giving its endpoint URL."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                return endpoint
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"moto server on {endpoint} did not answer within 60 s")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


def cluster_yaml(folder: Path, endpoint: str) -> Path:
    """A cluster YAML holding only the metadata.study block staging reads."""
    block = {
        "storage": {"endpoint_url": endpoint, "region": "us-east-1"},
        "data": {"healthy": f"s3://{BUCKET}/hcp/", "lesion": f"s3://{BUCKET}/brats/"},
        "cache_dir": str(folder / "cache"),
    }
    path = folder / "cluster.yaml"
    path.write_text(json.dumps({"metadata": {"study": block}}))  # JSON is YAML
    return path


def plain_download(endpoint: str, prefixes: list[str], out: Path, concurrency: int) -> int:
    """Bytes fetched by a plain boto3 download of every object under ``prefixes``, ``concurrency`` at a time."""
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    config = Config(max_pool_connections=concurrency + 2, s3={"addressing_style": "path"})
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config)
    keys = []
    for prefix in prefixes:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    transfer = TransferConfig(use_threads=False)  # the pool below is the concurrency (a plain way to write it)

    def fetch(key: str) -> None:
        target = out / key
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(target), Config=transfer)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(fetch, [k for k, _ in keys]))
    return sum(size for _, size in keys)


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - started


def _stage_rate(study: Any, folder: Path) -> float:
    from trainables.data.s3 import DEFAULT_CONCURRENCY
    from trainables.data.staging import stage_dataset

    staged, seconds = _timed(stage_dataset, study, folder, concurrency=DEFAULT_CONCURRENCY)
    return staged.downloaded_bytes / 1e6 / seconds


def _plain_rate(endpoint: str, folder: Path) -> float:
    from trainables.data.s3 import DEFAULT_CONCURRENCY

    nbytes, seconds = _timed(plain_download, endpoint, ["hcp/", "brats/"], folder, DEFAULT_CONCURRENCY)
    return nbytes / 1e6 / seconds


def _compare(study: Any, endpoint: str, work: Path, repeats: int) -> tuple[dict[str, list[float]], Path]:
    """MB/s of the staging and of the plain download, alternating in rounds after an untimed one (imports,
    boto3's sessions: both sides keep one per process, the plain side boto3's default); and the last staged
    cache folder."""
    rates: dict[str, list[float]] = {"staged": [], "plain": []}
    last = work
    for i in range(repeats + 1):
        last = work / f"staged-{i}"
        found = {"staged": _stage_rate(study, last), "plain": _plain_rate(endpoint, work / f"plain-{i}")}
        if i > 0:  # round 0 warms up
            for key, value in found.items():
                rates[key].append(value)
        for folder in (work / f"plain-{i}", *([last] if i < repeats else [])):
            shutil.rmtree(folder)
    return rates, last


def run(plan: BenchPlan) -> dict[str, Any]:
    """Section figures: staging_ratio, both MB/s, the bytes of the cohort and restage_bytes."""
    from study.cluster.block import read_study_block
    from study.data import data_folders
    from trainables.data.staging import stage_dataset, upload_cohort

    config = study_config(SMOKE_CONFIG if plan.quick else DEFAULT_CONFIG)
    healthy, _ = data_folders(config)  # the synthetic cohort (generated once): DIR/hcp and DIR/brats
    cohort = healthy.parent
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp, environment(**CREDENTIALS), MotoServer() as url:
        study = read_study_block(cluster_yaml(Path(tmp), url)).data
        upload_cohort(study, cohort, create_bucket=True)
        rates, last = _compare(study, url, Path(tmp), plan.stage_repeats)
        again = stage_dataset(study, last)
    staged, plain = median(rates["staged"]), median(rates["plain"])
    figures = {
        "staging_ratio": ratio(staged, plain),
        "staging_mb_per_s": staged,
        "plain_download_mb_per_s": plain,
        "staging_mb": sum(p.stat().st_size for p in cohort.rglob("*.nii.gz")) / 1e6,
        "restage_bytes": again.downloaded_bytes,
    }
    say(
        f"stage: {figures['staging_mb']:.1f} MB, staging {figures['staging_mb_per_s']:.1f} MB/s, plain boto3 "
        f"{figures['plain_download_mb_per_s']:.1f} MB/s (ratio {figures['staging_ratio']:.2f}); "
        f"warm restage {again.downloaded_bytes} bytes"
    )
    return figures
