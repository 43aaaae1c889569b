"""The study's data, made ready on the driver before any trial starts (once per run, reused after)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

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
    name = f"synthetic-h{synthetic.healthy}-l{synthetic.lesion}-s{synthetic.seed}"
    if mix != check_mix(None):  # another mix is another cohort: keep both rather than regenerate in turn
        name += "-m" + hashlib.sha1(json.dumps(mix, sort_keys=True).encode()).hexdigest()[:8]
    folder = Path(data.root) / name
    shares = ", ".join(f"{k} {v:g}" for k, v in mix.items() if v > 0)
    counts = f"{synthetic.healthy} healthy, {synthetic.lesion} lesion subjects"
    print(f"synthetic cohort: {folder} ({counts}; appearances {shares})", flush=True)
    cohort = ensure_cohort(folder, synthetic.healthy, synthetic.lesion, synthetic.seed, mix=mix)
    return cohort.healthy_dir, cohort.lesion_dir


def prepare_data(config: StudyConfig) -> tuple[Path, dict[str, Any]]:
    """Build or reuse the slice cache; return its absolute folder and the preprocessing settings."""
    healthy, lesion = data_folders(config)
    pre = PreprocessConfig(
        image_size=config.data.image_size,
        modality=config.data.modality,
        min_brain_fraction=config.data.min_brain_fraction,
    )
    cache = prepare_slice_cache(
        healthy,
        lesion,
        Path(config.data.root) / "cache",
        pre,
        SplitConfig(seed=config.data.split_seed),
        progress=lambda message: print(message, flush=True),
    )
    return cache.resolve(), asdict(pre)
