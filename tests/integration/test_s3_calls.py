"""The S3 requests a node really makes, recorded by moto's server (its request recorder), each checked against the
node's IAM policy (cluster/iam) with the action AWS authorises it by: a worker staging the data and checkpointing
through Ray Train's own storage code (pyarrow), the head's dry run. The bucket and prefixes are cluster/gpu.yaml's,
so the policies' resource ARNs are tested as written. (moto does not evaluate IAM; tests/unit/test_iam.py does.)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import yaml

from study.cluster.block import read_study_block
from study.cluster.storage import ray_storage
from study.config import StudyConfig
from tests.unit.test_iam import BLOCK, S3_OPERATIONS, allowed, policy
from trainables.data.staging import stage_dataset, upload_cohort
from trainables.data.synthetic import generate_cohort

ROOT = Path(__file__).parents[2]


def operation(method: str, url: str) -> tuple[str, str]:
    """(S3 operation, resource ARN) of one path-style request."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    bucket, _, key = parts.path.lstrip("/").partition("/")
    if not key:
        name = {"HEAD": "HeadBucket", "PUT": "CreateBucket"}.get(method)
        if method == "GET":
            name = "ListObjectsV2" if query.get("list-type") == ["2"] else f"GET bucket {sorted(query)}"
        if method == "POST" and "delete" in query:
            return "DeleteObjects", f"arn:aws:s3:::{bucket}"  # authorised per key: see deleted_keys
        return name or f"{method} bucket {sorted(query)}", f"arn:aws:s3:::{bucket}"
    if "uploadId" in query:
        name = {"PUT": "UploadPart", "POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}[method]
    elif "uploads" in query:
        name = "CreateMultipartUpload"
    else:
        name = {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject", "DELETE": "DeleteObject"}[method]
    return name, f"arn:aws:s3:::{bucket}/{key}"


def deleted_keys(entry: dict[str, Any]) -> list[str]:
    """The keys of a DeleteObjects request (its XML body): s3:DeleteObject is authorised on each."""
    import base64
    import re

    body = base64.b64decode(entry["body"]).decode() if entry.get("body_encoded") else entry["body"]
    keys = re.findall(r"<Key>(.*?)</Key>", body)
    assert keys, body
    return keys


@pytest.fixture
def recorded(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[tuple[str, str]]]:
    """Start moto's recorder (its log goes to ./moto_recording: here, tmp_path); the function returns what was
    recorded since the last call, as (operation, ARN)."""
    monkeypatch.chdir(tmp_path)
    api = f"{s3_endpoint}/moto-api/recorder"

    def take() -> list[tuple[str, str]]:
        entries = [json.loads(line) for line in requests.get(f"{api}/download-recording").text.splitlines() if line]
        requests.post(f"{api}/reset-recording")
        calls = []
        for entry in entries:
            name, arn = operation(entry["method"], entry["url"])
            keys = deleted_keys(entry) if name == "DeleteObjects" else [None]
            calls += [(name, arn if key is None else f"{arn}/{key}") for key in keys]
        return calls

    requests.post(f"{api}/reset-recording")
    requests.post(f"{api}/start-recording")
    yield take
    requests.post(f"{api}/stop-recording")


@pytest.fixture
def site(s3_endpoint: str, tmp_path: Path) -> Path:
    """cluster/gpu.yaml's block on moto, the bucket seeded (with the user's credentials: not recorded as a node's)."""
    block = {**BLOCK, "storage": {"endpoint_url": s3_endpoint, "region": "us-east-1"}, "cache_dir": str(tmp_path)}
    block["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    path = tmp_path / "site.yaml"
    raw = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
    raw["metadata"]["study"] = block
    path.write_text(yaml.safe_dump(raw))
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, n_healthy=2, n_lesion=1, seed=0)
    upload_cohort(read_study_block(path).data, cohort, create_bucket=True)
    return path


# Arrow's S3 client sends HeadBucket for this name, which no bucket can have (libarrow carries the string), and
# handles its failure itself: denied on AWS whatever the policy says, and nothing depends on it.
ARROW_PROBE = "arn:aws:s3:::$extremelyunlikelytoexist$"


def check(node: str, calls: list[tuple[str, str]]) -> Counter:
    document = policy(node)
    calls = [(name, arn) for name, arn in calls if arn != ARROW_PROBE]
    for name, arn in calls:
        assert name in S3_OPERATIONS, f"{node} made {name} on {arn}: add it to tests/unit/test_iam.py"
        action, _ = S3_OPERATIONS[name]
        context: dict[str, Any] = {}  # HeadBucket carries no prefix; listings' prefixes need no condition now
        assert allowed(document, action, arn, context), (node, name, arn)
    return Counter(name for name, _ in calls)


def test_a_workers_calls_are_allowed_by_its_policy(site: Path, recorded: Callable, tmp_path: Path) -> None:
    from ray.train import Checkpoint
    from ray.train.v2._internal.execution.storage import StorageContext, delete_fs_path

    recorded()  # the seeding above, with the user's credentials: not a node's
    study = read_study_block(site)
    stage_dataset(study.data, tmp_path / "node-cache")
    storage = ray_storage(StudyConfig(name="smoke", ray_storage=study.ray_storage), study)
    context = StorageContext(storage.path("train"), "trial_0", storage_filesystem=storage.filesystem)
    local = tmp_path / "ckpt"
    local.mkdir()
    (local / "state.pt").write_bytes(b"w" * 1000)
    persisted = context.persist_current_checkpoint(Checkpoint.from_directory(str(local)), "checkpoint_000000")
    persisted.to_directory(str(tmp_path / "restored"))  # a restarted worker's restore
    delete_fs_path(storage.filesystem, persisted.path)  # Ray Train dropping a checkpoint past num_to_keep
    counts = check("worker", recorded())
    # measured: HeadBucket 3, ListObjectsV2 7, GetObject 7, HeadObject 7, PutObject 12, DeleteObjects 1 (1 key),
    # DeleteObject 1 (besides Arrow's probe)
    assert {"HeadBucket", "ListObjectsV2", "GetObject", "PutObject"} <= set(counts), counts
    assert counts["HeadBucket"] >= 1  # the call a prefix condition on s3:ListBucket would deny


def test_the_heads_dry_run_calls_are_allowed_by_its_policy(site: Path, recorded: Callable, tmp_path: Path) -> None:
    from study.run import main

    config = yaml.safe_load((ROOT / "study" / "configs" / "gpu.yaml").read_text())
    config.update(results_dir=str(tmp_path / "results"))
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(config))
    recorded()
    assert main(["--dry-run", "--config", str(tmp_path / "gpu.yaml"), "--cluster", str(site)]) == 0
    counts = check("head", recorded())
    # measured: HeadBucket 1, ListObjectsV2 2, PutObject 1, DeleteObject 1 (the probe written and deleted)
    assert {"HeadBucket", "ListObjectsV2", "PutObject", "DeleteObject"} <= set(counts), counts
