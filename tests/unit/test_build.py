"""Pieces of the cache build: the in-process path, a build killed half way, the shared cache's S3 prefix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from data_kit import make_brats, make_hcp

from study.cluster.block import ClusterConfigError, read_study_block
from trainables.data.build import preprocess_subjects
from trainables.data.cache import SplitConfig, prepare_slice_cache, read_meta
from trainables.data.layouts import discover_subjects
from trainables.data.preprocess import PreprocessConfig, subject_slices

ROOT = Path(__file__).parents[2]


def test_without_ray_subjects_are_preprocessed_here_in_order(tmp_path: Path) -> None:
    import ray

    assert not ray.is_initialized()
    records = discover_subjects(make_hcp(tmp_path / "hcp", 3))
    out = list(preprocess_subjects(records, PreprocessConfig()))
    assert [position for position, _ in out] == [0, 1, 2]
    assert (out[1][1].images == subject_slices(records[1], PreprocessConfig()).images).all()
    assert not ray.is_initialized()  # nothing was started


BUILD = """
import sys
import time
from pathlib import Path
from trainables.data.cache import SplitConfig, prepare_slice_cache
from trainables.data.preprocess import PreprocessConfig
def say(message):
    print(message, flush=True)
    if message.startswith("preprocessed 2/"):
        time.sleep(120)  # half way: wait here for the kill
prepare_slice_cache(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), PreprocessConfig(), SplitConfig(), say)
"""


def test_build_killed_half_way_leaves_no_cache(tmp_path: Path) -> None:
    healthy, lesion = make_hcp(tmp_path / "hcp", 4), make_brats(tmp_path / "brats", 3)
    root = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [sys.executable, "-c", BUILD, str(healthy), str(lesion), str(root)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    for line in process.stdout:
        if line.startswith("preprocessed 2/"):  # half way through the subjects
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert entries == []  # only the hidden temporary build folder (and the lock file) remain
    assert not list(root.rglob("meta.json"))
    said: list[str] = []
    entry = prepare_slice_cache(healthy, lesion, root, PreprocessConfig(), SplitConfig(), said.append)
    assert sum(m.startswith("preprocessed ") for m in said) == 7  # rebuilt in full, nothing taken from the leftover
    assert sum(read_meta(entry)["counts"][s]["healthy_subjects"] for s in ("train", "val", "test")) == 4
    assert not list(root.glob(".*.tmp-*"))


def cluster_yaml(tmp_path: Path, **extra: str) -> Path:
    block = {
        "data": {"healthy": "s3://bucket/cohorts/hcp/", "lesion": "s3://bucket/cohorts/brats/"},
        "cache_dir": str(tmp_path / "cache"),
        **extra,
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(json.dumps({"metadata": {"study": block}}))
    return path


def test_shared_cache_prefix_defaults_beside_the_data(tmp_path: Path) -> None:
    assert read_study_block(cluster_yaml(tmp_path)).data.shared_cache_uri == "s3://bucket/cohorts/slice-cache/"
    chosen = read_study_block(cluster_yaml(tmp_path, cache_prefix="s3://other/caches"))
    assert chosen.data.shared_cache_uri == "s3://other/caches"
    with pytest.raises(ClusterConfigError, match="cache_prefix"):
        read_study_block(cluster_yaml(tmp_path, cache_prefix="/local/folder"))


def test_grids_keep_the_centre_and_take_the_cohorts_shape() -> None:
    import numpy as np

    from trainables.data.grids import resample_to_grid

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-90, -126, -72]
    volume = np.random.default_rng(0).random((91, 109, 91), dtype=np.float32)
    out, new_affine = resample_to_grid(volume, affine, "brats", labels=False)
    assert out.shape == (240, 240, 155) and out.dtype == np.float32
    assert np.allclose(np.diag(new_affine)[:3], 1.0)
    centre = lambda a, shape: a[:3, :3] @ ((np.array(shape) - 1) / 2) + a[:3, 3]  # noqa: E731
    assert np.allclose(centre(new_affine, out.shape), centre(affine, volume.shape))
    assert resample_to_grid(volume, affine, "mni2mm", labels=False)[0] is volume
    with pytest.raises(ValueError, match="grid must be one of"):
        resample_to_grid(volume, affine, "hcp7t", labels=False)
