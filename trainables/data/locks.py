"""One file lock per node-local folder, for work that one process on a node does while the others wait."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


@contextmanager
def node_lock(path: Path, waiting: str, say: Callable[[str], None]) -> Iterator[None]:
    """Hold the file lock at ``path``; a process that has to wait says ``waiting`` first (so a trial that sits
    behind another one's staging or cache build says why it is not training yet)."""
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(waiting)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
