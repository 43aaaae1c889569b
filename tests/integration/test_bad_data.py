"""A study on bad scans is refused before any MLflow run or trial, with the file named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from study.run import main

SHAPE = (20, 24, 16)


def _save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def _brain(rng: np.random.Generator) -> np.ndarray:
    grid = np.indices(SHAPE).astype(np.float32)
    centre = (np.array(SHAPE, dtype=np.float32) / 2)[:, None, None, None]
    inside = (((grid - centre) / (centre * 0.8)) ** 2).sum(0) < 1
    return (inside * (1 + rng.random(SHAPE))).astype(np.float32)


def _cohort(root: Path, healthy: int = 4, lesion: int = 3) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for i in range(healthy):
        _save(root / "hcp" / f"10000{i}" / "T1w" / "T2w_acpc_dc_restore_brain.nii.gz", _brain(rng))
    for i in range(lesion):
        case = f"BraTS19_T_{i:03d}"
        image = _brain(rng)
        seg = np.zeros(SHAPE, np.uint8)
        seg[8:12, 10:14, 6:10] = 2
        _save(root / "brats" / case / f"{case}_t2.nii.gz", image)
        _save(root / "brats" / case / f"{case}_seg.nii.gz", seg)
    return root / "hcp", root / "brats"


def _run(write_config: Callable[..., Path], healthy: Path, lesion: Path) -> int:
    return main(["--config", str(write_config(data={"healthy": str(healthy), "lesion": str(lesion)}))])


def test_4d_volume_is_refused_before_training(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    healthy, lesion = _cohort(tmp_path / "data")
    bad = _save(healthy / "100001" / "T1w" / "T2w_acpc_dc_restore_brain.nii.gz", np.ones((*SHAPE, 3), np.float32))
    assert _run(write_config, healthy, lesion) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and ("4D" in err or "3D" in err)
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was opened
    assert not (tmp_path / "results" / "smoke" / "trials.csv").exists()


def test_segmentation_of_another_shape_is_refused(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    healthy, lesion = _cohort(tmp_path / "data")
    case = "BraTS19_T_001"
    _save(lesion / case / f"{case}_seg.nii.gz", np.zeros((20, 24, 15), np.uint8))
    assert _run(write_config, healthy, lesion) == 2
    err = capsys.readouterr().err
    assert f"{case}_seg.nii.gz" in err and f"{case}_t2.nii.gz" in err
    assert not (tmp_path / "mlflow.db").exists()
