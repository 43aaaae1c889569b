"""Untrained baselines through the same evaluation as every trial (the `threshold` row of each study)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from trainables.checkpoint import BestRecord, model_record
from trainables.data.cache import read_meta
from trainables.data.dataset import EVAL_BATCH, SliceDataset
from trainables.families import create_family
from trainables.metrics import evaluate


def evaluate_untrained(family_name: str, cache_dir: Path, params: dict[str, Any] | None = None) -> dict[str, float]:
    """val_* and test_* of a family without learned weights; `dice` on test uses the threshold chosen on val."""
    family = create_family(family_name, params)
    if family.trainable:
        raise ValueError(f"family '{family_name}' must be trained; only untrained families are baselines")
    nets = family.build(0)
    device = torch.device("cpu")

    def loader(split: str) -> DataLoader:
        return DataLoader(SliceDataset(cache_dir, split), batch_size=EVAL_BATCH, shuffle=False)

    val = evaluate(family, nets, loader("val"), device)
    test = evaluate(family, nets, loader("test"), device, threshold=val["best_threshold"])
    return {**{f"val_{k}": v for k, v in val.items()}, **{f"test_{k}": v for k, v in test.items()}}


def write_untrained_model(
    family_name: str, cache_dir: Path, metrics: dict[str, float], path: Path, params: dict[str, Any] | None = None
) -> Path:
    """model.pt of an untrained family, as a trial writes one: the cache's preprocessing and the family's val_*
    metrics (``val_best_threshold`` sets its dice threshold), so it is scored and logged like a trained detector."""
    family = create_family(family_name, params)
    preprocess = read_meta(cache_dir)["preprocess"]
    val = {k: v for k, v in metrics.items() if k.startswith("val_")}
    best = BestRecord(epoch=0, score=float("nan"), metrics=val)
    torch.save(model_record(family, preprocess["image_size"], preprocess, {}, best), path)
    return path
