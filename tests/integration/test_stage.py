"""Staging against a real S3 API: moto's server on 127.0.0.1, reached over HTTP by boto3 (nothing patched)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest

from study.cluster.block import read_study_block
from study.stage import main
from trainables.data.layouts import discover_subjects
from trainables.data.s3 import DataSource, StageError, check_buckets
from trainables.data.staging import MANIFEST, stage_dataset, upload_cohort
from trainables.data.synthetic import generate_cohort

N_FILES = 2 + 3 + 1  # 2 healthy subjects (one T2 each) + 1 BraTS case (t2, flair, seg) + appearance.csv


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic cohort: DIR/hcp (2 subjects) and DIR/brats (1 case)."""
    out = tmp_path_factory.mktemp("cohort") / "synthetic"
    generate_cohort(out, n_healthy=2, n_lesion=1, seed=0)
    return out


def write_cluster_yaml(folder: Path, s3_endpoint: str, bucket: str, lesion: str = "brats2019/") -> Path:
    """A cluster YAML with only the metadata.study block (all staging reads)."""
    path = folder / f"cluster-{uuid.uuid4().hex[:6]}.yaml"
    block = {
        "storage": {"endpoint_url": s3_endpoint, "region": "us-east-1"},
        "data": {"healthy": f"s3://{bucket}/hcp/", "lesion": f"s3://{bucket}/{lesion}"},
        "cache_dir": str(folder / "cache"),
        "mlflow": {"tracking_uri": "http://127.0.0.1:5999"},
    }
    path.write_text(json.dumps({"metadata": {"study": block}}))  # JSON is YAML
    return path


@pytest.fixture
def seeded(tmp_path: Path, s3_endpoint: str, cohort: Path) -> DataSource:
    """A fresh bucket seeded from the cohort with upload_cohort (the --upload path)."""
    study = read_study_block(write_cluster_yaml(tmp_path, s3_endpoint, f"brain-{uuid.uuid4().hex[:10]}")).data
    assert upload_cohort(study, cohort, create_bucket=True) == N_FILES
    return study


def cached_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_stage_mirrors_the_bucket_layout(seeded: DataSource, cohort: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    staged = stage_dataset(seeded, tmp_path / "node", progress=lines.append)
    bucket = seeded.healthy_uri.split("/")[2]
    assert staged.healthy_dir == (tmp_path / "node" / bucket / "hcp/").resolve()
    assert staged.lesion_dir == (tmp_path / "node" / bucket / "brats2019").resolve()
    assert (staged.downloaded_files, staged.skipped_files) == (N_FILES, 0)
    uploaded = [p for p in cohort.rglob("*") if p.is_file() and p.name != "cohort.json"]  # the generator's record stays
    assert staged.downloaded_bytes == sum(p.stat().st_size for p in uploaded)
    for local, staged_dir in ((cohort / "hcp", staged.healthy_dir), (cohort / "brats", staged.lesion_dir)):
        for original in (p for p in local.rglob("*") if p.is_file()):
            assert (staged_dir / original.relative_to(local)).read_bytes() == original.read_bytes()
    assert [r.subject_id for r in discover_subjects(staged.healthy_dir)] == ["100000", "100001"]
    assert discover_subjects(staged.lesion_dir)[0].lesion_mask is not None
    assert not list((tmp_path / "node").rglob("*.part"))  # no temporary file left behind
    assert len(json.loads((tmp_path / "node" / MANIFEST).read_text())) == N_FILES
    assert any("MB/s" in line and f"{N_FILES}/{N_FILES} files" in line for line in lines)


def test_second_stage_downloads_nothing(seeded: DataSource, tmp_path: Path) -> None:
    stage_dataset(seeded, tmp_path / "node")
    again = stage_dataset(seeded, tmp_path / "node")
    assert (again.downloaded_files, again.downloaded_bytes, again.skipped_files) == (0, 0, N_FILES)


def test_truncated_file_is_fetched_again(seeded: DataSource, tmp_path: Path) -> None:
    staged = stage_dataset(seeded, tmp_path / "node")
    victim = next(staged.lesion_dir.rglob("*_seg.nii.gz"))
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # as if a copy had been cut short
    again = stage_dataset(seeded, tmp_path / "node")
    assert (again.downloaded_files, again.skipped_files, again.downloaded_bytes) == (1, N_FILES - 1, len(good))
    assert victim.read_bytes() == good


def test_leftover_partial_download_is_removed(seeded: DataSource, tmp_path: Path) -> None:
    staged = stage_dataset(seeded, tmp_path / "node")
    leftover = staged.healthy_dir / "100000" / "T1w" / ".T2w_acpc_dc_restore_brain.nii.gz.0badc0de.part"
    leftover.write_bytes(b"half a scan")  # as a killed stager would leave it
    assert stage_dataset(seeded, tmp_path / "node").downloaded_files == 0
    assert not leftover.exists()


def test_object_removed_from_bucket_is_pruned(seeded: DataSource, s3_endpoint: str, tmp_path: Path) -> None:
    staged = stage_dataset(seeded, tmp_path / "node")
    bucket = seeded.healthy_uri.split("/")[2]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.delete_object(Bucket=bucket, Key="hcp/100001/T1w/T2w_acpc_dc_restore_brain.nii.gz")
    stage_dataset(seeded, tmp_path / "node")
    assert not (staged.healthy_dir / "100001/T1w/T2w_acpc_dc_restore_brain.nii.gz").exists()
    assert len(cached_files(tmp_path / "node")) == N_FILES - 1


def test_upload_again_sends_nothing(seeded: DataSource, cohort: Path) -> None:
    assert upload_cohort(seeded, cohort) == 0


def test_concurrent_stagers_on_one_node_download_once(seeded: DataSource, tmp_path: Path) -> None:
    results = []
    threads = [threading.Thread(target=lambda: results.append(stage_dataset(seeded, tmp_path / "node"))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.downloaded_files for r in results) == [0, N_FILES]


def test_missing_bucket_is_named(tmp_path: Path, s3_endpoint: str) -> None:
    study = read_study_block(write_cluster_yaml(tmp_path, s3_endpoint, "no-such-bucket-here")).data
    with pytest.raises(StageError, match=r"bucket 'no-such-bucket-here'.*no such bucket") as info:
        stage_dataset(study, tmp_path / "node")
    assert s3_endpoint in str(info.value)


def test_empty_prefix_is_named(seeded: DataSource, tmp_path: Path, s3_endpoint: str) -> None:
    bucket = seeded.healthy_uri.split("/")[2]
    study = read_study_block(write_cluster_yaml(tmp_path, s3_endpoint, bucket, lesion="brats2091/")).data
    with pytest.raises(StageError, match=rf"bucket '{bucket}', prefix 'brats2091/': no objects"):
        stage_dataset(study, tmp_path / "node")


def test_unreachable_endpoint_fails_fast(tmp_path: Path, aws_env: None) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    study = read_study_block(write_cluster_yaml(tmp_path, f"http://127.0.0.1:{port}", "brain-mri")).data
    start = time.monotonic()
    with pytest.raises(StageError, match=rf"http://127.0.0.1:{port}.*cannot reach the endpoint"):
        stage_dataset(study, tmp_path / "node")
    assert time.monotonic() - start < 10


@contextmanager
def moto_checks_signatures(s3_endpoint: str) -> Iterator[None]:
    """Turn on the server's IAM authentication (moto's /moto-api/reset-auth), then back off."""

    def post(value: str) -> None:
        request = urllib.request.Request(
            f"{s3_endpoint}/moto-api/reset-auth", data=value.encode(), headers={"Content-Type": "text/plain"}
        )
        urllib.request.urlopen(request, timeout=10).read()

    post("0")  # from the next request on, every request must be signed by a known key with permission
    try:
        yield
    finally:
        post("inf")


def test_wrong_credentials_are_rejected(
    seeded: DataSource, tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1")
    user = f"stager-{uuid.uuid4().hex[:6]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    with moto_checks_signatures(s3_endpoint):
        # The right key passes the first call (moto 5.2 cannot verify signatures of listings with a '/' in
        # the prefix, so a full staging cannot run under its auth): the rejections below are the server's.
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        check_buckets(seeded, [seeded.healthy_uri.split("/")[2]])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(StageError, match=rf"{s3_endpoint}, bucket 'brain-.*: credentials rejected"):
            stage_dataset(seeded, tmp_path / "node")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
        with pytest.raises(StageError, match="credentials rejected"):
            stage_dataset(seeded, tmp_path / "other")


def test_a_rotated_key_keeps_working_in_one_process(
    seeded: DataSource, tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One boto3 session serves the whole process, yet a key rotated between two stagings is picked up: in
    the environment, then in the shared credentials file. The old key is deleted in IAM, so a session that
    kept it would be rejected (checked: the old key alone fails)."""
    iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1")
    user = f"rotator-{uuid.uuid4().hex[:6]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*", "iam:*"], "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="rotate", PolicyDocument=json.dumps(policy))
    keys = [iam.create_access_key(UserName=user)["AccessKey"] for _ in range(2)]
    bucket = seeded.healthy_uri.split("/")[2]

    def use(key: dict) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])

    def rotate(old: dict, new: dict) -> None:
        signed = boto3.client(
            "iam",
            endpoint_url=s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id=new["AccessKeyId"],
            aws_secret_access_key=new["SecretAccessKey"],
        )
        signed.delete_access_key(UserName=user, AccessKeyId=old["AccessKeyId"])

    with moto_checks_signatures(s3_endpoint):
        use(keys[0])
        check_buckets(seeded, [bucket])  # the process's session is made with the first key
        rotate(keys[0], keys[1])
        with pytest.raises(StageError, match="credentials rejected"):
            check_buckets(seeded, [bucket])  # the old key is dead
        use(keys[1])
        check_buckets(seeded, [bucket])  # rotated in the environment: a fresh session
        third = iam_key_signed_by(s3_endpoint, user, keys[1])
        rotate(keys[1], third)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        credentials = Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"])
        credentials.write_text(f"[default]\naws_access_key_id = {third['AccessKeyId']}\n"
                               f"aws_secret_access_key = {third['SecretAccessKey']}\n")  # fmt: skip
        try:
            check_buckets(seeded, [bucket])  # rotated in the credentials file
        finally:
            credentials.unlink()


def iam_key_signed_by(endpoint: str, user: str, key: dict) -> dict:
    """A new access key of ``user``, asked for with ``key`` (the server checks signatures)."""
    signed = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    return signed.create_access_key(UserName=user)["AccessKey"]


def test_unrecognised_layout_is_named(seeded: DataSource, tmp_path: Path, s3_endpoint: str) -> None:
    bucket = seeded.healthy_uri.split("/")[2]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.put_object(Bucket=bucket, Key="notes/readme.txt", Body=b"not a scan")
    study = read_study_block(write_cluster_yaml(tmp_path, s3_endpoint, bucket, lesion="notes/")).data
    with pytest.raises(StageError, match=rf"s3://{bucket}/notes/ \(local .*\): layout not recognised"):
        stage_dataset(study, tmp_path / "node")


def test_upload_refuses_a_folder_without_a_known_layout(seeded: DataSource, tmp_path: Path) -> None:
    (tmp_path / "mess" / "hcp").mkdir(parents=True)
    (tmp_path / "mess" / "brats").mkdir()
    with pytest.raises(StageError, match="layout not recognised"):
        upload_cohort(seeded, tmp_path / "mess")


def test_cli_stages_and_reports(seeded: DataSource, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--cluster", str(seeded.source), "--cache", str(tmp_path / "cli"), "--concurrency", "2"]) == 0
    out = capsys.readouterr().out
    assert f"downloaded {N_FILES}/{N_FILES} files" in out and "MB/s" in out
    assert "healthy: " in out and str(tmp_path / "cli") in out


def test_cli_error_exit_code(tmp_path: Path, s3_endpoint: str, capsys: pytest.CaptureFixture) -> None:
    yaml_path = write_cluster_yaml(tmp_path, s3_endpoint, "no-such-bucket-here")
    assert main(["--cluster", str(yaml_path)]) == 2
    assert "no such bucket" in capsys.readouterr().err


def test_each_node_of_a_ray_cluster_stages_once(seeded: DataSource, tmp_path: Path) -> None:
    """Two raylets on this machine; a task pinned to each stages into that node's own cache folder."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})  # inherits the AWS_* environment
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        assert len(nodes) == 2
        stage = ray.remote(num_cpus=0)(stage_dataset)  # a task per node, as `study.stage --cluster` by hand on each

        def on_each_node() -> dict[str, object]:
            refs = {
                node: stage.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
                    seeded, tmp_path / node[:12]
                )
                for node in nodes
            }
            return {node: ray.get(ref, timeout=120) for node, ref in refs.items()}

        first, second = on_each_node(), on_each_node()
    finally:
        ray.shutdown()
        cluster.shutdown()
    for node in nodes:
        assert first[node].downloaded_files == N_FILES
        assert len(cached_files(tmp_path / node[:12])) == N_FILES
        assert (second[node].downloaded_files, second[node].downloaded_bytes) == (0, 0)
