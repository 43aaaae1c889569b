"""Using a trained detector outside a trial: load its model.pt, map new scans, evaluate a labelled folder.

A model.pt (``trainables.checkpoint.model_record``) carries everything: family, hyperparameters, image size,
preprocessing settings, weights and the val metrics that chose it (whose ``val_best_threshold`` is the
threshold ``dice`` uses). Scans are preprocessed exactly as the detector's training slices were
(``trainables.data.preprocess.subject_slices``); maps are brought back to each input's own voxel grid.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from torch import nn

from trainables.checkpoint import MODEL_FILE, load_model
from trainables.data.errors import DataError
from trainables.data.layouts import NIFTI_SUFFIXES, SubjectRecord, discover_subjects
from trainables.data.nifti import load_volume
from trainables.data.preprocess import PreprocessConfig, subject_slices, uncrop_slices
from trainables.families.base import Family
from trainables.figures import collect, render

BATCH = 128  # slices scored at once: bounded memory whatever the volume
RAS = axcodes2ornt(("R", "A", "S"))  # the orientation load_volume returns
Progress = Callable[[str], None]


class ModelError(ValueError):
    """A trained detector cannot be loaded or used; the message names the file or run."""


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU; otherwise a torch device name (``"cpu"``, ``"cuda:1"``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ModelError(f"unknown device {name!r} ({err})") from err


def load_detector(path: str | Path, device: str | torch.device = "cpu") -> tuple[Family, nn.ModuleDict, dict[str, Any]]:
    """(family, nets in eval mode, model record) from a model.pt file or a checkpoint folder holding one.

    Raises :class:`ModelError` naming the file when it is missing, unreadable or not a detector.
    The file is read with ``torch.load(weights_only=True)``: tensors and plain data, no pickled code.
    """
    path = Path(path)
    file = path / MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        raise ModelError(f"{path}: no trained detector here (expected a {MODEL_FILE} file or a checkpoint folder)")
    try:
        family, nets, record = load_model(file, device)
    except KeyError as err:
        raise ModelError(f"{file}: not a detector checkpoint (no {err} entry)") from err
    except Exception as err:  # pickle, zip, torch and state-dict errors come in many types
        raise ModelError(f"{file}: cannot load the detector ({type(err).__name__}: {err})") from err
    record["source"] = str(file)
    preprocess_config(record)  # fail now, naming the file, rather than on the first scan
    return family, nets, record


def preprocess_config(record: dict[str, Any]) -> PreprocessConfig:
    """The preprocessing the detector was trained with (image size from the record where settings lack it)."""
    source = record.get("source", MODEL_FILE)
    settings = dict(record.get("preprocess") or {})
    settings.setdefault("image_size", record["image_size"])
    known = {f.name for f in fields(PreprocessConfig)}
    unknown = sorted(set(settings) - known)
    if unknown or settings["image_size"] != record["image_size"]:
        raise ModelError(f"{source}: preprocessing settings {settings} do not fit image size {record['image_size']}")
    try:
        return PreprocessConfig(**settings)
    except ValueError as err:
        raise ModelError(f"{source}: {err}") from err


def val_threshold(record: dict[str, Any]) -> float | None:
    """The pixel threshold chosen on val when the detector was trained, if recorded."""
    value = (record.get("val_metrics") or {}).get("val_best_threshold")
    return float(value) if value is not None and math.isfinite(value) else None


def _device_of(nets: nn.ModuleDict) -> torch.device:
    return next((p.device for p in nets.parameters()), torch.device("cpu"))


def score_slices(family: Family, nets: nn.ModuleDict, images: np.ndarray) -> np.ndarray:
    """Pixel maps (n, S, S) float32 of preprocessed slices (n, S, S), ``BATCH`` slices at a time."""
    device = _device_of(nets)
    maps = np.zeros(images.shape, dtype=np.float32)
    for i in range(0, len(images), BATCH):
        batch = torch.from_numpy(np.ascontiguousarray(images[i : i + BATCH], dtype=np.float32))[:, None]
        maps[i : i + BATCH] = family.score(nets, batch.to(device)).pixel_map[:, 0].float().cpu().numpy()
    return maps


def score_subject(
    family: Family, nets: nn.ModuleDict, record: dict[str, Any], subject: SubjectRecord
) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly map of one scan on its own voxel grid (shape, orientation) and that grid's affine.

    Voxels of slices preprocessing drops (too little brain) and voxels outside the brain (``brain_mask``,
    else image > 0, at the scan's resolution) are 0.
    """
    slices = subject_slices(subject, preprocess_config(record))
    maps = score_slices(family, nets, slices.images) * slices.brain
    canonical = uncrop_slices(maps, slices.slice_index, slices.crop)
    # the resized slice masks are blurred at the brain's edge: cut with the full-resolution mask instead
    image, _ = load_volume(subject.image)
    brain = load_volume(subject.brain_mask)[0] > 0 if subject.brain_mask else image > 0
    canonical[~brain] = 0.0
    return to_input_grid(canonical, subject.image)


def score_volume(
    family: Family, nets: nn.ModuleDict, record: dict[str, Any], image_path: Path, brain_mask: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly map of the scan at ``image_path`` (same shape and affine as the scan) and its affine."""
    image_path = Path(image_path)
    subject = SubjectRecord(_scan_name(image_path), image_path, lesion_mask=None, brain_mask=brain_mask)
    return score_subject(family, nets, record, subject)


def to_input_grid(volume: np.ndarray, image_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Undo ``load_volume``'s reorientation: a volume in closest-canonical (RAS+) axes -> the scan's own axes."""
    img = nib.load(str(image_path))  # header only; load_volume has checked the file
    back = ornt_transform(RAS, io_orientation(img.affine))
    data = apply_orientation(volume, back).astype(np.float32)
    if data.shape != tuple(img.shape[:3]):
        raise DataError(f"{image_path}: map shape {data.shape} does not match the scan's {tuple(img.shape)}")
    # a single-frame 4D scan gets a single-frame 4D map
    return data.reshape(img.shape), np.asarray(img.affine, dtype=np.float64)


def write_map(data: np.ndarray, affine: np.ndarray, path: Path, like: Path | None = None) -> Path:
    """Save a float32 NIfTI map; with ``like``, copy that scan's spatial units and sform/qform codes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    if like is not None:
        header = nib.load(str(like)).header
        out.header.set_xyzt_units(*header.get_xyzt_units())
        out.set_sform(affine, code=int(header.get("sform_code", 0)) or "aligned")
        out.set_qform(affine, code=int(header.get("qform_code", 0)))
    nib.save(out, str(path))
    return path


def _scan_name(path: Path) -> str:
    """File name without its NIfTI suffix."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def scans_in_folder(folder: Path, modality: str) -> list[tuple[SubjectRecord, str]]:
    """The scans of a folder and each one's map file name.

    A folder with ``*.nii`` / ``*.nii.gz`` files directly in it: each file is one scan, its map keeps its
    name. Otherwise the subjects of a known layout (HCP, BraTS with or without seg, CSV manifest) in
    ``modality`` (the detector's), brain masks included; each map is ``<subject>.nii.gz``.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if files:
        return [(SubjectRecord(_scan_name(p), p, None, None), p.name) for p in files]
    subjects = discover_subjects(folder, modality, require_lesion_mask=False)
    named = [(s, f"{s.subject_id.replace(os.sep, '_')}.nii.gz") for s in subjects]
    return [(SubjectRecord(s.subject_id, s.image, None, s.brain_mask), name) for s, name in named]


def score_folder(
    family: Family,
    nets: nn.ModuleDict,
    record: dict[str, Any],
    input_dir: Path,
    output_dir: Path,
    progress: Progress | None = None,
) -> list[Path]:
    """One map per scan of ``input_dir`` (see :func:`scans_in_folder`) written into ``output_dir``."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise DataError(f"{input_dir}: input folder not found")
    if output_dir.resolve() == input_dir.resolve():
        raise DataError(f"{output_dir}: the output folder must differ from the input folder (maps keep scan names)")
    scans = scans_in_folder(input_dir, preprocess_config(record).modality)
    written = []
    for done, (subject, name) in enumerate(scans, start=1):
        data, affine = score_subject(family, nets, record, subject)
        written.append(write_map(data, affine, output_dir / name, like=subject.image))
        if progress is not None:
            progress(f"{done}/{len(scans)} {subject.image} -> {written[-1]}")
    return written


@dataclass
class FolderEvaluation:
    """Metrics and figures of a detector on labelled folders."""

    metrics: dict[str, float]  # every name of trainables.metric_names.DETECTION_METRICS
    figures: list[Path]
    subjects: int
    lesion_subjects: int  # subjects with a lesion mask
    slices: int
    threshold: float | None  # the threshold `dice` used


def labelled_subjects(folders: list[Path], modality: str) -> list[SubjectRecord]:
    """Subjects of every folder (any known layout); a subject without lesion mask is healthy."""
    subjects = [s for folder in folders for s in discover_subjects(Path(folder), modality)]
    ids = [s.subject_id for s in subjects]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"{', '.join(map(str, folders))}: subject ids appear more than once: {duplicates[:5]}")
    return subjects


def subject_batches(
    subjects: list[SubjectRecord], pre: PreprocessConfig, progress: Progress | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of preprocessed slices (image, brain, lesion (B,1,S,S); subject (B,) index), one subject at a time."""
    for done, subject in enumerate(subjects, start=1):
        slices = subject_slices(subject, pre)
        for i in range(0, len(slices.images), BATCH):
            part = slice(i, i + BATCH)
            yield {
                "image": torch.from_numpy(slices.images[part])[:, None],
                "brain": torch.from_numpy(slices.brain[part].astype(np.float32))[:, None],
                "lesion": torch.from_numpy(slices.lesion[part].astype(np.float32))[:, None],
                "subject": torch.full((len(slices.images[part]),), done - 1, dtype=torch.int64),
            }
        if progress is not None:
            progress(f"scored {done}/{len(subjects)} {subject.subject_id} ({len(slices.images)} slices)")


def evaluate_folder(
    family: Family,
    nets: nn.ModuleDict,
    record: dict[str, Any],
    folders: list[Path],
    out_dir: Path,
    threshold: float | None = None,
    progress: Progress | None = None,
) -> FolderEvaluation:
    """Every detection metric and the figures (into ``out_dir``) of the detector on labelled folders.

    Slices are labelled by their lesion masks, so a lesion subject's lesion-free slices are negatives and a
    folder of lesion subjects alone has both classes. ``dice`` uses ``threshold``, by default the one chosen
    on val when the detector was trained. Raises DataError naming the files for unusable data.
    """
    pre = preprocess_config(record)
    subjects = labelled_subjects(folders, pre.modality)
    threshold = val_threshold(record) if threshold is None else threshold
    batches = subject_batches(subjects, pre, progress)
    collected = collect(family, nets, batches, _device_of(nets))
    metrics = collected.metrics.compute(threshold)
    return FolderEvaluation(
        metrics=metrics,
        figures=render(collected, metrics, Path(out_dir), "eval", threshold),
        subjects=len(subjects),
        lesion_subjects=sum(s.lesion_mask is not None for s in subjects),
        slices=collected.metrics.n_slices,
        threshold=threshold,
    )
