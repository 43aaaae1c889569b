"""Named presets (each family's published settings, declared once in its module) resolve to exactly what the study
YAMLs and the reproduction ran before presets existed: tests/unit/pinned/published_settings.json holds those values,
written from `completed_points(load_config(path))` and `trainables.reproduce.runs.RUNS` at b9aa24e."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from search_spaces import space_names
from study.config import CONFIG_DIR, ConfigError, StudyConfig, load_config
from study.search import completed_points
from trainables.families import (
    Family,
    create_family,
    family_names,
    family_presets,
    preset_names,
    preset_setting,
    register_family,
    searchable_family_names,
)
from trainables.families.registry import family_class
from trainables.reproduce.runs import RUNS

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


@pytest.mark.parametrize("family", family_names())
def test_every_family_has_a_space_and_a_preset(family):
    """One registry: a family module found in trainables/families/ declares its published settings, and a family a
    study can search has its space in search_spaces/ (the threshold baseline has nothing to search)."""
    assert family_presets(family), f"trainables/families/{family}.py declares no presets"
    assert (family in space_names()) == (family in searchable_family_names())


@pytest.mark.parametrize("name", [n for n in preset_names() if not n.startswith("threshold/")])
def test_every_preset_is_a_whole_point_of_its_space(name):
    family, values = preset_setting(name)
    (point,) = completed_points(StudyConfig(name="p", families=[family], points_to_evaluate=[{**values}]))
    assert create_family(family, {k: v for k, v in point.items() if k != "batch_size"}).hp == (
        create_family(family, values).hp
    )


def _load(tmp_path: Path, points: str):
    path = tmp_path / "study.yaml"
    path.write_text(f"families: [caae, dae]\npoints_to_evaluate:\n{points}")
    return load_config(path)


def test_a_preset_with_overrides_and_explicit_points_side_by_side(tmp_path):
    config = _load(tmp_path, "  - caae/paper-lambda-0.5\n  - {preset: dae/kascenas-2022, channels: 16}\n"
                             "  - {family: caae, latent_weight: 0.25}\n")  # fmt: skip
    assert config.points_to_evaluate == [
        {"family": "caae", "latent_weight": 0.5},
        {"family": "dae", "channels": 16},
        {"family": "caae", "latent_weight": 0.25},
    ]


def test_an_unknown_preset_is_refused_naming_file_key_and_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"study\.yaml: key 'points_to_evaluate\[1\]\.preset': unknown preset "
                                          r"'caae/paper-lambda-2\.0'; known: .*caae/paper-lambda-1\.0"):  # fmt: skip
        _load(tmp_path, "  - dae/kascenas-2022\n  - caae/paper-lambda-2.0\n")
    with pytest.raises(ConfigError, match=r"unknown preset 'paper'; known: aae/paper, "):
        _load(tmp_path, "  - {preset: paper}\n")
    with pytest.raises(ConfigError, match=r"points_to_evaluate\[0\]\.family': 'dae' differs from preset"):
        _load(tmp_path, "  - {preset: caae/paper-lambda-1.0, family: dae}\n")


def test_a_preset_may_only_name_fields_of_its_family():
    class Bad(Family):
        Hparams = family_class("vae").Hparams
        presets = {"typo": {"latnet_dim": 64}}

    with pytest.raises(TypeError, match=r"preset 'typo' names \['latnet_dim'\]"):
        register_family("bad-presets-test")(Bad)
    assert "bad-presets-test" not in family_names()


def test_the_readme_study_example_loads_and_resolves(tmp_path):
    """README's "What a study can say" block is a study YAML that loads: its preset syntax stays true."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S) if "points_to_evaluate" in b]
    path = tmp_path / "readme.yaml"
    path.write_text(block)
    caae, dae, lran, dae_64 = completed_points(load_config(path))
    assert (caae["latent_weight"], dae["channels"], dae["noise_std"], lran["use_rank"]) == (1.0, 16, 1.4, False)
    assert (caae["image_size"], dae_64["image_size"]) == (32, 64)  # a point without a size takes the first listed
