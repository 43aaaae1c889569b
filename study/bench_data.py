"""Bench section `data`: the slice cache and DataLoader against tensors already in memory, and what
concurrent trials on one node hold in memory.

Delivery (slices/s, one process, batches of 64 drawn in random order, the train split):
- loader: the study's path, `DataLoader(SliceDataset(cache, "train"), shuffle=True)` (one item at a time);
- memory: the same five fields as tensors already in RAM, indexed by a random permutation;
- batched: the same memory maps read a whole batch at a time (one fancy index per field), a candidate fix.
Rounds alternate the three so load on the shared machine hits each alike; medians over rounds.

Memory: 1 and 4 processes (`python -m study.bench_data --hold CACHE`) each iterate the train split through
SliceDataset and stay alive while /proc/<pid>/smaps_rollup (RSS, PSS) and the cache files' own mappings
in /proc/<pid>/smaps are read. RSS counts every resident page a process maps, shared or not; PSS splits
each shared page between the processes mapping it, so the memory-mapped cache counts once per node.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from study.bench_common import BenchPlan, say, torch_threads
from study.bench_report import median, ratio

BATCH = 64
SPLIT = "train"


def _loader_pass(loader: Any) -> int:
    return sum(len(batch["image"]) for batch in loader)


def _memory_pass(tensors: dict[str, Any]) -> int:
    """One shuffled pass over in-memory tensors, batch by batch (what a loader has to keep up with)."""
    import torch

    n = len(tensors["image"])
    order = torch.randperm(n)
    delivered = 0
    for start in range(0, n - BATCH + 1, BATCH):
        index = order[start : start + BATCH]
        batch = {key: value.index_select(0, index) for key, value in tensors.items()}  # faster than value[index]
        delivered += len(batch["image"])
    return delivered


def in_memory(cache: Path) -> dict[str, Any]:
    """The split's fields as in-RAM tensors shaped and typed as SliceDataset delivers them."""
    import numpy as np
    import torch

    from trainables.data.cache import load_split

    a = load_split(cache, SPLIT)
    masks = {k: torch.from_numpy(np.array(getattr(a, k), dtype=np.float32))[:, None] for k in ("brain", "lesion")}
    return {
        "image": torch.from_numpy(np.array(a.images, dtype=np.float32))[:, None],
        **masks,
        "subject": torch.from_numpy(np.array(a.subject, dtype=np.int64)),
        "slice_index": torch.from_numpy(np.array(a.slice_index, dtype=np.int64)),
    }


class BatchedSlices:
    """A map-style dataset indexed by a whole batch of positions (used with a BatchSampler, batch_size=None):
    one sorted fancy index per memory-mapped field instead of five small copies per slice."""

    def __init__(self, cache: Path) -> None:
        from trainables.data.cache import load_split

        self.arrays = load_split(cache, SPLIT)

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: list[int]) -> dict[str, Any]:
        import numpy as np
        import torch

        rows = np.sort(np.asarray(index))
        a = self.arrays

        def field(values: np.ndarray, dtype: type) -> torch.Tensor:
            return torch.from_numpy(np.asarray(values[rows], dtype=dtype))

        return {
            "image": field(a.images, np.float32)[:, None],
            "brain": field(a.brain, np.float32)[:, None],
            "lesion": field(a.lesion, np.float32)[:, None],
            "subject": field(a.subject, np.int64),
            "slice_index": field(a.slice_index, np.int64),
        }


def _timed(fn: Any, passes: int) -> float:
    started, slices = time.perf_counter(), 0
    for _ in range(passes):
        slices += fn()
    return slices / (time.perf_counter() - started)


def delivery(plan: BenchPlan, cache: Path) -> dict[str, float]:
    """Median slices/s of the three paths over alternating rounds, and the ratios to memory."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    from trainables.data.dataset import SliceDataset

    loader = DataLoader(SliceDataset(cache, SPLIT), batch_size=BATCH, shuffle=True, drop_last=True)
    batched_set = BatchedSlices(cache)
    sampler = BatchSampler(RandomSampler(range(len(batched_set))), BATCH, drop_last=True)
    batched = DataLoader(batched_set, sampler=sampler, batch_size=None)
    tensors = in_memory(cache)
    paths = {"loader": lambda: _loader_pass(loader), "batched": lambda: _loader_pass(batched)}
    paths["memory"] = lambda: _memory_pass(tensors)
    found: dict[str, list[float]] = {name: [] for name in paths}
    with torch_threads(plan.threads):
        for fn in paths.values():
            fn()  # warm-up: page cache, allocator
        for _ in range(plan.data_rounds):
            for name, fn in paths.items():
                found[name].append(_timed(fn, plan.data_passes))
    rate = {name: median(values) for name, values in found.items()}
    return {
        "data_ratio": ratio(rate["loader"], rate["memory"]),
        "data_ratio_batched": ratio(rate["batched"], rate["memory"]),
        "data_loader_slices_per_s": rate["loader"],
        "data_batched_slices_per_s": rate["batched"],
        "data_memory_slices_per_s": rate["memory"],
    }


def parse_smaps(text: str, under: str | None = None) -> dict[str, float]:
    """Rss and Pss in kB from smaps or smaps_rollup text; with ``under``, only mappings of files below it."""
    totals = {"Rss": 0.0, "Pss": 0.0}
    keep = under is None
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if not fields[0].endswith(":"):  # a mapping header: address perms offset dev inode [path]
            keep = under is None or (len(fields) >= 6 and fields[5].startswith(under))
        elif keep and fields[0][:-1] in totals:
            totals[fields[0][:-1]] += float(fields[1])
    return totals


def _measure(pid: int, cache: Path) -> dict[str, float]:
    rollup = parse_smaps(Path(f"/proc/{pid}/smaps_rollup").read_text())
    mapped = parse_smaps(Path(f"/proc/{pid}/smaps").read_text(), under=str(cache.resolve()))
    mb = 1 / 1024
    return {"rss": rollup["Rss"] * mb, "pss": rollup["Pss"] * mb, "cache_rss": mapped["Rss"] * mb,
            "cache_pss": mapped["Pss"] * mb}  # fmt: skip


def resident(cache: Path, processes: int) -> dict[str, float]:
    """Median per-process memory (MB) of ``processes`` concurrent readers of the train split."""
    command = [sys.executable, "-m", "study.bench_data", "--hold", str(cache)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread, as a study worker
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True, "env": env}
    children = [subprocess.Popen(command, **pipes) for _ in range(processes)]
    try:
        for child in children:
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"bench_data --hold (pid {child.pid}) did not start")
        found = [_measure(child.pid, cache) for child in children]
    finally:
        for child in children:
            child.communicate("done\n", timeout=60)
    return {key: median(f[key] for f in found) for key in found[0]}


def memory(cache: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    for n, suffix in ((1, "1_trial"), (4, "4_trials")):
        found = resident(cache, n)
        figures.update({f"{key}_mb_{suffix}": value for key, value in found.items()})
    return figures


def run(plan: BenchPlan, cache: Path) -> dict[str, Any]:
    figures = {**delivery(plan, cache), **memory(cache)}
    say(
        f"data: loader {figures['data_loader_slices_per_s']:.0f}, batched {figures['data_batched_slices_per_s']:.0f}, "
        f"in memory {figures['data_memory_slices_per_s']:.0f} slices/s; per process RSS "
        f"{figures['rss_mb_1_trial']:.0f} -> {figures['rss_mb_4_trials']:.0f} MB, PSS {figures['pss_mb_1_trial']:.0f} "
        f"-> {figures['pss_mb_4_trials']:.0f} MB, cache PSS {figures['cache_pss_mb_1_trial']:.2f} -> "
        f"{figures['cache_pss_mb_4_trials']:.2f} MB (1 -> 4 processes)"
    )
    return figures


def hold(cache: Path) -> None:
    """Child of `resident`: read the train split as a trial would, say "ready", wait for a line on stdin."""
    from torch.utils.data import DataLoader

    from trainables.data.dataset import SliceDataset

    dataset = SliceDataset(cache, SPLIT)  # kept referenced: its memory maps stay mapped while measured
    for _ in DataLoader(dataset, batch_size=BATCH, shuffle=True):
        pass
    print("ready", flush=True)
    sys.stdin.readline()
    del dataset


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="helper process of study.bench (memory of concurrent readers)")
    parser.add_argument("--hold", type=Path, required=True, metavar="CACHE")
    hold(parser.parse_args().hold)
