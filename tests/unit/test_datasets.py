"""What a run records about its data: one MLflow dataset per split, whose digest changes with the data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.cluster.block import ClusterStudy
from study.config import StudyConfig
from study.tracking.datasets import evaluation_inputs, split_inputs, study_cohort
from trainables.data.cache import SplitConfig, prepare_slice_cache, read_meta
from trainables.data.preprocess import PreprocessConfig
from trainables.data.s3 import DataSource
from trainables.data.synthetic import GENERATOR_VERSION, ensure_cohort

HEALTHY, LESION = 6, 4  # the cohort tests/unit/test_splits.py builds too (shared through pytest's base folder)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    return ensure_cohort(tmp_path_factory.getbasetemp() / f"cohort-h{HEALTHY}-l{LESION}", HEALTHY, LESION, seed=0)


@pytest.fixture(scope="module")
def cache(cohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _cache(cohort, tmp_path_factory.getbasetemp() / "slice-cache", split_seed=0)


def _cache(cohort, root: Path, split_seed: int) -> Path:
    return prepare_slice_cache(
        cohort.healthy_dir, cohort.lesion_dir, root, PreprocessConfig(), SplitConfig(seed=split_seed)
    )


def _folders(cohort) -> StudyConfig:
    config = StudyConfig()
    config.data.healthy, config.data.lesion = str(cohort.healthy_dir), str(cohort.lesion_dir)
    return config


def test_each_split_is_a_dataset_with_its_counts_and_the_cache_digest(cohort, cache: Path) -> None:
    inputs = split_inputs(study_cohort(_folders(cohort)), cache)
    meta = read_meta(cache)
    contexts = [tag.value for i in inputs for tag in i.tags if tag.key == "mlflow.data.context"]
    assert contexts == ["training", "validation", "test"]
    for split, item in zip(("train", "val", "test"), inputs, strict=True):
        dataset = item.dataset
        assert dataset.name == f"hcp+brats:{split}" and dataset.source_type == "local"
        profile = json.loads(dataset.profile)
        assert profile["slice_cache"] == cache.name and profile["split"]["seed"] == 0
        assert {k: profile[k] for k in meta["counts"][split]} == meta["counts"][split]
        source = json.loads(dataset.source)
        assert source["uri"] == str(cohort.healthy_dir if split == "train" else cohort.lesion_dir)
        assert "synthetic" not in profile
    assert len({i.dataset.digest for i in inputs}) == 3
    assert [i.dataset.name.split(":")[1] for i in evaluation_inputs(inputs)] == ["val", "test"]


def test_another_split_of_the_same_scans_has_other_digests(cohort, cache: Path, tmp_path: Path) -> None:
    first = split_inputs(study_cohort(_folders(cohort)), cache)
    other = split_inputs(study_cohort(_folders(cohort)), _cache(cohort, tmp_path / "cache", split_seed=1))
    assert [i.dataset.name for i in first] == [i.dataset.name for i in other]
    assert not {i.dataset.digest for i in first} & {i.dataset.digest for i in other}


def test_cohort_names_synthetic_settings_or_s3_uris(cache: Path, tmp_path: Path) -> None:
    config = StudyConfig()
    config.data.root = str(tmp_path)
    synthetic = study_cohort(config)
    assert synthetic.label == "synthetic-h24-l12-s0" and synthetic.healthy == str(tmp_path / synthetic.label)
    mix = {"bright": 1.0, "dark": 1.0, "iso": 1.0, "multifocal": 1.0}  # the default mix, recorded with the rest
    settings = {"healthy": 24, "lesion": 12, "seed": 0, "mix": mix}
    assert synthetic.generator == {"template": "MNI152 (nilearn)", "version": GENERATOR_VERSION, **settings}
    profile = json.loads(split_inputs(synthetic, cache)[0].dataset.profile)
    assert profile["synthetic"] == synthetic.generator
    source = DataSource(None, None, "s3://brain-mri/hcp/", "s3://brain-mri/brats2019/", tmp_path)
    cluster = ClusterStudy(source, tmp_path, None, tmp_path)
    remote = study_cohort(config, cluster)
    assert (remote.label, remote.healthy, remote.generator) == ("hcp+brats2019", "s3://brain-mri/hcp/", None)
    test = split_inputs(remote, cache)[2].dataset
    assert test.source_type == "s3" and json.loads(test.source)["uri"] == "s3://brain-mri/brats2019/"
