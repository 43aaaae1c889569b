"""Synthetic brain MRI cohort made from the MNI152 template that nilearn ships (no downloads).

Healthy subjects (HCP layout) and BraTS-like tumour cases (BraTS layout) are drawn from the 2 mm MNI152
tissue maps with smooth random deformations, bias fields and noise. Each subject draws only from
``np.random.default_rng([seed, kind, index])``, so a seed gives byte-identical files, and subject ``i``
does not depend on how many subjects the cohort has.

Lesions. Each tumour case has one *appearance*, assigned in a fixed order that follows the configured mix
(``appearance_plan``: the first n cases are as close to the mix as n allows, whatever the cohort size):
- ``bright``: the classic glioma on T2: hyperintense oedema (label 2) around an enhancing rim (4) around a
  brighter necrotic core (1), each sub-region with its own intensity, and mass effect;
- ``dark``: hypo-intense on T2, as haemorrhage or calcification look: a very dark core, a dark rim and a
  mildly hypo-intense periphery, all below white matter; mass effect;
- ``iso``: iso-intense to grey matter, centred in white matter, where grey matter does not belong: only
  its position and shape, not its brightness, tell it from healthy tissue; mass effect;
- ``multifocal``: 3 to 6 small bright foci (metastasis-like), each a few cm3, no mass effect.
Whole-tumour volumes (the union of labels 1, 2, 4) of single lesions are drawn log-normally with median
80 cm3 and log-sd 0.65 (5th-95th percentile about 27-230 cm3), clipped to 10-300 cm3, then shaped as a noisy
ellipsoid whose axis stretch changes the volume by about x0.5-1.7 (seed 5: 26-330 cm3). Source, and what
we could not confirm: BraTS 2018-2021 training cases' whole tumours are commonly reported as tens to a few
hundred cm3 (median near 100 cm3 for high-grade gliomas, smaller for low-grade); we did not find a
citable published table of the distribution through the search tools available, so these parameters are
our reading of that range, not a fitted distribution. The brain of the 2 mm template is about 1900 cm3,
so a median tumour covers about 4% of it (BraTS-like), against 0.05-0.5% in this generator's version 1.
Tumours may reach the brain's surface; voxels outside the brain are cut from the segmentation, and each
case's cohort.json record carries its measured ``volume_cm3`` and ``appearance``. The lesion folder also
gets ``appearance.csv`` (subject,appearance), which the slice cache reads to report metrics per appearance.

    python -m trainables.data.synthetic --out DIR --healthy 24 --lesion 12 --seed 0
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from filelock import FileLock
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from trainables.data.grids import check_grid, resample_to_grid
from trainables.data.lesions import (
    FLAIR_TISSUE,
    T2_TISSUE,
    appearance_plan,
    check_mix,
    paint_lesions,
    plan_foci,
    push,
    smooth_fields,
)
from trainables.numbers import is_integer

GENERATOR_VERSION = 2  # bump whenever outputs change, so ensure_cohort regenerates old cohorts
HEALTHY_KIND, LESION_KIND = 0, 1
HCP_T2 = Path("T1w") / "T2w_acpc_dc_restore_brain.nii.gz"
APPEARANCE_FILE = "appearance.csv"  # in the lesion folder: subject,appearance


@dataclass(frozen=True)
class CohortPaths:
    healthy_dir: Path  # DIR/hcp   (HCP layout)
    lesion_dir: Path  # DIR/brats (BraTS layout)


@dataclass(frozen=True)
class _Template:
    tissue: np.ndarray  # (3, X, Y, Z) float32 probabilities of CSF, GM, WM
    mask: np.ndarray  # (X, Y, Z) float32 in {0, 1}
    depth_mm: np.ndarray  # distance to the brain's edge
    matter: np.ndarray  # GM + WM probability
    affine: np.ndarray
    voxel_mm: float
    centre: np.ndarray  # brain centre of mass, voxel coordinates


@functools.lru_cache(maxsize=1)
def _load_template() -> _Template:
    """The 2 mm MNI152 maps bundled with nilearn (package data: nothing is fetched)."""
    from nilearn import datasets  # imported here: slow, and not needed when a cohort is reused

    with warnings.catch_warnings():  # nilearn's resampling warns about future defaults
        warnings.simplefilter("ignore")
        t1 = datasets.load_mni152_template(resolution=2)
        gm = datasets.load_mni152_gm_template(resolution=2).get_fdata(dtype=np.float32)
        wm = datasets.load_mni152_wm_template(resolution=2).get_fdata(dtype=np.float32)
        mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata(dtype=np.float32) > 0.5
    if not gm.shape == wm.shape == mask.shape == t1.shape:
        raise RuntimeError(f"nilearn's MNI152 maps disagree in shape: {gm.shape}, {wm.shape}, {mask.shape}")
    gm, wm = gm * mask, wm * mask
    total = np.maximum(gm + wm, 1.0)  # the maps overlap a little: renormalise so GM + WM <= 1
    gm, wm = gm / total, wm / total
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    voxel_mm = float(np.mean(nib.affines.voxel_sizes(t1.affine)))
    depth_mm = ndi.distance_transform_edt(mask).astype(np.float32) * voxel_mm
    return _Template(
        tissue=np.stack([csf, gm, wm]).astype(np.float32),
        mask=mask.astype(np.float32),
        depth_mm=depth_mm,
        matter=(gm + wm).astype(np.float32),
        affine=np.asarray(t1.affine, dtype=np.float64),
        voxel_mm=voxel_mm,
        centre=np.array(ndi.center_of_mass(mask), dtype=np.float32),
    )


def _healthy_coords(rng: np.random.Generator, tpl: _Template) -> np.ndarray:
    """Source coordinates (3, X, Y, Z) in the template for every output voxel: rotation, scale, warp."""
    shape = tpl.mask.shape
    rotation = Rotation.from_euler("xyz", rng.uniform(-4, 4, 3), degrees=True).as_matrix()
    matrix = (rotation @ np.diag(1.0 / rng.uniform(0.95, 1.05, 3))).astype(np.float32)
    warp_vox = rng.uniform(1.5, 4.0) / tpl.voxel_mm
    warp = smooth_fields(rng, shape, (5, 6, 5), 3) * np.float32(warp_vox)
    centre = tpl.centre[:, None, None, None]
    rel = np.indices(shape, dtype=np.float32) - centre
    return np.tensordot(matrix, rel, axes=1) + centre + warp


def _finish(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """Bias field, global scale and Rician noise; zero outside the brain, strictly positive inside."""
    bias = np.exp(rng.uniform(0.05, 0.2) * smooth_fields(rng, img.shape, (3, 3, 3), 1)[0])
    signal = (img * bias * scale)[mask]
    sigma = rng.uniform(0.01, 0.04) * scale
    real = signal + rng.normal(0, sigma, signal.shape)
    noisy = np.sqrt(real**2 + rng.normal(0, sigma, signal.shape) ** 2)
    out = np.zeros(img.shape, dtype=np.float32)
    out[mask] = np.maximum(noisy, 1e-3 * scale)  # image > 0 must mean "brain", as in brain-extracted data
    return out


def _make_subject(
    tpl: _Template, rng: np.random.Generator, appearance: str | None
) -> tuple[dict[str, np.ndarray], dict]:
    """Images ('t2', and for lesion cases 'flair', 'seg') of one subject, plus a summary of its draws.

    ``appearance`` None makes a healthy subject, else a tumour case of that appearance.
    """
    coords = _healthy_coords(rng, tpl)
    info: dict = {}
    if appearance is not None:
        foci = plan_foci(rng, tpl, coords, appearance)
        if appearance != "multifocal":  # before sampling, so the tumour displaces the anatomy
            for centre, radius in foci:
                push(rng, coords, centre, radius)
        info = {"appearance": appearance, "foci": len(foci)}
        info["radius_mm"] = [round(float(r) * tpl.voxel_mm, 2) for _, r in foci]
    tissue = np.stack([ndi.map_coordinates(t, coords, order=1) for t in tpl.tissue])
    mask = ndi.map_coordinates(tpl.mask, coords, order=1) >= 0.5
    jitter = rng.uniform(0.93, 1.07, 3).astype(np.float32)  # subject-specific tissue contrast
    scale = float(rng.uniform(600, 1400))  # arbitrary scanner units, like HCP's float images
    images = {"t2": np.tensordot(T2_TISSUE * jitter, tissue, axes=1)}
    if appearance is not None:
        images["flair"] = np.tensordot(FLAIR_TISSUE * jitter, tissue, axes=1)
        seg = paint_lesions(rng, images, foci, appearance, jitter)
        seg[~mask] = 0  # a lesion voxel is always a brain voxel
        info["voxels"] = {str(k): int((seg == k).sum()) for k in (1, 2, 4)}
        info["volume_cm3"] = round(float((seg > 0).sum()) * tpl.voxel_mm**3 / 1000, 2)
    images = {name: _finish(rng, img, mask, scale) for name, img in images.items()}
    if appearance is not None:
        images["seg"] = seg
    return images, info


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Gzipped NIfTI with a fixed gzip mtime and no embedded name, so equal arrays give equal bytes."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz:
        gz.write(img.to_bytes())


def _write_subject(
    tpl: _Template, root: Path, seed: int, kind: int, index: int, appearance: str | None, grid: str = "mni2mm"
) -> dict:
    """Generate and write subject ``index`` of ``kind`` on ``grid``; return its cohort.json record (paths relative)."""
    images, info = _make_subject(tpl, np.random.default_rng([seed, kind, index]), appearance)
    if kind == HEALTHY_KIND:
        name = str(100000 + index)
        files = {"t2": Path("hcp") / name / HCP_T2}
    else:
        name = f"BraTS19_SYN_{index + 1:03d}"
        files = {key: Path("brats") / name / f"{name}_{key}.nii.gz" for key in images}
    for key, rel in files.items():
        _save_nifti(root / rel, *resample_to_grid(images[key], tpl.affine, grid, labels=key == "seg"))
    return {"name": name, "files": {k: str(v) for k, v in files.items()}, **info}


def _check_args(out_dir: Path | str, n_healthy: int, n_lesion: int, seed: int) -> Path:
    """Validate arguments; create the parent of ``out_dir``. Returns ``out_dir`` as an absolute Path."""
    for name, value in (("n_healthy", n_healthy), ("n_lesion", n_lesion), ("seed", seed)):
        if not is_integer(value) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "cohort.json").exists():
        raise ValueError(f"--out {out_dir} is a non-empty folder but not a synthetic cohort: refusing to replace it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the parent of --out {out_dir}: {err}") from err
    if not os.access(out_dir.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out_dir}: its parent folder is not writable")
    return out_dir


def _paths(out_dir: Path) -> CohortPaths:
    return CohortPaths(healthy_dir=out_dir / "hcp", lesion_dir=out_dir / "brats")


def _replace_dir(new: Path, out_dir: Path) -> None:
    """Rename ``new`` to ``out_dir``, removing an older cohort there; never leaves a half-written out_dir."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "cohort")
    os.replace(new, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate_cohort(
    out_dir: Path,
    n_healthy: int,
    n_lesion: int,
    seed: int,
    *,
    mix: dict[str, float] | None = None,
    progress: Callable[[str], None] | None = None,
    grid: str = "mni2mm",
) -> CohortPaths:
    """Generate a synthetic cohort in ``out_dir`` (replacing any cohort there) and return its two folders.

    ``grid`` (trainables.data.grids): "mni2mm" (the template's, the default), "hcp" (260 x 311 x 260 at
    0.7 mm) or "brats" (240 x 240 x 155 at 1 mm), for measuring the preprocessing at real cohorts' sizes.

    ``out_dir/hcp/<100000+i>/T1w/T2w_acpc_dc_restore_brain.nii.gz`` for healthy subjects and
    ``out_dir/brats/BraTS19_SYN_<i+1>/<case>_{t2,flair,seg}.nii.gz`` for tumour cases, in the template's
    2 mm grid and affine, with ``out_dir/brats/appearance.csv``. ``mix`` maps appearance -> share (default:
    equal shares of every appearance). Files are written to a hidden sibling folder that is renamed into
    place after ``cohort.json`` (written last), so an interrupted run never looks complete. ``progress``
    receives one line per subject.
    """
    out_dir = _check_args(out_dir, n_healthy, n_lesion, seed)
    mix, grid = check_mix(mix), check_grid(grid)
    tpl = _load_template()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cohort is meant to be shared
        records = _write_all(tpl, tmp, seed, n_healthy, appearance_plan(mix, n_lesion), progress, grid)
        for sub in ("hcp", "brats"):
            (tmp / sub).mkdir(exist_ok=True)  # present even when empty, so readers find both layouts
        lines = ["subject,appearance"] + [f"{r['name']},{r['appearance']}" for r in records["lesion"]]
        (tmp / "brats" / APPEARANCE_FILE).write_text("\n".join(lines) + "\n")
        meta = {"generator": __name__, "version": GENERATOR_VERSION, "n_healthy": n_healthy, "n_lesion": n_lesion}
        meta |= {
            "seed": seed,
            "mix": mix,
            **({"grid": grid} if grid != "mni2mm" else {}),
            "healthy_dir": "hcp",
            "lesion_dir": "brats",
            **records,
        }
        (tmp / "cohort.json").write_text(json.dumps(meta, indent=1) + "\n")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _paths(out_dir)


def _write_all(
    tpl: _Template,
    tmp: Path,
    seed: int,
    n_healthy: int,
    plan: list[str],
    progress: Callable[[str], None] | None,
    grid: str = "mni2mm",
) -> dict[str, list[dict]]:
    """Write every subject; return the cohort.json records of healthy subjects and lesion cases."""
    records: dict[str, list[dict]] = {"healthy": [], "lesion": []}
    jobs = [("healthy", HEALTHY_KIND, i, None) for i in range(n_healthy)]
    jobs += [("lesion", LESION_KIND, i, appearance) for i, appearance in enumerate(plan)]
    counts = {"healthy": n_healthy, "lesion": len(plan)}
    for key, kind, index, appearance in jobs:
        start = time.perf_counter()
        record = _write_subject(tpl, tmp, seed, kind, index, appearance, grid)
        records[key].append(record)
        if progress is not None:
            extra = f" {appearance} {record['volume_cm3']} cm3" if appearance else ""
            seconds = time.perf_counter() - start
            progress(f"{key} {index + 1}/{counts[key]} {record['name']}{extra} ({seconds:.2f} s)")
    return records


def _is_complete(out_dir: Path, n_healthy: int, n_lesion: int, seed: int, mix: dict[str, float]) -> bool:
    try:
        meta = json.loads((out_dir / "cohort.json").read_text())
    except (OSError, ValueError):
        return False
    wanted = {"version": GENERATOR_VERSION, "n_healthy": n_healthy, "n_lesion": n_lesion, "seed": seed, "mix": mix}
    if any(meta.get(key) != value for key, value in wanted.items()):
        return False
    records = meta.get("healthy", []) + meta.get("lesion", [])
    return all((out_dir / rel).is_file() for record in records for rel in record["files"].values())


def ensure_cohort(
    out_dir: Path,
    n_healthy: int,
    n_lesion: int,
    seed: int,
    *,
    mix: dict[str, float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> CohortPaths:
    """Generate once, then reuse: if out_dir/cohort.json exists with the same (n_healthy, n_lesion, seed, mix,
    generator version) and all its files, return the paths without work; otherwise generate.

    A file lock beside ``out_dir`` makes concurrent callers (several trials on one node) generate once.
    """
    out_dir = _check_args(out_dir, n_healthy, n_lesion, seed)
    mix = check_mix(mix)
    with FileLock(str(out_dir.parent / f".{out_dir.name}.lock")):
        if _is_complete(out_dir, n_healthy, n_lesion, seed, mix):
            return _paths(out_dir)
        for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # left by a killed run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        return generate_cohort(out_dir, n_healthy, n_lesion, seed, mix=mix, progress=progress)


def _parse_mix(text: str) -> dict[str, float]:
    """``bright=1,dark=1`` -> {"bright": 1.0, "dark": 1.0}; ValueError naming a malformed entry."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, share = part.partition("=")
        try:
            mix[name.strip()] = float(share) if sep else float("nan")
        except ValueError:
            raise ValueError(f"--mix entry {part!r}: expected NAME=SHARE") from None
        if not sep:
            raise ValueError(f"--mix entry {part!r}: expected NAME=SHARE")
    return check_mix(mix)


def main(argv: list[str] | None = None) -> int:
    """Command line: generate (or reuse) a cohort and print its folders."""
    parser = argparse.ArgumentParser(prog="python -m trainables.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="cohort folder (gets hcp/, brats/, cohort.json)")
    parser.add_argument("--healthy", type=int, default=24, help="number of healthy subjects (default 24)")
    parser.add_argument("--lesion", type=int, default=12, help="number of tumour cases (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--mix", default="", help="lesion appearances, e.g. bright=1,dark=1 (default: all equal)")
    parser.add_argument("--grid", default="mni2mm", help="voxel grid: mni2mm (default), hcp or brats")
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching cohort exists")
    args = parser.parse_args(argv)
    make = generate_cohort if args.force or args.grid != "mni2mm" else ensure_cohort
    start = time.perf_counter()
    try:
        mix = _parse_mix(args.mix) if args.mix else None
        say = lambda line: print(line, flush=True)  # noqa: E731
        grid = {"grid": args.grid} if args.grid != "mni2mm" else {}  # ensure_cohort knows the template's grid only
        paths = make(args.out, args.healthy, args.lesion, args.seed, mix=mix, progress=say, **grid)
    except (ValueError, PermissionError) as err:
        parser.error(str(err))
    print(f"done in {time.perf_counter() - start:.1f} s")
    print(f"healthy: {paths.healthy_dir}")
    print(f"lesion:  {paths.lesion_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
