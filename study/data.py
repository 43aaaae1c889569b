"""The study's data, made ready on the driver before any trial starts (once per run, reused after)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from study.cluster.block import ClusterStudy
from study.config import StudyConfig
from trainables.data.cache import SplitConfig, prepare_slice_cache
from trainables.data.lesions import check_mix
from trainables.data.preprocess import PreprocessConfig
from trainables.data.synthetic import ensure_cohort


def data_folders(config: StudyConfig) -> tuple[Path, Path]:
    """(healthy, lesion) folders: the configured ones, or the embedded synthetic cohort (generated once)."""
    data = config.data
    if data.healthy is not None and data.lesion is not None:
        return Path(data.healthy), Path(data.lesion)
    synthetic = data.synthetic
    mix = check_mix(synthetic.mix)
    folder = synthetic_folder(config)
    shares = ", ".join(f"{k} {v:g}" for k, v in mix.items() if v > 0)
    counts = f"{synthetic.healthy} healthy, {synthetic.lesion} lesion subjects"
    print(f"synthetic cohort: {folder} ({counts}; appearances {shares})", flush=True)
    cohort = ensure_cohort(folder, synthetic.healthy, synthetic.lesion, synthetic.seed, mix=mix)
    return cohort.healthy_dir, cohort.lesion_dir


def synthetic_folder(config: StudyConfig) -> Path:
    """The embedded synthetic cohort's folder for these settings (under data.root)."""
    synthetic = config.data.synthetic
    name = f"synthetic-h{synthetic.healthy}-l{synthetic.lesion}-s{synthetic.seed}"
    mix = check_mix(synthetic.mix)
    if mix != check_mix(None):  # another mix is another cohort: keep both rather than regenerate in turn
        name += "-m" + hashlib.sha1(json.dumps(mix, sort_keys=True).encode()).hexdigest()[:8]
    return Path(config.data.root) / name


def prepare_caches(config: StudyConfig, cluster: ClusterStudy | None = None) -> dict[int, tuple[Path, dict[str, Any]]]:
    """Each image size's slice cache (prepare_data), in the order data.image_size lists them: the same cohort and
    subject split at every size, so sizes are compared on the same subjects (each at its own masks' pixels)."""
    return {size: prepare_data(config, cluster, size) for size in config.data.image_size}


def prepare_data(
    config: StudyConfig, cluster: ClusterStudy | None = None, image_size: int | None = None
) -> tuple[Path, dict[str, Any]]:
    """Build or reuse the slice cache at ``image_size`` (default: the first listed); return its absolute folder
    and the preprocessing settings.

    With ``cluster``: the cache shared through S3 (trainables.data.shared_cache), in ``<cache_dir>/slice-cache``
    on this node; built from the bucket by Ray tasks and published once, else downloaded.
    """
    pre = PreprocessConfig(
        image_size=image_size or config.data.reference_size,
        modality=config.data.modality,
        min_brain_fraction=config.data.min_brain_fraction,
    )
    if cluster is not None:
        from trainables.data.shared_cache import shared_slice_cache  # boto3 only on a cluster

        say = lambda message: print(message, flush=True)  # noqa: E731
        shared = shared_slice_cache(cluster.data, pre, SplitConfig(seed=config.data.split_seed), cluster.cache_dir, say)
        return shared.entry, asdict(pre)
    healthy, lesion = data_folders(config)
    cache = prepare_slice_cache(
        healthy,
        lesion,
        Path(config.data.root) / "cache",
        pre,
        SplitConfig(seed=config.data.split_seed),
        progress=lambda message: print(message, flush=True),
    )
    return cache.resolve(), asdict(pre)
