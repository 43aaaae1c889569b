"""The Tune side of a study: the trial setup, and a Tuner that is new or restored from disk (--resume)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback

from search_spaces import define_by_run
from study.cluster.block import ClusterStudy
from study.cluster.storage import RayStorage, ray_storage
from study.config import StudyConfig
from study.search import make_scheduler, make_searcher
from study.trial import TrialSetup, run_trial
from trainables.data.node_cache import NodeData
from trainables.train_loop import TrialSpec

HEAD_RESOURCE = "node:__internal_head__"  # a resource only Ray's head node has (1 of it)
# Secrets Ray Tune would copy from the driver's environment into every trial actor's runtime_env.
AWS_SECRET_VARS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})
# Tune's newer output engine prints its "Configuration for experiment" box and a TensorBoard hint even at
# verbose=0; its legacy engine prints nothing at verbose=0, which leaves the console to study.progress.
QUIET_TUNE_ENV = ("RAY_AIR_NEW_OUTPUT", "0")
# Without --verbose: Tune's INFO lines go, and so do its "operation took 0.7 s, which may be a performance
# bottleneck" warnings (ray.tune.utils.util), which our own MLflow logging of a trial's final record triggers.
QUIET_LOGGERS = {"ray.tune": logging.WARNING, "ray.tune.utils.util": logging.ERROR}


def trial_setup(
    config: StudyConfig,
    caches: dict[int, tuple[Path, dict[str, Any]]],
    cluster: ClusterStudy | None = None,
    storage: RayStorage | None = None,
) -> TrialSetup:
    """What every trial of the study shares; ``caches``: each image size's slice-cache entry and preprocessing."""
    training = config.training
    return TrialSetup(
        study=config.name,
        specs={
            size: _size_spec(config, size, entry, preprocess, cluster) for size, (entry, preprocess) in caches.items()
        },
        storage=storage or ray_storage(config, cluster),
        workers=training.workers_per_trial,
        cpus_per_worker=training.cpus_per_worker,
        gpus_per_worker=training.gpus_per_worker,
        max_failures=training.max_failures,
        worker_start_timeout_s=training.worker_start_timeout_s,
    )


def _size_spec(
    config: StudyConfig, size: int, cache_dir: Path, preprocess: dict[str, Any], cluster: ClusterStudy | None
) -> TrialSpec:
    """The training loop's settings of a trial at one image size, on that size's slice cache."""
    training = config.training
    node_data = NodeData(
        cache_dir=str(cache_dir),
        cache_root=str(cache_dir.parent),
        preprocess=preprocess,
        split_seed=config.data.split_seed,
        data=cluster.data if cluster is not None else None,
    )
    return TrialSpec(
        family="",  # each trial's own family, hyperparameters and loop keys: study.trial.run_trial sets them
        hparams={},
        cache_dir=str(cache_dir),
        image_size=size,
        epochs=training.epochs,
        objective=config.primary_objective,
        seed=config.seed,
        sync_batchnorm=training.sync_batchnorm,
        threads=training.threads_per_worker,
        precision=training.precision,
        preprocess=preprocess,
        node_data=node_data,
    )


def tune_dir(storage: RayStorage, config: StudyConfig) -> str:
    """Tune's experiment folder of the study (what --resume restores), a path of ``storage.filesystem``."""
    return storage.path("tune", config.name)


def can_resume(config: StudyConfig, storage: RayStorage) -> bool:
    return tune.Tuner.can_restore(tune_dir(storage, config), storage_filesystem=storage.filesystem)


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


def keep_credentials_out_of_ray() -> None:
    """Stop Ray Tune forwarding the driver's AWS keys through each trial's runtime_env.

    Ray 2.60's Tune copies AWS_* keys into the runtime_env of every trial actor, and Ray's runtime_env agent
    writes that runtime_env, keys in clear, into /tmp/ray/session_*/logs on every node. Trials need no such copy:
    they read the standard AWS credential chain of their node (a local Ray's processes inherit the driver's
    environment; cluster nodes use their instance role, profile or credentials file).
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE) - AWS_SECRET_VARS


def make_tuner(config: StudyConfig, setup: TrialSetup, callbacks: list[Callback], resume: bool) -> tune.Tuner:
    """A new Tuner, or the interrupted one restored: finished trials kept, unfinished ones continued."""
    keep_credentials_out_of_ray()
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), trial_resources(config))
    storage = setup.storage
    if resume:
        tuner = tune.Tuner.restore(
            tune_dir(storage, config),
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            storage_filesystem=storage.filesystem,
        )
        # Tune restores the callbacks it pickled at the start; ours carry this run's state instead.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(config, define_by_run(config.families, config.data.image_size)),
            scheduler=make_scheduler(config),
            num_samples=config.num_samples,
            max_concurrent_trials=config.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=storage.path("tune"),
            storage_filesystem=storage.filesystem,
            callbacks=callbacks,
            # A trial whose process died (OOM killer; its node left) starts again from its Train checkpoint.
            failure_config=tune.FailureConfig(max_failures=config.training.trial_max_failures),
            verbose=0,
        ),
    )


def fit(tuner: tune.Tuner, verbose: bool) -> None:
    """Run the study's trials. The console shows study.progress's lines; Tune's own output only with --verbose."""
    if verbose:
        tuner._local_tuner.get_run_config().verbose = 1  # Tune's box, status tables and TensorBoard hint
        tuner.fit()
        return
    with _quiet_tune():
        tuner.fit()


@contextmanager
def _quiet_tune() -> Iterator[None]:
    """Tune's legacy (silent at verbose=0) output engine and fewer of Tune's log lines, for one fit."""
    name, value = QUIET_TUNE_ENV
    before_env = os.environ.get(name)
    levels = {logger: logger.level for logger in map(logging.getLogger, QUIET_LOGGERS)}
    os.environ[name] = value
    for logger in levels:
        logger.setLevel(QUIET_LOGGERS[logger.name])
    try:
        yield
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)
        if before_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before_env
