"""The two papers' tables on our data: one plain process per seed, no Ray, no MLflow.

    python -m trainables.reproduce --out results/reproduce --seeds 0,1,2

trains each paper configuration with its published settings (the families' defaults, batch 64: VAE, AAE,
constrained AAE with lambda 0.5 and 1.0; the latent-regularised network and its Table 4 ablations) and
the two baselines (plain AE, intensity threshold) on the healthy train slices of a slice cache, once per
seed. Budget, the same for every run: up to ``--max-epochs`` epochs (50), stopping early once the run's
val measure has not improved for ``--patience`` epochs (6) after ``--min-epochs`` (10); each run records
its epochs and steps and why it stopped; a diverged run (``NonFiniteLossError`` at the end of its epoch) is
recorded with its error. Epochs train through ``trainables.epoch.train_epoch``, the study loop's own pass
(here in one process, no process group). The AAEs' critic warm-up is their share of the cap (the official 20
of 300 epochs).
After each epoch val is scored and the best epoch kept by the paper's own measure: the first paper's
pixel AUROC on lesion subjects (its tables use BraTS, lesion subjects only), the second paper's slice
AUROC. Test is scored once, with those weights; Dice thresholds come from val. The papers chose their
models on test; this never does.

Every finished run is written at once to ``OUT/runs/<run>-seed<k>.json`` (so a cut run loses only the
run in progress, and seeds may run as parallel processes); ``--table-only`` (or the end of a training
command) gathers them into ``OUT/results.json`` and ``OUT/table.md`` (trainables/reproduce_table.py).
Metrics are computed twice per split: on lesion subjects only (as the first paper's tables) and pooled
with the held-out healthy subjects (as the study reports them). Without ``--cache`` the embedded synthetic
cohort (24 healthy, 12 lesion subjects, seed 0; the study's default) is generated under ``--data-root``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from trainables.data.cache import SplitConfig, prepare_slice_cache, read_meta
from trainables.data.dataset import SliceDataset
from trainables.data.preprocess import PreprocessConfig
from trainables.data.synthetic import ensure_cohort
from trainables.epoch import NonFiniteLossError, train_epoch
from trainables.families import Family, Scores, create_family
from trainables.metrics import DetectionMetrics, unpack_batch
from trainables.objective import Objective
from trainables.reproduce_runs import LESION, POOLED, RUNS, Run
from trainables.reproduce_table import write_tables

Say = Callable[[str], None]
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Budget:
    max_epochs: int = 50  # cap on epochs (the issue asks for at least 50 on the default cohort)
    min_epochs: int = 10  # never stop before
    patience: int = 6  # stop after this many epochs without a val improvement
    deadline: float | None = None  # wall clock (time.time()) after which no further epoch starts
    batch_size: int = 64  # both papers


def default_cache(data_root: Path, say: Say) -> Path:
    """The study's embedded synthetic cohort and its 32x32 slice cache (generated once, then reused)."""
    cohort = ensure_cohort(data_root / "synthetic-h24-l12-s0", 24, 12, 0, progress=say)
    return prepare_slice_cache(
        cohort.healthy_dir, cohort.lesion_dir, data_root / "cache", PreprocessConfig(), SplitConfig(), progress=say
    )


def _train_loader(cache: Path, batch_size: int, seed: int) -> DataLoader:
    """Healthy train slices, reshuffled each epoch; full batches only, as the study's loop uses."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(SliceDataset(cache, "train"), batch_size=batch_size, shuffle=True, drop_last=True, generator=g)


def _subset(scores: Scores, keep: torch.Tensor) -> Scores:
    latent = None if scores.latent_score is None else scores.latent_score[keep]
    return Scores(scores.recon[keep], scores.pixel_map[keep], scores.slice_score[keep], latent)


def score_split(
    families: dict[str, Family], nets: nn.ModuleDict, cache: Path, split: str, thresholds: dict | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics of each named scoring family on ``split``, on lesion subjects only and pooled, from one pass.

    ``thresholds[name][set]`` (from val) gives each set's Dice threshold. The lesion-subject set is computed
    here rather than in trainables.metrics: it is a reproduction choice (the first paper's tables).
    """
    dataset = SliceDataset(cache, split)
    lesion_subject = torch.from_numpy(np.asarray(dataset.lesion_subject, dtype=bool))
    acc = {name: {LESION: DetectionMetrics(), POOLED: DetectionMetrics()} for name in families}
    for batch in DataLoader(dataset, batch_size=256):
        image, brain, lesion = unpack_batch(batch)
        keep = lesion_subject[batch["subject"]]
        for name, family in families.items():
            scores = family.score(nets, image)
            acc[name][POOLED].update(scores, brain, lesion)
            acc[name][LESION].update(_subset(scores, keep), brain[keep], lesion[keep])
    thresholds = thresholds or {}
    return {
        name: {s: m.compute(thresholds.get(name, {}).get(s)) for s, m in sets.items()} for name, sets in acc.items()
    }


def fit(run: Run, family: Family, nets: nn.ModuleDict, cache: Path, budget: Budget, seed: int, say: Say) -> dict:
    """Train under ``budget``, leave the best val epoch's weights in ``nets``; the training record."""
    scorers = {"main": family}
    if not family.trainable:
        return {"best_epoch": 0, "epochs": 0, "steps": 0, "stopped": "no weights",
                "val": score_split(scorers, nets, cache, "val")["main"], "history": []}  # fmt: skip
    opts, train = family.optimizers(nets), _train_loader(cache, budget.batch_size, seed)
    part, metric = run.objective
    chooser = Objective(metric, "max")  # the papers' measures are AUROCs: larger is better
    best: dict[str, Any] = {"epoch": 0, "score": math.nan, "val": None, "weights": None}
    history, steps, stopped, epoch = [], 0, "max_epochs", 0
    for epoch in range(1, budget.max_epochs + 1):
        family.set_epoch(epoch - 1, budget.max_epochs)
        losses = train_epoch(family, nets, opts, train, CPU, epoch - 1)
        steps += losses.steps
        val = score_split(scorers, nets, cache, "val")["main"]
        score = val[part][metric]
        history.append(round(score, 4) if math.isfinite(score) else None)
        say(f"  {run.key} seed {seed} epoch {epoch}: loss {losses.means['loss']:.4f}, val {part} {metric} {score:.4f}")
        if best["weights"] is None or chooser.better(score, best["score"]):
            best = {"epoch": epoch, "score": score, "val": val, "weights": copy.deepcopy(nets.state_dict())}
        if epoch >= budget.min_epochs and epoch - best["epoch"] >= budget.patience:
            stopped = "plateau"
            break
        if budget.deadline is not None and time.time() > budget.deadline and epoch < budget.max_epochs:
            stopped = "deadline"
            break
    nets.load_state_dict(best["weights"])
    return {"best_epoch": best["epoch"], "epochs": epoch, "steps": steps, "stopped": stopped, "val": best["val"],
            "history": history}  # fmt: skip


def run_one(run: Run, cache: Path, budget: Budget, seed: int, say: Say) -> dict[str, Any]:
    """Train ``run`` with ``seed``, choose its epoch on val, score test once with val's Dice thresholds."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    family = create_family(run.family, run.hparams)
    nets = family.build(read_meta(cache)["preprocess"]["image_size"])
    record = fit(run, family, nets, cache, budget, seed, say)
    scorers = {"main": family}
    if run.family == "lran":  # Table 5: the same weights scored with the residual instead of z - z'
        scorers["residual"] = create_family("lran", {**run.hparams, "slice_score": "residual"})
        record["val_residual"] = score_split({"r": scorers["residual"]}, nets, cache, "val")["r"]
    val_sets = {"main": record["val"], "residual": record.get("val_residual", {})}
    thresholds = {n: {s: m.get("best_threshold") for s, m in val_sets[n].items()} for n in scorers}
    test = score_split(scorers, nets, cache, "test", thresholds)
    record.update(test=test["main"], family=run.family, hparams=run.hparams, seed=seed)
    if "residual" in test:
        record["test_residual"] = test["residual"]
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


def _deadline(text: str | None) -> float | None:
    """``HH:MM`` (UTC, today) as a timestamp."""
    if not text:
        return None
    hour, minute = (int(part) for part in text.split(":"))
    now = datetime.now(timezone.utc)
    return now.replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainables.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, help="slice cache entry (a folder with meta.json)")
    parser.add_argument("--data-root", type=Path, default=Path("results/data"), help="for the default cohort")
    parser.add_argument("--out", type=Path, default=Path("results/reproduce"), help="output folder")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument("--max-epochs", type=int, default=Budget.max_epochs)
    parser.add_argument("--min-epochs", type=int, default=Budget.min_epochs)
    parser.add_argument("--patience", type=int, default=Budget.patience)
    parser.add_argument("--deadline", help="HH:MM UTC: no epoch starts after it (the run is marked 'deadline')")
    parser.add_argument("--batch-size", type=int, default=Budget.batch_size, help="batch size (both papers: 64)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--no-table", action="store_true", help="train only (tabulate later with --table-only)")
    parser.add_argument("--table-only", action="store_true", help="gather OUT/runs/*.json into the tables")
    parser.add_argument("--reading", type=Path, help="markdown file appended to table.md (the written reading)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command line: train every run and seed (OUT/runs/), then write OUT/table.md and OUT/results.json."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)

    def say(line: str) -> None:
        print(line, flush=True)

    cache = args.cache or default_cache(args.data_root, say)
    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.max_epochs, args.min_epochs, args.patience, _deadline(args.deadline), args.batch_size)
    runs = [r for r in RUNS if not args.only or r.key in args.only.split(",")]
    for seed in ([] if args.table_only else [int(s) for s in args.seeds.split(",")]):
        for run in runs:
            if budget.deadline is not None and time.time() > budget.deadline:
                say(f"{run.key} seed {seed}: not started (deadline {args.deadline} passed)")
                continue
            say(f"{run.key} seed {seed}: {run.family} {run.hparams or '(paper defaults)'}")
            try:
                record = run_one(run, cache, budget, seed, say)
            except NonFiniteLossError as err:  # a diverged run is a result too
                record = {"family": run.family, "hparams": run.hparams, "seed": seed, "error": str(err)}
                say(f"  {run.key} seed {seed} diverged: {err}")
            path = runs_dir / f"{run.key}-seed{seed}.json"
            path.with_suffix(".tmp").write_text(json.dumps(record, indent=1, default=float) + "\n")
            path.with_suffix(".tmp").replace(path)
    if not args.no_table:
        say(write_tables(args.out, cache, args, argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
