"""``python -m study.cluster.ports NAME=PORT ...``: fail, naming each port, when another process already listens.

The head's start commands (cluster/*.yaml) run it after ``ray stop`` and before ``ray start --head``: Ray logs
"Failed to bind ... already occupied" for a taken dashboard port and starts anyway, so a job sent to :8265 would
reach another Ray. Exit 0 when every port is free, 1 naming the taken ones (and their process where visible).
"""

from __future__ import annotations

import argparse
import sys


def _listeners(port: int) -> list:
    """The TCP sockets listening on ``port``, on any address (psutil, a Ray dependency: no probe socket bound)."""
    import psutil

    return [
        conn
        for conn in psutil.net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
    ]


def taken(port: int) -> bool:
    """Whether something listens on ``port`` (any address). A closed connection in TIME_WAIT does not count."""
    return bool(_listeners(port))


def holder(port: int) -> str:
    """' by pid N (name)' for the process listening on ``port``, when this user may see it; else ''."""
    import psutil

    try:
        for conn in _listeners(port):
            if conn.pid:
                return f" by pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    except psutil.Error:
        pass
    return ""


def parse(item: str) -> tuple[str, int]:
    name, _, port = item.rpartition("=")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected NAME=PORT (e.g. dashboard=8265), got {item!r}")
    return name or "port", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.cluster.ports", description=__doc__.splitlines()[0])
    parser.add_argument("ports", nargs="+", type=parse, metavar="NAME=PORT", help="e.g. gcs=6379 dashboard=8265")
    args = parser.parse_args(argv)
    busy = [(name, port) for name, port in args.ports if taken(port)]
    for name, port in busy:
        print(f"error: port {port} ({name}) is already taken{holder(port)}; stop that process or move this "
              "service to another port, then run `ray up` again", file=sys.stderr)  # fmt: skip
    if not busy:
        print("free: " + ", ".join(f"{port} ({name})" for name, port in args.ports))
    return 1 if busy else 0


if __name__ == "__main__":
    sys.exit(main())
