"""Shared by the data test files: tiny synthetic NIfTI volumes, HCP- and BraTS-style folders of them, a small
cohort and the check that an error names its files. Imported by name (pytest puts tests/unit on sys.path)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (24, 28, 20)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def ellipsoid(shape: tuple[int, int, int], center: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii, strict=True)) <= 1.0


def brain_blob(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    return ellipsoid(shape, tuple((n - 1) / 2 for n in shape), (shape[0] * 0.38, shape[1] * 0.4, shape[2] * 0.42))


def lesion_blob(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    return ellipsoid(shape, (shape[0] * 0.6, shape[1] * 0.55, shape[2] * 0.5), (3.5, 4.0, 3.0)) & brain_blob(shape)


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def image_volume(seed: int, lesion: bool, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """Brain-extracted T2-like volume: smooth tissue + noise inside the brain, 0 outside, bright lesion."""
    rng = np.random.default_rng(seed)
    brain = brain_blob(shape)
    x = np.arange(shape[0])[:, None, None] / shape[0]
    data = (300.0 + 80.0 * x + rng.normal(0, 20.0, shape)) * brain
    if lesion:
        data[lesion_blob(shape)] = 900.0
    return data.astype(np.float32)


def make_hcp(root: Path, n: int, start: int = 100000) -> Path:
    for i in range(n):
        save(root / f"{start + i}" / "T1w" / "T2w_acpc_dc_restore_brain.nii.gz", image_volume(i, lesion=False))
    return root


def make_brats_case(folder: Path, seed: int, modalities: tuple[str, ...] = ("t1", "t2", "flair"), seg: bool = True):
    for modality in modalities:
        save(folder / f"{folder.name}_{modality}.nii.gz", image_volume(seed, lesion=True))
    if seg:
        labels = lesion_blob().astype(np.uint8) * 2  # BraTS labels 1, 2, 4; any > 0 is lesion
        save(folder / f"{folder.name}_seg.nii.gz", labels)


def make_brats(root: Path, n: int, grades: bool = False) -> Path:
    for i in range(n):
        parent = root / ("HGG" if i % 2 == 0 else "LGG") if grades else root
        make_brats_case(parent / f"BraTS19_CASE_{i:03d}", seed=100 + i)
    return root


def make_cohort(base: Path) -> tuple[Path, Path]:
    """6 HCP-style healthy subjects and 4 BraTS-style lesion cases (graded folders) under ``base``."""
    return make_hcp(base / "hcp", 6), make_brats(base / "brats", 4, grades=True)


def assert_names(excinfo: pytest.ExceptionInfo, *paths: Path) -> None:
    for path in paths:
        assert str(path) in str(excinfo.value), f"{path} not named in: {excinfo.value}"
