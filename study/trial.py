"""One Tune trial: a Ray Train TorchTrainer (DDP) of the sampled detector (Ray Train V2 API)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from trainables.families import family_hparams
from trainables.train_loop import spec_from, train_loop_per_worker

# Sampled keys that configure the training loop rather than the family.
LOOP_KEYS = ("batch_size",)
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a study shares; sent once to the trial processes by tune.with_parameters."""

    study: str  # study name, used to name each Train run
    storage_path: str  # absolute folder for Ray Train's checkpoints
    cache_dir: str  # slice cache entry prepared by the driver
    image_size: int  # slice side in the cache
    preprocess: dict[str, Any]  # preprocessing settings, recorded in each model.pt
    epochs: int  # epochs per trial
    objective: str  # val metric that chooses each trial's checkpoint (the first objective)
    objective_mode: str  # "max" or "min"
    seed: int  # training seed
    workers: int  # DDP workers per trial
    cpus_per_worker: float  # logical CPUs per worker
    gpus_per_worker: float  # GPUs per worker (0: CPU with gloo)
    threads: int  # torch threads per worker
    sync_batchnorm: bool  # SyncBatchNorm under DDP (GPU workers)
    max_failures: int  # worker-group restarts from the last checkpoint
    node_data: Callable[[], str] | None = None  # gives each worker its node's slice cache (study.node_data)


def split_params(config: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(family, family hyperparameters, loop settings) from a trial's sampled config."""
    family = config["family"]
    known = family_hparams(family)
    hparams = {k: v for k, v in config.items() if k in known}
    loop = {k: config[k] for k in LOOP_KEYS if k in config}
    unused = sorted(set(config) - set(hparams) - set(loop) - {"family"})
    if unused:
        raise ValueError(f"search space of '{family}' sampled keys the family does not have: {unused}")
    return family, hparams, loop


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable: build the TorchTrainer for this trial and fit it."""
    family, hparams, loop = split_params(config)
    spec = spec_from(
        {
            "family": family,
            "hparams": hparams,
            "cache_dir": setup.cache_dir,
            "image_size": setup.image_size,
            "epochs": setup.epochs,
            "batch_size": loop.get("batch_size", DEFAULT_BATCH_SIZE),
            "objective": setup.objective,
            "objective_mode": setup.objective_mode,
            "seed": setup.seed,
            "threads": setup.threads,
            "sync_batchnorm": setup.sync_batchnorm,
            "preprocess": setup.preprocess,
            "node_data": setup.node_data,
        }
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec,
        torch_config=TorchConfig(backend="nccl" if setup.gpus_per_worker > 0 else "gloo"),
        scaling_config=_scaling(setup),
        run_config=RunConfig(
            # The run name is stable per trial: a restarted trial finds its own checkpoints.
            name=f"{setup.study}-{tune.get_context().get_trial_id()}",
            storage_path=setup.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=1),  # model.pt inside carries the best weights
            failure_config=FailureConfig(max_failures=setup.max_failures),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _scaling(setup: TrialSetup) -> ScalingConfig:
    resources = {"CPU": setup.cpus_per_worker}
    if setup.gpus_per_worker > 0:
        resources["GPU"] = setup.gpus_per_worker
    return ScalingConfig(num_workers=setup.workers, use_gpu=setup.gpus_per_worker > 0, resources_per_worker=resources)
