"""One Tune trial: a Ray Train TorchTrainer (DDP) of the sampled detector (Ray Train V2 API)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2._internal import constants as train_env
from ray.tune.integration.ray_train import TuneReportCallback

from study.cluster.storage import RayStorage
from trainables.families import family_hparams
from trainables.train_loop import TrialSpec, train_loop_per_worker

# Sampled keys that configure the training loop rather than the family: TrialSpec fields of the same name.
LOOP_KEYS = ("batch_size",)


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a study shares; sent once to the trial processes by tune.with_parameters."""

    study: str  # study name, used to name each Train run
    # the training loop's settings per image size (each size's slice cache); run_trial takes the trial's size
    # (the first listed where the study searches none) and sets its family, hparams and loop keys
    specs: dict[int, TrialSpec]
    storage: RayStorage  # where Ray Train keeps each trial's run and checkpoints (below its "train" part)
    workers: int  # DDP workers per trial
    cpus_per_worker: float  # logical CPUs per worker
    gpus_per_worker: float  # GPUs per worker (0: CPU with gloo)
    max_failures: int  # worker-group restarts from the last checkpoint
    worker_start_timeout_s: float  # seconds the Train controller waits for the worker group to start


def split_params(config: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(family, family hyperparameters, loop settings) from a trial's sampled config."""
    family = config["family"]
    known = family_hparams(family)
    hparams = {k: v for k, v in config.items() if k in known}
    loop = {k: config[k] for k in LOOP_KEYS if k in config}
    unused = sorted(set(config) - set(hparams) - set(loop) - {"family", "image_size"})
    if unused:
        raise ValueError(f"search space of '{family}' sampled keys the family does not have: {unused}")
    return family, hparams, loop


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """Tune function trainable: build the TorchTrainer for this trial and fit it."""
    entered = time.time()  # study.bench: the trial actor is up and has imported this module
    family, hparams, loop = split_params(config)
    sized = setup.specs[config.get("image_size", next(iter(setup.specs)))]
    spec = replace(sized, family=family, hparams=hparams, trial_entered_at=entered, **loop)
    _controller_environment(setup)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec},  # Ray wants a dict: train_loop_per_worker says why
        torch_config=TorchConfig(backend="nccl" if setup.gpus_per_worker > 0 else "gloo"),
        scaling_config=_scaling(setup),
        run_config=RunConfig(
            # The run name is stable per trial: a restarted trial finds its own checkpoints.
            name=f"{setup.study}-{tune.get_context().get_trial_id()}",
            storage_path=setup.storage.path("train"),
            storage_filesystem=setup.storage.filesystem,  # S3 on a custom endpoint; None: Ray infers from the path
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


def _controller_environment(setup: TrialSetup) -> None:
    """Settings Ray Train reads only from the environment, set in this trial process, which passes them on to
    the Train controller it starts (and so to the controller's workers and helpers)."""
    os.environ[train_env.WORKER_GROUP_START_TIMEOUT_S_ENV_VAR] = str(setup.worker_start_timeout_s)
    # The controller's placement-group cleaner releases the workers' CPUs when the controller is killed (a trial
    # stopped by ASHA). It finds its cluster from RAY_ADDRESS; without it, on a machine running several Ray
    # instances it cannot tell which is its own, gives up, and the stopped trial's CPUs stay reserved.
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    train_env.ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")
