"""Named presets (each family's published settings, declared once in its module) resolve to exactly what the study
YAMLs and the reproduction ran before presets existed: tests/unit/pinned/published_settings.json holds those values,
written from `completed_points(load_config(path))` and `trainables.reproduce_runs.RUNS` at b9aa24e."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.config import CONFIG_DIR, load_config
from study.search import completed_points
from trainables.reproduce_runs import RUNS

PINNED = json.loads((Path(__file__).parent / "pinned" / "published_settings.json").read_text())


def typed(value):
    """``value`` with each number's type beside it: 1 == 1.0 in Python, but an int lr or a float depth is a change."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [typed(item) for item in value]
    return (type(value).__name__, value)


@pytest.mark.parametrize("name", sorted(PINNED["points_to_evaluate"]))
def test_resolved_points_are_the_pinned_ones(name):
    points = completed_points(load_config(CONFIG_DIR / f"{name}.yaml"))
    assert typed(points) == typed(PINNED["points_to_evaluate"][name])


def test_reproduction_runs_are_the_pinned_ones():
    runs = [{"key": r.key, "family": r.family, "objective": list(r.objective), "hparams": r.hparams} for r in RUNS]
    assert typed(runs) == typed(PINNED["reproduce_runs"])
