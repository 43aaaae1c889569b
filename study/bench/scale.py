"""Bench section `scale`: preprocessing and cache sharing at real cohorts' sizes.

Synthetic subjects are written on HCP's grid (healthy, 260 x 311 x 260 at 0.7 mm) and BraTS' grid (tumour
cases, 240 x 240 x 155 at 1 mm) (trainables.data.synthetic, ``grid``). Per subject and cohort: the seconds
``subject_slices`` takes at 64 x 64 (in this process, one thread), the raw bytes (every file of the subject)
and the slice-cache bytes at 32/64/128 (the arrays: n slices x (4 + 1 + 1) bytes x S^2 + 8 bytes; the number
of kept slices does not depend on S). Then the Ray build of trainables.data.build over the cohort with 1 and
with 2 CPUs (``scale_preprocess_speedup``, each after an untimed warm-up pass); and, against a moto S3 server
on 127.0.0.1, the shared cache at 64 x 64 built and published by one node and downloaded by a second:
``scale_node_bytes_ratio`` = the second node's bytes / the raw cohort's. Printed: an extrapolation to HCP
1,113 + BraTS 1,251 subjects on 1, 4 and 16 nodes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from study.bench.common import BenchPlan, environment, say
from study.bench.report import median, ratio
from study.bench.stage import CREDENTIALS, MotoServer

COHORTS = {"hcp": 1113, "brats": 1251}  # subjects of HCP (healthy, T2) and BraTS 2021 (tumour cases)
NODES = (1, 4, 16)
CPUS_PER_NODE = 8  # assumed for the extrapolation (a typical GPU node has 8-32 CPUs)
SIZES = (32, 64, 128)


def _cohort(work: Path, plan: BenchPlan) -> Path:
    """work/cohort/hcp (healthy, HCP grid) and work/cohort/brats (tumour cases, BraTS grid)."""
    from trainables.data.synthetic import generate_cohort

    n_healthy, n_lesion = (3, 2) if plan.quick else (4, 3)  # the fewest a split accepts, in the quick plan
    combined = work / "cohort"
    combined.mkdir()
    hcp = generate_cohort(work / "hcp-grid", n_healthy, 0, 0, grid="hcp")
    brats = generate_cohort(work / "brats-grid", 0, n_lesion, 0, grid="brats")
    shutil.move(hcp.healthy_dir, combined / "hcp")
    shutil.move(brats.lesion_dir, combined / "brats")
    return combined


def _per_subject(cohort: Path) -> tuple[dict[str, Any], list]:
    """Per-cohort medians: preprocessing seconds, raw bytes, cache bytes at each size; and every record."""
    from trainables.data.layouts import discover_subjects
    from trainables.data.preprocess import PreprocessConfig, subject_slices

    figures: dict[str, Any] = {}
    records = []
    for name in COHORTS:
        found = discover_subjects(cohort / name)
        records += found
        seconds, raw, slices = [], [], []
        for record in found:
            started = time.perf_counter()
            out = subject_slices(record, PreprocessConfig(image_size=64))
            seconds.append(time.perf_counter() - started)
            folder = record.image.parent if name == "brats" else record.image.parents[1]
            raw.append(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()))
            slices.append(len(out.slice_index))
        figures[f"scale_{name}_preprocess_s"] = median(seconds)
        figures[f"scale_{name}_raw_bytes"] = median(raw)
        figures[f"scale_{name}_slices"] = median(slices)
        for size in SIZES:
            figures[f"scale_{name}_cache_bytes_{size}"] = median(slices) * (6 * size * size + 8)
    return figures, records


def _ray_build_seconds(records: list, cpus: int) -> float:
    """Seconds of the Ray build of every subject at 64 x 64 on a local Ray of ``cpus`` CPUs (after a warm-up)."""
    import ray

    from trainables.data.build import preprocess_subjects
    from trainables.data.preprocess import PreprocessConfig

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        list(preprocess_subjects(records[:cpus], PreprocessConfig(image_size=64)))  # workers started, imports done
        started = time.perf_counter()
        list(preprocess_subjects(records, PreprocessConfig(image_size=64)))
        return time.perf_counter() - started
    finally:
        ray.shutdown()


def _shared(cohort: Path, work: Path) -> dict[str, Any]:
    """The shared cache at 64 x 64 on moto S3: built and published by node A, downloaded by node B."""
    import ray

    from trainables.data.cache import SplitConfig
    from trainables.data.preprocess import PreprocessConfig
    from trainables.data.s3 import DataSource
    from trainables.data.shared_cache import fetch_shared, shared_slice_cache
    from trainables.data.staging import upload_cohort

    with environment(**CREDENTIALS), MotoServer() as url:
        study = DataSource(url, "us-east-1", "s3://bench-scale/data/hcp/", "s3://bench-scale/data/brats/",
                           work / "cluster.yaml")  # fmt: skip
        upload_cohort(study, cohort, create_bucket=True)
        raw = sum(p.stat().st_size for p in cohort.rglob("*") if p.is_file() and p.name != "cohort.json")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            started = time.perf_counter()
            built = shared_slice_cache(study, PreprocessConfig(image_size=64), SplitConfig(), work / "node-a")
            build_s = time.perf_counter() - started
        finally:
            ray.shutdown()
        started = time.perf_counter()
        fetched = fetch_shared(study, built.key, work / "node-b")
        fetch_s = time.perf_counter() - started
    return {
        "scale_node_bytes_ratio": ratio(fetched.downloaded_bytes, raw),
        "scale_node_bytes": fetched.downloaded_bytes,
        "scale_raw_cohort_bytes": raw,
        "scale_shared_build_s": build_s,
        "scale_node_fetch_s": fetch_s,
    }


def extrapolate(figures: dict[str, Any]) -> dict[str, float]:
    """HCP 1,113 + BraTS 1,251 subjects: GB raw and cached at 64, and build minutes on 1, 4 and 16 nodes of
    CPUS_PER_NODE CPUs at the measured 2-CPU efficiency (speed-up / 2), one CPU per subject task."""
    cpu_s = sum(n * figures[f"scale_{name}_preprocess_s"] for name, n in COHORTS.items())
    efficiency = min(1.0, figures["scale_preprocess_speedup"] / 2)
    out = {
        "scale_full_raw_gb": sum(n * figures[f"scale_{name}_raw_bytes"] for name, n in COHORTS.items()) / 1e9,
        "scale_full_cache_gb_64": sum(n * figures[f"scale_{name}_cache_bytes_64"] for name, n in COHORTS.items()) / 1e9,
        "scale_full_preprocess_cpu_min": cpu_s / 60,
    }
    for nodes in NODES:
        out[f"scale_full_build_min_{nodes}_nodes"] = cpu_s / (nodes * CPUS_PER_NODE * efficiency) / 60
    return out


def run(plan: BenchPlan) -> dict[str, Any]:
    """Section figures: scale_* (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        cohort = _cohort(work, plan)
        figures, records = _per_subject(cohort)
        one, two = _ray_build_seconds(records, 1), _ray_build_seconds(records, 2)
        figures.update(scale_build_1cpu_s=one, scale_build_2cpu_s=two, scale_preprocess_speedup=ratio(one, two))
        figures.update(_shared(cohort, work))
    figures.update(extrapolate(figures))
    for name in COHORTS:
        say(f"scale {name}: {figures[f'scale_{name}_preprocess_s']:.2f} s/subject, "
            f"raw {figures[f'scale_{name}_raw_bytes'] / 1e6:.1f} MB, cache "
            + ", ".join(f"{s}: {figures[f'scale_{name}_cache_bytes_{s}'] / 1e6:.2f} MB" for s in SIZES))  # fmt: skip
    say(f"scale: Ray build {one:.1f} s on 1 CPU, {two:.1f} s on 2 (x{figures['scale_preprocess_speedup']:.2f}); "
        f"second node {figures['scale_node_bytes'] / 1e6:.1f} MB of {figures['scale_raw_cohort_bytes'] / 1e6:.1f} "
        f"MB raw (ratio {figures['scale_node_bytes_ratio']:.3f})")  # fmt: skip
    say(f"scale: HCP 1,113 + BraTS 1,251: raw {figures['scale_full_raw_gb']:.0f} GB, cache at 64 "
        f"{figures['scale_full_cache_gb_64']:.1f} GB per node, {figures['scale_full_preprocess_cpu_min']:.0f} "
        f"CPU-minutes of preprocessing, once; on {CPUS_PER_NODE}-CPU nodes: "
        + ", ".join(f"{n} node(s) {figures[f'scale_full_build_min_{n}_nodes']:.1f} min" for n in NODES))  # fmt: skip
    return figures
