"""Unit tests of trainables.data: NIfTI I/O, layouts, preprocessing and the slice cache (the dataset and its
batches: test_slice_dataset.py)."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from data_kit import (
    AFFINE,
    SHAPE,
    assert_names,
    brain_blob,
    image_volume,
    lesion_blob,
    make_brats,
    make_brats_case,
    make_cohort,
    make_hcp,
    save,
)

from trainables.data import build as build_module
from trainables.data.cache import SplitConfig, assign_splits, load_split, prepare_slice_cache
from trainables.data.errors import DataError
from trainables.data.layouts import SubjectRecord, discover_subjects
from trainables.data.nifti import load_volume
from trainables.data.preprocess import PreprocessConfig, standardise, subject_slices, uncrop_slices


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cohort(tmp_path_factory.mktemp("cohort"))


# ---------------------------------------------------------------- nifti


def test_load_volume_reorients_to_ras(tmp_path: Path) -> None:
    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    flipped = np.diag([-2.0, 2.0, 2.0, 1.0])  # LAS storage
    loaded, affine = load_volume(save(tmp_path / "las.nii.gz", data.astype(np.int16), flipped))
    assert loaded.dtype == np.float32 and loaded.shape == SHAPE
    np.testing.assert_array_equal(loaded, data[::-1].astype(np.float32))
    assert affine[0, 0] == 2.0 and affine[1, 1] == 2.0 and affine[2, 2] == 2.0


def test_load_volume_squeezes_single_frame(tmp_path: Path) -> None:
    data = image_volume(0, lesion=False)
    loaded, _ = load_volume(save(tmp_path / "one_frame.nii.gz", data[..., None]))
    assert loaded.shape == SHAPE
    np.testing.assert_allclose(loaded, data)


@pytest.mark.parametrize("case", ["missing", "4d", "nan", "inf", "truncated", "text_gz", "text_nii", "mgh", "2d"])
def test_load_volume_bad_inputs_name_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.nii.gz"
    good = image_volume(0, lesion=False)
    if case == "4d":
        save(path, np.stack([good] * 3, axis=-1))
    elif case in ("nan", "inf"):
        good[3, 4, 5] = np.nan if case == "nan" else np.inf
        save(path, good)
    elif case == "truncated":
        save(path, good)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif case == "text_gz":
        path.write_bytes(gzip.compress(b"subject,image\nnot a volume\n"))
    elif case == "text_nii":
        path = tmp_path / "text.nii"
        path.write_text("definitely not a NIfTI header " * 20)
    elif case == "mgh":
        path = tmp_path / "volume.mgz"
        nib.save(nib.MGHImage(good, AFFINE), str(path))
    elif case == "2d":
        save(path, good[:, :, 0])
    with pytest.raises(DataError) as excinfo:
        load_volume(path)
    assert_names(excinfo, path)
    expected = {"missing": "not found", "4d": "3D", "nan": "NaN", "inf": "NaN or infinite", "mgh": "not a NIfTI"}
    assert expected.get(case, "") in str(excinfo.value)


# ---------------------------------------------------------------- layouts


def test_discover_hcp(tmp_path: Path) -> None:
    root = make_hcp(tmp_path / "hcp", 3, start=200)
    (root / ".cache").mkdir()
    records = discover_subjects(root)
    assert [r.subject_id for r in records] == ["200", "201", "202"]
    assert records[0].image == root / "200" / "T1w" / "T2w_acpc_dc_restore_brain.nii.gz"
    assert all(r.lesion_mask is None and r.brain_mask is None for r in records)


@pytest.mark.parametrize("grades", [False, True])
def test_discover_brats(tmp_path: Path, grades: bool) -> None:
    root = make_brats(tmp_path / "brats", 3, grades=grades)
    records = discover_subjects(root, modality="flair")
    assert [r.subject_id for r in records] == [f"BraTS19_CASE_{i:03d}" for i in range(3)]
    case = records[1].subject_id
    parent = root / "LGG" if grades else root
    assert records[1].image == parent / case / f"{case}_flair.nii.gz"
    assert records[1].lesion_mask == parent / case / f"{case}_seg.nii.gz"
    assert records[1].brain_mask is None


def test_discover_brats_missing_modality_and_seg(tmp_path: Path) -> None:
    make_brats_case(tmp_path / "a" / "Case1", 0, modalities=("t1", "flair"))
    with pytest.raises(DataError) as excinfo:
        discover_subjects(tmp_path / "a", modality="t2")
    assert_names(excinfo, tmp_path / "a" / "Case1")
    assert "t2" in str(excinfo.value)
    make_brats_case(tmp_path / "b" / "Case2", 0, seg=False)
    with pytest.raises(DataError) as excinfo:
        discover_subjects(tmp_path / "b")
    assert_names(excinfo, tmp_path / "b" / "Case2")
    assert "seg" in str(excinfo.value)
    assert discover_subjects(tmp_path / "b", require_lesion_mask=False)[0].lesion_mask is None


def test_discover_manifest(tmp_path: Path) -> None:
    root = tmp_path / "data"
    save(root / "vols" / "s2.nii.gz", image_volume(2, lesion=True))
    save(root / "vols" / "s2_seg.nii.gz", lesion_blob().astype(np.uint8))
    save(root / "vols" / "s1.nii.gz", image_volume(1, lesion=False))
    absolute_mask = save(tmp_path / "elsewhere" / "s1_brain.nii.gz", brain_blob().astype(np.uint8))
    rows = ["subject,image,brain_mask,lesion_mask", "s2,vols/s2.nii.gz,,vols/s2_seg.nii.gz"]
    rows.append(f"s1,vols/s1.nii.gz,{absolute_mask},")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    for target in (root, root / "manifest.csv"):
        records = discover_subjects(target)
        assert records == [
            SubjectRecord("s1", root / "vols" / "s1.nii.gz", lesion_mask=None, brain_mask=absolute_mask),
            SubjectRecord(
                "s2", root / "vols" / "s2.nii.gz", lesion_mask=root / "vols" / "s2_seg.nii.gz", brain_mask=None
            ),
        ]


def test_manifest_errors_name_the_file(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("subject,image\ns1,s1.nii.gz\n")
    with pytest.raises(DataError) as excinfo:
        discover_subjects(csv_path)
    assert_names(excinfo, csv_path)
    assert "brain_mask" in str(excinfo.value) and "lesion_mask" in str(excinfo.value)
    csv_path.write_text("subject,image,brain_mask,lesion_mask\ns1,nowhere.nii.gz,,\n")
    with pytest.raises(DataError) as excinfo:
        discover_subjects(csv_path)
    assert_names(excinfo, csv_path, tmp_path / "nowhere.nii.gz")


def test_discover_missing_directory_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        discover_subjects(tmp_path / "absent")
    assert_names(excinfo, tmp_path / "absent")
    assert "not found" in str(excinfo.value)
    (tmp_path / "junk" / "sub1").mkdir(parents=True)
    (tmp_path / "junk" / "sub1" / "scan.txt").write_text("x")
    with pytest.raises(DataError) as excinfo:
        discover_subjects(tmp_path / "junk")
    assert_names(excinfo, tmp_path / "junk")
    for layout in ("manifest", "HCP", "BraTS"):
        assert layout in str(excinfo.value)


# ---------------------------------------------------------------- preprocessing


def lesion_record(tmp_path: Path, seg: np.ndarray | None = None, seg_affine: np.ndarray = AFFINE) -> SubjectRecord:
    image = save(tmp_path / "img.nii.gz", image_volume(7, lesion=True))
    mask = save(tmp_path / "seg.nii.gz", (lesion_blob() if seg is None else seg).astype(np.uint8), seg_affine)
    return SubjectRecord("s", image, lesion_mask=mask, brain_mask=None)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_subject_slices_shapes(tmp_path: Path, size: int) -> None:
    out = subject_slices(lesion_record(tmp_path), PreprocessConfig(image_size=size))
    n = len(out.slice_index)
    assert 5 <= n <= SHAPE[2]
    assert out.images.shape == out.brain.shape == out.lesion.shape == (n, size, size)
    assert out.images.dtype == np.float32 and out.brain.dtype == np.uint8 and out.lesion.dtype == np.uint8
    assert set(np.unique(out.brain)) <= {0, 1} and set(np.unique(out.lesion)) <= {0, 1}
    assert np.all(np.diff(out.slice_index) > 0)
    assert out.crop.shape == SHAPE and out.crop.side == max(out.crop.side, 1)
    assert np.all(out.images[out.brain == 0] == 0.0)  # background exactly 0
    assert out.lesion.sum() > 0
    assert np.all(out.lesion <= out.brain)  # lesion only inside brain


def test_standardise_over_brain() -> None:
    volume, brain = image_volume(3, lesion=False), brain_blob()
    out = standardise(volume, brain)
    assert abs(float(out[brain].mean())) < 1e-4
    assert abs(float(out[brain].std()) - 1.0) < 1e-4
    assert np.all(out[~brain] == 0.0)
    with pytest.raises(DataError):
        standardise(brain.astype(np.float32) * 5, brain, source="const.nii.gz")


def test_slice_selection_follows_brain_fraction(tmp_path: Path) -> None:
    record = lesion_record(tmp_path)
    brain = brain_blob()
    everything = subject_slices(record, PreprocessConfig(min_brain_fraction=0.0))
    side = everything.crop.side
    assert side == max(int(brain.any(axis=(1, 2)).sum()), int(brain.any(axis=(0, 2)).sum()))
    for fraction in (0.2, 0.5):
        kept = subject_slices(record, PreprocessConfig(min_brain_fraction=fraction))
        expected = np.flatnonzero(brain.sum(axis=(0, 1)) / side**2 >= fraction)
        np.testing.assert_array_equal(kept.slice_index, expected)
    assert len(everything.slice_index) == SHAPE[2]
    assert len(kept.slice_index) < SHAPE[2]


def test_healthy_subject_has_empty_lesion_and_uncrop_round_trip(tmp_path: Path) -> None:
    image = save(tmp_path / "h.nii.gz", image_volume(1, lesion=False))
    out = subject_slices(SubjectRecord("h", image, None, None), PreprocessConfig(image_size=64))
    assert out.lesion.sum() == 0
    restored = uncrop_slices(out.brain.astype(np.float32), out.slice_index, out.crop) >= 0.5
    truth = brain_blob()[:, :, out.slice_index]
    got = restored[:, :, out.slice_index]
    assert (got & truth).sum() / (got | truth).sum() > 0.9
    assert not restored[:, :, np.setdiff1d(np.arange(SHAPE[2]), out.slice_index)].any()


def test_seg_mismatches_name_both_files(tmp_path: Path) -> None:
    record = lesion_record(tmp_path, seg=np.zeros((24, 28, 21), np.uint8))
    with pytest.raises(DataError) as excinfo:
        subject_slices(record, PreprocessConfig())
    assert_names(excinfo, record.image, record.lesion_mask)
    assert "shape" in str(excinfo.value)
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    record = lesion_record(tmp_path, seg_affine=shifted)
    with pytest.raises(DataError) as excinfo:
        subject_slices(record, PreprocessConfig())
    assert_names(excinfo, record.image, record.lesion_mask)
    assert "affine" in str(excinfo.value)


def test_empty_brain_names_the_file(tmp_path: Path) -> None:
    image = save(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(DataError) as excinfo:
        subject_slices(SubjectRecord("e", image, None, None), PreprocessConfig())
    assert_names(excinfo, image)
    assert "empty brain" in str(excinfo.value)


def test_preprocess_config_key_and_validation() -> None:
    assert PreprocessConfig().key() == PreprocessConfig().key()
    assert PreprocessConfig().key() != PreprocessConfig(image_size=64).key()
    with pytest.raises(ValueError, match="n4"):
        PreprocessConfig(n4=True)


# ---------------------------------------------------------------- splits and cache


def test_assign_splits_subject_level_and_seeded() -> None:
    healthy, lesion = [f"h{i}" for i in range(20)], [f"l{i}" for i in range(6)]
    split = assign_splits(healthy, lesion, SplitConfig(seed=3))
    assert split == assign_splits(healthy, lesion, SplitConfig(seed=3))
    assert {s for s, a in split.items() if a == "train"} <= set(healthy)
    assert sum(split[s] == "val" for s in healthy) == 3 and sum(split[s] == "test" for s in healthy) == 3
    assert sum(split[s] == "val" for s in lesion) == 3 and sum(split[s] == "test" for s in lesion) == 3
    assert len({tuple(sorted(assign_splits(healthy, lesion, SplitConfig(seed=s)).items())) for s in range(5)}) > 1
    with pytest.raises(DataError, match="2 healthy"):
        assign_splits(healthy[:2], lesion, SplitConfig())
    with pytest.raises(DataError, match="1 lesion"):
        assign_splits(healthy, lesion[:1], SplitConfig())


def test_prepare_slice_cache_splits(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    healthy_root, lesion_root = cohort
    messages: list[str] = []
    entry = prepare_slice_cache(healthy_root, lesion_root, tmp_path, PreprocessConfig(), SplitConfig(), messages.append)
    assert "preprocessed 10/10 subjects" in messages
    splits = json.loads((entry / "splits.json").read_text())
    meta = json.loads((entry / "meta.json").read_text())
    healthy_ids = {p.name for p in healthy_root.iterdir()}
    lesion_ids = {r.subject_id for r in discover_subjects(lesion_root)}
    assert set(splits["train"]) <= healthy_ids
    for name in ("val", "test"):
        assert set(splits[name]) & healthy_ids and set(splits[name]) & lesion_ids
    all_ids = splits["train"] + splits["val"] + splits["test"]
    assert len(all_ids) == len(set(all_ids)) == 10
    assert meta["preprocess"]["image_size"] == 32 and meta["split"]["seed"] == 0
    assert set(meta["subjects"]["100000"]["crop"]) == {"x0", "y0", "side", "shape"}
    for name in ("train", "val", "test"):
        arrays = load_split(entry, name)
        assert isinstance(arrays.images, np.memmap) and arrays.images.shape[1:] == (32, 32)
        assert len(arrays) == meta["counts"][name]["slices"] > 0
        assert arrays.subject_ids == splits[name]
        assert set(np.unique(arrays.subject)) == set(range(len(splits[name])))
        assert arrays.lesion_subject.tolist() == [s in lesion_ids for s in splits[name]]
    assert load_split(entry, "train").lesion.sum() == 0
    assert load_split(entry, "test").lesion.sum() > 0 and load_split(entry, "val").lesion.sum() > 0


def test_cache_reused_and_keyed(cohort: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    healthy_root, lesion_root = cohort
    entry = prepare_slice_cache(healthy_root, lesion_root, tmp_path, PreprocessConfig(), SplitConfig())
    mtime = (entry / "meta.json").stat().st_mtime_ns

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a reused cache must not preprocess")

    monkeypatch.setattr(build_module, "subject_slices", refuse)  # Ray is not initialised here
    messages: list[str] = []
    again = prepare_slice_cache(healthy_root, lesion_root, tmp_path, PreprocessConfig(), SplitConfig(), messages.append)
    assert again == entry and (entry / "meta.json").stat().st_mtime_ns == mtime
    assert any("reusing" in m for m in messages)
    monkeypatch.undo()
    bigger = prepare_slice_cache(healthy_root, lesion_root, tmp_path, PreprocessConfig(image_size=64), SplitConfig())
    reseeded = prepare_slice_cache(healthy_root, lesion_root, tmp_path, PreprocessConfig(), SplitConfig(seed=1))
    assert len({entry, bigger, reseeded}) == 3
    assert load_split(bigger, "val").images.shape[1:] == (64, 64)
    assert not list(tmp_path.glob(".*.tmp-*"))  # no temporary build folders left behind


def test_cache_key_follows_input_files(tmp_path: Path) -> None:
    healthy_root, lesion_root = make_hcp(tmp_path / "hcp", 3), make_brats(tmp_path / "brats", 2)
    first = prepare_slice_cache(healthy_root, lesion_root, tmp_path / "c", PreprocessConfig(), SplitConfig())
    touched = healthy_root / "100001" / "T1w" / "T2w_acpc_dc_restore_brain.nii.gz"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    second = prepare_slice_cache(healthy_root, lesion_root, tmp_path / "c", PreprocessConfig(), SplitConfig())
    assert first != second


def test_partial_entry_is_rebuilt_not_read(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    healthy_root, lesion_root = cohort
    entry = prepare_slice_cache(healthy_root, lesion_root, tmp_path, PreprocessConfig(), SplitConfig())
    (entry / "meta.json").unlink()
    (entry / "val" / "images.npy").write_bytes(b"corrupt")
    with pytest.raises(DataError) as excinfo:
        load_split(entry, "val")
    assert_names(excinfo, entry)
    messages: list[str] = []
    again = prepare_slice_cache(healthy_root, lesion_root, tmp_path, PreprocessConfig(), SplitConfig(), messages.append)
    assert again == entry and (entry / "meta.json").is_file()
    assert any("removing incomplete" in m for m in messages)
    assert load_split(entry, "val").images.shape[1:] == (32, 32)


def test_concurrent_builds_share_one_entry(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    healthy_root, lesion_root = cohort
    args = (healthy_root, lesion_root, tmp_path, PreprocessConfig(), SplitConfig())
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(prepare_slice_cache, [args, args])
    assert results[0] == results[1]
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [results[0].name]
    assert load_split(results[0], "train").images.shape[1:] == (32, 32)


def test_cohort_errors(tmp_path: Path, cohort: tuple[Path, Path]) -> None:
    healthy_root, lesion_root = cohort
    with pytest.raises(DataError) as excinfo:  # BraTS given as the healthy cohort
        prepare_slice_cache(lesion_root, lesion_root, tmp_path, PreprocessConfig(), SplitConfig())
    assert_names(excinfo, lesion_root)
    small = make_hcp(tmp_path / "small", 2)
    with pytest.raises(DataError, match="2 healthy"):
        prepare_slice_cache(small, lesion_root, tmp_path / "c", PreprocessConfig(), SplitConfig())
