"""Search spaces: one per registered family, only trial.suggest_* calls, values the family accepts, and one
distribution per parameter name across families (a multi-family Optuna study shares names)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution

from search_spaces import define_by_run, family_space, space_names
from trainables.families import create_family, family_hparams, searchable_family_names

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


def test_every_searchable_family_has_a_space_and_no_other():
    assert set(searchable_family_names()) == set(space_names())


@pytest.mark.parametrize("family", searchable_family_names())
@pytest.mark.parametrize("seed", range(3))
def test_sampled_values_are_accepted_by_the_family(family, seed):
    params, _, constants = _sample(family, seed)
    hparams = {k: v for k, v in {**params, **constants}.items() if k not in LOOP_KEYS}
    assert set(hparams) <= set(family_hparams(family)), "sampled keys must be fields of the family's Hparams"
    created = create_family(family, hparams)
    for key, value in hparams.items():
        assert getattr(created.hp, key) == value


def test_shared_names_have_one_distribution():
    seen: dict[str, tuple[str, BaseDistribution]] = {}
    for family in searchable_family_names():
        for name, dist in _sample(family)[1].items():
            first = seen.setdefault(name, (family, dist))
            assert dist == first[1], f"{name!r}: {first[0]} samples {first[1]}, {family} samples {dist}"


def _contains(dist: BaseDistribution, value) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return dist.low <= value <= dist.high


@pytest.mark.parametrize("family", searchable_family_names())
def test_paper_defaults_lie_in_the_searched_ranges(family):
    defaults = family_hparams(family)
    for name, dist in _sample(family)[1].items():
        if name in defaults and (family, name) not in DEFAULTS_OUTSIDE:
            assert _contains(dist, defaults[name]), f"{family}.{name} default {defaults[name]} outside {dist}"


def test_one_study_over_all_families():
    """The multi-family define-by-run space draws every family without Optuna complaining."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    space = define_by_run(searchable_family_names())
    drawn = set()
    for i in range(40):
        trial = study.ask()
        drawn.add(space(trial).get("family", trial.params.get("family")))
        study.tell(trial, float(i % 7))
    assert drawn == set(searchable_family_names())


def _enqueued(point: dict) -> dict:
    """What Optuna draws for a trial enqueued with ``point`` (``family`` included, as a study's points give it)."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(point)
    trial = study.ask()
    constants = define_by_run([point["family"]])(trial)
    return {**trial.params, **constants}


def _reproduce_points() -> list[dict]:
    """The points Optuna is given for study/configs/reproduce.yaml: its presets completed with the defaults."""
    from study.config import load_config
    from study.search import completed_points

    return completed_points(load_config("study/configs/reproduce.yaml"))


@pytest.mark.parametrize("point", _reproduce_points(), ids=lambda p: p["family"])
def test_papers_settings_are_points_of_the_spaces(point):
    """Each published configuration of study/configs/reproduce.yaml is drawn exactly as given (Optuna falls back to
    sampling a value outside its distribution, so a point the space cannot reach would come back changed)."""
    assert _enqueued(point) == point


def test_reproduce_yaml_matches_the_reproduce_script():
    """The study's points are the reproduce script's runs: the same presets in the same order, so the family
    defaults with each run's overrides."""
    import yaml

    from trainables.reproduce.runs import RUNS

    named = yaml.safe_load(Path("study/configs/reproduce.yaml").read_text())["points_to_evaluate"]
    assert named == [r.preset for r in RUNS if r.family != "threshold"]
    points = _reproduce_points()
    assert len(points) == len([r for r in RUNS if r.family != "threshold"])
    for run, point in zip([r for r in RUNS if r.family != "threshold"], points, strict=True):
        hparams = {k: v for k, v in point.items() if k not in LOOP_KEYS | {"family"}}
        assert point["family"] == run.family, run.key
        assert create_family(run.family, hparams).hp == create_family(run.family, run.hparams).hp, run.key
        assert point["batch_size"] == 64


def test_ablations_and_published_values_are_reachable():
    """lambda 0.5 and 1.0; w_z and w_r off; latent 100; the AAEs' adv_weight searched."""
    caae = _sample("caae")[1]
    assert {0.5, 1.0, 0.0} <= {caae["latent_weight"].low + i * caae["latent_weight"].step for i in range(9)}
    assert "adv_weight" in caae and "adv_weight" in _sample("aae")[1]
    for seed in range(12):
        params = _sample("lran", seed)[0]
        assert ("w_z" in params) == params["use_zrec"] and ("w_r" in params) == params["use_rank"]
    assert all(100 in _sample(f)[1]["latent_dim"].choices for f in ("vae", "ae", "aae", "caae", "lran"))
