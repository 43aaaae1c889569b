"""The head's start commands fail when a port they need is taken, naming it: `python -m study.cluster.ports` (run
before `ray start --head`) and `python -m study.mlflow_server start` against real listening sockets."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from study import mlflow_server
from study.cluster.ports import taken

ROOT = Path(__file__).parents[2]
CLUSTER_YAMLS = sorted((ROOT / "cluster").glob("*.yaml"))


@pytest.fixture
def listening() -> Iterator[int]:
    """A port another process would hold: a socket listening on 127.0.0.1 only (Ray's dashboard binds there)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ports_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.cluster.ports", *args], capture_output=True, text=True)


def test_a_taken_port_fails_the_check_and_is_named(listening: int) -> None:
    free = free_port()
    result = ports_check(f"gcs={free}", f"dashboard={listening}")
    assert result.returncode == 1, result
    assert f"port {listening} (dashboard) is already taken" in result.stderr
    assert str(free) not in result.stderr  # only the taken one
    assert re.search(rf"port {listening} \(dashboard\) is already taken by pid \d+ \(python", result.stderr)


def test_free_ports_pass(listening: int) -> None:
    free = free_port()
    assert not taken(free) and taken(listening)
    result = ports_check(f"gcs={free}")
    assert result.returncode == 0 and f"free: {free} (gcs)" in result.stdout


def test_a_bad_argument_is_named() -> None:
    result = ports_check("dashboard=eighty")
    assert result.returncode == 2 and "expected NAME=PORT" in result.stderr and "dashboard=eighty" in result.stderr


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_head_checks_rays_ports_between_stop_and_start(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    starts = raw["head_start_ray_commands"]
    stop = starts.index("ray stop")
    check = next(i for i, c in enumerate(starts) if "study.cluster.ports" in c)
    head = next(i for i, c in enumerate(starts) if "ray start --head" in c)
    assert stop < check < head
    checked = {int(p) for p in re.findall(r"=(\d+)", starts[check])}
    given = {int(p) for p in re.findall(r"--(?:port|object-manager-port|dashboard-port)=(\d+)", starts[head])}
    assert given <= checked and 8265 in checked  # the dashboard's default port: the job API
    assert "--disable-usage-stats" in starts[head]
    assert all("--disable-usage-stats" in c for c in raw["worker_start_ray_commands"] if "ray start" in c)


def test_mlflow_start_refuses_a_port_another_process_holds(
    listening: int, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Not the server this head started (no pid file): the study would log to it; refused, the port named."""
    cluster = tmp_path / "cluster.yaml"
    study = {
        "data": {"healthy": "s3://b/hcp/", "lesion": "s3://b/brats/"},
        "cache_dir": str(tmp_path / "cache"),
        "mlflow": {"tracking_uri": f"http://127.0.0.1:{listening}"},
    }
    cluster.write_text(yaml.safe_dump({"metadata": {"study": study}}))
    code = mlflow_server.main(["start", "--cluster", str(cluster), "--dir", str(tmp_path / "mlflow")])
    assert code == 2
    assert f"port {listening} (MLflow, from metadata.study.mlflow.tracking_uri) is already taken" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "mlflow" / "server.pid").exists()  # nothing started
