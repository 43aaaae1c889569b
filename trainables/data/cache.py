"""The on-disk slice cache: preprocessed slices per split, built once, memory-mapped by every trial.

Layout of one entry, ``cache_root/<key>/``::

    meta.json          configs, counts, per-subject role/split/crop box/affine/appearance, the appearance names
                       (written last: marks completeness)
    splits.json        {"train": [ids], "val": [ids], "test": [ids]}
    <split>/images.npy      (N, S, S) float32
    <split>/brain.npy       (N, S, S) uint8
    <split>/lesion.npy      (N, S, S) uint8
    <split>/subject.npy     (N,) int32, index into the split's subject ids (splits.json order)
    <split>/slice_index.npy (N,) int32, axial index in the subject's canonical volume

Lesion appearances: a lesion folder may hold ``appearance.csv`` (columns ``subject,appearance``; the synthetic
cohort writes one). Each lesion subject's appearance is recorded in meta.json, the lesion subjects are split
between val and test within each appearance (so both splits see every appearance), and the metrics are then
also reported per appearance (trainables.metrics).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainables.data.build import SubjectFetch, preprocess_subjects
from trainables.data.errors import DataError
from trainables.data.layouts import SubjectRecord, discover_subjects
from trainables.data.locks import node_lock
from trainables.data.preprocess import PreprocessConfig, SubjectSlices
from trainables.metric_names import APPEARANCE_NAME  # names become part of metric names (test_pixel_auroc_<name>)

SPLITS = ("train", "val", "test")
ARRAYS = {"images": np.float32, "brain": np.uint8, "lesion": np.uint8, "subject": np.int32, "slice_index": np.int32}
CACHE_VERSION = 2  # bump when the entry layout changes (2: lesion appearances)
APPEARANCE_FILE = "appearance.csv"  # optional, in the lesion folder: subject,appearance
NO_APPEARANCE = -1  # code of a lesion subject without a recorded appearance (healthy subjects: 0)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SplitConfig:
    """Seeded subject-level split. Healthy subjects go to train/val/test, lesion subjects to val/test."""

    seed: int = 0
    val_healthy: float = 0.15  # share of healthy subjects in val
    test_healthy: float = 0.15  # share of healthy subjects held out for test
    val_lesion: float = 0.5  # share of lesion subjects in val; the rest are test

    def __post_init__(self) -> None:
        if not (0 <= self.val_healthy < 1 and 0 <= self.test_healthy < 1 and self.val_healthy + self.test_healthy < 1):
            raise ValueError(f"SplitConfig: val_healthy + test_healthy must be in [0, 1), got {self}")
        if not 0 < self.val_lesion < 1:
            raise ValueError(f"SplitConfig.val_lesion must be in (0, 1), got {self.val_lesion}")


@dataclass(frozen=True)
class SliceArrays:
    """One split's slices (read-only memory maps) and its subjects.

    ``subject[i]`` indexes ``subject_ids``; ``lesion_subject[j]`` says whether ``subject_ids[j]`` came from
    the lesion cohort (its slices may still have empty lesion masks). ``subject_appearance[j]`` is 0 for a
    healthy subject, ``k >= 1`` for a lesion subject of appearance ``appearances[k - 1]``, and -1 for a lesion
    subject whose appearance is not recorded.
    """

    images: np.ndarray
    brain: np.ndarray
    lesion: np.ndarray
    subject: np.ndarray
    slice_index: np.ndarray
    subject_ids: list[str]
    lesion_subject: np.ndarray
    subject_appearance: np.ndarray
    appearances: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def prepare_slice_cache(
    healthy_root: Path,
    lesion_root: Path,
    cache_root: Path,
    pre: PreprocessConfig,
    split: SplitConfig,
    progress: Progress | None = None,
) -> Path:
    """Build (once) or reuse the slice cache entry for these inputs and settings; return its folder.

    The entry is ``cache_root/<key>``, the key hashing ``pre``, ``split`` and every input file's path, size
    and mtime. Concurrent callers (trials on one node) serialise on ``cache_root/<key>.lock``; the entry is
    built in a temporary sibling and renamed into place, so an entry without ``meta.json`` is never read
    (it is rebuilt). The subjects are preprocessed as Ray tasks over the cluster's CPUs when Ray is
    initialised, else in this process one after another (trainables.data.build); the bytes are the same.
    """
    say = progress or (lambda message: None)
    healthy, lesion = _discover(Path(healthy_root), Path(lesion_root), pre.modality)
    appearance = read_appearances(Path(lesion_root), [r.subject_id for r in lesion])
    assignment = assign_splits([r.subject_id for r in healthy], [r.subject_id for r in lesion], split, appearance)
    key = cache_key(healthy, lesion, pre, split, appearance)
    return build_entry(Path(cache_root), key, healthy, lesion, assignment, pre, split, appearance, say)


def build_entry(
    cache_root: Path,
    key: str,
    healthy: list[SubjectRecord],
    lesion: list[SubjectRecord],
    assignment: dict[str, str],
    pre: PreprocessConfig,
    split: SplitConfig,
    appearance: dict[str, str],
    say: Progress,
    fetch: SubjectFetch | None = None,
) -> Path:
    """``cache_root/<key>``, built here unless complete (meta.json) already; see prepare_slice_cache.

    ``fetch`` makes each subject's files local in the task that preprocesses it (trainables.data.build).
    """
    cache_root.mkdir(parents=True, exist_ok=True)
    entry = cache_root / key
    if (entry / "meta.json").is_file():
        say(f"reusing slice cache {entry}")
        return entry
    with node_lock(cache_root / f"{key}.lock", f"waiting for another process building slice cache {entry}", say):
        if (entry / "meta.json").is_file():  # built by another process while we waited
            say(f"reusing slice cache {entry}")
            return entry
        _clear_leftovers(cache_root, key, say)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_root))
        try:
            _build(tmp, healthy, lesion, assignment, pre, split, appearance, say, fetch)
            os.rename(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"slice cache ready: {entry}")
    return entry


def _discover(healthy_root: Path, lesion_root: Path, modality: str) -> tuple[list[SubjectRecord], list[SubjectRecord]]:
    """Both cohorts; healthy subjects must carry no lesion mask, lesion subjects must carry one."""
    healthy = discover_subjects(healthy_root, modality)
    lesion = discover_subjects(lesion_root, modality)
    with_masks = [r.subject_id for r in healthy if r.lesion_mask is not None]
    if with_masks:
        raise DataError(f"{healthy_root}: healthy cohort has lesion masks (subjects {with_masks[:3]}...)")
    without = [r.subject_id for r in lesion if r.lesion_mask is None]
    if without:
        raise DataError(f"{lesion_root}: lesion cohort lacks lesion masks for subjects {without[:3]}")
    shared = sorted({r.subject_id for r in healthy} & {r.subject_id for r in lesion})
    if shared:
        raise DataError(f"{healthy_root} and {lesion_root} share subject ids {shared[:3]}")
    return healthy, lesion


def read_appearances(lesion_root: Path, lesion_ids: list[str]) -> dict[str, str]:
    """Lesion subject -> appearance from ``lesion_root/appearance.csv``; {} when the folder has none.

    DataError naming the file for a malformed file, an unknown subject or a name that cannot be part of a
    metric name (lower-case letters and digits, starting with a letter; not ``all``).
    """
    path = lesion_root / APPEARANCE_FILE
    if not path.is_file():
        return {}
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read the appearance file ({err})") from err
    known, out = set(lesion_ids), {}
    for line, row in enumerate(rows, start=2):
        subject, name = (row.get("subject") or "").strip(), (row.get("appearance") or "").strip()
        if subject not in known:
            raise DataError(f"{path}, line {line}: subject {subject!r} is not a lesion subject of {lesion_root}")
        if not APPEARANCE_NAME.match(name) or name == "all":
            raise DataError(f"{path}, line {line}: appearance {name!r} must be lower-case letters/digits, not 'all'")
        out[subject] = name
    return out


def cache_key(
    healthy: list[SubjectRecord],
    lesion: list[SubjectRecord],
    pre: PreprocessConfig,
    split: SplitConfig,
    appearance: dict[str, str] | None = None,
) -> str:
    """Hash of settings and input files (path, size, mtime): any change makes a new cache entry."""
    files = []
    for role, records in (("healthy", healthy), ("lesion", lesion)):
        for r in records:
            for path in (r.image, r.brain_mask, r.lesion_mask):
                if path is not None:
                    stat = Path(path).stat()
                    files.append([role, r.subject_id, str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    payload = {"version": CACHE_VERSION, "pre": pre.key(), "split": asdict(split), "files": files}
    payload["appearance"] = dict(sorted((appearance or {}).items()))
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def assign_splits(
    healthy_ids: list[str], lesion_ids: list[str], split: SplitConfig, appearance: dict[str, str] | None = None
) -> dict[str, str]:
    """Map every subject id to "train", "val" or "test" (seeded, subject-level).

    Each of val and test gets at least one healthy and one lesion subject and train at least one healthy
    subject, so at least 3 healthy and 2 lesion subjects are needed (DataError naming the counts otherwise).
    With ``appearance`` (lesion subject -> name), lesion subjects are dealt to val and test alternately
    within each appearance, so both splits hold every appearance that has two subjects or more.
    """
    n_h, n_l = len(healthy_ids), len(lesion_ids)
    if n_h < 3 or n_l < 2:
        raise DataError(f"too few subjects to split: {n_h} healthy (need >= 3) and {n_l} lesion (need >= 2)")
    n_test_h = max(1, round(split.test_healthy * n_h))
    n_val_h = max(1, round(split.val_healthy * n_h))
    if n_h - n_test_h - n_val_h < 1:
        raise DataError(f"{n_h} healthy subjects leave none for train after {n_val_h} val and {n_test_h} test")
    n_val_l = min(max(1, round(split.val_lesion * n_l)), n_l - 1)
    rng = np.random.default_rng(split.seed)
    healthy = [healthy_ids[i] for i in rng.permutation(n_h)]
    lesion = [lesion_ids[i] for i in rng.permutation(n_l)]
    if appearance:  # group by appearance (random order inside), then deal val, test, val, ... across groups
        grouped = sorted(lesion, key=lambda s: appearance.get(s, ""))  # stable: keeps the random order
        lesion = grouped[0::2] + grouped[1::2]
    assignment = {s: "test" for s in healthy[:n_test_h]}
    assignment.update({s: "val" for s in healthy[n_test_h : n_test_h + n_val_h]})
    assignment.update({s: "train" for s in healthy[n_test_h + n_val_h :]})
    assignment.update({s: "val" for s in lesion[:n_val_l]})
    assignment.update({s: "test" for s in lesion[n_val_l:]})
    return assignment


def _clear_leftovers(cache_root: Path, key: str, say: Progress) -> None:
    """Remove a partial entry (no meta.json) and temporary folders left by crashed builds of this key."""
    entry = cache_root / key
    if entry.exists():
        say(f"removing incomplete slice cache {entry}")
        shutil.rmtree(entry)
    for stale in cache_root.glob(f".{key}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _build(
    tmp: Path,
    healthy: list[SubjectRecord],
    lesion: list[SubjectRecord],
    assignment: dict[str, str],
    pre: PreprocessConfig,
    split: SplitConfig,
    appearance: dict[str, str],
    say: Progress,
    fetch: SubjectFetch | None = None,
) -> None:
    """Preprocess every subject into ``tmp/subjects``, then gather them into per-split arrays."""
    records = sorted(healthy + lesion, key=lambda r: r.subject_id)
    lesion_ids = {r.subject_id for r in lesion}
    staging = tmp / "subjects"
    staging.mkdir()
    # filled in the order subjects finish, read in record order: meta.json's bytes do not depend on the timing
    found: dict[int, dict] = {}
    for position, slices in preprocess_subjects(records, pre, fetch, say):
        # one subject at a time on disk keeps memory bounded by a single volume, whatever the cohort size
        record = records[position]
        _stage(staging / f"{position + 1:06d}", slices)
        found[position] = {
            "staged": position + 1,
            "role": "lesion" if record.subject_id in lesion_ids else "healthy",
            "split": assignment[record.subject_id],
            "image": fetch.source(record.image) if fetch is not None else str(record.image),
            "n_slices": int(len(slices.slice_index)),
            "lesion_slices": int(slices.lesion.any(axis=(1, 2)).sum()),
            "appearance": appearance.get(record.subject_id),
            "crop": slices.crop.to_dict(),
            "affine": np.round(slices.affine, 6).tolist(),
        }
        say(f"preprocessed {len(found)}/{len(records)} subjects")
    subjects = {records[position].subject_id: found[position] for position in range(len(records))}
    splits = {name: sorted(s for s, a in assignment.items() if a == name) for name in SPLITS}
    for name in SPLITS:
        _gather(tmp / name, staging, splits[name], subjects, pre.image_size)
    shutil.rmtree(staging)
    for info in subjects.values():
        del info["staged"]
    (tmp / "splits.json").write_text(json.dumps(splits, indent=1))
    meta = {
        "version": CACHE_VERSION,
        "preprocess": asdict(pre),
        "preprocess_key": pre.key(),
        "split": asdict(split),
        "counts": {name: _counts(splits[name], subjects) for name in SPLITS},
        "appearances": sorted(set(appearance.values())),
        "subjects": subjects,
    }
    # meta.json last: its presence is what marks an entry complete
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def _stage(stem: Path, slices: SubjectSlices) -> None:
    """Write one subject's arrays to ``<stem>.npz`` (named by position: subject ids may hold any character)."""
    np.savez(
        stem.with_suffix(".npz"),
        images=slices.images,
        brain=slices.brain,
        lesion=slices.lesion,
        slice_index=slices.slice_index.astype(np.int32),
    )


def _gather(folder: Path, staging: Path, ids: list[str], subjects: dict[str, dict], size: int) -> None:
    """Concatenate the staged subjects of one split into .npy files written through memory maps."""
    folder.mkdir()
    total = sum(subjects[s]["n_slices"] for s in ids)
    out = {
        name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=_shape(name, total, size))
        for name, dtype in ARRAYS.items()
    }
    start = 0
    for index, subject_id in enumerate(ids):
        n = subjects[subject_id]["n_slices"]
        with np.load(staging / f"{subjects[subject_id]['staged']:06d}.npz") as staged:
            for name in ("images", "brain", "lesion", "slice_index"):
                out[name][start : start + n] = staged[name]
        out["subject"][start : start + n] = index
        start += n
    for array in out.values():
        array.flush()
    del out


def _shape(name: str, total: int, size: int) -> tuple[int, ...]:
    return (total, size, size) if name in ("images", "brain", "lesion") else (total,)


def _counts(ids: list[str], subjects: dict[str, dict]) -> dict[str, int]:
    """Subject and slice counts of one split, for meta.json and logs."""
    return {
        "healthy_subjects": sum(subjects[s]["role"] == "healthy" for s in ids),
        "lesion_subjects": sum(subjects[s]["role"] == "lesion" for s in ids),
        "slices": sum(subjects[s]["n_slices"] for s in ids),
        "lesion_slices": sum(subjects[s]["lesion_slices"] for s in ids),
    }


def read_meta(cache_dir: Path) -> dict:
    """The entry's meta.json; DataError if the entry is missing or incomplete."""
    path = Path(cache_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{cache_dir}: not a complete slice cache (no meta.json); run prepare_slice_cache")
    return json.loads(path.read_text())


def load_split(cache_dir: Path, split: str) -> SliceArrays:
    """Open one split of a cache entry; the arrays are read-only memory maps shared between processes."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cache_dir = Path(cache_dir)
    meta = read_meta(cache_dir)
    ids = json.loads((cache_dir / "splits.json").read_text())[split]
    arrays = {name: np.load(cache_dir / split / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    subjects = [meta["subjects"][s] for s in ids]
    lesion_subject = np.array([info["role"] == "lesion" for info in subjects], dtype=bool)
    names = list(meta.get("appearances", []))
    codes = [names.index(i["appearance"]) + 1 if i.get("appearance") in names else NO_APPEARANCE for i in subjects]
    codes = np.where(lesion_subject, codes, 0).astype(np.int16)
    return SliceArrays(
        subject_ids=ids, lesion_subject=lesion_subject, subject_appearance=codes, appearances=names, **arrays
    )
