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
models on test; this never does. ``--no-early-stop`` trains every one of ``--max-epochs`` epochs (the papers'
fixed budgets; the first paper's official code: 300) and scores the final model on test too (``test_final``);
``--steps N`` does the same for exactly N auto-encoder steps (batches; the issue's budget unit, its last epoch
possibly partial; the run's JSON records ``budget.max_steps``).
The first paper's full budget, one command (expected time: results/reproduce/table.md, "The papers' budget"):

    python -m trainables.reproduce --out results/reproduce/full300 --only vae,aae,caae_0.5,caae_1.0 \
        --max-epochs 300 --no-early-stop --seeds 0,1,2

Conventions (docs/decisions.md): ``--background`` (the image value outside the brain for the first paper's
runs; default -3.5 as its official preprocessing) and ``--recon-norm`` (the AAE family's reconstruction term:
its ``recon_norm`` default, the official code's unsquared norm, or ``squared``, the paper's text). Each run's
JSON records its budget, background and hparams, every loss term's mean per epoch (``losses``), the pixel
metrics per lesion appearance (``<metric>_<appearance>``), and a subject-level bootstrap interval of the
tables' AUROCs (``bootstrap``, trainables/reproduce/bootstrap.py).

Every finished run is written at once to ``OUT/runs/<run>-seed<k>.json`` (so a cut run loses only the
run in progress, and seeds may run as parallel processes); ``--table-only`` (or the end of a training
command) gathers them into ``OUT/results.json`` and ``OUT/table.md`` (trainables/reproduce/table.py).
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
from itertools import islice
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
from trainables.reproduce.bootstrap import SubjectValues
from trainables.reproduce.runs import LESION, POOLED, RUNS, Run
from trainables.reproduce.table import write_tables

Say = Callable[[str], None]
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Budget:
    max_epochs: int = 50  # cap on epochs (the issue asks for at least 50 on the default cohort)
    min_epochs: int = 10  # never stop before
    patience: int = 6  # stop after this many epochs without a val improvement
    deadline: float | None = None  # wall clock (time.time()) after which no further epoch starts
    batch_size: int = 64  # both papers
    early_stop: bool = True  # False: train every one of max_epochs epochs (the papers' fixed budgets)
    max_steps: int | None = None  # exactly this many auto-encoder steps (batches), no plateau stop; max_epochs unused

    def __post_init__(self) -> None:
        if self.max_steps is not None and (self.max_steps < 1 or self.early_stop):
            raise ValueError(f"Budget: max_steps must be >= 1 and without early stopping; got {self}")

    def record(self) -> dict[str, Any]:
        """What a run's JSON keeps of its budget."""
        keys = ("max_epochs", "min_epochs", "patience", "batch_size", "early_stop", "max_steps")
        return {key: getattr(self, key) for key in keys}

    def epochs(self, steps_per_epoch: int) -> int:
        """The run's length in epochs (the families' schedules, e.g. the AAE's warm-up share, are fractions of
        it): max_epochs, or the epochs that max_steps starts (the last one may be partial)."""
        return self.max_epochs if self.max_steps is None else math.ceil(self.max_steps / max(steps_per_epoch, 1))


# The first paper's official preprocessing (normalize_data.py) sets the background outside the brain to -3.5
# after standardising; the study's slices keep it at 0 (trainables/data/preprocess.py). docs/decisions.md.
OFFICIAL_BACKGROUND = -3.5


@dataclass(frozen=True)
class Conventions:
    background: float = OFFICIAL_BACKGROUND  # image value outside the brain mask (z-scored units), first paper's runs
    recon_norm: str | None = None  # the AAE family's recon_norm for aae/caae runs; None: the family default

    def hparams(self, run: Run) -> dict[str, Any]:
        """The run's hyperparameters with these conventions applied."""
        if self.recon_norm is None or run.family not in AAE_FAMILIES:
            return dict(run.hparams)
        return {**run.hparams, "recon_norm": self.recon_norm}

    def background_of(self, run: Run) -> float:
        """The first paper's nets (and the plain AE on them) see its background; the others keep the cache's 0:
        the dae finds the brain as ``x != 0`` (its authors' preprocessing leaves 0 there), the second paper's
        preprocessing is not known to us, and the threshold baseline reads intensities inside the brain only."""
        return self.background if run.family in FIRST_PAPER_FAMILIES else 0.0


AAE_FAMILIES = ("aae", "caae")  # the families with recon_norm (trainables/families/aae.py)
FIRST_PAPER_FAMILIES = ("vae", "aae", "caae", "ae")


def with_background(image: torch.Tensor, brain: torch.Tensor, value: float) -> torch.Tensor:
    """``image`` with every pixel outside ``brain`` set to ``value`` (the cache stores 0 there)."""
    return image if value == 0 else torch.where(brain > 0.5, image, torch.full_like(image, value))


class _BackgroundLoader:
    """A loader whose batches' images carry ``value`` outside the brain (``with_background``)."""

    def __init__(self, loader: DataLoader, value: float) -> None:
        self.loader, self.value = loader, value

    def __iter__(self):
        for batch in self.loader:
            yield {**batch, "image": with_background(batch["image"], batch["brain"], self.value)}

    def __len__(self) -> int:
        return len(self.loader)


def default_cache(data_root: Path, say: Say) -> Path:
    """The study's embedded synthetic cohort and its 32x32 slice cache (generated once, then reused)."""
    cohort = ensure_cohort(data_root / "synthetic-h24-l12-s0", 24, 12, 0, progress=say)
    return prepare_slice_cache(
        cohort.healthy_dir, cohort.lesion_dir, data_root / "cache", PreprocessConfig(), SplitConfig(), progress=say
    )


def _train_loader(cache: Path, batch_size: int, seed: int, background: float) -> _BackgroundLoader:
    """Healthy train slices, reshuffled each epoch; full batches only, as the study's loop uses."""
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(SliceDataset(cache, "train"), batch_size=batch_size, shuffle=True, drop_last=True, generator=g)
    return _BackgroundLoader(loader, background)


def _subset(scores: Scores, keep: torch.Tensor) -> Scores:
    latent = None if scores.latent_score is None else scores.latent_score[keep]
    return Scores(scores.recon[keep], scores.pixel_map[keep], scores.slice_score[keep], latent)


def score_split(
    families: dict[str, Family],
    nets: nn.ModuleDict,
    cache: Path,
    split: str,
    thresholds: dict | None = None,
    background: float = 0.0,
    subject_values: SubjectValues | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics of each named scoring family on ``split``, on lesion subjects only and pooled, from one pass; every
    pixel metric per lesion appearance too (``<metric>_<appearance>``: on lesion subjects, that appearance's
    subjects only; pooled, the healthy subjects with them).

    ``thresholds[name][set]`` (from val) gives each set's Dice threshold. The lesion-subject set is computed
    here rather than in trainables.metrics: it is a reproduction choice (the first paper's tables).
    ``subject_values`` collects the first family's values for the subject-level bootstrap.
    """
    dataset = SliceDataset(cache, split)
    lesion_subject = torch.from_numpy(np.asarray(dataset.lesion_subject, dtype=bool))
    kinds = dataset.appearances
    acc = {name: {LESION: DetectionMetrics(kinds), POOLED: DetectionMetrics(kinds)} for name in families}
    for batch in DataLoader(dataset, batch_size=256):
        image, brain, lesion = unpack_batch(batch)
        image, kind = with_background(image, brain, background), batch["appearance"]
        keep = lesion_subject[batch["subject"]]
        for name, family in families.items():
            scores = family.score(nets, image)
            acc[name][POOLED].update(scores, brain, lesion, kind)
            acc[name][LESION].update(_subset(scores, keep), brain[keep], lesion[keep], kind[keep])
            if subject_values is not None and name == next(iter(families)):
                subject_values.update(scores.pixel_map, scores.slice_score, brain, lesion, batch["subject"], keep)
    thresholds = thresholds or {}
    return {
        name: {s: m.compute(thresholds.get(name, {}).get(s)) for s, m in sets.items()} for name, sets in acc.items()
    }


def _stop_reason(budget: Budget, epoch: int, best_epoch: int, steps: int = 0) -> str | None:
    """Why training stops after ``epoch`` with ``steps`` trained (None: it goes on). A run that trained every epoch
    of its cap is ``max_epochs`` even where the plateau rule would also have fired then."""
    if budget.max_steps is not None:
        if steps >= budget.max_steps:
            return "max_steps"
    elif epoch >= budget.max_epochs:
        return "max_epochs"
    if budget.early_stop and epoch >= budget.min_epochs and epoch - best_epoch >= budget.patience:
        return "plateau"
    if budget.deadline is not None and time.time() > budget.deadline:
        return "deadline"
    return None


def fit(
    run: Run, family: Family, nets: nn.ModuleDict, cache: Path, budget: Budget, seed: int, say: Say, background: float
) -> tuple[dict, dict | None]:
    """Train under ``budget``, leave the best val epoch's weights in ``nets``; the training record, and the final
    epoch's weights where they differ from the chosen ones (else None). The record keeps per epoch the val
    measure (``history``) and every loss term's mean (``losses``: the total and its parts, e.g. recon, latent,
    kl, critic, as the family's train_step returns them)."""
    scorers = {"main": family}
    if not family.trainable:
        return {"best_epoch": 0, "epochs": 0, "steps": 0, "stopped": "no weights",
                "val": score_split(scorers, nets, cache, "val", background=background)["main"],
                "history": [], "losses": []}, None  # fmt: skip
    opts, train = family.optimizers(nets), _train_loader(cache, budget.batch_size, seed, background)
    part, metric = run.objective
    chooser = Objective(metric, "max")  # the papers' measures are AUROCs: larger is better
    best: dict[str, Any] = {"epoch": 0, "score": math.nan, "val": None, "weights": None}
    history, losses_per_epoch, steps, stopped, epoch, val = [], [], 0, None, 0, {}
    epochs = budget.epochs(len(train))
    while stopped is None:
        epoch += 1
        family.set_epoch(epoch - 1, epochs)
        batches = train if budget.max_steps is None else islice(train, budget.max_steps - steps)  # last: partial
        losses = train_epoch(family, nets, opts, batches, CPU, epoch - 1)
        steps += losses.steps
        losses_per_epoch.append({key: round(value, 5) for key, value in losses.means.items()})
        val = score_split(scorers, nets, cache, "val", background=background)["main"]
        score = val[part][metric]
        history.append(round(score, 4) if math.isfinite(score) else None)
        say(f"  {run.key} seed {seed} epoch {epoch}: loss {losses.means['loss']:.4f}, val {part} {metric} {score:.4f}")
        if best["weights"] is None or chooser.better(score, best["score"]):
            best = {"epoch": epoch, "score": score, "val": val, "weights": copy.deepcopy(nets.state_dict())}
        stopped = _stop_reason(budget, epoch, best["epoch"], steps)
    final = None if best["epoch"] == epoch else {"weights": copy.deepcopy(nets.state_dict()), "val": val}
    nets.load_state_dict(best["weights"])
    return {"best_epoch": best["epoch"], "epochs": epoch, "steps": steps, "stopped": stopped, "val": best["val"],
            "history": history, "losses": losses_per_epoch}, final  # fmt: skip


def _thresholds(val_sets: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """Each scorer's and metric set's Dice threshold, from its val metrics."""
    return {name: {s: m.get("best_threshold") for s, m in sets.items()} for name, sets in val_sets.items()}


def run_one(run: Run, cache: Path, budget: Budget, seed: int, say: Say, conv: Conventions) -> dict[str, Any]:
    """Train ``run`` with ``seed``, choose its epoch on val, score test once with val's Dice thresholds (and, where
    the last epoch is not the chosen one, the final model too: ``test_final``)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    hparams, bg = conv.hparams(run), conv.background_of(run)
    family = create_family(run.family, hparams)
    nets = family.build(read_meta(cache)["preprocess"]["image_size"])
    record, final = fit(run, family, nets, cache, budget, seed, say, bg)
    scorers = {"main": family}
    if run.family == "lran":  # Table 5: the same weights scored with the residual instead of z - z'
        scorers["residual"] = create_family("lran", {**hparams, "slice_score": "residual"})
        record["val_residual"] = score_split({"r": scorers["residual"]}, nets, cache, "val", background=bg)["r"]
    thresholds = _thresholds({"main": record["val"], "residual": record.get("val_residual", {})})
    subject_values = SubjectValues()
    test = score_split(scorers, nets, cache, "test", thresholds, bg, subject_values)
    record.update(
        test=test["main"], family=run.family, hparams=hparams, seed=seed, bootstrap=subject_values.intervals()
    )
    record.update(budget=budget.record(), background=bg)
    if "residual" in test:
        record["test_residual"] = test["residual"]
    if final is not None:  # the final model, with its own val's thresholds
        nets.load_state_dict(final["weights"])
        final_thresholds = _thresholds({"main": final["val"]})
        record["test_final"] = score_split({"main": family}, nets, cache, "test", final_thresholds, bg)["main"]
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
    parser.add_argument("--no-early-stop", action="store_true",
                        help="train every --max-epochs epoch (no plateau stop); the final and the val-chosen "
                             "model are both scored on test")  # fmt: skip
    parser.add_argument("--steps", type=int,
                        help="train exactly this many auto-encoder steps (batches; its last epoch may be partial), no "
                             "plateau stop; final and val-chosen model both scored; replaces --max-epochs")  # fmt: skip
    parser.add_argument("--background", type=float, default=OFFICIAL_BACKGROUND,
                        help="image value outside the brain for the first paper's runs (vae, aae, caae, ae; "
                             "default -3.5, its official normalize_data.py; the study's slices, the other runs "
                             "and the runs before this option: 0)")  # fmt: skip
    parser.add_argument("--recon-norm", choices=("l2", "squared"),
                        help="the AAE family's reconstruction term for aae/caae runs: l2 (official code, the family "
                             "default) or squared (the paper's text); use its own --out")  # fmt: skip
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
    budget = Budget(args.max_epochs, args.min_epochs, args.patience, _deadline(args.deadline), args.batch_size,
                    early_stop=not (args.no_early_stop or args.steps is not None), max_steps=args.steps)  # fmt: skip
    conv = Conventions(args.background, args.recon_norm)
    runs = [r for r in RUNS if not args.only or r.key in args.only.split(",")]
    for seed in [] if args.table_only else [int(s) for s in args.seeds.split(",")]:
        for run in runs:
            if budget.deadline is not None and time.time() > budget.deadline:
                say(f"{run.key} seed {seed}: not started (deadline {args.deadline} passed)")
                continue
            say(f"{run.key} seed {seed}: {run.family} {run.hparams or '(paper defaults)'}")
            try:
                record = run_one(run, cache, budget, seed, say, conv)
            except NonFiniteLossError as err:  # a diverged run is a result too
                record = {"family": run.family, "hparams": run.hparams, "seed": seed, "error": str(err)}
                say(f"  {run.key} seed {seed} diverged: {err}")
            path = runs_dir / f"{run.key}-seed{seed}.json"
            path.with_suffix(".tmp").write_text(json.dumps(record, indent=1, default=float) + "\n")
            path.with_suffix(".tmp").replace(path)
    if not args.no_table:
        say(write_tables(args.out, cache, args, argv if argv is not None else sys.argv[1:]))
    return 0
