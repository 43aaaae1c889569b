"""The voxel grids the synthetic generator can write on: its own 2 mm template grid, HCP's and BraTS'.

A subject is drawn on the 2 mm MNI152 template grid and then resampled (trilinear for images, nearest for
label maps) onto a grid with the same centre in world space, so the preprocessing sees real cohorts' sizes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

# name -> (shape, voxel size in mm); None keeps the template's grid
GRIDS: dict[str, tuple[tuple[int, int, int], float] | None] = {
    "mni2mm": None,
    "hcp": ((260, 311, 260), 0.7),  # HCP's T1w/T2w_acpc_dc_restore_brain
    "brats": ((240, 240, 155), 1.0),  # BraTS 2019-2021
}


def check_grid(grid: str) -> str:
    """``grid`` if it is a known grid name; ValueError naming the choices otherwise."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {sorted(GRIDS)}, got {grid!r}")
    return grid


def resample_to_grid(volume: np.ndarray, affine: np.ndarray, grid: str, labels: bool) -> tuple[np.ndarray, np.ndarray]:
    """(volume on ``grid``, its affine): the grid's centre sits on the template volume's centre."""
    target = GRIDS[check_grid(grid)]
    if target is None:
        return volume, affine
    shape, voxel_mm = target
    scale = np.abs(np.diag(affine)[:3])  # the template is axis-aligned
    step = voxel_mm / scale  # template voxels per output voxel, per axis
    centre_in, centre_out = (np.array(volume.shape) - 1) / 2, (np.array(shape) - 1) / 2
    offset = centre_in - step * centre_out
    out = ndi.affine_transform(volume, step, offset=offset, output_shape=shape, order=0 if labels else 1)
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] / scale * voxel_mm
    new_affine[:3, 3] = affine[:3, :3] @ offset + affine[:3, 3]
    return out.astype(volume.dtype, copy=False), new_affine
