"""Turning one subject's volumes into standardised, square, resized axial slices (and back)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainables.data.errors import DataError
from trainables.data.layouts import SubjectRecord
from trainables.data.nifti import load_volume, same_grid

# Bump when the preprocessing code changes what it produces, so cached slices are rebuilt.
PREPROCESS_VERSION = 1


@dataclass(frozen=True)
class PreprocessConfig:
    """How volumes become slices. ``key()`` identifies the result in the slice cache."""

    image_size: int = 32  # output slice side; 32 as in the first paper, 64 and 128 supported
    modality: str = "t2"  # BraTS modality read for lesion subjects (and HCP image for healthy ones)
    min_brain_fraction: float = 0.2  # keep axial slices whose brain mask covers this share of the square crop
    n4: bool = False  # N4 bias correction: not available (see __post_init__)

    def __post_init__(self) -> None:
        if not 8 <= self.image_size <= 512:
            raise ValueError(f"PreprocessConfig.image_size must be in [8, 512] (32, 64, 128), got {self.image_size}")
        if not 0.0 <= self.min_brain_fraction < 1.0:
            raise ValueError(f"PreprocessConfig.min_brain_fraction must be in [0, 1), got {self.min_brain_fraction}")
        if self.n4:
            # N4 needs SimpleITK or ANTs, which are not dependencies. HCP *_restore_brain images are already
            # bias-corrected; BraTS images are used as distributed, as in most benchmarks.
            raise ValueError("PreprocessConfig.n4=True is not supported: N4 bias correction is not implemented")

    def key(self) -> str:
        """Short stable hash of the fields and the preprocessing code version."""
        fields = dict(asdict(self), modality=self.modality.lower(), version=PREPROCESS_VERSION)
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class CropBox:
    """The square in-plane window cut from the canonical volume: ``[x0, x0+side) x [y0, y0+side)``.

    The window may reach outside the volume (it is centred on the brain's bounding box and padded with
    background); ``shape`` is the canonical volume's shape. Every axial slice of a subject uses this box.
    """

    x0: int
    y0: int
    side: int
    shape: tuple[int, int, int]

    def to_dict(self) -> dict:
        """JSON-ready form (for meta.json)."""
        return {"x0": self.x0, "y0": self.y0, "side": self.side, "shape": list(self.shape)}


@dataclass(frozen=True)
class SubjectSlices:
    """One subject's kept axial slices, each ``S x S`` with ``slice[i, j]`` ~ ``volume[x0 + i*k, y0 + j*k, z]``.

    ``images`` (n,S,S) float32 standardised, 0 outside the brain; ``brain`` and ``lesion`` (n,S,S) uint8 in
    {0, 1}, lesion only inside brain; ``slice_index`` (n,) int32 axial index ``z`` in the canonical volume;
    ``crop`` the in-plane window; ``affine`` the canonical volume's affine (to write maps back as NIfTI).
    """

    subject_id: str
    images: np.ndarray
    brain: np.ndarray
    lesion: np.ndarray
    slice_index: np.ndarray
    crop: CropBox
    affine: np.ndarray


def subject_slices(record: SubjectRecord, cfg: PreprocessConfig) -> SubjectSlices:
    """Load, mask, standardise, crop, resize and select the axial slices of one subject.

    Raises :class:`DataError` naming the files when a mask's grid differs from the image's or the brain
    mask is empty.
    """
    image, affine = load_volume(record.image)
    lesion = _load_mask(record.lesion_mask, record.image, image.shape, affine)
    brain = _load_mask(record.brain_mask, record.image, image.shape, affine) if record.brain_mask else image > 0
    if lesion is None:
        lesion = np.zeros(image.shape, dtype=bool)
    # Lesion voxels are brain tissue even where a skull-stripped image happens to be 0 there; counting them
    # as brain keeps every lesion pixel in the in-brain metrics.
    brain = brain | lesion
    if not brain.any():
        raise DataError(f"{record.brain_mask or record.image}: empty brain mask (no voxel > 0)")
    standardised = standardise(image, brain, source=record.image)
    crop = brain_crop(brain)
    fraction = _brain_fraction(brain, crop)
    keep = np.flatnonzero(fraction >= cfg.min_brain_fraction).astype(np.int32)
    size = cfg.image_size
    brain_small = resize_masks(_cut(brain, crop, keep), size)
    # resizing blends the brain edge with background; zeroing outside the resized mask keeps background exactly 0
    images = resize_slices(_cut(standardised, crop, keep), size) * brain_small
    return SubjectSlices(
        subject_id=record.subject_id,
        images=images.astype(np.float32, copy=False),
        brain=brain_small,
        lesion=resize_masks(_cut(lesion, crop, keep), size) & brain_small,
        slice_index=keep,
        crop=crop,
        affine=affine,
    )


def _load_mask(path: Path | None, image_path: Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray | None:
    """A mask (> 0) on the image's grid; DataError naming both files if shape or affine differ."""
    if path is None:
        return None
    data, mask_affine = load_volume(path)
    if data.shape != shape:
        raise DataError(f"{path}: mask shape {data.shape} differs from image {image_path} shape {shape}")
    if not same_grid(mask_affine, affine):
        raise DataError(
            f"{path}: mask affine differs from image {image_path} affine\n"
            f"mask:\n{np.round(mask_affine, 4)}\nimage:\n{np.round(affine, 4)}"
        )
    return data > 0


def standardise(volume: np.ndarray, brain: np.ndarray, source: Path | str = "volume") -> np.ndarray:
    """Zero mean, unit variance over brain voxels; background set to 0 (the brain's mean intensity).

    Setting the background to the standardised brain mean, not to a very low value, keeps the brain edge
    from dominating reconstruction losses; the brain mask tells the two apart where that matters.
    """
    values = volume[brain].astype(np.float64)
    mean, std = values.mean(), values.std()
    if not std > 1e-6 * max(1.0, abs(mean)):
        raise DataError(f"{source}: brain intensities are constant ({mean:g}); cannot standardise")
    out = ((volume - mean) / std).astype(np.float32)
    out[~brain] = 0.0
    return out


def brain_crop(brain: np.ndarray) -> CropBox:
    """Square in-plane window centred on the brain's bounding box over all axial slices."""
    xs = np.flatnonzero(brain.any(axis=(1, 2)))
    ys = np.flatnonzero(brain.any(axis=(0, 2)))
    width, height = int(xs[-1] + 1 - xs[0]), int(ys[-1] + 1 - ys[0])
    side = max(width, height)
    x0 = int(xs[0]) - (side - width) // 2
    y0 = int(ys[0]) - (side - height) // 2
    return CropBox(x0=x0, y0=y0, side=side, shape=tuple(int(n) for n in brain.shape))


def _overlap(crop: CropBox) -> tuple[slice, slice, slice, slice]:
    """Index ranges where the crop window and the volume overlap: (window x, window y, volume x, volume y)."""
    vx0, vy0 = max(crop.x0, 0), max(crop.y0, 0)
    vx1, vy1 = min(crop.x0 + crop.side, crop.shape[0]), min(crop.y0 + crop.side, crop.shape[1])
    return (
        slice(vx0 - crop.x0, vx1 - crop.x0),
        slice(vy0 - crop.y0, vy1 - crop.y0),
        slice(vx0, vx1),
        slice(vy0, vy1),
    )


def _cut(volume: np.ndarray, crop: CropBox, keep: np.ndarray) -> np.ndarray:
    """The kept axial slices inside the crop window, (n, side, side), zero-padded outside the volume."""
    wx, wy, vx, vy = _overlap(crop)
    out = np.zeros((len(keep), crop.side, crop.side), dtype=np.float32)
    out[:, wx, wy] = np.moveaxis(volume[vx, vy][:, :, keep], 2, 0)
    return out


def _brain_fraction(brain: np.ndarray, crop: CropBox) -> np.ndarray:
    """Per axial slice, the share of the square window covered by brain (at native resolution)."""
    return brain.sum(axis=(0, 1)) / float(crop.side * crop.side)


def resize_slices(slices: np.ndarray, size: int) -> np.ndarray:
    """Resize (n, h, w) to (n, size, size) float32: bilinear, antialiased when shrinking."""
    if len(slices) == 0:
        return np.zeros((0, size, size), dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[:, 0].numpy()


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Resize binary (n, h, w) masks to uint8 (n, size, size): a pixel is set if it is mostly covered."""
    return (resize_slices(masks, size) >= 0.5).astype(np.uint8)


def uncrop_slices(maps: np.ndarray, slice_index: np.ndarray, crop: CropBox, fill: float = 0.0) -> np.ndarray:
    """Undo the crop and resize: (n, S, S) maps -> float32 volume of ``crop.shape`` in canonical space.

    Slices not kept and voxels outside the window get ``fill``. With the subject's canonical ``affine``
    (``SubjectSlices.affine``) the result can be saved as NIfTI aligned with the input scan.
    """
    volume = np.full(crop.shape, fill, dtype=np.float32)
    if len(maps) == 0:
        return volume
    full = resize_slices(np.asarray(maps, dtype=np.float32), crop.side)
    wx, wy, vx, vy = _overlap(crop)
    volume[vx, vy, np.asarray(slice_index)] = np.moveaxis(full[:, wx, wy], 0, 2)
    return volume
