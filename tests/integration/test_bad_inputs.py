"""Bad inputs are refused by `python -m study.run` (exit code 2) with the file, key or value named, and leave
nothing half-written: no slice-cache entry, no MLflow store, no trials.csv, no staged file.

Unit tests already cover each check where it lives (tests/unit/test_data.py, test_config.py, test_cluster.py,
tests/integration/test_stage.py); here each goes through the study's entry point. The 4D volume and the
segmentation of another shape are in tests/integration/test_bad_data.py.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import nibabel as nib
import numpy as np
import optuna
import pytest
import yaml

from search_spaces import define_by_run, space_names
from study.config import load_config
from study.data import prepare_data
from study.run import main

SHAPE = (20, 24, 16)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
HCP_FILE = "T2w_acpc_dc_restore_brain.nii.gz"


# ---------------------------------------------------------------- helpers


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _head(seed: int) -> np.ndarray:
    """An ellipsoid 'brain' of noisy tissue in a zero background."""
    grid = np.indices(SHAPE).astype(np.float32)
    centre = (np.array(SHAPE, dtype=np.float32) / 2)[:, None, None, None]
    inside = (((grid - centre) / (centre * 0.8)) ** 2).sum(0) < 1
    return (inside * (1 + np.random.default_rng(seed).random(SHAPE))).astype(np.float32)


def _case(root: Path, index: int) -> Path:
    """One BraTS case folder: t2 and seg."""
    case = root / f"BraTS19_BAD_{index:03d}"
    seg = np.zeros(SHAPE, np.uint8)
    seg[8:12, 10:14, 6:10] = 2
    _save(case / f"{case.name}_t2.nii.gz", _head(100 + index))
    _save(case / f"{case.name}_seg.nii.gz", seg)
    return case


def _cohort(root: Path) -> tuple[Path, Path]:
    """A valid tiny cohort: 4 HCP subjects and 3 BraTS cases."""
    for i in range(4):
        _save(root / "hcp" / f"10000{i}" / "T1w" / HCP_FILE, _head(i))
    for i in range(3):
        _case(root / "brats", i)
    return root / "hcp", root / "brats"


def _nothing_written(tmp_path: Path) -> None:
    """No MLflow store, no study files, no slice-cache entry (complete or partial)."""
    assert not (tmp_path / "mlflow.db").exists()
    study_dir = tmp_path / "results" / "smoke"
    assert not (study_dir.exists() and [p for p in study_dir.rglob("*") if p.is_file()])
    cache = tmp_path / "cache-root" / "cache"
    assert not (cache.exists() and [p for p in cache.iterdir() if p.is_dir()])  # entries and .tmp- folders


# ---------------------------------------------------------------- bad scans


def _truncated(healthy: Path, lesion: Path) -> tuple[Path, str]:
    path = healthy / "100001" / "T1w" / HCP_FILE
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path, "truncated or damaged"


def _not_nifti(healthy: Path, lesion: Path) -> tuple[Path, str]:
    path = lesion / "BraTS19_BAD_001" / "BraTS19_BAD_001_t2.nii.gz"
    path.write_text("subject,image\nthis is a spreadsheet\n")
    return path, "not a readable NIfTI"


def _nan(healthy: Path, lesion: Path) -> tuple[Path, str]:
    data = _head(2)
    data[5, 6, 7] = np.nan
    return _save(healthy / "100002" / "T1w" / HCP_FILE, data), "NaN or infinite"


def _inf(healthy: Path, lesion: Path) -> tuple[Path, str]:
    data = _head(102)
    data[10, 12, 8] = np.inf
    return _save(lesion / "BraTS19_BAD_002" / "BraTS19_BAD_002_t2.nii.gz", data), "NaN or infinite"


def _seg_affine(healthy: Path, lesion: Path) -> tuple[Path, str]:
    path = lesion / "BraTS19_BAD_000" / "BraTS19_BAD_000_seg.nii.gz"
    shifted = AFFINE.copy()
    shifted[0, 3] = 6.0  # same shape, grid moved by 6 mm
    seg = np.asarray(nib.load(str(path)).dataobj)
    return _save(path, seg, shifted), "affine differs from image"


def _missing_modality(healthy: Path, lesion: Path) -> tuple[Path, str]:
    case = lesion / "BraTS19_BAD_001"
    (case / f"{case.name}_t2.nii.gz").unlink()
    return case, "lacks BraTS19_BAD_001_t2.nii.gz"


def _no_layout(healthy: Path, lesion: Path) -> tuple[Path, str]:
    for path in [p for p in lesion.rglob("*") if p.is_file()]:
        path.rename(path.with_suffix(".img"))  # the scans are there, under names no layout knows
    return lesion, "no known dataset layout"


BAD_SCANS = {
    "truncated": _truncated,
    "not_nifti": _not_nifti,
    "nan_voxel": _nan,
    "inf_voxel": _inf,
    "seg_affine": _seg_affine,
    "missing_modality": _missing_modality,
    "no_layout": _no_layout,
}


def _run(write_config: Callable[..., Path], tmp_path: Path, healthy: Path, lesion: Path) -> int:
    data = {"healthy": str(healthy), "lesion": str(lesion), "root": str(tmp_path / "cache-root")}
    return main(["--config", str(write_config(data=data))])


@pytest.mark.parametrize("case", sorted(BAD_SCANS))
def test_bad_scan_is_refused_by_name(
    case: str, tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    healthy, lesion = _cohort(tmp_path / "data")
    named, expected = BAD_SCANS[case](healthy, lesion)
    assert _run(write_config, tmp_path, healthy, lesion) == 2
    err = capsys.readouterr().err
    assert str(named) in err and expected in err, err
    _nothing_written(tmp_path)


def test_empty_brain_mask_is_refused_by_name(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A CSV manifest whose brain mask for one subject has no voxel set."""
    healthy, lesion = _cohort(tmp_path / "data")
    empty = _save(tmp_path / "data" / "masks" / "100003_brain.nii.gz", np.zeros(SHAPE, np.uint8))
    rows = ["subject,image,brain_mask,lesion_mask"]
    rows += [f"10000{i},{healthy}/10000{i}/T1w/{HCP_FILE},{empty if i == 3 else ''}," for i in range(4)]
    manifest = tmp_path / "data" / "healthy.csv"
    manifest.write_text("\n".join(rows) + "\n")
    assert _run(write_config, tmp_path, manifest, lesion) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "empty brain mask" in err, err
    _nothing_written(tmp_path)


def test_the_nothing_written_check_sees_a_cache_entry(tmp_path: Path, write_config: Callable[..., Path]) -> None:
    """The valid cohort builds its slice cache where `_nothing_written` looks (so the check can fail)."""
    healthy, lesion = _cohort(tmp_path / "data")
    data = {"healthy": str(healthy), "lesion": str(lesion), "root": str(tmp_path / "cache-root")}
    entry, _ = prepare_data(load_config(write_config(data=data)))
    assert (entry / "meta.json").is_file()
    with pytest.raises(AssertionError):
        _nothing_written(tmp_path)


# ---------------------------------------------------------------- bad study settings


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"families": ["gan9000"]}, ("'families'", "'gan9000'")),
        ({"objectives": [{"metric": "val_pixel_aurok"}]}, ("'objectives[0].metric'", "'val_pixel_aurok'")),
        ({"sampler": "grid"}, ("'sampler'", "'grid'")),
        ({"scheduler": "asha", "objectives": ["val_slice_auroc", "val_pixel_auroc"]}, ("'scheduler'", "ASHA")),
    ],
    ids=["family", "objective", "sampler", "asha_multi_objective"],
)
def test_bad_setting_is_refused_by_key_and_value(
    overrides: dict[str, Any],
    named: tuple[str, str],
    tmp_path: Path,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_path = write_config(**overrides)
    assert main(["--config", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert str(config_path) in err and all(word in err for word in named), err
    assert not (tmp_path / "results").exists()  # refused before anything was written
    assert not (tmp_path / "mlflow.db").exists()


class RangeRecorder:
    """An Optuna trial that notes each numeric range a search space asks for, then asks Optuna for it."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.ranges: dict[str, tuple[float, float, bool]] = {}  # name -> (low, high, log)

    def suggest_float(self, name: str, low: float, high: float, **kwargs: Any) -> float:
        self.ranges[name] = (low, high, kwargs.get("log", False))
        return self.trial.suggest_float(name, low, high, **kwargs)

    def suggest_int(self, name: str, low: int, high: int, **kwargs: Any) -> int:
        self.ranges[name] = (low, high, kwargs.get("log", False))
        return self.trial.suggest_int(name, low, high, **kwargs)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        assert len(choices) >= 1, f"{name}: no choices"
        return self.trial.suggest_categorical(name, choices)


def _bad_ranges(ranges: dict[str, tuple[float, float, bool]]) -> list[str]:
    return [f"{name}: low {lo} > high {hi}" for name, (lo, hi, _) in ranges.items() if lo > hi] + [
        f"{name}: log range starting at {lo}" for name, (lo, _, log) in ranges.items() if log and lo <= 0
    ]


@pytest.mark.parametrize("family", [name for name in space_names() if name != "threshold"])
def test_every_search_range_has_low_at_most_high(family: str) -> None:
    """Search ranges are code (search_spaces/), not config: each, drawn through Optuna, must be a real range."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    recorder = RangeRecorder(study.ask())
    define_by_run([family])(recorder)
    assert recorder.ranges, f"{family}: no numeric range searched"
    assert _bad_ranges(recorder.ranges) == []


def test_a_reversed_range_is_caught() -> None:
    """The check above can fail: a range written the wrong way round is reported, and Optuna refuses it."""
    recorder = RangeRecorder(optuna.create_study().ask())
    with pytest.raises(ValueError, match="low"):
        recorder.suggest_float("lr", 1e-2, 1e-5, log=True)
    assert _bad_ranges(recorder.ranges) == ["lr: low 0.01 > high 1e-05"]


# ---------------------------------------------------------------- bad cluster YAML and object store


def _cluster_yaml(tmp_path: Path, endpoint: str, bucket: str) -> Path:
    block = {
        "storage": {"endpoint_url": endpoint, "region": "us-east-1"},
        "data": {"healthy": f"s3://{bucket}/hcp/", "lesion": f"s3://{bucket}/brats/"},
        "cache_dir": str(tmp_path / "node-cache"),
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"cluster_name": "study", "metadata": {"study": block}}))
    return path


def _run_on_cluster(write_config: Callable[..., Path], cluster_yaml: Path) -> tuple[int, float]:
    started = time.monotonic()
    code = main(["--config", str(write_config()), "--cluster", str(cluster_yaml)])
    return code, time.monotonic() - started


def _nothing_staged(tmp_path: Path) -> None:
    cache = tmp_path / "node-cache"
    assert not (cache.exists() and [p for p in cache.rglob("*") if p.is_file() and not p.name.startswith(".")])
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


def test_cluster_yaml_without_study_block_is_refused(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"cluster_name": "study", "provider": {"type": "aws", "region": "us-east-1"}}))
    assert _run_on_cluster(write_config, path)[0] == 2
    err = capsys.readouterr().err
    assert str(path) in err and "metadata.study" in err, err
    _nothing_staged(tmp_path)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_s3_endpoint_is_refused_quickly(
    tmp_path: Path, s3_endpoint: str, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    code, seconds = _run_on_cluster(write_config, _cluster_yaml(tmp_path, endpoint, "brain-mri"))
    assert code == 2
    err = capsys.readouterr().err
    assert endpoint in err and "cannot reach the endpoint" in err, err
    assert seconds < 30
    _nothing_staged(tmp_path)


def test_bucket_without_the_prefix_is_refused(
    tmp_path: Path, s3_endpoint: str, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = f"brain-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="hcp2/100000/T1w/" + HCP_FILE, Body=b"not under hcp/")  # a near miss
    assert _run_on_cluster(write_config, _cluster_yaml(tmp_path, s3_endpoint, bucket))[0] == 2
    err = capsys.readouterr().err
    assert f"bucket '{bucket}', prefix 'hcp/': no objects under this prefix" in err, err
    _nothing_staged(tmp_path)


def _moto_auth(endpoint: str, value: str) -> None:
    """moto's switch for checking every request's signature ("0": from now on; "inf": never)."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=value.encode(), headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(request, timeout=10).read()


def test_wrong_s3_credentials_are_refused(
    tmp_path: Path,
    s3_endpoint: str,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = f"brain-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGKEY00000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    _moto_auth(s3_endpoint, "0")
    try:
        code, _ = _run_on_cluster(write_config, _cluster_yaml(tmp_path, s3_endpoint, bucket))
    finally:
        _moto_auth(s3_endpoint, "inf")
    assert code == 2
    err = capsys.readouterr().err
    assert f"{s3_endpoint}, bucket '{bucket}'" in err and "credentials rejected" in err, err
    assert "not-the-secret" not in err  # the message names the key's problem, never the secret
    _nothing_staged(tmp_path)


def test_the_nothing_staged_check_sees_a_staged_file(tmp_path: Path) -> None:
    """Sanity check of `_nothing_staged` itself: a staged file would be seen."""
    (tmp_path / "node-cache" / "b" / "hcp").mkdir(parents=True)
    (tmp_path / "node-cache" / "b" / "hcp" / "scan.nii.gz").write_bytes(b"x")
    with pytest.raises(AssertionError):
        _nothing_staged(tmp_path)
    (tmp_path / "node-cache" / "b" / "hcp" / "scan.nii.gz").unlink()
    (tmp_path / "node-cache" / ".stage-manifest.json").write_text(json.dumps({}))
    _nothing_staged(tmp_path)
