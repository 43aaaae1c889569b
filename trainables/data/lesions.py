"""Lesions of the synthetic cohort: appearances, whole-tumour volumes, placement, sub-regions, mass effect.

See trainables/data/synthetic.py for the cohort, the appearances and the sources of the volume law. Helpers
take the template's maps as plain arrays, so this module does not import the cohort module.
"""

from __future__ import annotations

from typing import Any  # the cohort's _Template: tissue, matter, depth_mm, voxel_mm (no import of the cohort)

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

# Relative intensities of (CSF, GM, WM): T2 has bright CSF and dark WM; FLAIR suppresses CSF.
T2_TISSUE = np.array([1.0, 0.55, 0.35], dtype=np.float32)
FLAIR_TISSUE = np.array([0.12, 0.55, 0.42], dtype=np.float32)
# Per appearance, BraTS labels -> relative intensity (1 necrotic core, 2 oedema, 4 enhancing rim), on the
# scale of T2_TISSUE / FLAIR_TISSUE; None means "this subject's grey matter" (the iso appearance).
T2_LESION = {
    "bright": {1: 0.9, 2: 0.78, 4: 0.62},  # all above WM; oedema and core near CSF
    "dark": {1: 0.08, 2: 0.26, 4: 0.16},  # all below WM (0.35)
    "iso": {1: None, 2: None, 4: None},  # grey matter's value, inside white matter
    "multifocal": {1: 0.85, 2: 0.75, 4: 0.66},
}
FLAIR_LESION = {
    "bright": {1: 0.5, 2: 0.92, 4: 0.78},
    "dark": {1: 0.1, 2: 0.3, 4: 0.2},
    "iso": {1: None, 2: None, 4: None},
    "multifocal": {1: 0.6, 2: 0.9, 4: 0.8},
}
APPEARANCES = tuple(T2_LESION)
DEFAULT_MIX = {name: 1.0 for name in APPEARANCES}  # equal shares
VOLUME_CM3 = {"median": 80.0, "log_sd": 0.65, "clip": (10.0, 300.0)}  # whole tumour of a single lesion
FOCUS_CM3 = {"median": 2.0, "log_sd": 0.5, "clip": (0.5, 8.0)}  # one focus of a multifocal case
FOCI = (3, 6)  # foci of a multifocal case (inclusive)
SHAPE_NOISE = 0.15  # relative perturbation of the ellipsoid's radius
MAX_EXTENT = 1.2 / (1 - SHAPE_NOISE)  # farthest lesion voxel, in mean radii (axis stretch <= 1.2)


def smooth_fields(rng: np.random.Generator, shape: tuple[int, ...], knots: tuple[int, ...], count: int) -> np.ndarray:
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


def appearance_plan(mix: dict[str, float], n: int) -> list[str]:
    """Appearances of lesion cases 0..n-1: smooth weighted round robin over ``mix`` (name -> share).

    Case i's appearance does not depend on n, and every prefix of the plan is as close to the mix as its
    length allows (each name's count is within one of ``n * share``).
    """
    names = [name for name in APPEARANCES if mix.get(name, 0) > 0]
    total = sum(mix[name] for name in names)
    credit = dict.fromkeys(names, 0.0)
    plan = []
    for _ in range(n):
        for name in names:
            credit[name] += mix[name] / total
        chosen = max(names, key=lambda name: credit[name])  # first in APPEARANCES order on ties
        credit[chosen] -= 1.0
        plan.append(chosen)
    return plan


def check_mix(mix: dict[str, float] | None) -> dict[str, float]:
    """The mix with every known appearance (absent ones at 0); ValueError naming an unknown or bad entry."""
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = sorted(set(mix) - set(APPEARANCES))
    if unknown:
        raise ValueError(f"unknown lesion appearance {unknown[0]!r}; known: {', '.join(APPEARANCES)}")
    for name, share in mix.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not share >= 0:
            raise ValueError(f"lesion appearance {name!r}: share must be a number >= 0, got {share!r}")
    if not sum(mix.values()) > 0:
        raise ValueError(f"the lesion appearance mix {mix} has no positive share")
    return {name: float(mix.get(name, 0.0)) for name in APPEARANCES}


def _draw_volume(rng: np.random.Generator, law: dict) -> float:
    """A volume in cm3 from a clipped log-normal law (see the module docstring)."""
    lo, hi = law["clip"]
    return float(np.clip(law["median"] * np.exp(law["log_sd"] * rng.standard_normal()), lo, hi))


def _radius_mm(volume_cm3: float) -> float:
    """Radius of the sphere of that volume."""
    return float((3 * volume_cm3 * 1000 / (4 * np.pi)) ** (1 / 3))


def _place(
    rng: np.random.Generator, tpl: Any, coords: np.ndarray, radius_mm: float, where: np.ndarray, reach: float
) -> tuple[np.ndarray, float]:
    """A centre (output voxels) where ``where`` (template map) is >= 0.6 and the brain is at least
    ``reach`` radii + 4 mm deep, and the radius (voxels), shrunk by 10% steps until such a centre exists."""
    sub = coords[:, ::2, ::2, ::2]  # every other voxel is plenty to pick a centre
    depth = ndi.map_coordinates(tpl.depth_mm, sub, order=1)
    inside = ndi.map_coordinates(where, sub, order=1)
    while True:
        ok = (depth >= radius_mm * reach + 4.0) & (inside >= 0.6)
        if ok.any():
            break
        if radius_mm < 3.0:
            raise RuntimeError("no voxel of this subject is deep enough inside the brain for a tumour")
        radius_mm *= 0.9
    candidates = np.argwhere(ok)
    centre = candidates[rng.integers(len(candidates))] * 2 + rng.uniform(0, 1, 3)
    return centre.astype(np.float32), radius_mm / tpl.voxel_mm


def plan_foci(rng: np.random.Generator, tpl: Any, coords: np.ndarray, appearance: str) -> list:
    """(centre, radius in voxels) of each focus of a lesion of this appearance.

    A single lesion's centre lies in grey or white matter (white matter for ``iso``) at least 0.6 radii deep,
    so large tumours may reach the cortex; multifocal foci lie wholly inside the brain.
    """
    if appearance == "multifocal":
        count = int(rng.integers(FOCI[0], FOCI[1] + 1))
        radii = [_radius_mm(_draw_volume(rng, FOCUS_CM3)) for _ in range(count)]
        return [_place(rng, tpl, coords, r, tpl.matter, MAX_EXTENT) for r in radii]
    where = tpl.tissue[2] if appearance == "iso" else tpl.matter
    return [_place(rng, tpl, coords, _radius_mm(_draw_volume(rng, VOLUME_CM3)), where, 0.6)]


def _box(centre: np.ndarray, half: float, shape: tuple[int, ...]) -> tuple[slice, ...]:
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _box_rel(box: tuple[slice, ...], centre: np.ndarray) -> np.ndarray:
    grid = np.mgrid[box].astype(np.float32)
    return grid - centre[:, None, None, None]


def push(rng: np.random.Generator, coords: np.ndarray, centre: np.ndarray, radius: float) -> None:
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
    noise = smooth_fields(rng, rho.shape, (4, 4, 4), 2)
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


def _lesion_values(appearance: str, jitter: np.ndarray) -> tuple[dict[int, float], dict[int, float]]:
    """(T2, FLAIR) intensity per BraTS label for this appearance; ``iso`` takes the subject's grey matter."""
    t2 = {k: float(T2_TISSUE[1] * jitter[1]) if v is None else v for k, v in T2_LESION[appearance].items()}
    flair = {k: float(FLAIR_TISSUE[1] * jitter[1]) if v is None else v for k, v in FLAIR_LESION[appearance].items()}
    return t2, flair


def paint_lesions(
    rng: np.random.Generator, images: dict[str, np.ndarray], foci: list, appearance: str, jitter: np.ndarray
) -> np.ndarray:
    """Paint every focus into the T2 and FLAIR images (in place); return the BraTS segmentation."""
    t2_values, flair_values = _lesion_values(appearance, jitter)
    seg = np.zeros(images["t2"].shape, dtype=np.uint8)
    for centre, radius in foci:
        box = _box(centre, radius * MAX_EXTENT + 2, seg.shape)
        labels = _tumour_labels(rng, _box_rel(box, centre), radius)
        texture = smooth_fields(rng, labels.shape, (6, 6, 6), 1)[0]
        _blend_lesion(images["t2"][box], labels, t2_values, texture)
        _blend_lesion(images["flair"][box], labels, flair_values, texture)
        seg[box] = np.where(labels > 0, labels, seg[box])
    return seg
