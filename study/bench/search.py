"""Bench section `search`: on one budget of trial-epochs, how much of it TPE + ASHA needs to reach the best
val AUROC that random search + FIFO reaches with all of it.

An in-process Optuna experiment (no Ray: two arms on several seeds do not fit a 2-core budget otherwise)
over real training of the VAE on the slice cache, with the study's own pieces where they exist:
- space: `search_spaces.vae.suggest` (latent_dim, kl_weight, lr, batch_size, width);
- samplers: `study.search.make_sampler` (TPE or random, seeded) as the study builds them;
- ASHA: Optuna's SuccessiveHalvingPruner with the study's ASHA settings (grace period 1 epoch, reduction
  factor 4, Ray's default), so a trial may be stopped after its first epoch; FIFO never stops one;
- objective: `val_pixel_auroc` from `trainables.metrics.evaluate` on the full val split after each epoch;
  a trial's value is its best epoch (the study's checkpoint choice).
An epoch here is one pass over a fixed subset of the train split (`search_train_slices`), to keep the
per-epoch cost small. Random + FIFO runs `budget // max_epochs` full trials. TPE + ASHA starts trials until
the same budget of trial-epochs is spent. Its share is the budget spent when a *completed* trial (the study
only chooses among completed trials) first reaches random's best; `..._any_epoch` counts any reported epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.bench.common import BenchPlan, say, torch_threads
from study.bench.report import budget_share, median, median_share

OBJECTIVE = "pixel_auroc"
REDUCTION_FACTOR = 4  # Ray's ASHAScheduler default, which study.search.make_scheduler keeps


@dataclass
class Arm:
    """What one search spent and obtained: (trial-epochs spent, value) per reported epoch and per completed trial."""

    epochs: list[tuple[int, float]]
    completed: list[tuple[int, float]]
    started: int = 0  # trials started (completed + stopped early)

    @property
    def best(self) -> float:
        return max((v for _, v in self.completed if not math.isnan(v)), default=math.nan)


class Training:
    """Trains one VAE configuration epoch by epoch on a fixed train subset; yields val_pixel_auroc per epoch."""

    def __init__(self, cache: Path, train_slices: int, seed: int) -> None:
        import torch
        from torch.utils.data import DataLoader, Subset

        from trainables.data.dataset import EVAL_BATCH, SliceDataset

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        train = SliceDataset(cache, "train")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        self.train = Subset(train, order[:train_slices].tolist())
        self.val = DataLoader(SliceDataset(cache, "val"), batch_size=EVAL_BATCH)
        self.loader_cls = DataLoader

    def epochs(self, params: dict[str, Any], seed: int) -> Iterator[float]:
        import torch

        from trainables.families import create_family
        from trainables.metrics import evaluate

        torch.manual_seed(seed)
        family = create_family("vae", {k: v for k, v in params.items() if k != "batch_size"})
        nets = family.build(32).to(self.device)
        opts = family.optimizers(nets)
        loader = self.loader_cls(self.train, batch_size=params["batch_size"], shuffle=True, drop_last=True)
        while True:
            for batch in loader:
                family.train_step(nets, opts, batch["image"].to(self.device))
            yield evaluate(family, nets, self.val, self.device)[OBJECTIVE]


def _study(sampler: str, seed: int, pruned: bool) -> Any:
    import optuna

    from study.config import StudyConfig
    from study.search import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = (
        optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION_FACTOR)
        if pruned
        else optuna.pruners.NopPruner()
    )
    config = StudyConfig(sampler=sampler, seed=seed)
    return optuna.create_study(direction="maximize", sampler=make_sampler(config), pruner=pruner)


def run_arm(training: Training, sampler: str, pruned: bool, seed: int, budget: int, max_epochs: int) -> Arm:
    """Ask/tell loop of one search until ``budget`` trial-epochs are spent (FIFO: only whole trials)."""
    import optuna

    from search_spaces.vae import suggest

    study, spent = _study(sampler, seed, pruned), 0
    arm = Arm([], [])
    while spent < budget and (pruned or spent + max_epochs <= budget):
        trial = study.ask()
        suggest(trial)
        arm.started += 1
        values, state = [], optuna.trial.TrialState.COMPLETE
        epochs = training.epochs(trial.params, seed + trial.number)  # same seed, same draw: paired arms
        for epoch, value in zip(range(1, max_epochs + 1), epochs, strict=False):
            spent += 1
            values.append(value)
            arm.epochs.append((spent, value))
            trial.report(value, epoch)
            if epoch < max_epochs and (trial.should_prune() or spent >= budget):
                state = optuna.trial.TrialState.PRUNED
                break
        best = max(values)
        study.tell(trial, best if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        if state == optuna.trial.TrialState.COMPLETE:
            arm.completed.append((spent, best))
    return arm


def shares(random_fifo: Arm, tpe_asha: Arm, budget: int) -> tuple[float | None, float | None]:
    """(strict, any-epoch) budget shares TPE + ASHA needs to reach random + FIFO's best."""
    goal = random_fifo.best
    return budget_share(tpe_asha.completed, goal, budget), budget_share(tpe_asha.epochs, goal, budget)


def run(plan: BenchPlan, cache: Path) -> dict[str, Any]:
    """Section figures: search_budget_share (median over seeds) and what each arm reached."""
    strict, lenient, bests = [], [], {"random": [], "tpe": []}
    with torch_threads(plan.threads):
        for seed in range(plan.search_seeds):
            training = Training(cache, plan.search_train_slices, seed)
            args = (seed, plan.search_budget, plan.search_max_epochs)
            random_fifo = run_arm(training, "random", False, *args)
            tpe_asha = run_arm(training, "tpe", True, *args)
            share, share_any = shares(random_fifo, tpe_asha, plan.search_budget)
            strict.append(share)
            lenient.append(share_any)
            bests["random"].append(random_fifo.best)
            bests["tpe"].append(tpe_asha.best)
            say(
                f"search seed {seed}: random+FIFO best {random_fifo.best:.4f} ({len(random_fifo.completed)} trials), "
                f"TPE+ASHA best {tpe_asha.best:.4f} ({len(tpe_asha.completed)} completed of "
                f"{tpe_asha.started} started); share {_show(share)}, any epoch {_show(share_any)}"
            )
    return {
        "search_budget_share": median_share(strict),
        "search_budget_share_any_epoch": median_share(lenient),
        "search_random_best": median(bests["random"]),
        "search_tpe_asha_best": median(bests["tpe"]),
        "search_budget_trial_epochs": plan.search_budget,
        "search_seeds": plan.search_seeds,
    }


def _show(share: float | None) -> str:
    return "not reached" if share is None else f"{share:.2f}"
