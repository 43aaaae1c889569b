"""Finding subjects in the known dataset layouts: HCP, BraTS 2019-2021 and a CSV manifest."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from trainables.data.errors import DataError

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("subject", "image", "brain_mask", "lesion_mask")
# HCP minimal-preprocessing outputs in ACPC space: bias-corrected ("restore") and brain-extracted
HCP_FILES = {"t1": "T1w_acpc_dc_restore_brain.nii.gz", "t2": "T2w_acpc_dc_restore_brain.nii.gz"}
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_GRADES = ("HGG", "LGG")  # BraTS 2019 groups cases by grade; 2020/2021 do not
NIFTI_SUFFIXES = (".nii.gz", ".nii")  # BraTS 2020 as often distributed ships uncompressed .nii


@dataclass(frozen=True)
class SubjectRecord:
    """One subject's files. Masks are ``None`` where the layout has none (the brain mask is then image > 0)."""

    subject_id: str
    image: Path
    lesion_mask: Path | None
    brain_mask: Path | None


def discover_subjects(root: Path, modality: str = "t2", require_lesion_mask: bool = True) -> list[SubjectRecord]:
    """List the subjects under ``root``, sorted by subject id, detecting its layout.

    Layouts, tried in this order: a CSV manifest (``root`` is a ``.csv`` file or a folder holding
    ``manifest.csv``; columns ``subject,image,brain_mask,lesion_mask``, relative paths relative to the csv,
    empty mask cells allowed), HCP (``<subject>/T1w/T2w_acpc_dc_restore_brain.nii.gz``; ``modality`` "t1"
    reads ``T1w_acpc_dc_restore_brain.nii.gz``), BraTS 2019-2021 (``<case>/<case>_<modality>.nii.gz`` with
    ``<case>_seg.nii.gz``, optionally under ``HGG/`` and ``LGG/``). With ``require_lesion_mask=False`` BraTS
    cases without a seg file are accepted (new scans to score). Raises :class:`DataError` naming the folder
    or file for a missing folder, no matching layout, or incomplete subjects.
    """
    root = Path(root)
    modality = modality.lower()
    if root.is_file() and root.suffix.lower() == ".csv":
        return read_manifest(root)
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found")
    if (root / MANIFEST_NAME).is_file():
        return read_manifest(root / MANIFEST_NAME)
    records = _discover_hcp(root, modality)
    if not records:
        records = _discover_brats(root, modality, require_lesion_mask)
    if not records:
        raise DataError(
            f"{root}: no known dataset layout found; tried a CSV manifest ({root / MANIFEST_NAME}), "
            f"HCP (<subject>/T1w/{HCP_FILES['t2']}) and BraTS (<case>/<case>_{modality}.nii.gz with "
            "<case>_seg.nii.gz, optionally under HGG/ and LGG/)"
        )
    return sorted(records, key=lambda r: r.subject_id)


def _subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted (hidden ones are caches and editor litter, never subjects)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _discover_hcp(root: Path, modality: str) -> list[SubjectRecord]:
    """HCP subjects: folders whose ``T1w/`` holds any restored brain image; each must have ``modality``."""
    subjects = [d for d in _subdirs(root) if any((d / "T1w" / name).is_file() for name in HCP_FILES.values())]
    if not subjects:
        return []
    if modality not in HCP_FILES:
        raise DataError(f"{root}: HCP layout has no {modality!r} image; available: {sorted(HCP_FILES)}")
    records = []
    for subject in subjects:
        image = subject / "T1w" / HCP_FILES[modality]
        if not image.is_file():
            raise DataError(f"{subject}: HCP subject lacks {image.relative_to(subject)}")
        records.append(SubjectRecord(subject.name, image, lesion_mask=None, brain_mask=None))
    return records


def _find_case_file(case: Path, suffix: str) -> Path | None:
    """``<case>/<case>_<suffix>.nii.gz`` or ``.nii``, whichever exists."""
    for ext in NIFTI_SUFFIXES:
        candidate = case / f"{case.name}_{suffix}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _is_brats_case(folder: Path) -> bool:
    """A BraTS case folder holds at least one ``<case>_<something>.nii[.gz]``."""
    return any(f.name.startswith(f"{folder.name}_") and f.name.endswith(NIFTI_SUFFIXES) for f in folder.iterdir())


def _discover_brats(root: Path, modality: str, require_lesion_mask: bool) -> list[SubjectRecord]:
    """BraTS cases directly under ``root`` and under ``root/HGG`` and ``root/LGG``."""
    folders = [d for d in _subdirs(root) if d.name not in BRATS_GRADES]
    for grade in BRATS_GRADES:
        if (root / grade).is_dir():
            folders += _subdirs(root / grade)
    cases = [d for d in folders if _is_brats_case(d)]
    records = []
    for case in cases:
        image = _find_case_file(case, modality)
        if image is None:
            raise DataError(f"{case}: BraTS case lacks {case.name}_{modality}.nii.gz (modality {modality!r})")
        seg = _find_case_file(case, "seg")
        if seg is None and require_lesion_mask:
            raise DataError(f"{case}: BraTS case lacks its segmentation {case.name}_seg.nii.gz")
        records.append(SubjectRecord(case.name, image, lesion_mask=seg, brain_mask=None))
    ids = [r.subject_id for r in records]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"{root}: BraTS case names appear more than once (HGG/ and LGG/?): {duplicates[:5]}")
    return records


def read_manifest(csv_path: Path) -> list[SubjectRecord]:
    """Subjects listed in a CSV manifest, sorted by id; relative paths are relative to the csv's folder."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: cannot read the manifest ({exc})") from exc
    missing = [c for c in MANIFEST_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{csv_path}: manifest lacks columns {missing}; expected {list(MANIFEST_COLUMNS)}")
    records = [_manifest_record(csv_path, line, row) for line, row in enumerate(rows, start=2)]
    if not records:
        raise DataError(f"{csv_path}: manifest lists no subjects")
    ids = [r.subject_id for r in records]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(f"{csv_path}: subjects listed more than once: {duplicates[:5]}")
    return sorted(records, key=lambda r: r.subject_id)


def _manifest_record(csv_path: Path, line: int, row: dict[str, str]) -> SubjectRecord:
    """One manifest row; every named file must exist."""
    if not row.get("subject") or not row.get("image"):
        raise DataError(f"{csv_path}, line {line}: 'subject' and 'image' must not be empty")

    def resolve(column: str) -> Path | None:
        cell = row.get(column, "")
        if not cell:
            return None
        path = Path(cell).expanduser()
        path = path if path.is_absolute() else csv_path.parent / path
        if not path.is_file():
            raise DataError(f"{csv_path}, line {line}: {column} file not found: {path}")
        return path

    image = resolve("image")
    assert image is not None  # checked non-empty above
    return SubjectRecord(row["subject"], image, lesion_mask=resolve("lesion_mask"), brain_mask=resolve("brain_mask"))
