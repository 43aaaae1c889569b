"""Reading NIfTI volumes with nibabel, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from trainables.data.errors import DataError

_NIFTI_TYPES = (nib.Nifti1Image, nib.Nifti2Image)


def load_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D NIfTI volume reoriented to the closest canonical (RAS+) orientation.

    Returns ``(data, affine)``: ``data`` is float32 with axes (x: left->right, y: posterior->anterior,
    z: inferior->superior), so ``data[:, :, k]`` is an axial slice; ``affine`` (4x4 float64) maps voxel
    indices of ``data`` to scanner millimetres. Trailing singleton dimensions (e.g. a 4D volume with one
    frame) are squeezed. Raises :class:`DataError` naming ``path`` for a missing file, an unreadable or
    truncated file, a file that is not NIfTI, a volume that is not 3D, or NaN/inf voxels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    img = _open_image(path)
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise DataError(f"{path}: expected a 3D volume, got shape {shape}")
    try:
        if len(shape) > 3:
            # a single frame stored as 4D/5D (common for masks written by some tools): drop the frame axes
            img = img.slicer[(slice(None),) * 3 + (0,) * (len(shape) - 3)]
        canonical = nib.as_closest_canonical(img)
        data = canonical.get_fdata(dtype=np.float32)
    except Exception as exc:  # nibabel/gzip/zlib raise many types for truncated or damaged data
        raise DataError(
            f"{path}: cannot read the voxel data, truncated or damaged? ({type(exc).__name__}: {exc})"
        ) from exc
    if not np.isfinite(data).all():
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise DataError(f"{path}: {bad} voxels are NaN or infinite")
    return data, np.asarray(canonical.affine, dtype=np.float64)


def _open_image(path: Path) -> nib.spatialimages.SpatialImage:
    """Open the header (nibabel reads voxel data lazily) and insist on NIfTI-1 or NIfTI-2."""
    try:
        img = nib.load(str(path))
    except Exception as exc:  # ImageFileError, BadGzipFile, EOFError, HeaderDataError, ...
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, _NIFTI_TYPES):
        raise DataError(f"{path}: not a NIfTI file (nibabel read it as {type(img).__name__})")
    return img


def same_grid(affine_a: np.ndarray, affine_b: np.ndarray, atol: float = 1e-3) -> bool:
    """Whether two affines describe the same voxel grid, up to float noise in the headers."""
    return bool(np.allclose(affine_a, affine_b, rtol=0.0, atol=atol))
