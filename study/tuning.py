"""The Tune side of a study: the trial setup, and a Tuner that is new or restored from disk (--resume)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback

from search_spaces import define_by_run
from study.cluster import ClusterStudy
from study.config import StudyConfig
from study.node_data import NodeData
from study.search import make_scheduler, make_searcher
from study.trial import TrialSetup, run_trial

HEAD_RESOURCE = "node:__internal_head__"  # a resource only Ray's head node has (1 of it)


def trial_setup(
    config: StudyConfig, cache_dir: Path, preprocess: dict[str, Any], cluster: ClusterStudy | None = None
) -> TrialSetup:
    """What every trial of the study shares."""
    objective = config.objectives[0]
    training = config.training
    node_data = NodeData(
        cache_dir=str(cache_dir),
        cache_root=str(cache_dir.parent),
        preprocess=preprocess,
        split_seed=config.data.split_seed,
        cluster=cluster,
    )
    return TrialSetup(
        study=config.name,
        storage_path=storage_root(config, "train"),
        cache_dir=str(cache_dir),
        image_size=config.data.image_size,
        preprocess=preprocess,
        epochs=training.epochs,
        objective=objective.metric,
        objective_mode=objective.mode,
        seed=config.seed,
        workers=training.workers_per_trial,
        cpus_per_worker=training.cpus_per_worker,
        gpus_per_worker=training.gpus_per_worker,
        threads=training.threads_per_worker,
        sync_batchnorm=training.sync_batchnorm,
        max_failures=training.max_failures,
        node_data=node_data,
    )


def storage_root(config: StudyConfig, part: str) -> str:
    """Where Ray keeps the study's Tune or Train state: `ray_storage` (shared, for clusters) or results/<study>/."""
    if config.ray_storage:
        return f"{config.ray_storage.rstrip('/')}/{config.name}/{part}"
    return str((config.study_dir / part).resolve())


def tune_dir(config: StudyConfig) -> str:
    """Tune's experiment folder of the study (what --resume restores)."""
    return f"{storage_root(config, 'tune')}/{config.name}"


def can_resume(config: StudyConfig) -> bool:
    return tune.Tuner.can_restore(tune_dir(config))


def trial_resources(config: StudyConfig) -> dict[str, float]:
    """What one trial process asks Ray for: its CPUs and, with `trials_on_head`, a sliver of the head node.

    Why the head: Ray Train V2 starts a trial's controller on the trial process's node. When that node leaves
    while the controller is starting a worker group, the group's placement group outlives the controller
    (Ray 2.60 scopes it to the job) and is rescheduled onto the surviving nodes, holding their CPUs until the
    study ends: later trials then wait for ever. Controllers on the head never die with a worker node.
    """
    resources = {"cpu": config.training.cpus_per_trial}
    if config.training.trials_on_head:
        resources[HEAD_RESOURCE] = 0.001
    return resources


def make_tuner(config: StudyConfig, setup: TrialSetup, callbacks: list[Callback], resume: bool) -> tune.Tuner:
    """A new Tuner, or the interrupted one restored: finished trials kept, unfinished ones continued."""
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), trial_resources(config))
    if resume:
        tuner = tune.Tuner.restore(tune_dir(config), trainable, resume_unfinished=True, resume_errored=False)
        # Tune restores the callbacks it pickled at the start; ours carry this run's state instead.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(config, define_by_run(config.families)),
            scheduler=make_scheduler(config),
            num_samples=config.num_samples,
            max_concurrent_trials=config.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=storage_root(config, "tune"),
            callbacks=callbacks,
            # A trial whose process died (OOM killer; its node left) starts again from its Train checkpoint.
            failure_config=tune.FailureConfig(max_failures=config.training.trial_max_failures),
            verbose=0,
        ),
    )
