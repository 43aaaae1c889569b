"""Bench section `train`: training throughput of each family, the study's per-worker loop inside Ray
Train against a plain PyTorch loop over the same model, data and batch size in this process.

Ray side: a 1-worker TorchTrainer running `trainables.train_loop.train_loop_per_worker` with a TrialSpec;
its per-epoch reports (`train_slices`, `time_train_s`, `time_eval_s`) reach us through a Ray Train callback
that appends rank 0's metrics to a file (the callback runs in Ray Train's controller, not here).
Plain side: `family.train_step` over a DataLoader of `SliceDataset(cache, "train")`, shuffled, same batch.
Both use the same torch thread count; the first epoch of each is warm-up and not counted, and the plain
loop's measured epochs are split before and after the Ray run (the shared machine's load drifts).

(A benchmark's baseline has to live outside the code it measures, so this module of `study/` runs a
PyTorch loop itself.)
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from study.bench.common import BenchPlan, say, torch_threads
from study.bench.report import median, rates, ratio, steady
from trainables.families import searchable_family_names

IMAGE_SIZE = 32


class ReportsToFile(UserCallback):
    """Ray Train callback: append rank 0's metrics of every report to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(metrics[0], default=str) + "\n")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PlainLoop:
    """The plain loop: the study's batch reader -> family.train_step, nothing else; one call of `epoch` is one
    pass. Same data path as the training loop (whole batches from the memory maps), so the ratio is what Ray
    Train and the loop's bookkeeping cost."""

    def __init__(self, family_name: str, cache: Path, seed: int = 0) -> None:
        import torch

        from trainables.data.dataset import TRAIN_FIELDS, ShardBatches, SliceDataset, slice_loader
        from trainables.families import create_family
        from trainables.train_loop import TrialSpec

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(seed)
        self.family = create_family(family_name)
        self.nets = self.family.build(IMAGE_SIZE).to(self.device)
        self.opts = self.family.optimizers(self.nets)
        dataset = SliceDataset(cache, "train", fields=TRAIN_FIELDS)
        self.batches = ShardBatches(len(dataset), TrialSpec.batch_size, shuffle=True, seed=seed, drop_last=True)
        self.loader, self.passes = slice_loader(dataset, self.batches), 0

    def epoch(self) -> tuple[int, float]:
        """(slices, seconds) of one pass over the train split."""
        slices, started = 0, time.perf_counter()
        self.batches.set_epoch(self.passes)
        self.passes += 1
        for batch in self.loader:
            images = batch["image"].to(self.device, non_blocking=True)
            self.family.train_step(self.nets, self.opts, images)
            slices += len(images)
        _sync(self.device)
        return slices, time.perf_counter() - started


def ray_epochs(family_name: str, cache: Path, epochs: int, threads: int, storage: Path) -> list[dict[str, Any]]:
    """Per-epoch reports of a 1-worker Ray Train run of the study's training loop (final record left out)."""
    import torch
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainables.objective import Objective
    from trainables.train_loop import TrialSpec, train_loop_per_worker

    gpu = torch.cuda.is_available()
    spec = TrialSpec(family=family_name, hparams={}, cache_dir=str(cache), image_size=IMAGE_SIZE, epochs=epochs,
                     objective=Objective("val_pixel_auroc"), threads=threads)  # fmt: skip
    reports = storage / f"{family_name}.jsonl"
    resources = {"CPU": 1, **({"GPU": 1} if gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=1, use_gpu=gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=f"bench-{family_name}",
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=[ReportsToFile(reports)],
        ),
    )
    trainer.fit()
    rows = [json.loads(line) for line in reports.read_text().splitlines() if line.strip()]
    return [r for r in rows if "time_train_s" in r]


def family_figures(plain: list[tuple[int, float]], ray: list[dict[str, Any]]) -> dict[str, float]:
    """Slices/s of both loops (`plain`: measured epochs only; `ray`: all, the first dropped as warm-up), their
    ratio, and the share of a Ray epoch spent evaluating."""
    plain_rate = median(rates([n for n, _ in plain], [s for _, s in plain]))
    ray_rate = median(steady(rates([r["train_slices"] for r in ray], [r["time_train_s"] for r in ray])))
    eval_share = median(
        steady([ratio(r.get("time_eval_s"), r["time_train_s"] + r.get("time_eval_s", 0.0)) for r in ray])
    )
    return {"plain": plain_rate, "ray": ray_rate, "ratio": ratio(ray_rate, plain_rate), "eval_share": eval_share}


def run(plan: BenchPlan, cache: Path) -> dict[str, Any]:
    """Section figures: train_ratio_<family>, plus each loop's slices/s and the eval share of an epoch."""
    from study.bench.common import local_ray

    families = list(plan.families or searchable_family_names())
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp, local_ray(), torch_threads(plan.threads):
        for name in families:
            # plain epochs on both sides of the Ray run, so a change of load on the shared machine hits both
            loop = PlainLoop(name, cache)
            before = [loop.epoch() for _ in range(plan.train_epochs)]
            ray = ray_epochs(name, cache, plan.train_epochs, plan.threads, Path(tmp))
            plain = steady(before) + [loop.epoch() for _ in range(plan.train_epochs - 1)]
            found = family_figures(plain, ray)
            say(
                f"train {name}: plain {found['plain']:.1f} slices/s, Ray Train {found['ray']:.1f} slices/s, "
                f"ratio {found['ratio']:.3f}; val eval {100 * found['eval_share']:.0f}% of a Ray epoch"
            )
            figures[f"train_ratio_{name}"] = found["ratio"]
            figures[f"train_plain_slices_per_s_{name}"] = found["plain"]
            figures[f"train_ray_slices_per_s_{name}"] = found["ray"]
            figures[f"eval_share_{name}"] = found["eval_share"]
    return figures
