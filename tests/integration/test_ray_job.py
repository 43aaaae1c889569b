"""README's job path, run as written: `ray start --head` (token authentication on), `ray job submit ... -- bash -c
'cd ... && python -m study.run ...'` through the dashboard's job API (ray[default]), the study to completion.

The head is started the way `ray up` starts one (--autoscaling-config=<a ray_bootstrap_config.yaml>), so the same
test shows that the study recognises a launcher-started Ray from its process, not from the file alone.
Instead of `ray stop` (which ends every Ray of this user on the machine) the test ends the processes of its own
temp dir, by pid.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config

from study.cluster.block import launcher_ray_running

ROOT = Path(__file__).parents[2]
AGENT_PORTS = (
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
    "ray-client-server-port",
    "node-manager-port",
    "object-manager-port",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def own_processes(temp_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(temp_dir) in arg for arg in proc.info.get("cmdline") or []):
            found.append(proc)
    return found


@pytest.fixture
def head(tmp_path: Path) -> Iterator[dict]:
    """A Ray head on free ports, its own temp dir, an autoscaling config as `ray up` writes it (local provider)."""
    temp_dir = Path(f"/tmp/rj-{uuid.uuid4().hex[:8]}")  # short: Ray's socket paths must stay under 108 chars
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    raw = {
        "cluster_name": "job-test",
        "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
        "auth": {"ssh_user": os.environ.get("USER", "root")},
    }
    bootstrap.write_text(yaml.safe_dump(prepare_config(raw)))  # as `ray up` writes it: defaults filled in
    assert not launcher_ray_running(bootstrap)
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    command = [
        "ray",
        "start",
        "--head",
        f"--port={port}",
        f"--dashboard-port={dashboard}",
        # every port free: other Rays on this machine hold the defaults (the job agent's 52365 among them)
        *(f"--{name}={free_port()}" for name in AGENT_PORTS),
        "--num-cpus=2",
        f"--temp-dir={temp_dir}",
        f"--autoscaling-config={bootstrap}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=180)
    try:
        yield {"bootstrap": bootstrap, "url": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:
        procs = own_processes(temp_dir)
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=20)
        for proc in alive:
            proc.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow  # a head, a dashboard, a job and a 2-trial study: 407 s niced on a loaded 2-core box
@pytest.mark.timeout(900)
def test_job_submit_runs_a_study_to_completion(head: dict, write_config: Callable, tmp_path: Path) -> None:
    assert launcher_ray_running(head["bootstrap"])  # a Ray started from it is running: cluster fallback allowed
    with pytest.raises(urllib.error.HTTPError) as info:  # token authentication is on for the job API
        urllib.request.urlopen(f"{head['url']}/api/jobs/", timeout=30)
    assert info.value.code == 401
    config = write_config()
    # README.md, "Clusters": the job command as written there (only the config path differs)
    command = [
        "ray",
        "job",
        "submit",
        "--address",
        head["url"],
        "--",
        "bash",
        "-c",
        f'cd "$0" && python -m study.run --config {config}',
        str(ROOT),
    ]
    start = time.monotonic()
    while True:  # the head's dashboard agent comes up some seconds after `ray start` returns
        result = subprocess.run(command, env=head["env"], capture_output=True, text=True, timeout=540)
        if "No available agent to submit job" not in result.stderr or time.monotonic() - start > 180:
            break
        time.sleep(5)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout + result.stderr
    assert "cluster: none (this machine)" in result.stdout  # said first: no --cluster, no bootstrap in ~
    assert "attached to the running Ray cluster" in result.stdout or "Ray: " in result.stdout
    rows = list(csv.DictReader((tmp_path / "results" / "smoke" / "trials.csv").open()))
    trials = [r for r in rows if r["status"] != "baseline"]
    assert len(trials) == 2 and all(r["status"] == "completed" for r in trials), rows
    print(f"job: {seconds:.0f} s")
