"""Voxel grids: same-geometry checks, world-space resampling, canonical reorientation.

All sources of a case must share one grid (DESIGN.md, "Data contract"). When
they do not (ISLES FLAIR lives in native space), `resample_to_reference` puts
a volume onto a named reference grid by trilinear interpolation in world
coordinates. `to_canonical` only transposes and flips (closest RAS), so
`from_canonical` undoes it exactly and outputs land on the input voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_mod

from medk2n.data.nifti import VolumeInfo
from medk2n.errors import DataError

_RAS = ornt_mod.axcodes2ornt("RAS")
# Voxels per chunk when resampling: bounds memory at a few hundred MB for any volume.
_CHUNK_VOXELS = 1 << 21


def geometry_mismatch(a: VolumeInfo, b: VolumeInfo, atol_mm: float = 1e-3) -> str | None:
    """Why `b`'s grid differs from `a`'s, or None when they match within `atol_mm`."""
    if tuple(a.shape) != tuple(b.shape):
        return f"shape {'x'.join(map(str, a.shape))} vs {'x'.join(map(str, b.shape))}"
    diff = float(np.abs(np.asarray(a.affine) - np.asarray(b.affine)).max())
    if diff > atol_mm:
        return f"affines differ by up to {diff:.4g} mm"
    return None


def check_same_geometry(infos: dict[str, VolumeInfo], atol_mm: float = 1e-3) -> None:
    """DataError naming both files when any volume's grid differs from the first one's."""
    items = list(infos.items())
    for name, info in items[1:]:
        why = geometry_mismatch(items[0][1], info, atol_mm)
        if why is not None:
            raise DataError(
                f"{info.path} and {items[0][1].path}: different voxel grids ({why}); "
                f"pass --reference <modality> (e.g. --reference {items[0][0]}) to resample onto one grid"
            )


def resample_to_reference(array: np.ndarray, info: VolumeInfo, ref: VolumeInfo, order: int = 1) -> np.ndarray:
    """`array` (on `info`'s grid) sampled at `ref`'s voxel centres; outside the source = 0.

    order=1 is trilinear (images), order=0 nearest neighbour (label masks).
    Processed in chunks of reference slices to bound memory.
    """
    if order not in (0, 1):
        raise ValueError(f"order must be 0 or 1, got {order}")
    vox = np.linalg.inv(np.asarray(info.affine, dtype=np.float64)) @ np.asarray(ref.affine, dtype=np.float64)
    src = np.asarray(array, dtype=np.float32)
    nx, ny, nz = (int(n) for n in ref.shape)
    ii, jj = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    plane = vox[:3, 0, None] * ii.ravel() + vox[:3, 1, None] * jj.ravel() + vox[:3, 3, None]
    out = np.empty((nx * ny, nz), dtype=np.float32)
    step = max(1, _CHUNK_VOXELS // (nx * ny))
    for k0 in range(0, nz, step):
        ks = np.arange(k0, min(nz, k0 + step))
        coords = plane[:, :, None] + vox[:3, 2, None, None] * ks[None, None, :]
        out[:, ks] = _sample(src, coords.reshape(3, -1), order).reshape(nx * ny, len(ks))
    return out.reshape(nx, ny, nz)


def _sample(src: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    """Interpolate `src` at continuous voxel coordinates [3, P]; zero outside the grid."""
    shape = np.asarray(src.shape)[:, None]
    eps = 1e-4
    inside = np.all((coords >= -eps) & (coords <= shape - 1 + eps), axis=0)
    coords = np.clip(coords, 0, shape - 1)
    if order == 0:
        idx = np.rint(coords).astype(np.intp)
        return np.where(inside, src[idx[0], idx[1], idx[2]], 0).astype(np.float32)
    base = np.minimum(np.floor(coords).astype(np.intp), np.maximum(shape - 2, 0))
    frac = (coords - base).astype(np.float32)
    out = np.zeros(coords.shape[1], dtype=np.float32)
    for corner in range(8):
        offs = [(corner >> axis) & 1 for axis in range(3)]
        weight = np.ones_like(out)
        idx = []
        for axis, off in enumerate(offs):
            weight *= frac[axis] if off else 1 - frac[axis]
            idx.append(np.minimum(base[axis] + off, shape[axis, 0] - 1))
        out += weight * src[idx[0], idx[1], idx[2]]
    return np.where(inside, out, np.float32(0))


@dataclass
class Orientation:
    """What `to_canonical` did: enough to undo it exactly.

    `transform` is the nibabel orientation transform (axis permutation + flips)
    from the input voxel axes to closest-RAS; `shape` the input array shape;
    `codes` the input axis codes (e.g. "LPS"); `zooms` the voxel sizes along
    the canonical axes (mm), taken from the affine so oblique grids are right.
    """

    transform: np.ndarray
    shape: tuple[int, int, int]
    codes: str
    zooms: tuple[float, float, float]

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        out = [0, 0, 0]
        for axis, (target, _) in enumerate(self.transform):
            out[int(target)] = int(self.shape[axis])
        return tuple(out)


def orientation_codes(affine: np.ndarray) -> str:
    """Axis codes of a voxel grid, e.g. "RAS", "LPS" (closest axes for oblique grids)."""
    return "".join(nib.aff2axcodes(np.asarray(affine)))


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, Orientation]:
    """Transpose/flip `array` so its axes point closest to R, A, S (slice axis last)."""
    affine = np.asarray(affine, dtype=np.float64)
    transform = ornt_mod.ornt_transform(ornt_mod.io_orientation(affine), _RAS)
    voxel_sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    zooms = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(transform):
        zooms[int(target)] = float(voxel_sizes[axis])
    orient = Orientation(
        transform=transform,
        shape=tuple(int(n) for n in array.shape[:3]),
        codes=orientation_codes(affine),
        zooms=tuple(zooms),
    )
    return np.ascontiguousarray(ornt_mod.apply_orientation(array, transform)), orient


def from_canonical(array: np.ndarray, orient: Orientation) -> np.ndarray:
    """Exact inverse of `to_canonical`: back to the input axes and shape."""
    if tuple(array.shape[:3]) != orient.canonical_shape:
        raise DataError(f"canonical array shape {array.shape} does not match {orient.canonical_shape}")
    return np.ascontiguousarray(ornt_mod.apply_orientation(array, _invert(orient.transform)))


def canonical_view(array: np.ndarray, orient: Orientation) -> np.ndarray:
    """`array` (in the input's axis order) seen with canonical axes: a view, so writing into it fills
    `array`, which then holds what `from_canonical` would return without a second whole volume."""
    if tuple(array.shape[:3]) != tuple(orient.shape):
        raise DataError(f"array shape {array.shape} does not match the input shape {orient.shape}")
    return ornt_mod.apply_orientation(array, orient.transform)


def _invert(transform: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes `transform` (input axis i went to transform[i,0])."""
    inverse = np.empty_like(transform)
    for axis, (target, flip) in enumerate(transform):
        inverse[int(target)] = (axis, flip)
    return inverse
