"""Real gloo ranks in spawned processes for the tests of collective code, made to fail fast rather than hang.

CI once waited on such a test until its whole 90 minutes ran out: a rank never returned, pytest-timeout failed
the test after 15 minutes, and the spawned ranks (not daemons) then kept pytest itself from exiting. Here every
collective gives up after ``COLLECTIVE_TIMEOUT`` (gloo's default is 30 minutes), the ranks are daemons, and the
parent kills them and fails the test, naming the ranks still running, after ``deadline_s``. Imported by name
(pytest puts tests/unit on sys.path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVE_TIMEOUT = timedelta(seconds=120)


def join_group(rank: int, world: int, store: str) -> None:
    """Join the gloo group rendezvousing in the file ``store`` (one per test: a fresh tmp_path), one thread."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)  # fmt: skip


def leave_group() -> None:
    """Wait for every rank, then destroy the group: a rank tearing its group down while another still talks to
    it can hang (pytorch/pytorch#75097). Only on success: after an error the rank just exits."""
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(fn: Callable[..., None], args: tuple, world: int = 2, deadline_s: float = 300.0) -> None:
    """``fn(rank, *args)`` in ``world`` spawned processes; re-raises a rank's error; fails past ``deadline_s``."""
    ranks = mp.start_processes(fn, args=args, nprocs=world, join=False, daemon=True, start_method="spawn")
    give_up = time.monotonic() + deadline_s
    while not ranks.join(timeout=1.0):
        if time.monotonic() > give_up:
            alive = [rank for rank, process in enumerate(ranks.processes) if process.is_alive()]
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"gloo ranks {alive} of {world} still running after {deadline_s:.0f} s: killed")
