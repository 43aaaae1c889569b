"""What a trial trained and was scored on, as MLflow dataset inputs: one per split, read from the slice cache.

Each split becomes one MLflow dataset (the runs table's Dataset column): its name says the cohort and the split,
its source is where the scans came from (folders or s3:// URIs), and its digest changes with anything that
changes the slices (input files, preprocessing, the split's seed and shares), so two runs on different data
never look comparable. The profile carries the rest a reader needs: counts, the slice cache's own digest,
the preprocessing and split settings, and the synthetic generator's settings where the cohort is generated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.data.schema import TensorDatasetSchema
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.types import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from study.cluster.block import ClusterStudy
from study.config import StudyConfig
from study.data import synthetic_folder
from trainables.data.cache import SPLITS, read_meta
from trainables.data.synthetic import GENERATOR_VERSION

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}  # MLflow's dataset contexts per split


@dataclass(frozen=True)
class Cohort:
    """Where a study's scans come from."""

    label: str  # short name shown in the runs table, e.g. synthetic-h24-l12-s0 or hcp+brats2019
    healthy: str  # folder or s3:// URI of the healthy cohort
    lesion: str  # folder or s3:// URI of the lesion cohort
    generator: dict[str, Any] | None  # the synthetic generator's settings; None for real data


def study_cohort(config: StudyConfig, cluster: ClusterStudy | None = None) -> Cohort:
    """The study's cohort: the cluster's S3 URIs, the configured folders, or the embedded synthetic one."""
    if cluster is not None:
        healthy, lesion = cluster.data.healthy_uri, cluster.data.lesion_uri
    elif config.data.healthy is not None and config.data.lesion is not None:
        healthy, lesion = str(Path(config.data.healthy).resolve()), str(Path(config.data.lesion).resolve())
    else:
        folder = synthetic_folder(config).resolve()
        generator = {"template": "MNI152 (nilearn)", "version": GENERATOR_VERSION, **asdict(config.data.synthetic)}
        return Cohort(folder.name, str(folder), str(folder), generator)  # one folder holds both cohorts
    return Cohort(f"{_tail(healthy)}+{_tail(lesion)}", healthy, lesion, None)


def split_inputs(cohort: Cohort, cache_dir: Path) -> list[DatasetInput]:
    """One dataset input per split (contexts training, validation, test) of the slice cache entry."""
    meta = read_meta(cache_dir)
    cache_digest = Path(cache_dir).name  # the entry's folder is its key: a hash of inputs and settings
    size = int(meta["preprocess"]["image_size"])
    return [_split_input(cohort, split, meta, cache_digest, size) for split in SPLITS]


def evaluation_inputs(inputs: list[DatasetInput]) -> list[DatasetInput]:
    """The validation and test inputs (for runs that train on nothing, like the threshold baseline)."""
    return [i for i in inputs if {t.value for t in i.tags} & {CONTEXTS["val"], CONTEXTS["test"]}]


def _split_input(cohort: Cohort, split: str, meta: dict[str, Any], cache_digest: str, size: int) -> DatasetInput:
    # train holds healthy subjects only; val and test are mostly about the lesion cohort
    primary = cohort.healthy if split == "train" else cohort.lesion
    source = {"uri": primary, "healthy": cohort.healthy, "lesion": cohort.lesion}
    profile = {
        **meta["counts"][split],
        "slice_cache": cache_digest,
        "split": {"name": split, **meta["split"]},
        "preprocess": meta["preprocess"],
    }
    if cohort.generator is not None:
        profile["synthetic"] = cohort.generator
    dataset = Dataset(
        name=f"{cohort.label}:{split}",
        digest=hashlib.sha1(f"{cache_digest}:{split}".encode()).hexdigest()[:12],
        source_type="s3" if primary.startswith("s3://") else "local",
        source=json.dumps(source),
        schema=json.dumps(_schema(size)),
        profile=json.dumps(profile),
    )
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, CONTEXTS[split])])


def _schema(size: int) -> dict[str, Any]:
    """Slices in, lesion masks as targets (what the detectors see and what they are scored against)."""
    features = Schema([TensorSpec(np.dtype(np.float32), (-1, 1, size, size), "image")])
    targets = Schema([TensorSpec(np.dtype(np.uint8), (-1, 1, size, size), "lesion_mask")])
    return TensorDatasetSchema(features=features, targets=targets).to_dict()


def _tail(uri: str) -> str:
    """The last path component of a folder or URI (brats2019 of s3://bucket/brats2019/)."""
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri
