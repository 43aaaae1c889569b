"""Every sampler the config accepts survives the pickling Tune does to its search algorithm, whatever Optuna
release is installed (Optuna 5.1's NSGAIISampler holds a thread lock that plain pickle refuses)."""

from __future__ import annotations

import pickle
import threading

import cloudpickle
import optuna
import pytest

from search_spaces import family_space
from study.config import SAMPLERS, Objective, StudyConfig
from study.search import make_sampler, make_searcher

TWO_OBJECTIVES = [Objective("val_pixel_auroc", "max"), Objective("val_slice_auroc", "max")]


def _config(sampler: str, tmp_path) -> StudyConfig:
    return StudyConfig(name="pickle", sampler=sampler, objectives=TWO_OBJECTIVES, results_dir=str(tmp_path))


def _draws(sampler: optuna.samplers.BaseSampler, n: int = 6) -> list[float]:
    """The first ``n`` values of one parameter the sampler draws in a fresh two-objective study."""
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    values = []
    for _ in range(n):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, [x, 1.0 - x])
        values.append(x)
    return values


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_round_trips_and_draws_the_same(name, tmp_path):
    sampler = make_sampler(_config(name, tmp_path))
    copy = pickle.loads(pickle.dumps(sampler))
    assert type(copy) is type(sampler)
    assert _draws(copy) == _draws(sampler), "the unpickled sampler must continue the same seeded stream"


@pytest.mark.parametrize("name", SAMPLERS)
def test_unpickled_sampler_has_working_locks(name, tmp_path):
    sampler = make_sampler(_config(name, tmp_path))
    copy = pickle.loads(pickle.dumps(sampler))
    lock_types = (type(threading.Lock()), type(threading.RLock()))
    for attr, value in vars(sampler).items():
        if isinstance(value, lock_types):
            fresh = getattr(copy, attr)
            assert isinstance(fresh, type(value)) and fresh is not value
            with fresh:  # usable, and not held by anyone
                pass


@pytest.mark.parametrize("name", SAMPLERS)
def test_searcher_pickles_as_tune_does(name, tmp_path):
    config = _config(name, tmp_path)
    config.study_dir.mkdir(parents=True, exist_ok=True)
    searcher = make_searcher(config, family_space(config.families[0]))
    restored = cloudpickle.loads(cloudpickle.dumps(searcher))
    assert type(restored._sampler) is type(searcher._sampler)
