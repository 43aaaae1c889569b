"""python -m study.mlflow_server start|stop|status: the MLflow tracking server a cluster's head runs.

The head's start commands (cluster/*.yaml) call ``start``; ``stop`` is the documented way to end it (``ray down``
and ``ray stop`` do not: the server is not a Ray process). Where it keeps runs and artifacts comes from the cluster
YAML's ``metadata.study.mlflow`` (``backend_store_uri``, default SQLite in ~/mlflow/mlflow.db on the head;
``artifacts_destination``), the port from its ``tracking_uri``. It listens on 127.0.0.1 only: reach its UI with
``ray attach <cluster YAML> --port-forward 5000``. Its process id is kept in ``<dir>/server.pid``, its output
in ``<dir>/server.log``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from study.cluster.block import BOOTSTRAP_CONFIG, ClusterConfigError, ClusterStudy, read_study_block

DEFAULT_DIR = Path("~/mlflow")
DEFAULT_PORT = 5000
START_TIMEOUT_S = 180  # a cold `mlflow server` took 80 s to answer on 2 busy shared cores
# One server process: the study driver is its only heavy writer. With several, uvicorn's supervisor restarts any
# worker that misses its 5 s health check, and on a busy machine (seen on 2 shared cores) they never all come up.
SERVER_WORKERS = 1


def backend_store(study: ClusterStudy) -> str:
    """The block's backend store with a leading ``~`` of a SQLite path expanded (the server needs it absolute)."""
    prefix = "sqlite:///"
    uri = study.mlflow_backend_store
    if uri.startswith(prefix + "~"):
        return prefix + str(Path(uri[len(prefix) :]).expanduser())
    return uri


def port_of(study: ClusterStudy) -> int:
    uri = study.mlflow_tracking_uri or ""
    port = urlparse(uri).port if uri.startswith(("http://", "https://")) else None
    return port or DEFAULT_PORT


def answering(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3).close()
        return True
    except (urllib.error.URLError, OSError):
        return False


def running_pid(folder: Path) -> int | None:
    """The server's pid from its pid file, if that process still runs and is an MLflow server (pids are reused)."""
    import psutil  # a Ray dependency

    try:
        pid = int((folder / "server.pid").read_text().strip())
        proc = psutil.Process(pid)
        alive = proc.status() != psutil.STATUS_ZOMBIE and "mlflow" in " ".join(proc.cmdline())
    except (FileNotFoundError, ValueError, psutil.Error):
        return None
    return pid if alive else None


def start(study: ClusterStudy, folder: Path) -> int:
    from study.cluster.ports import holder, taken

    port = port_of(study)
    if answering(port) and running_pid(folder) is not None:
        print(f"MLflow already answers on 127.0.0.1:{port} (pid {running_pid(folder)}); left alone")
        return 0
    if taken(port):  # not the server this head started (no live pid in its pid file): the study would use it
        message = f"port {port} (MLflow, from metadata.study.mlflow.tracking_uri) is already taken{holder(port)}"
        print(
            f"error: {message}, not by the server started from {folder}; stop it or use another port", file=sys.stderr
        )
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    store = backend_store(study)
    if store.startswith("sqlite:///"):  # SQLite makes the file, not its folder
        Path(store[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", str(SERVER_WORKERS)]
    command += ["--backend-store-uri", store]
    if study.mlflow_artifacts:
        command += ["--artifacts-destination", study.mlflow_artifacts]
    env = dict(os.environ)
    if study.data.endpoint_url:  # artifacts on an S3-compatible store (MinIO, Ceph)
        env.setdefault("MLFLOW_S3_ENDPOINT_URL", study.data.endpoint_url)
    with open(folder / "server.log", "ab") as log:
        # Its own session: it outlives the shell that started it, and stop() ends its workers with it.
        proc = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    (folder / "server.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if answering(port):
            print(f"MLflow on 127.0.0.1:{port} (pid {proc.pid}), runs in {store}")
            return 0
        if proc.poll() is not None:
            break
        time.sleep(1)
    print(f"error: MLflow did not start on 127.0.0.1:{port}; see {folder / 'server.log'}", file=sys.stderr)
    stop(folder, quiet=True)
    return 2


def stop(folder: Path, quiet: bool = False) -> int:
    pid = running_pid(folder)
    if pid is None:
        if not quiet:
            print(f"no MLflow server recorded in {folder / 'server.pid'}")
        (folder / "server.pid").unlink(missing_ok=True)
        return 0
    try:
        os.killpg(pid, signal.SIGTERM)  # the server and the workers it forked share its session
        for _ in range(20):
            if running_pid(folder) is None:
                break
            time.sleep(0.5)
        else:
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended meanwhile
    (folder / "server.pid").unlink(missing_ok=True)
    if not quiet:
        print(f"stopped MLflow (pid {pid}); its store and {folder / 'server.log'} are kept")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.mlflow_server", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--cluster", type=Path, default=BOOTSTRAP_CONFIG, metavar="YAML", help="default: %(default)s")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="pid file and log (default: %(default)s)")
    args = parser.parse_args(argv)
    folder = args.dir.expanduser()
    if args.action == "stop":
        return stop(folder)
    try:
        study = read_study_block(args.cluster)
    except ClusterConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.action == "start":
        return start(study, folder)
    port, pid = port_of(study), running_pid(folder)
    print(f"MLflow on 127.0.0.1:{port}: {'answering' if answering(port) else 'not answering'}; pid file: {pid}")
    return 0 if answering(port) else 1


if __name__ == "__main__":
    sys.exit(main())
