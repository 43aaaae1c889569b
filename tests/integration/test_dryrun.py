"""`python -m study.run --dry-run` against real parts: moto's S3 server over HTTP, a real `mlflow server` started by
`python -m study.mlflow_server`, Ray's own cluster YAML validator. Each broken piece is named, exits 2, writes nothing.
"""

from __future__ import annotations

import copy
import re
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from study import mlflow_server
from study.run import main

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture(scope="module")
def site(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A bucket with both data prefixes; MLflow in SQLite (a server costs 10-80 s to start here: the slow test)."""
    folder = tmp_path_factory.mktemp("site")
    bucket = f"dry-{uuid.uuid4().hex[:8]}"
    client = s3(s3_endpoint)
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="hcp/100307/T1w/T2w_acpc_dc_restore_brain.nii.gz", Body=b"x" * 100)
    client.put_object(Bucket=bucket, Key="brats2019/BraTS19_1/BraTS19_1_t2.nii.gz", Body=b"y" * 200)
    return {"endpoint": s3_endpoint, "bucket": bucket, "mlflow": f"sqlite:///{folder / 'mlflow.db'}"}


def write_cluster(
    folder: Path, site: dict[str, Any], name: str = "cluster.yaml", base: str | None = None, **changes: Any
) -> Path:
    """A cluster YAML: Ray's local provider on this machine (or cluster/<base>), with a metadata.study block."""
    bucket = site["bucket"]
    study = {
        "storage": {"endpoint_url": site["endpoint"], "region": "us-east-1"},
        "data": {"healthy": f"s3://{bucket}/hcp/", "lesion": f"s3://{bucket}/brats2019/"},
        "ray_storage": f"s3://{bucket}/ray/",
        "cache_dir": str(folder / "cache"),
        "mlflow": {"tracking_uri": site["mlflow"], "backend_store_uri": f"sqlite:///{folder / 'mlflow' / 'm.db'}"},
    }
    study.update(changes)
    if base is None:
        raw: dict[str, Any] = {
            "cluster_name": "dry",
            "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
            "auth": {"ssh_user": "me"},
        }
    else:
        raw = yaml.safe_load((ROOT / "cluster" / base).read_text())
    raw["metadata"] = {"study": study}
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


def state(site: dict[str, Any], tmp_path: Path) -> tuple[list[str], list[str], int]:
    """Everything a study could write: files under tmp_path, the bucket's objects, MLflow's experiments."""
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    objects = [o["Key"] for o in s3(site["endpoint"]).list_objects_v2(Bucket=site["bucket"]).get("Contents", [])]
    server = site["mlflow"].startswith("http")
    experiments = len(MlflowClient(site["mlflow"]).search_experiments()) if server else -1
    return files, sorted(objects), experiments


@pytest.fixture
def dry_run(site: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str]]:
    """Run the dry run in-process; assert it wrote nothing; return (exit code, output)."""

    def run(config: Path, cluster: Path | None) -> tuple[int, str]:
        before = state(site, tmp_path)
        args = ["--dry-run", "--config", str(config)] + (["--cluster", str(cluster)] if cluster else ["--no-cluster"])
        code = main(args)
        assert state(site, tmp_path) == before
        return code, capsys.readouterr().out

    return run


def test_a_good_study_passes_and_prints_its_plan(
    dry_run: Callable, write_config: Callable, site: dict, tmp_path: Path
) -> None:
    config = write_config(families=["vae", "aae", "caae", "lran"])
    cluster = write_cluster(tmp_path, site)
    code, out = dry_run(config, cluster)
    assert code == 0, out
    assert out.startswith(f"cluster: {cluster}\n")  # said before anything else
    assert "every check passed; nothing was written" in out
    bucket = site["bucket"]
    assert f"s3://{bucket}/hcp/ (1 files, 0.0 MB)" in out and f"s3://{bucket}/brats2019/ (1 files" in out
    assert f"checkpoints: s3://{bucket}/ray/smoke/train" in out
    assert f"MLflow:      {site['mlflow']} (experiment 'smoke')" in out
    assert not Path(site["mlflow"][len("sqlite:///") :]).exists()  # checked, not created
    assert re.search(r"search: +vae \(\d+ params\), aae \(\d+ params\), caae \(\d+ params\), lran \(\d+ params\)", out)
    assert "per trial:   1 trial process {CPU: 0.2} on the head + 2 Train workers x {CPU: 0.5}" in out
    assert "node types local.cluster.node learn their resources at launch: not checked; no Ray running here" in out
    assert "Optuna:      sqlite:///" in out and str(tmp_path / "results" / "smoke" / "optuna.db") in out


@pytest.mark.parametrize(
    ("study", "per_trial", "scaled"),
    [
        # 4-GPU type: 2 nodes x 4 workers, then the budget's 2 other nodes x 1 (max_workers 4 in all)
        ("gpu.yaml", "1 Train workers x {CPU: 3, GPU: 1}", "scaled up, 10 Train workers fit (4 trial(s) at once)"),
        # only the 4-GPU type holds a 10-CPU worker: 2 nodes x 4
        ("gpu-ddp.yaml", "2 Train workers x {CPU: 10, GPU: 1}", "scaled up, 8 Train workers fit (4 trial(s) at once)"),
    ],
)
def test_the_gpu_studies_against_the_gpu_cluster(
    dry_run: Callable, site: dict, tmp_path: Path, study: str, per_trial: str, scaled: str
) -> None:
    """study/configs/gpu.yaml and its DDP variant on cluster/gpu.yaml (its S3 block pointed at moto)."""
    config = tmp_path / study
    raw = yaml.safe_load((ROOT / "study" / "configs" / study).read_text())
    raw.update(results_dir=str(tmp_path / "results"))
    config.write_text(yaml.safe_dump(raw))
    code, out = dry_run(config, write_cluster(tmp_path, site, base="gpu.yaml"))
    assert code == 0, out
    assert f"1 trial process {{CPU: 0.5}} on the head + {per_trial}" in out
    assert scaled in out


Broken = Callable[[dict, Path, Callable], tuple[Path, Path | None]]
BROKEN: dict[str, tuple[Broken, str]] = {
    "unknown family": (
        lambda site, tmp, cfg: (cfg(families=["vea"]), write_cluster(tmp, site)),
        "study config: .*key 'families': unknown family 'vea'",
    ),
    "Ray's schema": (
        lambda site, tmp, cfg: (cfg(), _ray_key(write_cluster(tmp, site), "setup_comands", ["true"])),
        "cluster YAML: .*Ray's schema refuses it at 'top level': Additional properties .*'setup_comands'",
    ),
    "study block key": (
        lambda site, tmp, cfg: (cfg(), write_cluster(tmp, site, data={"healthy": f"s3://{site['bucket']}/hcp/"})),
        r"cluster YAML: .*key 'metadata.study.data.lesion': missing",
    ),
    "empty prefix": (
        lambda site, tmp, cfg: (
            cfg(),
            write_cluster(
                tmp,
                site,
                data={"healthy": f"s3://{site['bucket']}/hcp/", "lesion": f"s3://{site['bucket']}/brats2091/"},
            ),
        ),
        r"data: .*prefix 'brats2091/': no objects under this prefix",
    ),
    "missing bucket": (
        lambda site, tmp, cfg: (
            cfg(),
            write_cluster(
                tmp, site, data={"healthy": "s3://no-such-bucket-x/hcp/", "lesion": "s3://no-such-bucket-x/b/"}
            ),
        ),
        r"data: .*bucket 'no-such-bucket-x'.*no such bucket",
    ),
    "MLflow down": (
        lambda site, tmp, cfg: (
            cfg(),
            write_cluster(tmp, site, mlflow={"tracking_uri": f"http://127.0.0.1:{free_port()}"}),
        ),
        r"MLflow: MLflow at 'http://127.0.0.1:\d+' is not reachable",
    ),
    "Ray storage bucket": (
        lambda site, tmp, cfg: (cfg(), write_cluster(tmp, site, ray_storage="s3://no-such-storage-x/ray/")),
        r"Ray storage: ray_storage s3://no-such-storage-x/ray/smoke is not writable: .+",
    ),
    "Optuna database": (
        lambda site, tmp, cfg: (cfg(), write_cluster(tmp, site, optuna_storage="postgresql://optuna@127.0.0.1:1/o")),
        r"Optuna storage: optuna_storage 'postgresql://optuna@127.0.0.1:1/o' cannot be opened",
    ),
    "CPU-only study on a GPU cluster": (
        lambda site, tmp, cfg: (cfg(), write_cluster(tmp, site, base="gpu.yaml")),
        "resources: the cluster has GPU node types but training.gpus_per_worker is 0",
    ),
    "trial larger than the cluster": (
        lambda site, tmp, cfg: (
            cfg(training={"workers_per_trial": 11, "gpus_per_worker": 1, "cpus_per_worker": 2}),
            write_cluster(tmp, site, base="gpu.yaml"),
        ),
        r"resources: one trial needs 11 Train workers x \{CPU: 2, GPU: 1\}; .* holds 10",
    ),
    "GPU study on a cluster YAML without GPUs": (
        lambda site, tmp, cfg: (
            cfg(training={"gpus_per_worker": 1, "cpus_per_worker": 3}),
            _without_gpus(write_cluster(tmp, site, base="gpu.yaml")),
        ),
        r"resources: a Train worker asks \{CPU: 3, GPU: 1\}; the cluster YAML's node types \(head.cpu: 1 x "
        r"\{CPU: 2\};.*\) can never provide GPU: 1, which none of them has",
    ),
    "checkpoints on the head of a multi-node cluster": (
        lambda site, tmp, cfg: (
            cfg(training={"gpus_per_worker": 1, "cpus_per_worker": 2}),
            write_cluster(tmp, site, base="gpu.yaml", ray_storage=None),
        ),
        "Ray storage: ray_storage is unset, so checkpoints go to the head's disk",
    ),
    "GPU study without a cluster": (
        lambda site, tmp, cfg: (cfg(training={"gpus_per_worker": 1}), None),
        r"resources: one trial needs 2 Train workers x \{CPU: 0.5, GPU: 1\}.* --cluster cluster/gpu.yaml",
    ),
}


def _without_gpus(path: Path) -> Path:
    """The cluster YAML with every node type's GPUs taken out (a CPU-only cluster)."""
    raw = yaml.safe_load(path.read_text())
    for node_type in raw["available_node_types"].values():
        node_type["resources"].pop("GPU", None)
    path.write_text(yaml.safe_dump(raw))
    return path


def _ray_key(path: Path, key: str, value: Any) -> Path:
    raw = yaml.safe_load(path.read_text())
    raw[key] = copy.deepcopy(value)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("broken", list(BROKEN))
def test_each_broken_piece_is_named(
    broken: str, dry_run: Callable, write_config: Callable, site: dict, tmp_path: Path
) -> None:
    make, message = BROKEN[broken]
    config, cluster = make(site, tmp_path, write_config)
    code, out = dry_run(config, cluster)
    assert code == 2, out
    problems = out.split("problem(s); nothing was written\n", 1)[1].strip().splitlines()
    assert len(problems) == 1, problems  # only the broken piece, named
    assert re.search(message, problems[0]), problems[0]


def test_node_types_learning_resources_at_launch_are_checked_on_the_running_cluster(
    dry_run: Callable, write_config: Callable, site: dict, tmp_path: Path
) -> None:
    """Ray's local provider declares no resources: the running cluster (here: this process's Ray, 2 CPUs, no
    GPU) is what its machines offer. A GPU trial can never run there, and the dry run says so, naming GPU."""
    import ray

    cluster = write_cluster(tmp_path, site)
    ray.init(num_cpus=2, num_gpus=0, log_to_driver=False)
    try:
        code, out = dry_run(write_config(training={"gpus_per_worker": 1, "cpus_per_worker": 1}), cluster)
        assert code == 2, out
        assert re.search(
            r"resources: a Train worker asks \{CPU: 1, GPU: 1\}; the running cluster's 1 node\(s\) \(node 0 \(head\): "
            r"\{CPU: 2\}\) can never provide GPU: 1, which none of them has",
            out,
        ), out
        assert "every check passed" not in out
        code, out = dry_run(write_config(), cluster)  # the smoke study: 2 workers x 0.5 CPU + 0.2 on the head
        assert code == 0, out
        assert "the running cluster holds 3 Train workers (1 trial(s) at once)" in out
    finally:
        ray.shutdown()


@pytest.mark.slow  # an MLflow server takes 10-80 s to answer on 2 shared cores
def test_against_an_mlflow_server_started_as_the_head_starts_it(
    site: dict, write_config: Callable, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`python -m study.mlflow_server start` (a pid file), the dry run reads it and creates nothing, `stop` ends it."""
    server = {**site, "mlflow": f"http://127.0.0.1:{free_port()}"}
    cluster = write_cluster(tmp_path, server)
    folder = tmp_path / "mlflow"
    assert mlflow_server.main(["start", "--cluster", str(cluster), "--dir", str(folder)]) == 0
    pid = int((folder / "server.pid").read_text())
    try:
        before = state(server, tmp_path)
        assert main(["--dry-run", "--config", str(write_config()), "--cluster", str(cluster)]) == 0
        assert state(server, tmp_path)[1:] == before[1:]  # no experiment, no object (the probe was deleted)
        assert f"MLflow:      {server['mlflow']} (experiment 'smoke')" in capsys.readouterr().out
        assert mlflow_server.main(["start", "--cluster", str(cluster), "--dir", str(folder)]) == 0  # left alone
        assert "already answers" in capsys.readouterr().out
    finally:
        assert mlflow_server.main(["stop", "--dir", str(folder)]) == 0
    assert not (folder / "server.pid").exists()
    assert mlflow_server.running_pid(folder) is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # ended (unreaped)
    assert main(["--dry-run", "--config", str(write_config()), "--cluster", str(cluster)]) == 2
    assert "is not reachable" in capsys.readouterr().out
