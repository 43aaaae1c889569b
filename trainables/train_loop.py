"""The per-worker training loop run by Ray Train (DDP) for every detector family.

Each epoch: train on this worker's shard of the healthy train slices, average the loss terms over
workers, evaluate on the full val split (rank 0), keep the best epoch by the val objective, write a
checkpoint (rank 0) and report. After the last epoch, rank 0 scores the test split once with the
chosen weights and reports the final record. Test data never influences a choice.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from trainables.checkpoint import (
    BestRecord,
    TrainingProgress,
    load_progress,
    model_record,
    save_checkpoint,
    state_dicts,
)
from trainables.data.dataset import SliceDataset
from trainables.families import Family, create_family
from trainables.families.base import unwrap


class NonFiniteLossError(RuntimeError):
    """Training diverged: a loss term became NaN or inf."""


@dataclass
class TrialSpec:
    family: str  # registered family name
    hparams: dict[str, Any]  # the family's hyperparameters (unknown keys are an error)
    cache_dir: str  # slice cache entry prepared by the driver (absolute path, same on every node)
    image_size: int  # slice side in the cache
    epochs: int  # epochs to train
    batch_size: int  # global batch size, split evenly over the workers
    objective: str  # val_* metric that chooses the checkpoint
    objective_mode: str = "max"  # "max" or "min"
    seed: int = 0  # torch seed; rank r draws with seed + r (DDP broadcasts rank 0's initial weights)
    sync_batchnorm: bool = False  # convert BatchNorm to SyncBatchNorm under DDP (statistics over the global batch)
    threads: int = 1  # torch intra-op threads per worker
    preprocess: dict[str, Any] = field(default_factory=dict)  # recorded in model.pt for later inference
    node_data: Callable[[], str] | None = None  # returns this node's cache folder (stages it on other nodes)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: `config` is a TrialSpec as a dict."""
    spec = TrialSpec(**config)
    torch.set_num_threads(spec.threads)
    rank = ray.train.get_context().get_world_rank()
    # a seed per rank: prior samples, noise and interpolates differ between workers (DDP broadcasts rank 0's
    # initial weights, so the nets still start equal); data order comes from the sampler's shared seed
    torch.manual_seed(spec.seed + rank)
    device = ray.train.torch.get_device()
    family = create_family(spec.family, spec.hparams)
    nets = family.build(spec.image_size).to(device)
    opts = family.optimizers(nets)
    progress = _restore(ray.train.get_checkpoint(), nets, opts)
    if spec.node_data is not None:
        spec.cache_dir = spec.node_data()
    nets = _wrap_ddp(nets, device, spec.sync_batchnorm)
    train_loader, sampler = _train_loader(spec)
    val_loader = _eval_loader(spec, "val") if rank == 0 else None
    for epoch in range(progress.epoch, spec.epochs):
        sampler.set_epoch(epoch)
        family.set_epoch(epoch)
        started = time.perf_counter()
        losses = _train_epoch(family, nets, opts, train_loader, device, epoch)
        train_s = time.perf_counter() - started
        progress.epoch, progress.train_seconds = epoch + 1, progress.train_seconds + train_s
        metrics: dict[str, Any] = {"epoch": epoch + 1, **losses, "time_train_s": train_s}
        metrics["train_seconds"] = progress.train_seconds
        if rank == 0:
            from trainables.metrics import evaluate  # lazy: scikit-learn's import stays off every worker's start

            val = {f"val_{k}": v for k, v in evaluate(family, _plain(nets), val_loader, device).items()}
            metrics.update(val, time_eval_s=time.perf_counter() - started - train_s)
            if _improves(val[spec.objective], progress.best.score, spec.objective_mode):
                progress.best = BestRecord(epoch=epoch + 1, score=val[spec.objective], metrics=val)
                progress.best_weights = state_dicts(nets)
        _report(metrics, spec, family, nets, opts, progress, rank)
    with tempfile.TemporaryDirectory() as figures:
        if progress.final is None:  # a trial restarted after its test was scored reports that record again
            progress.final = _final_record(spec, family, nets, progress, rank, device, Path(figures))
        _report(progress.final, spec, family, nets, opts, progress, rank, Path(figures))


def _train_epoch(
    family: Family, nets: nn.ModuleDict, opts: dict, loader: DataLoader, device: torch.device, epoch: int
) -> dict[str, float]:
    """One pass over this worker's shard; loss terms averaged over all workers' steps.

    Also returns `workers` and `train_slices` (slices trained on by all workers together), which show
    that every DDP worker took its share.
    """
    nets.train()
    sums: dict[str, float] = defaultdict(float)
    first_step_at = None  # wall clock (time.time) of the epoch's first step: study.bench's trial start cost
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        first_step_at = first_step_at or time.time()
        terms = family.train_step(nets, opts, images)
        if not all(math.isfinite(v) for v in terms.values()):
            raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, step {int(sums['steps']) + 1}: {terms}")
        for key, value in terms.items():
            sums[key] += value
        sums["steps"] += 1
        sums["slices"] += len(images)
    totals = _all_reduce_sum(dict(sums), device)
    steps = max(totals.pop("steps", 0.0), 1.0)
    out = {("train_loss" if k == "loss" else f"loss_{k}"): v / steps for k, v in totals.items() if k != "slices"}
    out.update(train_slices=int(totals.get("slices", 0)), workers=_world_size())
    if epoch == 0 and first_step_at is not None:
        out["first_step_at"] = first_step_at  # only in the first epoch's metrics (Tune forwards it; MLflow skips it)
    return out


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum per-worker floats over the DDP group (one small collective per epoch)."""
    if _world_size() == 1:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist(), strict=True))


def _report(
    metrics: dict, spec: TrialSpec, family: Family, nets: nn.ModuleDict, opts: dict, progress: TrainingProgress,
    rank: int, figures: Path | None = None,
) -> None:  # fmt: skip
    """Report; rank 0 attaches a checkpoint (state.pt, model.pt; the final record adds figures/). Every rank reports."""
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        weights = progress.best_weights or state_dicts(nets)
        model = model_record(family, spec.image_size, spec.preprocess, weights, progress.best)
        save_checkpoint(Path(tmp), nets=nets, opts=opts, progress=progress, model=model)
        if metrics.get("final"):
            if figures is not None and not any(figures.iterdir()):  # a restart after the final record: draw again
                _draw_figures(spec, family, _chosen(nets, weights), progress.best, figures)
            if figures is not None and any(figures.iterdir()):
                shutil.copytree(figures, Path(tmp) / "figures")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _final_record(
    spec: TrialSpec, family: Family, nets: nn.ModuleDict, progress: TrainingProgress, rank: int,
    device: torch.device, figures: Path,
) -> dict[str, Any]:  # fmt: skip
    """The trial's last report: the chosen epoch's val_*, and (rank 0) test_* scored once with its weights.

    Rank 0 draws the test figures into `figures` from the same pass over the test split.
    """
    best = progress.best
    final: dict[str, Any] = {"final": True, "best_epoch": best.epoch, "train_seconds": progress.train_seconds}
    final.update(best.metrics)
    if rank == 0:
        test = _draw_figures(spec, family, _chosen(nets, progress.best_weights or {}), best, figures)
        final.update({f"test_{k}": v for k, v in test.items()})
    return final


def _draw_figures(
    spec: TrialSpec, family: Family, chosen: nn.ModuleDict, best: BestRecord, out_dir: Path
) -> dict[str, float]:
    """Score the test split once with the chosen detector; draw its figures (ROC, examples, histograms).

    A plotting failure is printed, not raised: the metrics are computed and a trained trial is not lost to it.
    """
    from trainables.figures import collect, render  # matplotlib takes ~1 s to import: only the final report pays

    threshold = best.metrics.get("val_best_threshold")
    record = collect(family, chosen, _eval_loader(spec, "test"), ray.train.torch.get_device())
    test = record.metrics.compute(threshold)
    try:
        render(record, test, out_dir, "test", threshold)
    except Exception as err:  # matplotlib, fonts, disk: many types, none worth losing a trained trial for
        print(f"figures not written: {type(err).__name__}: {err}", flush=True)
    return test


def _chosen(nets: nn.ModuleDict, weights: dict) -> nn.ModuleDict:
    """The unwrapped nets holding the chosen epoch's weights."""
    chosen = _plain(nets)
    for key, w in weights.items():
        chosen[key].load_state_dict(w)
    return chosen


def _improves(value: float, best: float, mode: str) -> bool:
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    return value > best if mode == "max" else value < best


def _restore(checkpoint: ray.train.Checkpoint | None, nets: nn.ModuleDict, opts: dict) -> TrainingProgress:
    """Continue from the last checkpoint after a worker-group or trial restart; fresh progress otherwise."""
    if checkpoint is None:
        return TrainingProgress()
    with checkpoint.as_directory() as folder:
        return load_progress(Path(folder), nets, opts)


def _wrap_ddp(nets: nn.ModuleDict, device: torch.device, sync_batchnorm: bool = False) -> nn.ModuleDict:
    """Wrap each net with trainable parameters in DDP (one wrapper per separately optimised net).

    ``sync_batchnorm`` converts BatchNorm layers to SyncBatchNorm first (in place: the optimisers keep the
    same parameter objects), so batch statistics are those of the global batch, as on one worker.
    """
    if _world_size() == 1:
        return nets
    if sync_batchnorm:
        for key in list(nets.keys()):
            nets[key] = nn.SyncBatchNorm.convert_sync_batchnorm(nets[key])
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.ModuleDict(
        {k: DistributedDataParallel(n, device_ids=device_ids) if _has_params(n) else n for k, n in nets.items()}
    )


def _has_params(net: nn.Module) -> bool:
    return any(p.requires_grad for p in net.parameters())


def _plain(nets: nn.ModuleDict) -> nn.ModuleDict:
    """The nets without DDP wrappers: rank 0 evaluates alone, so no collective may run."""
    return nn.ModuleDict({k: unwrap(n) for k, n in nets.items()})


def _train_loader(spec: TrialSpec) -> tuple[DataLoader, DistributedSampler]:
    """This worker's shard of the healthy train slices, reshuffled every epoch."""
    context = ray.train.get_context()
    dataset = SliceDataset(Path(spec.cache_dir), "train")
    world = context.get_world_size()
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=context.get_world_rank(), shuffle=True, seed=spec.seed, drop_last=True
    )
    per_worker = max(1, spec.batch_size // world)
    return DataLoader(dataset, batch_size=per_worker, sampler=sampler, drop_last=True), sampler


def _eval_loader(spec: TrialSpec, split: str) -> DataLoader:
    return DataLoader(SliceDataset(Path(spec.cache_dir), split), batch_size=256, shuffle=False)


def spec_from(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a TrialSpec dict on the driver (fails fast on a bad key) and return it as a plain dict."""
    spec = TrialSpec(**config)
    return {f.name: getattr(spec, f.name) for f in fields(spec)}  # shallow: node_data stays a callable
