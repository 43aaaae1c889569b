"""python -m study.bench: the study's performance figures, measured side by side, into results/bench.json.

Sections (each in its own module, study/bench/<section>.py):
  train   slices/s of every trainable family in the study's Ray Train loop (1 worker) / a plain PyTorch loop
  data    slices/s of the slice cache + DataLoader / tensors in memory; memory of 1 and 4 concurrent readers
  study   wall time of the smoke study / time inside the workers' train+eval loops; trial start to first step
  stage   MB/s of study.stage from a local S3 server (moto) / a plain boto3 download; bytes of a warm restage
  search  share of a trial-epoch budget TPE + ASHA needs to reach random search + FIFO's best val AUROC
  detect  the default study's best test AUROCs (chosen on val) beside the untrained threshold baseline
  gpu     per family at 64 and 128: train-step slices/s in fp32 and bf16, peak memory, GPU utilisation, and a
          2-worker DDP trial on 2 GPUs; skipped (gpu_skipped says why) without a CUDA device
  scale   per subject on HCP's and BraTS' grids: preprocessing s, raw and cache bytes; Ray build speed-up on 2
          CPUs over 1; bytes a second node downloads (shared cache) / the raw cohort; extrapolation to 2,364
  metrics s per million val pixels of every val metric, streamed (one all-reduce) / exact (scikit-learn);
          the largest difference between the two
On a machine with CUDA the same command measures the GPU path. Ratios are medians of repeats taken in one
run, so a busy machine slows both sides alike; the load average is recorded with the figures.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from study.bench.common import REPO, BenchPlan, device_name, say, slice_cache
from study.bench.report import format_table, git_commit, load_average, ratio, table_rows, target_for, write_bench_json

SECTIONS = ("train", "data", "study", "stage", "search", "detect", "gpu", "scale", "metrics")
CACHE_SECTIONS = ("train", "data", "search")  # sections measured on the slice cache
DEFAULT_OUT = REPO / "results" / "bench.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m study.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Full run: about 10 minutes on 2 shared cores; --quick: about 2-3.",
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized: the VAE only, fewer repeats, 1 smoke trial")
    names = ",".join(SECTIONS)
    parser.add_argument("--only", type=_sections, metavar="NAME[,NAME]", help=f"run only these sections: {names}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file (default: results/bench.json)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a measured figure misses its target")
    return parser.parse_args(argv)


def _sections(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    return names


def run_section(name: str, plan: BenchPlan) -> dict[str, Any]:
    """One section's figures (its module, study/bench/<name>.py, is imported here: `--help` and the unit tests
    stay light)."""
    section = importlib.import_module(f"study.bench.{name}")
    if name in CACHE_SECTIONS:
        return section.run(plan, slice_cache())
    return section.run(plan)


def derived(figures: dict[str, Any]) -> dict[str, float]:
    """Figures computed from other sections' figures.

    data_train_ratio: the VAE's training slices/s fed by the cache's loader over fed from memory, from the
    measured rates (the loop runs loading and training one after the other, so their times per slice add).
    """
    train = figures.get("train_plain_slices_per_s_vae")
    loader, memory = figures.get("data_loader_slices_per_s"), figures.get("data_memory_slices_per_s")
    if not all(isinstance(v, float) and v > 0 for v in (train, loader, memory)):
        return {}
    return {"data_train_ratio": ratio(1 / (1 / train + 1 / loader), 1 / (1 / train + 1 / memory))}


def measure(plan: BenchPlan, sections: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Run the sections one after another; a failing section is reported and the others still run."""
    figures: dict[str, Any] = {}
    failed = []
    for name in sections:
        say(f"section {name} (load average {load_average()[0]:.2f})")
        started = time.perf_counter()
        try:
            figures.update(run_section(name, plan))
        except Exception as err:  # a bench reports what it could measure; the error is printed, not hidden
            traceback.print_exc()
            figures[f"{name}_error"] = f"{type(err).__name__}: {err}"[:500]
            failed.append(name)
        figures[f"section_{name}_s"] = round(time.perf_counter() - started, 1)
    return figures, failed


def missed(figures: dict[str, Any]) -> list[str]:
    """Figures measured in this run that miss their target."""
    return [k for k, v in figures.items() if (t := target_for(k)) is not None and t.met(v) is False]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = BenchPlan.quick_plan() if args.quick else BenchPlan.full()
    sections = args.only or list(SECTIONS)
    device = device_name()
    say(f"device {device}, sections {', '.join(sections)}, {'quick' if args.quick else 'full'} plan")
    load_before = load_average()
    started = time.perf_counter()
    figures, failed = measure(plan, sections)
    figures.update(derived(figures))
    figures.update(bench_wall_s=round(time.perf_counter() - started, 1), sections=",".join(sections))
    figures.update({f"load_{k}_{when}": v for when, load in (("start", load_before), ("end", load_average()))
                    for k, v in zip(("1m", "5m", "15m"), load, strict=True)})  # fmt: skip
    record = write_bench_json(
        figures, args.out, quick=args.quick, device=device, commit=git_commit(REPO), merge=args.only is not None
    )
    print("\n" + format_table(table_rows(record)))
    print(f"\n{args.out}: device {device}, commit {record['commit'][:12]}, {figures['bench_wall_s']:.0f} s, "
          f"load average {load_before[0]:.2f} at start, {figures['load_1m_end']:.2f} at end")  # fmt: skip
    if failed:
        print(f"sections that failed: {', '.join(failed)} (errors above and in the JSON)", file=sys.stderr)
    misses = missed(figures)
    return 1 if failed or (args.check and misses) else 0
