"""Tiny synthetic volumes and NIfTI writers shared by the data-layer tests (imported by name)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (12, 10, 8)


def head(shape: tuple[int, int, int] = SHAPE, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """A smooth positive 'head': an ellipsoid with soft edges on a zero background, plus texture."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum((g / 0.75) ** 2 for g in grids)
    texture = 0.1 * np.random.default_rng(seed).random(shape)
    return (scale * (np.clip(1.2 - r2, 0, None) + texture * (r2 < 1))).astype(np.float32)


def oblique_affine(zooms=(1.0, 1.2, 2.0), degrees=(12.0, -8.0, 20.0), origin=(-10.0, 5.0, 3.0)) -> np.ndarray:
    """Rotation about x, y, z then anisotropic scaling: a tilted scanner grid."""
    rot = np.eye(3)
    for axis, deg in enumerate(degrees):
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = r @ rot
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(zooms)
    affine[:3, 3] = origin
    return affine


AFFINES = {
    "iso": np.eye(4),
    "aniso": np.diag([0.9, 1.3, 3.0, 1.0]),
    "lps": np.diag([-1.0, -1.0, 2.0, 1.0]),
    # sagittal acquisition: voxel axes point A, S, L
    "permuted": np.array([[0, 0, -1.5, 0], [1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]], dtype=float),
    "oblique": oblique_affine(),
}


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.eye(4) if affine is None else affine)
    img.set_qform(img.affine, 1)
    img.set_sform(img.affine, 1)
    nib.save(img, str(path))
    return path
