"""Optuna searcher and Tune scheduler built from a study config."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from study.config import StudyConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say what each trial is
# A trial restarted by --resume reports its last epoch again; Optuna keeps the first value, as it should.
warnings.filterwarnings("ignore", message="The reported value is ignored", category=UserWarning)


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """TPE (default), random or NSGA-II, seeded from the study."""
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=config.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=config.seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=config.seed),
    }
    return samplers[config.sampler]()


def optuna_storage_url(config: StudyConfig) -> str:
    """Where the Optuna study lives: the configured RDB URL or journal file, else results/<study>/optuna.db."""
    if config.optuna_storage:
        return config.optuna_storage
    return f"sqlite:///{(config.study_dir / 'optuna.db').resolve()}"


def make_storage(config: StudyConfig) -> optuna.storages.BaseStorage:
    """An RDB storage for URLs (sqlite:///, postgresql://, ...), a journal storage for a plain file path."""
    url = optuna_storage_url(config)
    if "://" in url:
        return optuna.storages.RDBStorage(url)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that lets a resumed trial re-report after Optuna already recorded its end.

    A driver killed between telling Optuna a trial finished and saving Tune's own state makes Tune restart
    that trial on --resume; its repeated results must not crash the study (Optuna keeps its first record).
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass


def make_searcher(config: StudyConfig, space_fn: Callable) -> OptunaSearch:
    """Ray's OptunaSearch over the define-by-run space; lists of metrics/modes for several objectives."""
    metrics = [o.metric for o in config.objectives]
    modes = [o.mode for o in config.objectives]
    single = len(metrics) == 1
    return ResumableOptunaSearch(
        space=space_fn,
        metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes,
        sampler=make_sampler(config),
        storage=make_storage(config),
        points_to_evaluate=[dict(p) for p in config.points_to_evaluate] or None,
        study_name=config.name,
    )


def make_scheduler(config: StudyConfig) -> TrialScheduler | None:
    """ASHA on the single objective (stops weak trials after their first epochs), or None for FIFO."""
    if config.scheduler != "asha":
        return None
    objective = config.objectives[0]
    return ASHAScheduler(
        metric=objective.metric,
        mode=objective.mode,
        time_attr="training_iteration",
        max_t=config.training.epochs + 1,  # + the final report carrying test_*
        grace_period=1,
        # A trial at max_t ends by itself. Stopping it there instead kills the trial process while its Train
        # controller is still shutting down: the worker group's CPUs stay reserved (Ray 2.60) and the next trial
        # may wait for them for ever on a small machine.
        stop_last_trials=False,
    )
