"""Every trainable family learns: after a fixed seeded budget on the healthy train slices of a small synthetic
cohort, its val pixel AUROC beats the same family untrained (same seed, same hyperparameters, no step taken) by
a margin chosen from measured runs.

Parametrised over ``searchable_family_names()``, so a new family is tested without new code: it runs under
``DEFAULT`` (its own defaults) until its own measured entry joins ``BUDGETS``. Training is the project's own
pass: ``trainables.epoch.train_epoch`` (the Ray loop's and the reproduction's), fed as the Ray loop feeds one
worker (``ShardBatches`` + ``slice_loader``), with ``Family.set_epoch`` before each epoch; val is scored by
``trainables.metrics.evaluate``, the study's own metric code (``val_pixel_auroc``: every val slice, the
held-out healthy subject pooled with the lesion subjects, pixels inside the brain).

The cohort is the synthetic one ``study.data`` makes for 8 healthy and 8 lesion subjects (seed 0, equal mix: two
cases per lesion appearance, so val holds one of each: bright, dark, iso, multifocal), in the same folder and
slice cache, so a session that also runs tests/integration/test_default_study.py builds them once. With dark and
iso lesions in val an untrained net is no blank: its residual is about |standardised intensity|, already good
on bright and dark lesions (pixel AUROC about 0.9 and 0.97 there) and below chance on iso ones, pooled about 0.5;
what training buys shows mostly on iso and multifocal lesions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from trainables.data.cache import SplitConfig, prepare_slice_cache, read_meta
from trainables.data.dataset import TRAIN_FIELDS, ShardBatches, SliceDataset, slice_loader
from trainables.data.lesions import APPEARANCES
from trainables.data.preprocess import PreprocessConfig
from trainables.data.synthetic import ensure_cohort
from trainables.epoch import train_epoch
from trainables.families import create_family, searchable_family_names
from trainables.metrics import evaluate

HEALTHY, LESION = 8, 8  # 6 healthy train subjects (342 slices), val: 1 healthy + 1 lesion case per appearance
BATCH = 64  # both papers' batch: 5 steps an epoch here
SEED = 0  # the suite trains one seed (caae three); the margins below come from seeds 0-4
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Budget:
    epochs: int
    margin: float  # required val pixel AUROC gain over the same family untrained (mean over ``seeds``)
    params: dict[str, Any] = field(default_factory=dict)  # departures from the paper defaults the budget forces
    seeds: tuple[int, ...] = (SEED,)  # several where one seed's gain is too noisy to assert on


# What the CPU budget forces, per family (everything else is the paper default): the learning rate, raised
# because these budgets are 30-60 steps where the papers train hundreds of epochs; the AAEs' 20 critic steps
# per auto-encoder step cut to WGAN-GP's own 5, and their critic warm-up (200 critic steps per batch for 20/300
# of the run, at least one epoch: here one epoch of 12, about 10 s) left out; the DAE's U-Net at 32 channels
# instead of 64 (about 4x cheaper).
# Measured with ``train_and_score``'s loop (issue 24), seeds 0-4, one torch thread, on the 2-core machine with other
# work beside it: the gain in val pixel AUROC (trained - untrained) per seed. Each margin keeps about half of
# the smallest gain, rounded down: the suite runs seed 0, and another CPU or thread count behaves like another seed.
# (Two threads were not measured for this file: the run was cut for time. test_ddp_equivalence and test_dae
# measured both and saw no change beyond float rounding.)
BUDGETS: dict[str, Budget] = {
    # 0.134 0.185 0.143 0.217 0.189 (untrained 0.482-0.528). At lr 2e-4: gain 0.059 (seed 0, earlier)
    "vae": Budget(epochs=10, margin=0.065, params={"lr": 1e-3}),
    # 0.189 0.257 0.116 0.230 0.201
    "ae": Budget(epochs=10, margin=0.055, params={"lr": 1e-3}),
    # 0.214 0.276 0.129 0.172 0.176. Earlier, at lr 1e-3 (8 epochs) the adversarial families swung from seed to
    # seed: aae gains 0.193 / 0.118 / 0.091, caae 0.098 / 0.018 / 0.119; at lr 2e-4 and 8 epochs aae 0.198 / 0.110 /
    # 0.011
    "aae": Budget(epochs=12, margin=0.06, params={"lr": 2e-4, "critic_steps": 5, "warmup_share": 0.0}),
    # 0.190 0.187 0.114 -0.028 0.080: seed 3 does not learn in this budget, so no one seed can be asserted on.
    # The mean over seeds 0-2 (0.164) is asserted; the worst mean of any three of the five seeds is 0.055.
    "caae": Budget(
        epochs=12, margin=0.025, params={"lr": 2e-4, "critic_steps": 5, "warmup_share": 0.0}, seeds=(0, 1, 2)
    ),
    # the paper's settings: 0.054 0.088 0.143 0.097 0.063 (untrained 0.504 for every seed)
    "lran": Budget(epochs=6, margin=0.025),
    # 0.278 0.228 0.125 0.239 0.237. At the authors' lr 1e-4 (3 epochs, seed 0): gain 0.048 at 32 channels
    "dae": Budget(epochs=3, margin=0.06, params={"lr": 1e-3, "channels": 32}),
}
# A family not measured yet runs its own defaults and must clear the smallest margin above; measure it over
# five seeds and give it its own entry.
DEFAULT = Budget(epochs=5, margin=min(b.margin for b in BUDGETS.values()))


def _budget(name: str) -> Budget:
    return BUDGETS.get(name, DEFAULT)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as the study's CPU workers run (and the measurements were taken)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def learn_cache(data_root: Path) -> Path:
    """The study's synthetic cohort of 8 healthy and 8 lesion subjects and its default 32x32 slice cache."""
    cohort = ensure_cohort(data_root / f"synthetic-h{HEALTHY}-l{LESION}-s0", HEALTHY, LESION, seed=0)
    return prepare_slice_cache(
        cohort.healthy_dir, cohort.lesion_dir, data_root / "cache", PreprocessConfig(), SplitConfig()
    )


def _val_metrics(family, nets, cache: Path) -> dict[str, float]:
    dataset = SliceDataset(cache, "val")
    return evaluate(family, nets, slice_loader(dataset, ShardBatches(len(dataset), 256)), CPU)


def train_and_score(name: str, budget: Budget, cache: Path, seed: int) -> tuple[dict, dict]:
    """Val metrics of family ``name`` untrained and after ``budget``'s epochs, both from seed ``seed``."""
    torch.manual_seed(seed)  # as the training loop does before building the nets
    family = create_family(name, budget.params)
    nets = family.build(read_meta(cache)["preprocess"]["image_size"])
    opts = family.optimizers(nets)
    untrained = _val_metrics(family, nets, cache)
    dataset = SliceDataset(cache, "train", fields=TRAIN_FIELDS)
    batches = ShardBatches(len(dataset), BATCH, shuffle=True, seed=seed, drop_last=True)
    loader = slice_loader(dataset, batches)
    for epoch in range(budget.epochs):
        batches.set_epoch(epoch)
        family.set_epoch(epoch, budget.epochs)
        train_epoch(family, nets, opts, loader, CPU, epoch)
    return untrained, _val_metrics(family, nets, cache)


def test_val_holds_every_lesion_appearance(learn_cache: Path) -> None:
    val = SliceDataset(learn_cache, "val")
    present = {val.appearances[code - 1] for code in val.subject_appearance if code > 0}
    assert present == set(APPEARANCES)


@pytest.mark.parametrize("name", searchable_family_names())
def test_family_learns(name: str, learn_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    budget = _budget(name)
    started = time.perf_counter()
    gains = []
    for seed in budget.seeds:
        untrained, trained = train_and_score(name, budget, learn_cache, seed)
        gains.append(trained["pixel_auroc"] - untrained["pixel_auroc"])
    gain = sum(gains) / len(gains)
    with capsys.disabled():
        print(f"\n{name}: val pixel AUROC gain {gain:.4f} after {budget.epochs} epochs (seeds {budget.seeds}: "
              f"{', '.join(f'{g:.4f}' for g in gains)}; margin {budget.margin}), "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    assert gain >= budget.margin, (name, gains)
