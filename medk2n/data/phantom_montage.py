"""PNG montage of one case: a row per modality, axial / coronal / sagittal columns.

Made so a person can check at a glance that contrasts look like real MRI (CSF
dark on T1, bright on T2, nulled on FLAIR; lesions bright on DWI, dark on ADC).
Volumes are shown in the closest RAS orientation with their voxel aspect
ratio, so LPS, oblique and thick-slice cases look upright and undistorted.
Uses matplotlib's object API (no pyplot), which leaves the process backend alone.
"""

from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import numpy as np

from medk2n.data.nifti import strip_nifti_suffix
from medk2n.errors import DataError
from medk2n.fsutil import write_atomic

_ROWS = ("t1", "t2", "flair", "pd", "dwi", "adc")
_ADC_WINDOW = (0.0, 3500.0)  # 1e-6 mm^2/s: lesions (~450) to free water (~3000)


def _load_canonical(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        img = nib.load(str(path))
        codes = nib.aff2axcodes(img.affine)
        canonical = nib.as_closest_canonical(img)
        data = np.asarray(canonical.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"{path}: unreadable NIfTI ({exc})") from None
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    return data, np.asarray(canonical.header.get_zooms()[:3], dtype=float), codes


def _find(case_dir: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(case_dir.iterdir()):
        stem = strip_nifti_suffix(path.name)
        if stem is not None:
            found[stem.lower()] = path
    return found


def _slices(volume: np.ndarray, centre: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal, sagittal planes through `centre` (RAS voxel order), rows running up."""
    x, y, z = centre
    return [volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T]


def save_montage(case_dir: Path, png_path: Path) -> Path:
    """Write the montage of `case_dir` to `png_path` (atomically) and return the path."""
    from matplotlib.figure import Figure

    case_dir, png_path = Path(case_dir), Path(png_path)
    if not case_dir.is_dir():
        raise DataError(f"{case_dir}: not a case folder")
    files = _find(case_dir)
    rows = [m for m in _ROWS if m in files]
    if not rows:
        raise DataError(f"{case_dir}: no modality volumes ({', '.join(_ROWS)}) to show")
    volumes = {m: _load_canonical(files[m]) for m in rows}
    first, zooms, codes = volumes[rows[0]]
    brain = _load_canonical(files["brain_mask"])[0] > 0 if "brain_mask" in files else None
    lesion = _load_canonical(files["lesion_mask"])[0] > 0 if "lesion_mask" in files else None
    if lesion is not None and lesion.any():
        centre = np.round(np.argwhere(lesion).mean(axis=0)).astype(int)
    else:
        centre = np.asarray(first.shape) // 2
    aspects = [zooms[1] / zooms[0], zooms[2] / zooms[0], zooms[2] / zooms[1]]

    fig = Figure(figsize=(9.0, 2.8 * len(rows)), dpi=80)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, modality in enumerate(rows):
        volume = volumes[modality][0]
        inside = volume[brain] if brain is not None and brain.shape == volume.shape and brain.any() else volume
        if modality == "adc":
            vmin, vmax = _ADC_WINDOW
        else:
            vmin, vmax = 0.0, float(np.percentile(inside, 99.5))
        label = "adc (1e-6 mm²/s)" if modality == "adc" else modality
        for c, (plane, view) in enumerate(zip(_slices(volume, centre), ("axial", "coronal", "sagittal"))):
            ax = axes[r, c]
            ax.imshow(plane, cmap="gray", origin="lower", vmin=vmin, vmax=vmax, aspect=aspects[c])
            if lesion is not None and modality in ("dwi", "adc") and lesion.shape == volume.shape:
                mask = _slices(lesion.astype(np.float32), centre)[c]
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors="red", linewidths=0.6)
            ax.set_title(f"{label} {view}  median {np.median(inside):.0f}", fontsize=8)
            ax.set_axis_off()
    shape = "x".join(map(str, first.shape))
    spacing = "x".join(f"{z:g}" for z in zooms)
    fig.suptitle(f"{case_dir.name}: {shape} @ {spacing} mm, stored {''.join(codes)}", fontsize=10)
    fig.tight_layout()

    png = io.BytesIO()
    fig.savefig(png, format="png")
    write_atomic(png_path, png.getvalue())
    return png_path
