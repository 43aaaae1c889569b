"""Bench section `data`: the slice cache and DataLoader against tensors already in memory, and what
concurrent trials on one node hold in memory.

Delivery (slices/s, one process, batches of 64 drawn in random order, the train split):
- loader: the study's training path, `slice_loader(SliceDataset(cache, "train", fields=TRAIN_FIELDS),
  ShardBatches(..., shuffle=True))`: a whole batch of images read at once from the memory maps;
- memory: the same images as a tensor already in RAM, indexed by a random permutation;
- loader_all / memory_all: the same with all six fields (images, both masks, subject, slice index, appearance), as
  scoring reads them.
Rounds alternate the four so load on the shared machine hits each alike, each round in another (seeded)
order so no path always follows the same one; medians over rounds. A timing lasts 1-2 ms, so a scheduler
preemption on a shared machine moves it a lot: many rounds (61, --quick 21) keep the medians steady.

Memory: 1 and 4 processes (`python -m study.bench.data --hold CACHE`) each iterate the train split through
SliceDataset and stay alive while /proc/<pid>/smaps_rollup (RSS, PSS) and the cache files' own mappings
in /proc/<pid>/smaps are read. RSS counts every resident page a process maps, shared or not; PSS splits
each shared page between the processes mapping it, so the memory-mapped cache counts once per node.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from study.bench.common import BenchPlan, say, torch_threads
from study.bench.report import median, ratio

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


def in_memory(cache: Path, fields: tuple[str, ...]) -> dict[str, Any]:
    """The split's ``fields`` as in-RAM tensors shaped and typed as SliceDataset delivers them."""
    from trainables.data.dataset import SliceDataset

    dataset = SliceDataset(cache, SPLIT, fields=fields)
    return dataset[list(range(len(dataset)))]  # every row, read once


def study_loader(cache: Path, fields: tuple[str, ...]) -> Any:
    """The study's loader of the train split (as trainables.train_loop builds it on a CPU), reshuffled on each
    pass as every epoch is."""
    from trainables.data.dataset import ShardBatches, SliceDataset, slice_loader

    dataset = SliceDataset(cache, SPLIT, fields=fields)
    batches = ShardBatches(len(dataset), BATCH, shuffle=True, drop_last=True)
    loader = slice_loader(dataset, batches)
    return _Epochs(loader, batches)


class _Epochs:
    """A loader whose batches are reshuffled on each pass (set_epoch), as the training loop does per epoch."""

    def __init__(self, loader: Any, batches: Any) -> None:
        self.loader, self.batches, self.epoch = loader, batches, 0

    def __iter__(self) -> Any:
        self.epoch += 1
        self.batches.set_epoch(self.epoch)
        return iter(self.loader)


def _timed(fn: Any, passes: int) -> float:
    started, slices = time.perf_counter(), 0
    for _ in range(passes):
        slices += fn()
    return slices / (time.perf_counter() - started)


def rotations(names: list[str], rounds: int, seed: int = 0) -> list[str]:
    """``rounds`` rounds over ``names``, each in its own seeded random order, so no path always follows the
    same one (what ran just before, its allocations and cache traffic, shifts a 1-2 ms timing)."""
    rng = random.Random(seed)
    return [name for _ in range(rounds) for name in rng.sample(names, len(names))]


def delivery(plan: BenchPlan, cache: Path) -> dict[str, float]:
    """Median slices/s of the four paths over alternating rounds, and the ratios to memory."""
    from trainables.data.dataset import FIELDS, TRAIN_FIELDS

    paths = {}
    for suffix, fields in (("", TRAIN_FIELDS), ("_all", FIELDS)):
        loader, tensors = study_loader(cache, fields), in_memory(cache, fields)
        paths[f"loader{suffix}"] = lambda loader=loader: _loader_pass(loader)
        paths[f"memory{suffix}"] = lambda tensors=tensors: _memory_pass(tensors)
    found: dict[str, list[float]] = {name: [] for name in paths}
    with torch_threads(plan.threads):
        for fn in paths.values():
            fn()  # warm-up: page cache, allocator
        for name in rotations(list(paths), plan.data_rounds):
            found[name].append(_timed(paths[name], plan.data_passes))
    rate = {name: median(values) for name, values in found.items()}
    return {
        "data_ratio": ratio(rate["loader"], rate["memory"]),
        "data_ratio_all_fields": ratio(rate["loader_all"], rate["memory_all"]),
        "data_loader_slices_per_s": rate["loader"],
        "data_memory_slices_per_s": rate["memory"],
        "data_loader_all_slices_per_s": rate["loader_all"],
        "data_memory_all_slices_per_s": rate["memory_all"],
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
    command = [sys.executable, "-m", "study.bench.data", "--hold", str(cache)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread, as a study worker
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True, "env": env}
    children = [subprocess.Popen(command, **pipes) for _ in range(processes)]
    try:
        for child in children:
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError(f"study.bench.data --hold (pid {child.pid}) did not start")
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
        f"data: loader {figures['data_loader_slices_per_s']:.0f}, in memory {figures['data_memory_slices_per_s']:.0f} "
        f"slices/s (all fields {figures['data_loader_all_slices_per_s']:.0f} / "
        f"{figures['data_memory_all_slices_per_s']:.0f}); per process RSS "
        f"{figures['rss_mb_1_trial']:.0f} -> {figures['rss_mb_4_trials']:.0f} MB, PSS {figures['pss_mb_1_trial']:.0f} "
        f"-> {figures['pss_mb_4_trials']:.0f} MB, cache PSS {figures['cache_pss_mb_1_trial']:.2f} -> "
        f"{figures['cache_pss_mb_4_trials']:.2f} MB (1 -> 4 processes)"
    )
    return figures


def hold(cache: Path) -> None:
    """Child of `resident`: read the train split as a trial would, say "ready", wait for a line on stdin."""
    from trainables.data.dataset import FIELDS

    loader = study_loader(cache, FIELDS)  # kept referenced: its memory maps stay mapped while measured
    for _ in loader:
        pass
    print("ready", flush=True)
    sys.stdin.readline()
    del loader


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="helper process of study.bench (memory of concurrent readers)")
    parser.add_argument("--hold", type=Path, required=True, metavar="CACHE")
    hold(parser.parse_args().hold)
