"""The per-worker training loop run by Ray Train (DDP) for every detector family.

Each epoch: train on this worker's shard of the healthy train slices (``trainables.epoch``, which averages
the loss terms over workers), score val (each rank its shard into fixed histograms, summed over the ranks by
one all-reduce: ``trainables.stream_metrics``), keep the best epoch by the val objective, write a checkpoint
(rank 0) and report. After the last epoch, rank 0 scores the test
split once with the chosen weights and reports the final record. Test data never influences a choice.

Performance structure (issue 15 / 12.8): batches are read whole from the cache's memory maps (images
only for training); loss terms stay on the device and are read once per epoch (``trainables.epoch``);
on CUDA, training runs under bf16 autocast (``precision``), batches are pinned and read ahead by loader
workers.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainables.checkpoint import (
    BestRecord,
    TrainingProgress,
    load_progress,
    model_record,
    save_checkpoint,
    state_dicts,
)
from trainables.data.dataset import EVAL_BATCH, TRAIN_FIELDS, ShardBatches, SliceDataset, slice_loader
from trainables.epoch import EpochLosses, train_epoch, world_size
from trainables.families import Family, create_family
from trainables.families.base import unwrap
from trainables.objective import Objective
from trainables.system_metrics import NodeSampler
from trainables.val_maps import RESULT_KEY, fixed_val_slices, val_maps_png

GPU_LOADER_WORKERS = 2  # read-ahead processes per Train worker on CUDA (the CPU path reads in-process)


@dataclass(frozen=True)
class TrialSpec:
    """Everything a Train worker needs to train one trial. The study builds one template on the driver
    (study.tuning.trial_setup); each trial sets its family, hyperparameters and sampled loop keys with
    ``dataclasses.replace`` (study.trial.run_trial) and hands the spec whole to ``train_loop_per_worker``.
    Frozen: a worker keeps what it resolves (its node's cache folder) in local variables."""

    family: str  # registered family name
    hparams: dict[str, Any]  # the family's hyperparameters (unknown keys are an error)
    cache_dir: str  # the driver's slice cache entry (absolute path; where node_data is set, it gives each node's)
    image_size: int  # slice side in the cache
    epochs: int  # epochs to train
    objective: Objective  # the val measure that chooses the checkpoint, and which way is better
    batch_size: int = 64  # global batch size, split evenly over the workers; 64 in both papers
    seed: int = 0  # torch seed; rank r draws with seed + r (DDP broadcasts rank 0's initial weights)
    sync_batchnorm: bool = False  # convert BatchNorm to SyncBatchNorm under DDP (statistics over the global batch)
    threads: int = 1  # torch intra-op threads per worker
    precision: str = "auto"  # "bf16" (autocast), "fp32", or "auto": bf16 on CUDA, fp32 otherwise
    preprocess: dict[str, Any] = field(default_factory=dict)  # recorded in model.pt for later inference
    node_data: Callable[[], str] | None = None  # returns this node's cache folder (stages it on other nodes)
    trial_entered_at: float | None = None  # wall clock when the Tune trial's function began (study.bench splits)


def train_loop_per_worker(config: dict[str, TrialSpec]) -> None:
    """Ray Train entry point; ``config`` is ``{"spec": TrialSpec}``.

    Why a one-key dict: Ray 2.60's TorchTrainer types ``train_loop_config`` as a dict and passes it to this
    function as its one argument (its only check: a falsy config becomes ``{}``). The spec travels in it whole,
    pickled with its ``node_data`` callable, rather than unpacked into fields and rebuilt here.
    """
    entered = time.time()  # study.bench splits a trial's start cost at this point (Ray's part / this loop's part)
    spec = config["spec"]
    torch.set_num_threads(spec.threads)
    rank = ray.train.get_context().get_world_rank()
    # a seed per rank: prior samples, noise and interpolates differ between workers (DDP broadcasts rank 0's
    # initial weights, so the nets still start equal); data order comes from the sampler's shared seed
    torch.manual_seed(spec.seed + rank)
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives (val's all-reduce and slice gather) use the current device
    family = create_family(spec.family, spec.hparams)
    family.device_terms = True  # loss terms stay on the device; train_epoch reads them once per epoch
    nets = family.build(spec.image_size).to(device)
    opts = family.optimizers(nets)
    progress = _restore(ray.train.get_checkpoint(), nets, opts)
    cache_dir = Path(spec.node_data() if spec.node_data is not None else spec.cache_dir)  # this node's copy
    nets = _wrap_ddp(nets, device, spec.sync_batchnorm)
    train_loader, sampler = _train_loader(spec, cache_dir, device)
    val_loader = _eval_loader(cache_dir, "val", device, shard=True)  # every rank scores its share of val
    autocast = _autocast(spec.precision, device)
    node_metrics = NodeSampler() if rank == 0 else None  # rank 0's report is the one Tune keeps
    shown = fixed_val_slices(cache_dir) if rank == 0 else None  # the same val slices' maps every epoch
    for epoch in range(progress.epoch, spec.epochs):
        # Each epoch's random draws come from (seed, rank, epoch), not from where the stream stood: an epoch trained
        # after a resume from a checkpoint draws what it would have drawn without the interruption.
        torch.manual_seed(epoch_seed(spec.seed, rank, epoch))
        sampler.set_epoch(epoch)
        family.set_epoch(epoch, spec.epochs)
        started = time.perf_counter()
        losses = _loss_metrics(train_epoch(family, nets, opts, train_loader, device, epoch, autocast), epoch)
        train_s = time.perf_counter() - started
        progress.epoch, progress.train_seconds = epoch + 1, progress.train_seconds + train_s
        metrics: dict[str, Any] = {"epoch": epoch + 1, **losses, "time_train_s": train_s}
        metrics["train_seconds"] = progress.train_seconds
        if "first_step_at" in losses:
            metrics["loop_start_at"] = entered
            if spec.trial_entered_at is not None:
                metrics["trial_entered_at"] = spec.trial_entered_at
        scored = _validate(family, nets, val_loader, device)  # None on ranks other than 0
        if scored is not None:
            val = {f"val_{k}": v for k, v in scored.items()}
            metrics.update(val, time_eval_s=time.perf_counter() - started - train_s)
            metrics[RESULT_KEY] = val_maps_png(family, _plain(nets), shown, device)  # ~0.1 s; MLflow's image grid
            if spec.objective.better(val[spec.objective.metric], progress.best.score):
                progress.best = BestRecord(epoch=epoch + 1, score=val[spec.objective.metric], metrics=val)
                progress.best_weights = state_dicts(nets)
        if node_metrics is not None:
            metrics.update(node_metrics.take())
        _report(metrics, spec, family, nets, opts, progress, rank)
    if node_metrics is not None:
        node_metrics.close()
    _finish(spec, cache_dir, family, nets, opts, progress, rank, device)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """The torch seed of one rank's epoch: distinct per rank (prior samples, noise and interpolates differ between
    workers) and per epoch, and fixed by them alone."""
    return seed + rank + 1_000_003 * (epoch + 1)


def _autocast(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """The context each training step runs in: bf16 autocast (no gradient scaler needed: bf16 has fp32's
    exponent range) for ``bf16``, and for ``auto`` on CUDA; nothing for ``fp32``. Scoring always runs in fp32:
    bf16's 8-bit mantissa would tie many residuals and move the pixel AUROCs."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _loss_metrics(losses: EpochLosses, epoch: int) -> dict[str, Any]:
    """An epoch's training metrics: ``train_loss``, each term as ``loss_<term>``, ``workers``, ``train_slices``
    and, in the first epoch only, ``first_step_at`` (study.bench's trial start cost; Tune forwards it, MLflow
    skips it)."""
    out: dict[str, Any] = {"workers": losses.workers}
    if epoch == 0 and losses.first_step_at is not None:
        out["first_step_at"] = losses.first_step_at
    out.update({("train_loss" if k == "loss" else f"loss_{k}"): v for k, v in losses.means.items()})
    return out | {"train_slices": losses.slices}


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
        if figures is not None and any(figures.iterdir()):
            shutil.copytree(figures, Path(tmp) / "figures")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _finish(
    spec: TrialSpec, cache_dir: Path, family: Family, nets: nn.ModuleDict, opts: dict, progress: TrainingProgress,
    rank: int, device: torch.device,
) -> None:  # fmt: skip
    """The final report: test scored once (rank 0) with the chosen weights; rank 0 attaches its figures."""
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp)
        if progress.final is None:  # a trial restarted after its test was scored reports that record again
            progress.final = _final_record(cache_dir, family, nets, progress, rank, device, figures)
        if rank == 0 and not any(figures.iterdir()):  # that restart, or a failed drawing: draw (again)
            weights = progress.best_weights or state_dicts(nets)
            _draw_figures(cache_dir, family, _chosen(nets, weights), progress.best, figures)
        _report(progress.final, spec, family, nets, opts, progress, rank, figures)


def _final_record(
    cache_dir: Path, family: Family, nets: nn.ModuleDict, progress: TrainingProgress, rank: int,
    device: torch.device, figures: Path,
) -> dict[str, Any]:  # fmt: skip
    """The trial's last report: the chosen epoch's val_*, and (rank 0) test_* scored once with its weights.

    Rank 0 draws the test figures into `figures` from the same pass over the test split.
    """
    best = progress.best
    final: dict[str, Any] = {"final": True, "best_epoch": best.epoch, "train_seconds": progress.train_seconds}
    final.update(best.metrics)
    if rank == 0:
        test = _draw_figures(cache_dir, family, _chosen(nets, progress.best_weights or {}), best, figures)
        final.update({f"test_{k}": v for k, v in test.items()})
    return final


def _draw_figures(
    cache_dir: Path, family: Family, chosen: nn.ModuleDict, best: BestRecord, out_dir: Path
) -> dict[str, float]:
    """Score the test split once with the chosen detector; draw its figures (ROC, examples, histograms).

    A plotting failure is printed, not raised: the metrics are computed and a trained trial is not lost to it.
    """
    from trainables.figures import collect, render  # matplotlib takes ~1 s to import: only the final report pays

    threshold = best.metrics.get("val_best_threshold")
    device = ray.train.torch.get_device()
    record = collect(family, chosen, _eval_loader(cache_dir, "test", device), device, threshold=threshold, stream=True)
    test = record.streamed.compute()  # as val's: the exact accumulator's sorts only draw the curves
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
    if world_size() == 1:
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


def _train_loader(spec: TrialSpec, cache_dir: Path, device: torch.device) -> tuple[Iterable, ShardBatches]:
    """This worker's shard of the healthy train slices, reshuffled every epoch, images only, read a batch at once."""
    context = ray.train.get_context()
    dataset = SliceDataset(cache_dir, "train", fields=TRAIN_FIELDS)
    world = context.get_world_size()
    batches = ShardBatches(len(dataset), max(1, spec.batch_size // world), shuffle=True, seed=spec.seed,
                           rank=context.get_world_rank(), world=world, drop_last=True)  # fmt: skip
    return slice_loader(dataset, batches, **_loader_options(device)), batches


def _eval_loader(cache_dir: Path, split: str, device: torch.device, shard: bool = False) -> Iterable:
    """A split in order; with ``shard``, this rank's positions only (rank, rank + world, ...)."""
    dataset = SliceDataset(cache_dir, split)
    where = {"rank": _rank(), "world": world_size()} if shard else {}
    return slice_loader(dataset, ShardBatches(len(dataset), EVAL_BATCH, **where), **_loader_options(device))


def _loader_options(device: torch.device) -> dict[str, Any]:
    """Pinned batches and read-ahead workers on CUDA; on CPUs the batch is read where it is used."""
    return {"pin_memory": True, "num_workers": GPU_LOADER_WORKERS} if device.type == "cuda" else {}


def _rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def _validate(family: Family, nets: nn.ModuleDict, loader: Iterable, device: torch.device) -> dict[str, float] | None:
    """Score this rank's shard of val with the plain nets into constant-memory histograms on the device
    (``trainables.stream_metrics``); the ranks sum them with one all-reduce (and gather the few slice scores),
    rank 0 computes the metrics, the other ranks return None. Pooled values: the result does not depend on
    the sharding. No rank idles while another scores; no pixel leaves its rank."""
    from trainables.metrics import appearances_of  # lazy: keeps scikit-learn off worker start
    from trainables.stream_metrics import StreamingMetrics

    metrics, plain = StreamingMetrics(appearances_of(loader), device=device), _plain(nets)
    for batch in loader:
        scores = family.score(plain, batch["image"].to(device, non_blocking=True))
        metrics.update_batch(scores, batch)
    return metrics.compute() if metrics.all_reduce() else None
