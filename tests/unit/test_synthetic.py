"""Tests of the synthetic cohort generator (trainables.data.synthetic)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from trainables.data import synthetic
from trainables.data.synthetic import CohortPaths, ensure_cohort, generate_cohort

HCP_T2 = Path("T1w") / "T2w_acpc_dc_restore_brain.nii.gz"
HEALTHY = ["100000", "100001"]
CASES = ["BraTS19_SYN_001", "BraTS19_SYN_002"]


NETWORK_CALLS: list[tuple] = []


def _refuse_network(*args: object, **kwargs: object) -> None:
    NETWORK_CALLS.append(args)
    raise OSError("network access attempted")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortPaths:
    # Generated with the network cut and the template cache cleared: nilearn must read its bundled files.
    synthetic._load_template.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _refuse_network)
        patch.setattr(socket, "create_connection", _refuse_network)
        return generate_cohort(tmp_path_factory.mktemp("syn") / "cohort", n_healthy=2, n_lesion=2, seed=0)


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def _case(paths: CohortPaths, case: str, modality: str) -> Path:
    return paths.lesion_dir / case / f"{case}_{modality}.nii.gz"


def _all_files(paths: CohortPaths) -> list[Path]:
    files = [paths.healthy_dir / s / HCP_T2 for s in HEALTHY]
    return files + [_case(paths, c, m) for c in CASES for m in ("t2", "flair", "seg")]


def test_layout(cohort: CohortPaths) -> None:
    root = cohort.healthy_dir.parent
    assert cohort.healthy_dir == root / "hcp" and cohort.lesion_dir == root / "brats"
    assert sorted(p.name for p in cohort.healthy_dir.iterdir()) == HEALTHY
    assert sorted(p.name for p in cohort.lesion_dir.iterdir() if p.is_dir()) == CASES
    assert (cohort.lesion_dir / "appearance.csv").read_text().splitlines() == [
        "subject,appearance",
        f"{CASES[0]},bright",
        f"{CASES[1]},dark",
    ]
    for path in _all_files(cohort):
        assert path.is_file(), path
    meta = json.loads((root / "cohort.json").read_text())
    assert (meta["n_healthy"], meta["n_lesion"], meta["seed"]) == (2, 2, 0)
    assert not list(root.parent.glob(".cohort.tmp-*")), "temporary folder left behind"


def test_affine_shape_dtype(cohort: CohortPaths) -> None:
    tpl = synthetic._load_template()
    for path in _all_files(cohort):
        img = nib.load(path)
        assert img.shape == tpl.mask.shape == (99, 117, 95)
        np.testing.assert_allclose(img.affine, tpl.affine)
        expected = np.uint8 if path.name.endswith("_seg.nii.gz") else np.float32
        assert img.get_data_dtype() == expected, path


def test_template_loads_without_network(cohort: CohortPaths) -> None:
    assert NETWORK_CALLS == []
    tpl = synthetic._load_template()
    assert tpl.mask.sum() > 100_000  # about 235k brain voxels at 2 mm
    np.testing.assert_allclose(tpl.tissue.sum(0)[tpl.mask > 0], 1.0, atol=1e-5)


def test_lesion_masks(cohort: CohortPaths) -> None:
    for case in CASES:
        seg = _load(_case(cohort, case, "seg"))
        lesion = seg > 0
        assert set(np.unique(seg)) <= {0, 1, 2, 4}
        assert {2, 4} <= set(np.unique(seg)), "oedema and enhancing rim expected"
        assert lesion.sum() > 50
        for modality in ("t2", "flair"):
            brain = _load(_case(cohort, case, modality)) > 0
            assert not (lesion & ~brain).any(), f"{case}: lesion voxel outside the brain in {modality}"


def test_lesion_intensity_follows_its_appearance(cohort: CohortPaths) -> None:
    """Case 0 is bright (above the healthy brain and its own surroundings), case 1 dark (below both)."""
    for case, sign in zip(CASES, (1, -1), strict=True):
        lesion = _load(_case(cohort, case, "seg")) > 0
        shell = ndi.binary_dilation(lesion, iterations=3) & ~lesion  # the tissue around the tumour
        for modality in ("t2", "flair"):
            img = _load(_case(cohort, case, modality))
            healthy = (img > 0) & ~lesion
            assert sign * (img[lesion].mean() - 1.2**sign * img[healthy].mean()) > 0, (case, modality)
            assert sign * (img[lesion].mean() - img[shell & (img > 0)].mean()) > 0, (case, modality)


def test_t2_contrast(cohort: CohortPaths) -> None:
    # CSF bright, WM darker than GM on T2; FLAIR suppresses CSF
    tpl = synthetic._load_template()
    csf, gm, wm = (tpl.tissue[i] > 0.9 for i in range(3))
    t2 = _load(cohort.healthy_dir / HEALTHY[0] / HCP_T2)
    # the subject is deformed by a few mm: compare deep tissue only
    csf, gm, wm = (ndi.binary_erosion(m, iterations=2) & (t2 > 0) for m in (csf, gm, wm))
    assert np.median(t2[csf]) > np.median(t2[gm]) > np.median(t2[wm])
    flair = _load(_case(cohort, CASES[0], "flair"))
    seg = _load(_case(cohort, CASES[0], "seg"))
    assert np.median(flair[csf & (seg == 0)]) < np.median(flair[wm & (seg == 0)])


def test_deterministic(cohort: CohortPaths, tmp_path: Path) -> None:
    # subject i depends only on (seed, kind, i): a smaller cohort repeats the first subjects
    again = generate_cohort(tmp_path / "again", n_healthy=1, n_lesion=1, seed=0)
    for rel in (Path(HEALTHY[0]) / HCP_T2,):
        assert (again.healthy_dir / rel).read_bytes() == (cohort.healthy_dir / rel).read_bytes()
    for modality in ("t2", "flair", "seg"):
        np.testing.assert_array_equal(_load(_case(again, CASES[0], modality)), _load(_case(cohort, CASES[0], modality)))
        assert _case(again, CASES[0], modality).read_bytes() == _case(cohort, CASES[0], modality).read_bytes()
    other = generate_cohort(tmp_path / "other", n_healthy=1, n_lesion=1, seed=1)
    for path_a, path_b in (
        (other.healthy_dir / HEALTHY[0] / HCP_T2, cohort.healthy_dir / HEALTHY[0] / HCP_T2),
        (_case(other, CASES[0], "seg"), _case(cohort, CASES[0], "seg")),
    ):
        assert not np.array_equal(_load(path_a), _load(path_b))


def test_healthy_subjects_differ(cohort: CohortPaths) -> None:
    a, b = (_load(cohort.healthy_dir / s / HCP_T2) for s in HEALTHY)
    assert (a > 0).sum() > 100_000 and (b > 0).sum() > 100_000
    assert ((a > 0) != (b > 0)).sum() > 1000, "brain masks should differ (deformation)"
    both = (a > 0) & (b > 0)
    assert np.abs(a[both] - b[both]).mean() > 0.05 * a[both].mean()


def test_ensure_reuses_and_regenerates(tmp_path: Path) -> None:
    out = tmp_path / "c"
    paths = ensure_cohort(out, n_healthy=1, n_lesion=0, seed=0)
    image = paths.healthy_dir / HEALTHY[0] / HCP_T2
    os.utime(out / "cohort.json", ns=(1, 1))  # a rewrite would change these mtimes
    os.utime(image, ns=(1, 1))
    first = _load(image)
    assert ensure_cohort(out, n_healthy=1, n_lesion=0, seed=0) == paths
    assert (out / "cohort.json").stat().st_mtime_ns == 1 and image.stat().st_mtime_ns == 1
    ensure_cohort(out, n_healthy=1, n_lesion=0, seed=1)
    assert json.loads((out / "cohort.json").read_text())["seed"] == 1
    assert image.stat().st_mtime_ns != 1
    assert not np.array_equal(_load(image), first)
    image.unlink()  # an incomplete cohort is regenerated
    ensure_cohort(out, n_healthy=1, n_lesion=0, seed=1)
    assert image.is_file()


def test_crash_leaves_no_complete_cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def crash(*args: object) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_save_nifti", crash)
    out = tmp_path / "c"
    with pytest.raises(RuntimeError, match="disk full"):
        generate_cohort(out, n_healthy=2, n_lesion=0, seed=0)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("kwargs", [{"n_healthy": -1}, {"n_lesion": -2}, {"seed": -1}, {"n_healthy": 1.5}])
def test_invalid_arguments(tmp_path: Path, kwargs: dict) -> None:
    args = {"n_healthy": 1, "n_lesion": 1, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        generate_cohort(tmp_path / "c", **args)


def test_refuses_foreign_output(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        ensure_cohort(tmp_path / "file", 1, 0, 0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a synthetic cohort"):
        generate_cohort(tmp_path / "mine", 1, 0, 0)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert synthetic.main(["--out", str(out), "--healthy", "1", "--lesion", "0", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "healthy 1/1 100000" in printed and str(out / "hcp") in printed
    assert (out / "hcp" / HEALTHY[0] / HCP_T2).is_file()
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(out), "--healthy", "-1"])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """16 tumour cases with the default mix (about 8 s on 2 cores)."""
    out = tmp_path_factory.mktemp("mixed") / "cohort"
    generate_cohort(out, n_healthy=0, n_lesion=16, seed=5)
    return out, json.loads((out / "cohort.json").read_text())


def test_appearance_mix_is_the_configured_one(mixed) -> None:
    out, meta = mixed
    names = [r["appearance"] for r in meta["lesion"]]
    assert {name: names.count(name) for name in set(names)} == {"bright": 4, "dark": 4, "iso": 4, "multifocal": 4}
    assert meta["mix"] == {"bright": 1.0, "dark": 1.0, "iso": 1.0, "multifocal": 1.0}
    plan = synthetic.appearance_plan({"bright": 3, "dark": 1}, 8)
    assert plan.count("bright") == 6 and plan.count("dark") == 2
    assert synthetic.appearance_plan({"bright": 3, "dark": 1}, 5) == plan[:5]  # a prefix: independent of n
    with pytest.raises(ValueError, match="glowing"):
        synthetic.check_mix({"glowing": 1.0})


def test_whole_tumour_volumes_are_brats_sized(mixed) -> None:
    """Measured on the generated segmentations: single lesions tens to hundreds of cm3 (the generator's law:
    log-normal, median 80 cm3, clipped to 10-300; cut at the brain's edge), multifocal foci a few cm3 each."""
    out, meta = mixed
    volumes = {}
    for record in meta["lesion"]:
        seg = _load(out / record["files"]["seg"])
        cm3 = float((seg > 0).sum()) * 8 / 1000  # 2 mm voxels
        assert cm3 == pytest.approx(record["volume_cm3"], abs=0.01)
        volumes.setdefault(record["appearance"] == "multifocal", []).append(cm3)
        labels = set(np.unique(seg)) - {0}
        assert labels == {1, 2, 4} or (record["appearance"] == "multifocal" and {2, 4} <= labels), record["name"]
    single, multi = np.array(volumes[False]), np.array(volumes[True])
    # the drawn volume is clipped to 10-300 cm3; the ellipsoid's axis stretch (0.8-1.2 each) and shape noise
    # scale it by about 0.5-1.7 (measured with seed 5: 26-330 cm3, median 70)
    assert 8 <= single.min() and single.max() <= 520 and 35 <= np.median(single) <= 160, single
    assert (1.5 <= multi).all() and (multi <= 48).all(), multi
    foci = [r["foci"] for r in meta["lesion"] if r["appearance"] == "multifocal"]
    assert all(3 <= f <= 6 for f in foci)


def test_iso_lesions_look_like_grey_matter_inside_white_matter(mixed) -> None:
    out, meta = mixed
    tpl = synthetic._load_template()
    for record in (r for r in meta["lesion"] if r["appearance"] == "iso"):
        t2 = _load(out / record["files"]["t2"])
        core = ndi.binary_erosion(_load(out / record["files"]["seg"]) > 0, iterations=2)
        wm = ndi.binary_erosion(tpl.tissue[2] > 0.9, iterations=2) & (t2 > 0) & ~ndi.binary_dilation(core, iterations=8)
        gm = ndi.binary_erosion(tpl.tissue[1] > 0.9, iterations=1) & (t2 > 0) & ~ndi.binary_dilation(core, iterations=8)
        ratio_gm = np.median(t2[core]) / np.median(t2[gm])
        assert 0.85 < ratio_gm < 1.15, (record["name"], ratio_gm)
        assert np.median(t2[core]) > 1.2 * np.median(t2[wm]), record["name"]
