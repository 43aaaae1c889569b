"""The shared slice cache on a two-node Ray cluster on one machine (separate cache folders per node) and moto S3.

Built once by Ray tasks that download their own subjects, published with its marker last, fetched by the other
node (which reads no raw file); a second study with the same key preprocesses nothing; a changed preprocessing
setting makes a new key; a cache published half way is rebuilt, never read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import ray
from botocore.config import Config
from ray.cluster_utils import Cluster

from trainables.data.cache import SplitConfig, load_split, prepare_slice_cache
from trainables.data.node_cache import NodeData
from trainables.data.preprocess import PreprocessConfig
from trainables.data.s3 import DataSource, StageError, parse_s3_uri
from trainables.data.shared_cache import MARKER, fetch_shared, shared_slice_cache
from trainables.data.staging import upload_cohort
from trainables.data.synthetic import generate_cohort

N_SUBJECTS = 3 + 2  # healthy + lesion: the fewest a split accepts


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort") / "synthetic"
    generate_cohort(out, n_healthy=3, n_lesion=2, seed=0)
    return out


@pytest.fixture(scope="module")
def two_nodes(s3_endpoint: str) -> Iterator[Cluster]:
    """A head and a second node of one CPU each, told apart by custom resources (started after the AWS keys)."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 1}})
    cluster.add_node(num_cpus=1, resources={"node_b": 1})
    ray.init(address=cluster.address, include_dashboard=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def make_study(tmp_path: Path, endpoint: str, cohort: Path) -> DataSource:
    bucket = f"brain-{uuid.uuid4().hex[:10]}"
    study = DataSource(
        endpoint_url=endpoint,
        region="us-east-1",
        healthy_uri=f"s3://{bucket}/data/hcp/",
        lesion_uri=f"s3://{bucket}/data/brats/",
        source=tmp_path / "cluster.yaml",
    )
    upload_cohort(study, cohort, create_bucket=True)
    return study


def s3(endpoint: str):
    checks = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(**checks))


def files(entry: Path) -> dict[str, bytes]:
    return {p.relative_to(entry).as_posix(): p.read_bytes() for p in sorted(entry.rglob("*")) if p.is_file()}


@ray.remote(resources={"node_b": 1}, num_cpus=0)
def on_node_b(node_data: NodeData) -> tuple[str, str]:
    return node_data(), ray.get_runtime_context().get_node_id()


def test_built_once_published_and_fetched(two_nodes: Cluster, s3_endpoint: str, cohort: Path, tmp_path: Path) -> None:
    study = make_study(tmp_path, s3_endpoint, cohort)
    pre, split = PreprocessConfig(), SplitConfig()
    assert study.shared_cache_uri == f"{study.healthy_uri.rsplit('/', 2)[0]}/slice-cache/"  # beside the data
    said: list[str] = []
    first = shared_slice_cache(study, pre, split, tmp_path / "node_a", said.append)
    assert first.built and sum(m.startswith("preprocessed ") for m in said) == N_SUBJECTS
    bucket, prefix = parse_s3_uri(study.shared_cache_uri)
    assert s3(s3_endpoint).head_object(Bucket=bucket, Key=f"{prefix}{first.key}/{MARKER}")
    # the same arrays and splits as a local build of the same files (meta.json names s3:// sources instead)
    local = prepare_slice_cache(cohort / "hcp", cohort / "brats", tmp_path / "local", pre, split)
    built, expected = files(first.entry), files(local)
    assert built.keys() == expected.keys()
    assert all(built[name] == expected[name] for name in built if name != "meta.json")
    assert json.loads(built["meta.json"])["subjects"]["100000"]["image"].startswith("s3://")

    # the other node: its own folder, the published entry downloaded, no raw cohort
    node_b = NodeData(str(tmp_path / "node_b" / first.key), str(tmp_path / "node_b"), {}, 0, study)
    path, node_id = ray.get(on_node_b.remote(node_b))
    assert node_id != ray.get_runtime_context().get_node_id()
    assert files(Path(path)) == built
    raw = [p for p in (tmp_path / "node_b").rglob("*.nii*")]
    assert raw == [] and not (tmp_path / "node_b" / bucket).exists()

    # a second study with the same key preprocesses nothing: it downloads the entry
    said.clear()
    again = shared_slice_cache(study, pre, split, tmp_path / "node_c", said.append)
    assert (again.key, again.built) == (first.key, False) and again.downloaded_bytes > 0
    assert not any(m.startswith("preprocessed ") for m in said)
    assert files(again.entry) == built


def test_new_setting_new_key_and_half_published_rebuilt(
    two_nodes: Cluster, s3_endpoint: str, cohort: Path, tmp_path: Path
) -> None:
    study = make_study(tmp_path, s3_endpoint, cohort)
    split = SplitConfig()
    base = shared_slice_cache(study, PreprocessConfig(image_size=16), split, tmp_path / "a")
    changed = shared_slice_cache(study, PreprocessConfig(image_size=16, min_brain_fraction=0.3), split, tmp_path / "a")
    assert changed.built and changed.key != base.key
    assert len(load_split(changed.entry, "train")) < len(load_split(base.entry, "train"))

    # half published: the marker and one file gone, as if the publisher died before its end
    client = s3(s3_endpoint)
    bucket, prefix = parse_s3_uri(study.shared_cache_uri)
    client.delete_object(Bucket=bucket, Key=f"{prefix}{base.key}/{MARKER}")
    client.delete_object(Bucket=bucket, Key=f"{prefix}{base.key}/val/images.npy")
    with pytest.raises(StageError, match="not published completely"):
        fetch_shared(study, base.key, tmp_path / "b")
    assert not (tmp_path / "b" / base.key).exists()
    said: list[str] = []
    rebuilt = shared_slice_cache(study, PreprocessConfig(image_size=16), split, tmp_path / "b", said.append)
    assert rebuilt.built and rebuilt.key == base.key
    assert sum(m.startswith("preprocessed ") for m in said) == N_SUBJECTS
    assert files(rebuilt.entry) == files(base.entry)
    assert client.head_object(Bucket=bucket, Key=f"{prefix}{base.key}/{MARKER}")
    assert fetch_shared(study, base.key, tmp_path / "c").downloaded_bytes > 0
