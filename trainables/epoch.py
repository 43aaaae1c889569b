"""One training epoch of any family: the project's only training pass, run by the Ray Train loop (each DDP
worker on its shard) and by the plain reproduction (one process, no process group).

The terms of each step stay on the device (one row per step); the epoch's rows are checked and summed there
and read once, with the all-reduce where a process group runs: no host sync between steps. A divergence is
thus raised at the end of the epoch it happened in, naming its first non-finite step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from trainables.families import Family


class NonFiniteLossError(RuntimeError):
    """Training diverged: a loss term became NaN or inf."""


@dataclass(frozen=True)
class EpochLosses:
    means: dict[str, float]  # each train_step term (its total under "loss") averaged over every worker's steps
    steps: int  # steps of all workers together
    slices: int  # slices trained on by all workers together (shows that every DDP worker took its share)
    workers: int  # workers in the process group; 1 without one
    first_step_at: float | None  # wall clock (time.time) of this worker's first step; None if it had no batch


def train_epoch(
    family: Family, nets: nn.ModuleDict, opts: dict, loader: Iterable, device: torch.device, epoch: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> EpochLosses:  # fmt: skip
    """One pass over ``loader`` (this worker's shard) with ``family.train_step``; ``epoch`` (0-based) only
    names a divergence. Each step runs inside ``autocast()``."""
    nets.train()
    keys: list[str] = []
    rows: list[torch.Tensor] = []
    slices = 0
    first_step_at = None
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        first_step_at = first_step_at or time.time()
        with autocast():
            terms = family.train_step(nets, opts, images)
        keys = keys or sorted(terms)
        rows.append(torch.stack([torch.as_tensor(terms[k], dtype=torch.float32, device=device) for k in keys]))
        slices += len(images)
    if not rows:
        return EpochLosses({}, 0, 0, world_size(), first_step_at)
    table = torch.stack(rows)
    local = torch.cat([table.sum(0), torch.tensor([len(rows), slices], dtype=torch.float32, device=device)])
    totals = _all_reduce_sum(local)
    if not all(math.isfinite(v) for v in totals):
        raise NonFiniteLossError(_divergence(table, keys, epoch))
    steps, count = int(totals[-2]), int(totals[-1])
    means = {k: v / max(steps, 1) for k, v in zip(keys, totals, strict=False)}  # totals end with the two counts
    return EpochLosses(means, steps, count, world_size(), first_step_at)


def _divergence(table: torch.Tensor, keys: list[str], epoch: int) -> str:
    """The error message of a non-finite epoch: its first bad step on this worker and that step's terms."""
    bad = (~torch.isfinite(table).all(1)).nonzero().flatten().tolist()
    if not bad:
        return f"non-finite loss at epoch {epoch + 1}, on another worker"
    terms = dict(zip(keys, table[bad[0]].tolist(), strict=True))
    return f"non-finite loss at epoch {epoch + 1}, step {bad[0] + 1}: {terms}"


def world_size() -> int:
    """Workers in the default process group; 1 where none is initialised (the reproduction, unit tests)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_sum(values: torch.Tensor) -> list[float]:
    """Sum a small per-worker tensor over the process group and read it on the host (one collective, one sync)."""
    if world_size() > 1:
        values = values.double()
        dist.all_reduce(values)
    return values.tolist()
