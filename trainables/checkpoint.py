"""Checkpoints of a trial: the resumable training state and the self-contained chosen model.

A checkpoint directory holds two files:
- ``state.pt``: everything needed to continue training after a worker failure (last epoch's nets and
  optimisers, the best-so-far record);
- ``model.pt``: the detector chosen on val so far, usable alone: family, hyperparameters, image size,
  preprocessing settings, weights and the val metrics that chose it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.families import Family, create_family
from trainables.families.base import unwrap

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"


@dataclass
class BestRecord:
    epoch: int = -1  # epoch whose weights are in model.pt (-1: none yet)
    score: float = float("nan")  # objective value at that epoch
    metrics: dict[str, float] = field(default_factory=dict)  # its val_* metrics


def state_dicts(nets: nn.ModuleDict) -> dict[str, dict[str, torch.Tensor]]:
    """Plain (unwrapped, CPU) state dicts of each net, safe to keep while training continues."""
    return {key: _cpu_copy(unwrap(net).state_dict()) for key, net in nets.items()}


def _cpu_copy(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in weights.items()}


@dataclass
class TrainingProgress:
    epoch: int = 0  # epochs completed
    best: BestRecord = field(default_factory=BestRecord)  # the epoch chosen on val so far
    best_weights: dict | None = None  # its weights (CPU state dicts); None before the first epoch
    train_seconds: float = 0.0  # seconds spent in training epochs, summed over worker-group restarts
    final: dict[str, Any] | None = None  # the final record (chosen val_*, test_*) once test has been scored


def save_checkpoint(
    directory: Path, *, nets: nn.ModuleDict, opts: dict, progress: TrainingProgress, model: dict[str, Any]
) -> None:
    """Write state.pt (resumable) and model.pt (the chosen detector) into `directory`."""
    state = {
        "epoch": progress.epoch,
        "nets": state_dicts(nets),
        "opts": {k: o.state_dict() for k, o in opts.items()},
        "best": asdict(progress.best),
        "train_seconds": progress.train_seconds,
        "final": progress.final,
    }
    _atomic_save(state, directory / STATE_FILE)
    _atomic_save(model, directory / MODEL_FILE)


def load_progress(directory: Path, nets: nn.ModuleDict, opts: dict) -> TrainingProgress:
    """Load state.pt into `nets` and `opts` (in place) and return the progress it records."""
    directory = Path(directory)
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    for key, weights in state["nets"].items():
        nets[key].load_state_dict(weights)
    for key, opt_state in state["opts"].items():
        opts[key].load_state_dict(opt_state)
    best_weights = torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=False)["nets"]
    best = BestRecord(**state["best"])
    return TrainingProgress(state["epoch"], best, best_weights, state["train_seconds"], state.get("final"))


def model_record(family: Family, image_size: int, preprocess: dict, weights: dict, best: BestRecord) -> dict[str, Any]:
    """The content of model.pt: a detector that can be loaded with no other file."""
    return {
        "family": family.name,
        "hparams": asdict(family.hp),
        "image_size": image_size,
        "preprocess": preprocess,
        "nets": weights,
        "epoch": best.epoch,
        "val_metrics": best.metrics,
    }


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Family, nn.ModuleDict, dict[str, Any]]:
    """Load a chosen detector from a model.pt file or a checkpoint directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained detector here (expected a model.pt or a checkpoint folder)")
    record = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only: no code runs
    family = create_family(record["family"], record["hparams"])
    nets = family.build(record["image_size"])
    for key, weights in record["nets"].items():
        nets[key].load_state_dict(weights)
    return family, nets.to(device).eval(), record


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
