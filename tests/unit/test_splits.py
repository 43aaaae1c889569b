"""Model choice never sees test data: split hygiene of a built cache, and the training loop's use of test.

The cohort (6 healthy + 4 lesion synthetic subjects) and its cache live under pytest's session folder, so
tests/integration/test_score_evaluate.py reuses them instead of generating them again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainables.data.cache import SplitConfig, load_split, prepare_slice_cache
from trainables.data.preprocess import PreprocessConfig
from trainables.data.synthetic import ensure_cohort
from trainables.metric_names import OBJECTIVE_METRICS

HEALTHY, LESION = 6, 4


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slice cache of a tiny synthetic cohort (shared with the integration tests of this session)."""
    base = tmp_path_factory.getbasetemp()
    cohort = ensure_cohort(base / f"cohort-h{HEALTHY}-l{LESION}", HEALTHY, LESION, seed=0)
    return prepare_slice_cache(
        cohort.healthy_dir, cohort.lesion_dir, base / "slice-cache", PreprocessConfig(), SplitConfig()
    )


def _read(cache: Path) -> tuple[dict[str, list[str]], dict]:
    return json.loads((cache / "splits.json").read_text()), json.loads((cache / "meta.json").read_text())


def test_val_and_test_are_disjoint_and_train_is_healthy_only(cache: Path) -> None:
    splits, meta = _read(cache)
    train, val, test = (set(splits[name]) for name in ("train", "val", "test"))
    assert not val & test and not train & val and not train & test
    assert train | val | test == set(meta["subjects"])  # every subject in exactly one split
    roles = {name: {meta["subjects"][s]["role"] for s in splits[name]} for name in splits}
    assert roles["train"] == {"healthy"}
    assert roles["val"] == roles["test"] == {"healthy", "lesion"}  # both splits can score every metric
    for subject in splits["train"]:
        assert meta["subjects"][subject]["split"] == "train"
        assert meta["subjects"][subject]["lesion_slices"] == 0
    assert meta["counts"]["train"]["lesion_subjects"] == 0 and meta["counts"]["train"]["lesion_slices"] == 0


def test_split_arrays_hold_only_their_subjects(cache: Path) -> None:
    splits, _ = _read(cache)
    train = load_split(cache, "train")
    assert not np.asarray(train.lesion).any() and not train.lesion_subject.any()
    for name in ("train", "val", "test"):
        arrays = load_split(cache, name)
        assert arrays.subject_ids == splits[name]
        assert set(np.unique(arrays.subject)) == set(range(len(splits[name])))


def test_only_val_metrics_can_choose() -> None:
    assert not [m for m in OBJECTIVE_METRICS if m.startswith("test_")]
