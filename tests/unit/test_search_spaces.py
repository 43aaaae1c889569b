"""Search spaces: one per registered family, only trial.suggest_* calls, values the family accepts, and one
distribution per parameter name across families (a multi-family Optuna study shares names)."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution

from search_spaces import define_by_run, family_space, space_names
from trainables.families import create_family, family_hparams, family_names

LOOP_KEYS = {"batch_size"}  # read by the training loop, not a family field (study/trial.py LOOP_KEYS)
# Paper defaults deliberately outside the shared ranges (documented in the space modules).
DEFAULTS_OUTSIDE: set[tuple[str, str]] = set()  # none since latent 100 and lr 2e-3 became drawable

optuna.logging.set_verbosity(optuna.logging.WARNING)


class OnlySuggest:
    """A trial proxy that fails on anything but ``suggest_*``: spaces must not read or set other state."""

    def __init__(self, trial: optuna.Trial) -> None:
        self._trial = trial

    def __getattr__(self, name: str):
        assert name.startswith("suggest_"), f"search space used trial.{name}"
        return getattr(self._trial, name)


def _sample(family: str, seed: int = 0) -> tuple[dict, dict[str, BaseDistribution], dict]:
    """(params, distributions, constants) of one random draw of ``family``'s space."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    constants = family_space(family)(OnlySuggest(trial)) or {}
    return trial.params, trial.distributions, constants


def test_every_family_has_a_space():
    assert set(family_names()) <= set(space_names())


@pytest.mark.parametrize("family", family_names())
@pytest.mark.parametrize("seed", range(3))
def test_sampled_values_are_accepted_by_the_family(family, seed):
    params, _, constants = _sample(family, seed)
    hparams = {k: v for k, v in {**params, **constants}.items() if k not in LOOP_KEYS}
    assert set(hparams) <= set(family_hparams(family)), "sampled keys must be fields of the family's Hparams"
    created = create_family(family, hparams)
    for key, value in hparams.items():
        assert getattr(created.hp, key) == value


def test_threshold_has_nothing_to_tune():
    assert _sample("threshold") == ({}, {}, {})


def test_shared_names_have_one_distribution():
    seen: dict[str, tuple[str, BaseDistribution]] = {}
    for family in family_names():
        for name, dist in _sample(family)[1].items():
            first = seen.setdefault(name, (family, dist))
            assert dist == first[1], f"{name!r}: {first[0]} samples {first[1]}, {family} samples {dist}"


def _contains(dist: BaseDistribution, value) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return dist.low <= value <= dist.high


@pytest.mark.parametrize("family", family_names())
def test_paper_defaults_lie_in_the_searched_ranges(family):
    defaults = family_hparams(family)
    for name, dist in _sample(family)[1].items():
        if name in defaults and (family, name) not in DEFAULTS_OUTSIDE:
            assert _contains(dist, defaults[name]), f"{family}.{name} default {defaults[name]} outside {dist}"


def test_one_study_over_all_families():
    """The multi-family define-by-run space draws every family without Optuna complaining."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    space = define_by_run(family_names())
    drawn = set()
    for i in range(40):
        trial = study.ask()
        drawn.add(space(trial).get("family", trial.params.get("family")))
        study.tell(trial, float(i % 7))
    assert drawn == set(family_names())
