"""Synthetic brain MRI cohort made from the MNI152 template that nilearn ships (no downloads).

Healthy subjects (HCP layout) and BraTS-like tumour cases (BraTS layout) are drawn from the 2 mm MNI152
tissue maps with smooth random deformations, bias fields and noise. Each subject draws only from
``np.random.default_rng([seed, kind, index])``, so a seed gives byte-identical files, and subject ``i``
does not depend on how many subjects the cohort has.

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

GENERATOR_VERSION = 1  # bump whenever outputs change, so ensure_cohort regenerates old cohorts
HEALTHY_KIND, LESION_KIND = 0, 1
HCP_T2 = Path("T1w") / "T2w_acpc_dc_restore_brain.nii.gz"
# Relative intensities of (CSF, GM, WM): T2 has bright CSF and dark WM; FLAIR suppresses CSF.
T2_TISSUE = np.array([1.0, 0.55, 0.35], dtype=np.float32)
FLAIR_TISSUE = np.array([0.12, 0.55, 0.42], dtype=np.float32)
# BraTS labels -> relative intensity: 1 necrotic core, 2 oedema, 4 enhancing rim; all brighter than WM.
T2_LESION = {1: 0.9, 2: 0.78, 4: 0.62}
FLAIR_LESION = {1: 0.5, 2: 0.92, 4: 0.78}
RADIUS_MM = (6.0, 20.0)  # mean outer (oedema) radius of a tumour
SHAPE_NOISE = 0.15  # relative perturbation of the ellipsoid's radius
MAX_EXTENT = 1.2 / (1 - SHAPE_NOISE)  # farthest lesion voxel, in mean radii (axis stretch <= 1.2)


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


def _smooth_fields(rng: np.random.Generator, shape: tuple[int, ...], knots: tuple[int, ...], count: int) -> np.ndarray:
    """``count`` smooth random fields over ``shape``, each scaled to max |value| = 1.

    A separable Gaussian basis on a coarse knot grid: far cheaper than zooming full volumes.
    """
    bases = []
    for n, k in zip(shape, knots, strict=True):
        x = np.arange(n, dtype=np.float64)[:, None]
        centres = np.linspace(0, n - 1, k)[None, :]
        width = max((n - 1) / max(k - 1, 1), 1.0) * 0.6
        basis = np.exp(-0.5 * ((x - centres) / width) ** 2)
        bases.append(basis / basis.sum(1, keepdims=True))
    coeffs = rng.standard_normal((count, *knots))
    fields = np.einsum("ai,bj,ck,nijk->nabc", *bases, coeffs, optimize=True).astype(np.float32)
    peak = np.abs(fields).reshape(count, -1).max(1).reshape(count, 1, 1, 1)
    return fields / np.maximum(peak, 1e-6)


def _healthy_coords(rng: np.random.Generator, tpl: _Template) -> np.ndarray:
    """Source coordinates (3, X, Y, Z) in the template for every output voxel: rotation, scale, warp."""
    shape = tpl.mask.shape
    rotation = Rotation.from_euler("xyz", rng.uniform(-4, 4, 3), degrees=True).as_matrix()
    matrix = (rotation @ np.diag(1.0 / rng.uniform(0.95, 1.05, 3))).astype(np.float32)
    warp_vox = rng.uniform(1.5, 4.0) / tpl.voxel_mm
    warp = _smooth_fields(rng, shape, (5, 6, 5), 3) * np.float32(warp_vox)
    centre = tpl.centre[:, None, None, None]
    rel = np.indices(shape, dtype=np.float32) - centre
    return np.tensordot(matrix, rel, axes=1) + centre + warp


def _place_tumour(rng: np.random.Generator, tpl: _Template, coords: np.ndarray) -> tuple[np.ndarray, float]:
    """A centre (output voxels) in grey/white matter deep enough for the whole lesion, and its radius (voxels)."""
    radius_mm = rng.uniform(*RADIUS_MM)
    sub = coords[:, ::2, ::2, ::2]  # every other voxel is plenty to pick a centre
    depth = ndi.map_coordinates(tpl.depth_mm, sub, order=1)
    matter = ndi.map_coordinates(tpl.matter, sub, order=1)
    while True:
        # 4 mm margin covers the scale (<= 5%) and linear interpolation of the depth map
        ok = (depth >= radius_mm * MAX_EXTENT + 4.0) & (matter >= 0.6)
        if ok.any():
            break
        if radius_mm < 3.0:
            raise RuntimeError("no voxel of this subject is deep enough inside the brain for a tumour")
        radius_mm *= 0.9
    candidates = np.argwhere(ok)
    centre = candidates[rng.integers(len(candidates))] * 2 + rng.uniform(0, 1, 3)
    return centre.astype(np.float32), radius_mm / tpl.voxel_mm


def _box(centre: np.ndarray, half: float, shape: tuple[int, ...]) -> tuple[slice, ...]:
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _box_rel(box: tuple[slice, ...], centre: np.ndarray) -> np.ndarray:
    grid = np.mgrid[box].astype(np.float32)
    return grid - centre[:, None, None, None]


def _push(rng: np.random.Generator, coords: np.ndarray, centre: np.ndarray, radius: float) -> None:
    """Mass effect, in place: tissue around the centre is pushed radially outwards.

    Output voxel x samples the healthy anatomy at c + (x - c)(1 - k g(r)); with k < 1 and a Gaussian g of
    width 1.5 radii this radial map stays monotone (no folding). g is cut to 0 at 2 widths.
    """
    strength, width = rng.uniform(0.3, 0.6), 1.5 * radius
    box = _box(centre, 2 * width, coords.shape[1:])
    rel = _box_rel(box, centre)
    floor = np.exp(-4.0)
    g = np.clip((np.exp(-(rel**2).sum(0) / width**2) - floor) / (1 - floor), 0, None)
    src = centre[:, None, None, None] + rel * (1 - strength * g)
    moved = [ndi.map_coordinates(coords[i], src, order=1, mode="nearest") for i in range(3)]
    coords[(slice(None), *box)] = np.stack(moved)


def _tumour_labels(rng: np.random.Generator, rel: np.ndarray, radius: float) -> np.ndarray:
    """BraTS labels in a box: noisy ellipsoid of oedema (2) around a rim (4) around necrosis (1)."""
    axes = Rotation.from_quat(rng.standard_normal(4)).as_matrix().astype(np.float32)  # uniform random orientation
    stretch = rng.uniform(0.8, 1.2, 3).astype(np.float32) * np.float32(radius)
    local = np.tensordot(axes.T, rel, axes=1) / stretch[:, None, None, None]
    rho = np.sqrt((local**2).sum(0))
    noise = _smooth_fields(rng, rho.shape, (4, 4, 4), 2)
    core_frac = rng.uniform(0.45, 0.7)
    rho_core = rho * (1 + 0.12 * noise[1]) / core_frac
    labels = np.where(rho * (1 + SHAPE_NOISE * noise[0]) < 1, 2, 0).astype(np.uint8)
    labels[rho_core < 1] = 4
    labels[rho_core < rng.uniform(0.3, 0.7)] = 1
    return labels


def _blend_lesion(img: np.ndarray, labels: np.ndarray, values: dict[int, float], texture: np.ndarray) -> None:
    """Paint lesion intensities into ``img`` (a box view, in place) with partial-volume edges."""
    inside = (labels > 0).astype(np.float32)
    layer = np.zeros_like(img)
    for label, value in values.items():
        layer[labels == label] = value
    layer *= 1 + 0.08 * texture
    alpha = ndi.gaussian_filter(inside, 0.6)
    # normalised convolution: blur the lesion layer without darkening it at its edge
    smooth = ndi.gaussian_filter(layer, 0.6) / np.maximum(alpha, 1e-3)
    img[...] = img * (1 - alpha) + smooth * alpha


def _finish(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """Bias field, global scale and Rician noise; zero outside the brain, strictly positive inside."""
    bias = np.exp(rng.uniform(0.05, 0.2) * _smooth_fields(rng, img.shape, (3, 3, 3), 1)[0])
    signal = (img * bias * scale)[mask]
    sigma = rng.uniform(0.01, 0.04) * scale
    real = signal + rng.normal(0, sigma, signal.shape)
    noisy = np.sqrt(real**2 + rng.normal(0, sigma, signal.shape) ** 2)
    out = np.zeros(img.shape, dtype=np.float32)
    out[mask] = np.maximum(noisy, 1e-3 * scale)  # image > 0 must mean "brain", as in brain-extracted data
    return out


def _make_subject(tpl: _Template, rng: np.random.Generator, lesion: bool) -> tuple[dict[str, np.ndarray], dict]:
    """Images ('t2', and for lesion cases 'flair', 'seg') of one subject, plus a summary of its draws."""
    coords = _healthy_coords(rng, tpl)
    info: dict = {}
    if lesion:
        centre, radius = _place_tumour(rng, tpl, coords)
        _push(rng, coords, centre, radius)  # before sampling, so the tumour displaces the anatomy
        info = {"centre_vox": [round(float(c), 2) for c in centre], "radius_mm": round(radius * tpl.voxel_mm, 2)}
    tissue = np.stack([ndi.map_coordinates(t, coords, order=1) for t in tpl.tissue])
    mask = ndi.map_coordinates(tpl.mask, coords, order=1) >= 0.5
    jitter = rng.uniform(0.93, 1.07, 3).astype(np.float32)  # subject-specific tissue contrast
    scale = float(rng.uniform(600, 1400))  # arbitrary scanner units, like HCP's float images
    images = {"t2": np.tensordot(T2_TISSUE * jitter, tissue, axes=1)}
    if lesion:
        images["flair"] = np.tensordot(FLAIR_TISSUE * jitter, tissue, axes=1)
        box = _box(centre, radius * MAX_EXTENT + 2, mask.shape)
        labels = _tumour_labels(rng, _box_rel(box, centre), radius)
        texture = _smooth_fields(rng, labels.shape, (6, 6, 6), 1)[0]
        _blend_lesion(images["t2"][box], labels, T2_LESION, texture)
        _blend_lesion(images["flair"][box], labels, FLAIR_LESION, texture)
        seg = np.zeros(mask.shape, dtype=np.uint8)
        seg[box] = labels
        seg[~mask] = 0  # a lesion voxel is always a brain voxel
        info["voxels"] = {str(k): int((seg == k).sum()) for k in (1, 2, 4)}
    images = {name: _finish(rng, img, mask, scale) for name, img in images.items()}
    if lesion:
        images["seg"] = seg
    return images, info


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Gzipped NIfTI with a fixed gzip mtime and no embedded name, so equal arrays give equal bytes."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0) as gz:
        gz.write(img.to_bytes())


def _write_subject(tpl: _Template, root: Path, seed: int, kind: int, index: int) -> dict:
    """Generate and write subject ``index`` of ``kind``; return its cohort.json record (paths relative)."""
    images, info = _make_subject(tpl, np.random.default_rng([seed, kind, index]), lesion=kind == LESION_KIND)
    if kind == HEALTHY_KIND:
        name = str(100000 + index)
        files = {"t2": Path("hcp") / name / HCP_T2}
    else:
        name = f"BraTS19_SYN_{index + 1:03d}"
        files = {key: Path("brats") / name / f"{name}_{key}.nii.gz" for key in images}
    for key, rel in files.items():
        _save_nifti(root / rel, images[key], tpl.affine)
    return {"name": name, "files": {k: str(v) for k, v in files.items()}, **info}


def _check_args(out_dir: Path | str, n_healthy: int, n_lesion: int, seed: int) -> Path:
    """Validate arguments; create the parent of ``out_dir``. Returns ``out_dir`` as an absolute Path."""
    for name, value in (("n_healthy", n_healthy), ("n_lesion", n_lesion), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
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
    out_dir: Path, n_healthy: int, n_lesion: int, seed: int, *, progress: Callable[[str], None] | None = None
) -> CohortPaths:
    """Generate a synthetic cohort in ``out_dir`` (replacing any cohort there) and return its two folders.

    ``out_dir/hcp/<100000+i>/T1w/T2w_acpc_dc_restore_brain.nii.gz`` for healthy subjects and
    ``out_dir/brats/BraTS19_SYN_<i+1>/<case>_{t2,flair,seg}.nii.gz`` for tumour cases, in the template's
    2 mm grid and affine. Files are written to a hidden sibling folder that is renamed into place after
    ``cohort.json`` (written last), so an interrupted run never looks complete. ``progress`` receives
    one line per subject.
    """
    out_dir = _check_args(out_dir, n_healthy, n_lesion, seed)
    tpl = _load_template()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cohort is meant to be shared
        records: dict[str, list[dict]] = {"healthy": [], "lesion": []}
        for key, kind, count in (("healthy", HEALTHY_KIND, n_healthy), ("lesion", LESION_KIND, n_lesion)):
            for index in range(count):
                start = time.perf_counter()
                records[key].append(_write_subject(tpl, tmp, seed, kind, index))
                if progress is not None:
                    extra = f" radius {records[key][-1]['radius_mm']} mm" if kind == LESION_KIND else ""
                    seconds = time.perf_counter() - start
                    progress(f"{key} {index + 1}/{count} {records[key][-1]['name']}{extra} ({seconds:.2f} s)")
        for sub in ("hcp", "brats"):
            (tmp / sub).mkdir(exist_ok=True)  # present even when empty, so readers find both layouts
        meta = {"generator": __name__, "version": GENERATOR_VERSION, "n_healthy": n_healthy, "n_lesion": n_lesion}
        meta |= {"seed": seed, "healthy_dir": "hcp", "lesion_dir": "brats", **records}
        (tmp / "cohort.json").write_text(json.dumps(meta, indent=1) + "\n")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _paths(out_dir)


def _is_complete(out_dir: Path, n_healthy: int, n_lesion: int, seed: int) -> bool:
    try:
        meta = json.loads((out_dir / "cohort.json").read_text())
    except (OSError, ValueError):
        return False
    wanted = {"version": GENERATOR_VERSION, "n_healthy": n_healthy, "n_lesion": n_lesion, "seed": seed}
    if any(meta.get(key) != value for key, value in wanted.items()):
        return False
    records = meta.get("healthy", []) + meta.get("lesion", [])
    return all((out_dir / rel).is_file() for record in records for rel in record["files"].values())


def ensure_cohort(
    out_dir: Path, n_healthy: int, n_lesion: int, seed: int, *, progress: Callable[[str], None] | None = None
) -> CohortPaths:
    """Generate once, then reuse: if out_dir/cohort.json exists with the same (n_healthy, n_lesion, seed,
    generator version) and all its files, return the paths without work; otherwise generate.

    A file lock beside ``out_dir`` makes concurrent callers (several trials on one node) generate once.
    """
    out_dir = _check_args(out_dir, n_healthy, n_lesion, seed)
    with FileLock(str(out_dir.parent / f".{out_dir.name}.lock")):
        if _is_complete(out_dir, n_healthy, n_lesion, seed):
            return _paths(out_dir)
        for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):  # left by a killed run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        return generate_cohort(out_dir, n_healthy, n_lesion, seed, progress=progress)


def main(argv: list[str] | None = None) -> int:
    """Command line: generate (or reuse) a cohort and print its folders."""
    parser = argparse.ArgumentParser(prog="python -m trainables.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="cohort folder (gets hcp/, brats/, cohort.json)")
    parser.add_argument("--healthy", type=int, default=24, help="number of healthy subjects (default 24)")
    parser.add_argument("--lesion", type=int, default=12, help="number of tumour cases (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching cohort exists")
    args = parser.parse_args(argv)
    make = generate_cohort if args.force else ensure_cohort
    start = time.perf_counter()
    try:
        paths = make(args.out, args.healthy, args.lesion, args.seed, progress=lambda line: print(line, flush=True))
    except (ValueError, PermissionError) as err:
        parser.error(str(err))
    print(f"done in {time.perf_counter() - start:.1f} s")
    print(f"healthy: {paths.healthy_dir}")
    print(f"lesion:  {paths.lesion_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
