"""Optuna searcher and Tune scheduler built from a study config."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from search_spaces import family_space, suggest_image_size
from study.config import ConfigError, StudyConfig
from study.trial import LOOP_KEYS
from trainables.families import family_hparams
from trainables.numbers import is_integer, is_real
from trainables.train_loop import TrialSpec

# Loop settings a space may draw beside the family's hyperparameters, at the training loop's defaults.
LOOP_DEFAULTS = {key: getattr(TrialSpec, key) for key in LOOP_KEYS}

optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress lines say what each trial is
# A trial restarted by --resume reports its last epoch again; Optuna keeps the first value, as it should.
warnings.filterwarnings("ignore", message="The reported value is ignored", category=UserWarning)


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


class _PicklableSampler:
    """Leaves thread locks out of a sampler's pickled state and makes new ones on unpickling.

    Tune pickles the search algorithm (at start and at every checkpoint). Optuna 5.1's NSGAIISampler holds a
    ``_thread_lock`` and so does not pickle; a lock guards one process's threads and carries no state, so a
    fresh one is what the unpickled copy needs. Any sampler attribute that is a lock is handled the same way,
    whatever Optuna release adds one next (tests/unit/test_samplers.py pickles every sampler the config accepts).
    """

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        locks = {k: isinstance(v, type(threading.RLock())) for k, v in state.items() if isinstance(v, _LOCK_TYPES)}
        for name in locks:
            del state[name]
        return {**state, "_picklable_locks": locks}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        locks = state.pop("_picklable_locks", {})
        self.__dict__.update(state)
        for name, reentrant in locks.items():
            setattr(self, name, threading.RLock() if reentrant else threading.Lock())


class TPESampler(_PicklableSampler, optuna.samplers.TPESampler):
    pass


class RandomSampler(_PicklableSampler, optuna.samplers.RandomSampler):
    pass


class NSGAIISampler(_PicklableSampler, optuna.samplers.NSGAIISampler):
    pass


SAMPLER_CLASSES = {"tpe": TPESampler, "random": RandomSampler, "nsga2": NSGAIISampler}


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """TPE (default), random or NSGA-II, seeded from the study; each pickles (Tune pickles its searcher)."""
    return SAMPLER_CLASSES[config.sampler](seed=config.seed)


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
        points_to_evaluate=completed_points(config) or None,
        study_name=config.name,
    )


def completed_points(config: StudyConfig) -> list[dict[str, Any]]:
    """``points_to_evaluate``, each completed with every parameter its family's space would draw, at the
    family's default (its paper's value): a point is the whole setting it names, where the sampler would
    otherwise draw the parameters it leaves out at random. ConfigError names a value outside its space."""
    points = []
    for i, point in enumerate(config.points_to_evaluate):
        family = point.get("family", config.families[0])
        where = f"{config.source}: key 'points_to_evaluate[{i}]'"
        sizes = config.data.image_size
        defaults = {**LOOP_DEFAULTS, **family_hparams(family), "image_size": config.data.reference_size}
        answers = _PointTrial(point, defaults, where)
        family_space(family)(answers)
        suggest_image_size(answers, sizes)
        unused = sorted(set(point) - set(answers.params) - {"family"} - ({"image_size"} if len(sizes) == 1 else set()))
        if unused:
            raise ConfigError(f"{where}: {unused} not drawn by the space of '{family}' (search_spaces/{family}.py)")
        family_key = {"family": family} if len(config.families) > 1 else {}
        points.append({**family_key, **answers.params})
    return points


class _PointTrial:
    """Stands in for an Optuna trial while a space runs: each suggest_* is answered with the point's value, else
    the default. Branches follow those answers. A number the point gives may lie outside the searched range
    (Optuna evaluates an enqueued point as given: a published value, or one chosen to diverge); a default must
    lie inside it, and a categorical value must be one of the choices."""

    def __init__(self, point: dict[str, Any], defaults: dict[str, Any], where: str) -> None:
        self.point, self.defaults, self.where = point, defaults, where
        self.params: dict[str, Any] = {}

    def _answer(
        self, name: str, in_space: Callable[[Any], bool], expected: str, of_kind: Callable[[Any], bool] | None = None
    ) -> Any:
        if name not in self.point and name not in self.defaults:
            raise ConfigError(f"{self.where}: give '{name}' (the family has no default for it)")
        value = self.point.get(name, self.defaults.get(name))
        given_number = name in self.point and of_kind is not None and of_kind(value)
        if not (in_space(value) or given_number):
            source = "value" if name in self.point else "default"
            raise ConfigError(f"{self.where}: '{name}' {source} {value!r} is outside its space ({expected})")
        self.params[name] = value
        return value

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False):
        return self._answer(name, lambda v: is_real(v) and low <= v <= high, f"{low}..{high}", is_real)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._answer(name, lambda v: is_integer(v) and low <= v <= high, f"integers {low}..{high}", is_integer)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._answer(name, lambda v: v in choices, f"one of {list(choices)}")


def make_scheduler(config: StudyConfig) -> TrialScheduler | None:
    """ASHA on the single objective (stops weak trials after their first epochs), or None for FIFO."""
    if config.scheduler != "asha":
        return None
    objective = config.primary_objective
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
