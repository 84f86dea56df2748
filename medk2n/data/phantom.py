"""Physics phantom: realistic multi-contrast brain MRI cases with no download (`medk2n-data phantom`).

Each subject is the MNI152 tissue template (see `phantom_tissue`) placed in a
scanner grid, with what makes real cohorts differ: a random pose, size and
smooth non-linear deformation of the anatomy; a few percent of jitter on every
tissue's T1/T2/PD/ADC; 0-3 acute-stroke-like lesions; a smooth coil bias field
per weighted contrast; Rician noise (magnitude of complex Gaussian noise, as
magnitude reconstruction produces); an arbitrary scanner intensity scale.
Contrasts come from the signal equations, so their relations are physical.

Grids cycle over the geometries real data arrives in (`GEOMETRIES`):
isotropic, anisotropic thick-slice, LPS-flipped and oblique affines, with
matrix sizes that are not multiples of 32. Anatomy is defined in world
coordinates and sampled through each grid's affine, so data always agree with
their affine. All modalities of a subject share one shape and affine.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi
from scipy.special import expit

from medk2n.data.nifti import save_image_atomic
from medk2n.data.phantom_montage import save_montage
from medk2n.data.phantom_tissue import (
    TISSUES,
    WEIGHTED,
    blurred_fractions,
    compartment_signals,
    jittered_tissues,
    load_template,
)
from medk2n.errors import DataError
from medk2n.fsutil import make_temp_dir

__all__ = ["GEOMETRIES", "MODALITIES", "generate_dataset", "generate_subject", "save_montage"]

MODALITIES = ("t1", "t2", "flair", "pd", "dwi", "adc")
GEOMETRIES = ("isotropic", "anisotropic", "lps", "oblique")
DEFAULT_SPACING = 1.5  # mm: ~110 x 135 x 115 voxels, fast enough for tests and demos
SPACING_RANGE = (0.7, 6.0)
# Anisotropic protocols as multiples of the base spacing: 1 x 1 x 3 mm and
# 0.9 x 0.9 x 4 mm at the default 1.5 mm (clinical 2-D axial acquisitions).
_ANISOTROPIC = ((2 / 3, 2 / 3, 2.0), (0.6, 0.6, 8 / 3))
_MARGIN_MM = 10.0
TISSUE_JITTER = 0.03  # relative sd of per-subject tissue values
_ADC_NOISE = 25.0  # 1e-6 mm^2/s


@dataclass(frozen=True)
class Grid:
    """A scanner voxel grid; `code` is written as both qform and sform code."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    code: int


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Rotation about x, then y, then z, each by a random angle in [-max_deg, max_deg]."""
    rot = np.eye(3)
    for axis in range(3):
        angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        step = np.eye(3)
        step[i, i], step[i, j], step[j, i], step[j, j] = c, -s, s, c
        rot = step @ rot
    return rot


def _tilt(rng: np.random.Generator) -> np.ndarray:
    """Oblique axial slab: pitch 6-15 degrees (slices along the AC-PC line) and a small roll."""
    pitch = np.deg2rad(rng.uniform(6.0, 15.0) * rng.choice((-1.0, 1.0)))
    roll = np.deg2rad(rng.uniform(-5.0, 5.0))
    cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    about_x = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    about_y = np.array([[cr, 0.0, sr], [0.0, 1.0, 0.0], [-sr, 0.0, cr]])
    return about_y @ about_x


def make_grid(rng: np.random.Generator, geometry: str, spacing: float) -> Grid:
    """Field of view around the template brain, sampled with the named geometry."""
    direction, zooms, code = np.eye(3), np.full(3, spacing), 1
    if geometry == "isotropic":
        code = 4  # registered to MNI, as template-space datasets are stored
    elif geometry == "anisotropic":
        zooms = spacing * np.asarray(_ANISOTROPIC[rng.integers(len(_ANISOTROPIC))])
    elif geometry == "lps":
        direction = np.diag([-1.0, -1.0, 1.0])  # DICOM/ITK LPS voxel order
    elif geometry == "oblique":
        direction = _tilt(rng)
    else:
        raise DataError(f"unknown phantom geometry {geometry!r}; expected one of {', '.join(GEOMETRIES)}")
    zooms = np.round(zooms, 4)
    along = load_template().brain_points @ direction  # brain extent along each voxel axis
    low, high = along.min(axis=0), along.max(axis=0)
    half = (high - low) / 2 + _MARGIN_MM + rng.uniform(0.0, 6.0, 3)
    shape = [int(np.ceil(2 * h / z)) for h, z in zip(half, zooms)]
    shape = tuple(n + 1 if n % 32 == 0 else n for n in shape)
    affine = np.eye(4)
    affine[:3, :3] = direction * zooms
    affine[:3, 3] = direction @ ((low + high) / 2) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return Grid(shape, affine, code)


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], n_ctrl: int = 5) -> np.ndarray:
    """Zero-mean, unit-sd random field varying over ~1/n_ctrl of the field of view.

    Gaussian-RBF interpolation of random control values is separable, so the
    field is a cheap tensor contraction instead of a 3-D filter.
    """
    ctrl = rng.standard_normal((n_ctrl,) * 3)
    weights = []
    for n in shape:
        x = np.linspace(0.0, 1.0, n)[:, None]
        centres = np.linspace(-0.15, 1.15, n_ctrl)[None, :]
        w = np.exp(-0.5 * ((x - centres) / (centres[0, 1] - centres[0, 0])) ** 2)
        weights.append(w / w.sum(axis=1, keepdims=True))
    field = np.einsum("abc,ia,jb,kc->ijk", ctrl, *weights, optimize=True)
    return ((field - field.mean()) / field.std()).astype(np.float32)


def _template_warp(
    rng: np.random.Generator, mm_to_voxel: np.ndarray, template_shape: tuple[int, ...], coords: np.ndarray
) -> np.ndarray:
    """Smooth non-linear displacement (template voxels) at template voxel `coords`.

    Random 2.5 mm-sd displacements on a 7^3 control lattice over the template
    (~25 mm apart), spline-upsampled once to a 25^3 lattice and read trilinearly.
    Defined on the template, not the scanner grid, so one subject's anatomy is
    the same whatever grid samples it.
    """
    ctrl = np.einsum("kj,j...->k...", mm_to_voxel, rng.normal(0.0, 2.5, (3, 7, 7, 7)))
    fine = np.stack([ndi.zoom(c, 25 / 7, order=3, mode="nearest") for c in ctrl]).astype(np.float32)
    scale = (np.asarray(fine.shape[1:]) - 1) / (np.asarray(template_shape) - 1)
    lattice = coords * scale.astype(np.float32)[:, None, None, None]
    return np.stack([ndi.map_coordinates(f, lattice, order=1, mode="nearest", output=np.float32) for f in fine])


def _sample_anatomy(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """Tissue fractions (3, *shape) on `grid` for a randomly posed, scaled and warped brain."""
    template = load_template()
    centre = template.brain_centre
    zooms = np.linalg.norm(grid.affine[:3, :3], axis=0)
    nearest_axis = np.abs(grid.affine[:3, :3]).argmax(axis=0)
    sigma = np.zeros(3)
    sigma[nearest_axis] = 0.4 * np.sqrt(np.maximum(zooms**2 - 1.0, 0.0))  # PSF ~ voxel size
    fractions = blurred_fractions(tuple(np.round(sigma, 1)))
    # subject world -> template world: u = c + A (w - c) + t (pose and head size)
    pose = _rotation(rng, 5.0) * rng.uniform(0.97, 1.03, 3) * rng.uniform(0.95, 1.06)
    shift = centre + rng.uniform(-4.0, 4.0, 3) - pose @ centre
    to_template = np.linalg.inv(template.affine)
    linear = to_template[:3, :3] @ pose @ grid.affine[:3, :3]
    offset = to_template[:3, :3] @ (pose @ grid.affine[:3, 3] + shift) + to_template[:3, 3]
    index = np.ogrid[tuple(slice(0, n) for n in grid.shape)]
    coords = np.empty((3, *grid.shape), dtype=np.float32)
    for k in range(3):
        coords[k] = sum(linear[k, a] * index[a] for a in range(3)) + offset[k]
    coords += _template_warp(rng, to_template[:3, :3], fractions.shape[1:], coords)
    return np.stack([ndi.map_coordinates(f, coords, order=1, mode="constant", output=np.float32) for f in fractions])


def _lesion_map(rng: np.random.Generator, grid: Grid, tissue: np.ndarray, count: int) -> np.ndarray:
    """Soft union (0..1) of `count` irregular ellipsoids centred in GM/WM, radii 4-16 mm."""
    lesion = np.zeros(grid.shape, dtype=np.float32)
    candidates = np.argwhere(tissue > 0.9)
    if count == 0 or len(candidates) == 0:
        return lesion
    wobble = 0.15 * smooth_field(rng, grid.shape, n_ctrl=8)  # irregular outline, |wobble| < ~0.5
    zooms = np.linalg.norm(grid.affine[:3, :3], axis=0)
    for _ in range(count):
        centre = candidates[rng.integers(len(candidates))]
        axes = _rotation(rng, 90.0)
        radii = rng.uniform(4.0, 16.0) * rng.uniform(0.6, 1.4, 3)
        reach = np.ceil(2.0 * radii.max() / zooms).astype(int)  # box beyond which dist > 1 anyway
        lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, grid.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        # normalised distance in the ellipsoid's frame, from voxel offsets via the affine
        to_axes = (axes.T @ grid.affine[:3, :3]) / radii[:, None]
        offsets = np.indices(hi - lo).reshape(3, -1) + (lo - centre)[:, None]
        dist = np.linalg.norm(to_axes @ offsets, axis=0).reshape(hi - lo) * (1.0 + wobble[box])
        lesion[box] = np.maximum(lesion[box], expit((1.0 - dist) / 0.08))
    return lesion


def _acquire(rng: np.random.Generator, clean: np.ndarray, brain: np.ndarray, snr: float) -> np.ndarray:
    """Bias field, Rician noise at the given brain SNR, and an arbitrary scanner scale."""
    signal = clean * np.exp(0.1 * smooth_field(rng, clean.shape, n_ctrl=4))
    sigma = float(np.median(signal[brain])) / snr
    real = signal + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, clean.shape).astype(np.float32)
    noisy = np.hypot(real, imag)
    return (noisy * (rng.uniform(300.0, 3000.0) / np.percentile(noisy[brain], 99))).astype(np.float32)


def _checked_spacing(spacing: float | None) -> float:
    spacing = DEFAULT_SPACING if spacing is None else float(spacing)
    if not SPACING_RANGE[0] <= spacing <= SPACING_RANGE[1]:
        raise DataError(f"phantom: spacing {spacing:g} mm is outside {SPACING_RANGE[0]:g}-{SPACING_RANGE[1]:g} mm")
    return spacing


def generate_subject(
    rng: np.random.Generator, spacing: float | None, geometry: str, lesions: int | None = None,
    tissue_jitter: float = TISSUE_JITTER,
) -> dict:
    """Simulate one subject on a grid of the named geometry (one of GEOMETRIES).

    Returns {modality: float32 array} for MODALITIES, "brain_mask" and
    "lesion_mask" (uint8), "gm"/"wm"/"csf" tissue fractions (float32),
    "affine" (4x4), "code" (qform = sform code) and "geometry". `lesions`
    fixes the lesion count (default: random 0-3); `tissue_jitter` is the relative sd of
    every tissue property per subject (a larger one draws contrasts a model never saw).
    """
    grid = make_grid(rng, geometry, _checked_spacing(spacing))
    fractions = _sample_anatomy(rng, grid)
    brain = fractions.sum(axis=0) > 0.5
    parenchyma = fractions[0] + fractions[1]
    count = int(rng.integers(0, 4)) if lesions is None else int(lesions)
    lesion = _lesion_map(rng, grid, np.where(brain, parenchyma, 0.0), count)
    clean = compartment_signals(fractions, jittered_tissues(rng, tissue_jitter), lesion)
    out: dict = {}
    for name in WEIGHTED:
        snr = rng.uniform(12.0, 20.0) if name == "dwi" else rng.uniform(25.0, 45.0)  # b=1000 EPI is noisier
        out[name] = _acquire(rng, clean[name], brain, snr)
    adc = clean["adc"] + rng.normal(0.0, _ADC_NOISE, brain.shape).astype(np.float32)
    out["adc"] = np.where(brain, np.clip(adc, 0.0, None), 0.0).astype(np.float32)
    out["brain_mask"] = brain.astype(np.uint8)
    out["lesion_mask"] = ((lesion > 0.5) & (parenchyma > 0.5) & brain).astype(np.uint8)
    out.update(zip(TISSUES, fractions), affine=grid.affine, code=grid.code, geometry=geometry)
    return out


def _nifti(array: np.ndarray, affine: np.ndarray, code: int) -> nib.Nifti1Image:
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code)
    img.set_sform(affine, code)
    return img


def _write_case(subject: dict, case_dir: Path) -> None:
    """Write into a hidden sibling folder, then rename: a case appears whole or not at all."""
    tmp = make_temp_dir(case_dir.parent, case_dir.name)
    try:
        for name in (*MODALITIES, "brain_mask", "lesion_mask"):
            save_image_atomic(_nifti(subject[name], subject["affine"], subject["code"]), tmp / f"{name}.nii.gz")
        os.replace(tmp, case_dir)  # replaces only a missing or empty folder
    except OSError as exc:
        raise DataError(f"{case_dir}: could not write phantom case ({exc})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def generate_dataset(out_dir: Path, subjects: int, seed: int, spacing: float | None = None,
                     tissue_jitter: float = TISSUE_JITTER) -> list[Path]:
    """Write `subjects` cases out_dir/sub-XXX/{modality,brain_mask,lesion_mask}.nii.gz.

    Subject i depends only on (seed, i), so a larger dataset extends a smaller
    one. Refuses (before writing anything) when a case folder exists and is
    not empty: nothing a user has is ever overwritten.
    """
    if subjects < 1:
        raise DataError(f"phantom: --subjects must be at least 1, got {subjects}")
    if seed < 0:
        raise DataError(f"phantom: --seed must be non-negative, got {seed}")
    if not 0.0 <= tissue_jitter <= 0.3:
        raise DataError(f"phantom: --tissue-jitter must be in 0..0.3 (relative sd), got {tissue_jitter:g}")
    spacing = _checked_spacing(spacing)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder")
    width = max(3, len(str(subjects - 1)))
    cases = [out_dir / f"sub-{i:0{width}d}" for i in range(subjects)]
    for case in cases:
        if case.exists() and (not case.is_dir() or any(case.iterdir())):
            raise DataError(f"{case}: already exists and is not empty; refusing to overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases):
        subject = generate_subject(np.random.default_rng([seed, i]), spacing, GEOMETRIES[i % len(GEOMETRIES)],
                                   tissue_jitter=tissue_jitter)
        _write_case(subject, case)
    return cases
