"""What every section of `python -m study.bench` shares: the plan (full or --quick sizes), the device,
the slice caches it measures on, and a private local Ray instance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from study.config import CONFIG_DIR, StudyConfig, load_config

REPO = Path(__file__).resolve().parents[2]  # study/bench/common.py -> the repository root
SMOKE_CONFIG = CONFIG_DIR / "smoke.yaml"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


@dataclass(frozen=True)
class BenchPlan:
    """Sizes of one bench run. `full()` fits in about 10 minutes on 2 shared cores; `quick()` in about 2."""

    quick: bool
    families: tuple[str, ...] | None  # None: every trainable registered family
    train_epochs: int  # epochs per throughput run; the first is warm-up and not counted
    data_rounds: int  # alternating rounds of the data-path comparison
    data_passes: int  # passes over the train split per round
    stage_repeats: int  # alternating staged / plain downloads
    search_seeds: int  # seeds of the search-efficiency experiment
    search_budget: int  # trial-epochs per arm and seed
    search_max_epochs: int  # epochs of a trial that is never stopped early
    search_train_slices: int  # train slices per search epoch (a small per-epoch cost)
    study_trials: int | None  # trials of the smoke study (None: the YAML's 2)
    threads: int = 1  # torch threads of every measured loop (1: the study's threads_per_worker)

    @classmethod
    def full(cls) -> BenchPlan:
        return cls(False, None, 3, 61, 8, 5, 3, 16, 4, 128, None)

    @classmethod
    def quick_plan(cls) -> BenchPlan:
        return cls(True, ("vae",), 2, 21, 2, 1, 1, 6, 2, 64, 1)


def device_name() -> str:
    """ "cuda" where torch sees a GPU (the GPU path is measured), else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def study_config(path: Path = SMOKE_CONFIG, **overrides: object) -> StudyConfig:
    """A study YAML with the data root made absolute (the repository's shared cohort and slice cache)."""
    config = load_config(path)
    data = dataclasses.replace(config.data, root=str((REPO / config.data.root).resolve()))
    return dataclasses.replace(config, data=data, **overrides)


def slice_cache(path: Path = SMOKE_CONFIG) -> Path:
    """The slice cache of a study config: built once per machine, reused by every later call."""
    from study.data import prepare_data

    cache, _ = prepare_data(study_config(path))
    return cache


@contextlib.contextmanager
def local_ray() -> Iterator[None]:
    """A private local Ray for one section (never a cluster another engineer left running), then shut down.

    Its workers run at this process's priority: Ray renices workers to 15 by default, which on a machine
    shared with other engineers would time the Ray side at a lower priority than the plain side.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    with environment(RAY_worker_niceness=str(os.getpriority(os.PRIO_PROCESS, 0))):
        ray.init(address="local", log_to_driver=False, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (as the study's workers), then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for a block and restore the previous values after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)
