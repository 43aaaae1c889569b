"""The two papers' tables on our data: one plain process, no Ray, no MLflow.

    python -m trainables.reproduce --cache DIR --out results/reproduce --epochs N

trains each paper configuration with its published settings (the families' defaults: batch 64; VAE, AAE,
constrained AAE with lambda 0.5 and 1.0; the latent-regularised network and its Table 4 ablations) and
the two baselines (plain AE, intensity threshold) on the healthy train slices of a slice cache. After each
epoch it scores val and keeps the best epoch by the paper's own measure (pixel AUROC for the first
paper's models, slice AUROC for the second's); test is scored once, with those weights, and the Dice
threshold comes from val. The papers chose their models on test; this never does.

Without ``--cache`` the embedded synthetic cohort (24 healthy, 12 lesion subjects, seed 0; the study's
default) is generated once under ``--data-root`` with its slice cache, as ``python -m study.run`` does.
Writes ``OUT/table.md`` (the tables, each paper number beside ours) and ``OUT/results.json`` (every metric).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainables.data.cache import SplitConfig, prepare_slice_cache, read_meta
from trainables.data.dataset import SliceDataset
from trainables.data.preprocess import PreprocessConfig
from trainables.data.synthetic import ensure_cohort
from trainables.families import Family, create_family
from trainables.metrics import evaluate

PIXEL, SLICE = "val_pixel_auroc", "val_slice_auroc"
Say = Callable[[str], None]


@dataclass(frozen=True)
class Run:
    key: str  # row name in the tables
    family: str  # registered family
    objective: str  # val metric choosing the epoch (the paper's own measure)
    hparams: dict[str, Any] = field(default_factory=dict)  # overrides of the family's (paper) defaults


RUNS = (
    Run("vae", "vae", PIXEL),
    Run("aae", "aae", PIXEL),
    Run("caae_0.5", "caae", PIXEL, {"latent_weight": 0.5}),
    Run("caae_1.0", "caae", PIXEL, {"latent_weight": 1.0}),
    Run("lran", "lran", SLICE),
    Run("lran_no_rank", "lran", SLICE, {"w_r": 0.0}),  # = GANomaly with the paper's weights
    Run("lran_no_zrec", "lran", SLICE, {"w_z": 0.0}),
    Run("lran_irec_adv", "lran", SLICE, {"w_r": 0.0, "w_z": 0.0}),
    Run("ae", "ae", PIXEL),
    Run("threshold", "threshold", PIXEL),
)
# Published numbers (DESIGN.md). First paper: pixel AUROC and overlap % on BraTS 2015 T2 (Tables 1, 2).
PAPER1_AUROC = {"vae": 0.897, "aae": 0.885, "caae_0.5": 0.906, "caae_1.0": 0.923}
PAPER1_OVERLAP = {"vae": 26, "aae": 28, "caae_0.5": 25, "caae_1.0": 17}
# Second paper: slice AUROC on BraTS 2019 with the z - z' score (Table 4), and per score (Table 5).
TABLE4 = (
    ("lran_irec_adv", "irec + adv", 0.027),
    ("lran_no_zrec", "irec + adv + rank", 0.684),
    ("lran_no_rank", "irec + adv + zrec (GANomaly)", 0.835),
    ("lran", "all (irec + adv + zrec + rank)", 0.994),
)
TABLE5 = (("residual", "x - x' (mean residual)", 0.938), ("latent", "z - z' (latent score)", 0.994))


def default_cache(data_root: Path, say: Say) -> Path:
    """The study's embedded synthetic cohort and its 32x32 slice cache (generated once, then reused)."""
    cohort = ensure_cohort(data_root / "synthetic-h24-l12-s0", 24, 12, 0, progress=say)
    return prepare_slice_cache(
        cohort.healthy_dir, cohort.lesion_dir, data_root / "cache", PreprocessConfig(), SplitConfig(), progress=say
    )


CPU = torch.device("cpu")


def _train_loader(cache: Path, batch_size: int, seed: int) -> DataLoader:
    """Healthy train slices, reshuffled each epoch; full batches only, as the study's loop uses."""
    g = torch.Generator().manual_seed(seed)
    return DataLoader(SliceDataset(cache, "train"), batch_size=batch_size, shuffle=True, drop_last=True, generator=g)


def _eval_loader(cache: Path, split: str) -> DataLoader:
    return DataLoader(SliceDataset(cache, split), batch_size=256)


def train_epoch(family: Family, nets: nn.ModuleDict, opts: dict, loader: DataLoader) -> dict[str, float]:
    """One pass; mean of each returned term. Raises ``FloatingPointError`` on a non-finite term."""
    sums: dict[str, float] = {}
    steps = 0
    for steps, batch in enumerate(loader, 1):
        terms = family.train_step(nets, opts, batch["image"])
        if not all(math.isfinite(v) for v in terms.values()):
            raise FloatingPointError(f"non-finite loss at step {steps}: {terms}")
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + value
    return {k: v / max(steps, 1) for k, v in sums.items()}


def _improves(value: float, best: float) -> bool:
    return not math.isnan(value) and (math.isnan(best) or value > best)


def fit(
    run: Run, family: Family, nets: nn.ModuleDict, cache: Path, epochs: int, batch_size: int, seed: int, say: Say
) -> tuple[int, dict[str, float]]:
    """Train for ``epochs``; return (best epoch, its val metrics) and leave its weights in ``nets``.

    A family without weights is scored once (epoch 0). Every epoch of a trainable one is scored on val.
    """
    val = _eval_loader(cache, "val")
    if not family.trainable:
        return 0, evaluate(family, nets, val, CPU)
    opts, train, metric = family.optimizers(nets), _train_loader(cache, batch_size, seed), run.objective[4:]
    best_epoch, best_val, best_weights = 0, {metric: math.nan}, None
    for epoch in range(1, epochs + 1):
        losses = train_epoch(family, nets, opts, train)
        metrics = evaluate(family, nets, val, CPU)
        say(f"  {run.key} epoch {epoch}: loss {losses['loss']:.4f}, {run.objective} {metrics[metric]:.3f}")
        if best_weights is None or _improves(metrics[metric], best_val[metric]):
            best_epoch, best_val, best_weights = epoch, metrics, copy.deepcopy(nets.state_dict())
    if best_weights is not None:
        nets.load_state_dict(best_weights)
    return best_epoch, best_val


def run_one(run: Run, cache: Path, epochs: int, batch_size: int, seed: int, say: Say) -> dict[str, Any]:
    """Train ``run``, choose its epoch on val, score test once with the val Dice threshold; every metric."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    family = create_family(run.family, run.hparams)
    nets = family.build(read_meta(cache)["preprocess"]["image_size"])
    best_epoch, val = fit(run, family, nets, cache, epochs, batch_size, seed, say)
    test_loader = _eval_loader(cache, "test")
    test = evaluate(family, nets, test_loader, CPU, threshold=val["best_threshold"])
    out = {"family": run.family, "hparams": run.hparams, "best_epoch": best_epoch, "val": val, "test": test}
    if run.family == "lran":  # Table 5: the same weights scored with the residual instead of z - z'
        residual = create_family("lran", {**run.hparams, "slice_score": "residual"})
        out["test_residual"] = evaluate(residual, nets, test_loader, CPU)
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _test(results: dict, key: str, metric: str, part: str = "test") -> float | None:
    entry = results.get(key)
    return None if entry is None or "error" in entry else entry[part][metric]


def _paper1_rows(results: dict[str, dict]) -> list[str]:
    rows = ["## First paper, Table 1: pixel AUROC (test; paper: BraTS 2015 T2)", ""]
    rows += ["| model | paper | ours (in brain) | ours (all pixels) | best epoch |", "|---|---|---|---|---|"]
    for key, paper in PAPER1_AUROC.items():
        epoch = results.get(key, {}).get("best_epoch", "-")
        ours, ours_all = _test(results, key, "pixel_auroc"), _test(results, key, "pixel_auroc_all")
        rows.append(f"| {key} | {paper:.3f} | {_f(ours)} | {_f(ours_all)} | {epoch} |")
    rows += ["", "## First paper, Table 2: residual on healthy and lesion pixels (test)", ""]
    rows += ["| model | healthy mu | healthy sigma | lesion mu | lesion sigma | overlap % | paper overlap % |"]
    rows += ["|---|---|---|---|---|---|---|"]
    for key, paper in PAPER1_OVERLAP.items():
        cells = [_f(_test(results, key, m)) for m in ("healthy_mu", "healthy_sigma", "lesion_mu", "lesion_sigma")]
        rows.append(f"| {key} | {' | '.join(cells)} | {_f(_test(results, key, 'overlap_pct'), 1)} | {paper} |")
    return rows + ["", "(The paper's mu/sigma values are not in DESIGN.md; only its overlap is compared.)", ""]


def _paper2_rows(results: dict[str, dict]) -> list[str]:
    rows = ["## Second paper, Table 4: ablation, slice AUROC with z - z' (test; paper: BraTS 2019)", ""]
    rows += ["| losses | run | paper | ours |", "|---|---|---|---|"]
    for key, label, paper in TABLE4:
        rows.append(f"| {label} | {key} | {paper:.3f} | {_f(_test(results, key, 'slice_auroc'))} |")
    rows += ["", "## Second paper, Table 5: slice AUROC by score (full model, test)", ""]
    rows += ["| score | paper | ours |", "|---|---|---|"]
    for score, label, paper in TABLE5:
        part = "test" if score == "latent" else "test_residual"
        rows.append(f"| {label} | {paper:.3f} | {_f(_test(results, 'lran', 'slice_auroc', part))} |")
    return rows + [""]


def _all_rows(results: dict[str, dict]) -> list[str]:
    rows = ["## Every run, with the baselines (test; epoch chosen on val)", ""]
    rows += ["| run | pixel AUROC | pixel AUPRC | slice AUROC | dice (val thr.) | overlap % | best epoch | s |"]
    rows += ["|---|---|---|---|---|---|---|---|"]
    for key, entry in results.items():
        if "error" in entry:
            rows.append(f"| {key} | failed: {entry['error']} |||||||")
            continue
        t = entry["test"]
        cells = [_f(t[m]) for m in ("pixel_auroc", "pixel_auprc", "slice_auroc", "dice")] + [_f(t["overlap_pct"], 1)]
        rows.append(f"| {key} | {' | '.join(cells)} | {entry['best_epoch']} | {entry['seconds']} |")
    return rows


def table_markdown(results: dict[str, dict], header: str) -> str:
    """The papers' tables with their numbers beside ours (test split, epoch chosen on val), then every run."""
    return "\n".join([header, "", *_paper1_rows(results), *_paper2_rows(results), *_all_rows(results)]) + "\n"


def _header(cache: Path, args: argparse.Namespace) -> str:
    counts = read_meta(cache)["counts"]
    split = ", ".join(f"{s}: {c['slices']} slices ({c['lesion_slices']} with lesion)" for s, c in counts.items())
    return (
        "# The papers' tables on our data\n\n"
        f"`python -m trainables.reproduce --cache {cache} --epochs {args.epochs}` "
        f"(batch {args.batch_size}, seed {args.seed}, {args.threads} torch threads).\n\n"
        f"Slices: {split}. Papers' settings from the families' defaults; the epoch of each run is chosen on val "
        "by the paper's own measure, test is scored once. Paper numbers come from other data (BraTS, HCP, "
        "many more epochs) and chose models on test: compare orderings, not values."
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: train every run, write OUT/table.md and OUT/results.json."""
    parser = argparse.ArgumentParser(prog="python -m trainables.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, help="slice cache entry (a folder with meta.json)")
    parser.add_argument("--data-root", type=Path, default=Path("results/data"), help="for the default cohort")
    parser.add_argument("--out", type=Path, default=Path("results/reproduce"), help="output folder")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (both papers: 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def say(line: str) -> None:
        print(line, flush=True)

    cache = args.cache or default_cache(args.data_root, say)
    runs = [r for r in RUNS if not args.only or r.key in args.only.split(",")]
    results: dict[str, dict] = {}
    for run in runs:
        say(f"{run.key}: {run.family} {run.hparams or '(paper defaults)'}")
        try:
            results[run.key] = run_one(run, cache, args.epochs, args.batch_size, args.seed, say)
        except FloatingPointError as err:  # a diverged run is a result too
            results[run.key] = {"family": run.family, "hparams": run.hparams, "error": str(err)}
            say(f"  {run.key} diverged: {err}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    table = table_markdown(results, _header(cache, args))
    (args.out / "table.md").write_text(table)
    say(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
