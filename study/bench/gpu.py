"""Bench section `gpu`: the training step on a CUDA device, skipped (with its reason) where there is none.

Per trainable family, at 64x64 and 128x128 slices, in fp32 and in bf16 (autocast, as the training loop runs
`training.precision: bf16`): slices/s of `family.train_step` on batches already on the device (the data
path is measured by the `data` section), the peak memory the step allocates, and the GPU's utilisation
while it runs (NVML through torch, where the NVML bindings are installed; otherwise not reported).
A 2-worker DDP trial needs two GPUs (NCCL cannot share one between ranks): with two or more, the smoke
study's trial start and overhead are measured as in the `study` section, with one GPU per worker.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from study.bench.common import BenchPlan, say
from study.bench.report import median
from trainables.families import searchable_family_names

SIZES = (64, 128)
PRECISIONS = ("fp32", "bf16")
BATCH = 64


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _utilisation() -> float | None:
    """The GPU's busy share (%) NVML reports for the last sample period; None without NVML bindings."""
    import torch

    try:
        return float(torch.cuda.utilization())
    except Exception:  # ModuleNotFoundError (pynvml), or NVML unavailable in a container
        return None


def step_rate(family_name: str, size: int, precision: str, steps: int) -> dict[str, float | None]:
    """slices/s, peak MB and utilisation of `steps` training steps after 3 untimed ones."""
    import torch

    from trainables.families import create_family

    device = torch.device("cuda")
    torch.manual_seed(0)
    family = create_family(family_name, {})
    family.device_terms = True  # as in the training loop: no host sync per step
    nets = family.build(size).to(device)
    opts = family.optimizers(nets)
    x = torch.randn(BATCH, 1, size, size, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with autocast:
        for _ in range(3):
            family.train_step(nets, opts, x)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(steps):
            family.train_step(nets, opts, x)
        busy = _utilisation()
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"slices_per_s": steps * BATCH / seconds, "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
            "util_pct": busy}  # fmt: skip


def throughput(plan: BenchPlan) -> dict[str, Any]:
    families = list(plan.families or searchable_family_names())
    figures: dict[str, Any] = {}
    for name in families:
        for size in SIZES:
            for precision in PRECISIONS:
                found = step_rate(name, size, precision, steps=10 if plan.quick else 40)
                for key, value in found.items():
                    figures[f"gpu_{key}_{name}_{size}_{precision}"] = value
            fp32, bf16 = (figures[f"gpu_slices_per_s_{name}_{size}_{p}"] for p in PRECISIONS)
            figures[f"gpu_bf16_speedup_{name}_{size}"] = bf16 / fp32
            say(f"gpu: {name} {size}x{size}: fp32 {fp32:.0f}, bf16 {bf16:.0f} slices/s")
    return figures


def ddp_trial(plan: BenchPlan) -> dict[str, Any]:
    """The smoke study with one GPU per Train worker (2 workers): trial start and overhead."""
    import dataclasses

    from study.bench import study as bench_study

    real = bench_study.study_config

    def on_gpus(*args: Any, **kwargs: Any) -> Any:
        config = real(*args, **kwargs)
        training = dataclasses.replace(config.training, gpus_per_worker=1.0, workers_per_trial=2)
        return dataclasses.replace(config, training=training)

    with _patched(bench_study, "study_config", on_gpus):
        found = bench_study.run(plan)
    return {f"gpu_ddp_{key}": value for key, value in found.items()}


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Any:
    before = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, before)


def run(plan: BenchPlan) -> dict[str, Any]:
    """The section's figures, or ``gpu_skipped`` naming why nothing was measured."""
    count = gpu_count()
    if count == 0:
        say("gpu: skipped (no CUDA device)")
        return {"gpu_skipped": "no CUDA device"}
    import torch

    figures: dict[str, Any] = {"gpu_name": torch.cuda.get_device_name(0), "gpu_count": count}
    figures.update(throughput(plan))
    if count >= 2:
        figures.update(ddp_trial(plan))
    else:
        figures["gpu_ddp_skipped"] = "a 2-worker DDP trial needs 2 GPUs (NCCL: one whole GPU per rank)"
    rates = [v for k, v in figures.items() if k.startswith("gpu_bf16_speedup_")]
    figures["gpu_bf16_speedup_median"] = median(rates)
    return figures
