"""Axial slices at model resolution and back, with the physical aspect kept.

After `to_canonical` the last axis is the one closest to superior-inferior.
Each axial slice is centred in a square *physical* field of view (zero
padding) and resampled to `size` x `size`, so anisotropic in-plane voxels and
non-square matrices keep their true aspect. Slices are shown the way a
radiologist's axial view reads in neurological convention: anterior at the
top (row 0), the patient's right towards the right (increasing column).

Padding plus resizing is one linear map per in-plane axis, so the whole
volume goes through two matrix products (separable interpolation) rather than
a per-slice loop: this runs on every case at inference and must cost little
next to the network. The kernel is a triangle (bilinear) widened by the
down-sampling factor, i.e. antialiased like PIL's bilinear resize. The way
back is the least-squares inverse of that map wherever it is invertible
(model pixels no larger than voxels), so outputs are not blurred a second
time, and bilinear interpolation where the model grid is coarser.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from medk2n.data.slabs import slabs
from medk2n.errors import DataError


@dataclass
class SliceGeometry:
    """Everything needed to map model slices back onto the canonical volume.

    `shape` is the canonical volume shape [X, Y, Z], `zooms` the in-plane
    voxel sizes (mm) along X and Y, `fov_mm` the side of the square field of
    view (the larger physical extent), `size` the model's slice size.
    """

    shape: tuple[int, int, int]
    zooms: tuple[float, float]
    size: int
    fov_mm: float

    @property
    def pixel_mm(self) -> float:
        """Side of one model pixel in mm."""
        return self.fov_mm / self.size

    @property
    def pad_mm(self) -> tuple[float, float]:
        """Zero padding (mm) added on each side of the image along X and Y to make the FOV square."""
        return tuple(_pad_mm(n, z, self.fov_mm) for n, z in zip(self.shape[:2], self.zooms))

    @property
    def scale(self) -> tuple[float, float]:
        """Resize factor along X and Y: model pixels per input voxel."""
        return tuple(z / self.pixel_mm for z in self.zooms)

    def forward_matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows [size, Y], cols [size, X]): pad with zeros + resize, anterior row first."""
        cols = _forward_matrix(self.shape[0], self.zooms[0], self.size, self.fov_mm)
        rows = _forward_matrix(self.shape[1], self.zooms[1], self.size, self.fov_mm)[::-1]
        return rows, cols

    def inverse_matrices(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows [Y, size], cols [X, size]): resize back and crop the padding."""
        cols = _inverse_matrix(self.shape[0], self.zooms[0], self.size, self.fov_mm)
        rows = _inverse_matrix(self.shape[1], self.zooms[1], self.size, self.fov_mm)[:, ::-1]
        return rows, cols


def _interpolation_matrix(positions: np.ndarray, n_src: int, support: float, clamp: bool) -> np.ndarray:
    """Weights [len(positions), n_src] sampling a 1-D signal at continuous `positions` (voxel index units).

    Triangle kernel of half-width `support` (>= 1). With clamp=False samples
    beyond the signal are zeros (zero padding); with clamp=True positions are
    clamped to the signal and weights renormalised (edge replicate).
    """
    support = max(1.0, float(support))
    if clamp:
        positions = np.clip(positions, 0, n_src - 1)
    first = int(np.floor(positions.min() - support))
    taps = np.arange(first, int(np.ceil(positions.max() + support)) + 1)
    weights = np.clip(1.0 - np.abs(positions[:, None] - taps[None, :]) / support, 0.0, None)
    valid = (taps >= 0) & (taps < n_src)
    if clamp:
        weights = weights[:, valid]
        weights /= weights.sum(axis=1, keepdims=True)
    else:
        weights /= weights.sum(axis=1, keepdims=True)
        weights = weights[:, valid]
    out = np.zeros((len(positions), n_src), dtype=np.float64)
    out[:, taps[valid]] = weights
    return out


def _pad_mm(n: int, zoom: float, fov_mm: float) -> float:
    return (fov_mm - n * zoom) / 2


@lru_cache(maxsize=64)
def _forward_matrix(n: int, zoom: float, size: int, fov_mm: float) -> np.ndarray:
    """[size, n] float32: one input axis sampled at the model pixel centres (zero padded, antialiased)."""
    return _frozen(_resize_rows(n, zoom, size, fov_mm))


def _resize_rows(n: int, zoom: float, size: int, fov_mm: float) -> np.ndarray:
    """[size, n] float64: pixels over the image interpolate it (edges replicated), padding pixels are 0.

    Replicating at the image border (instead of mixing in the zero padding)
    keeps the map exactly invertible on the image's pixels and keeps
    constants constant both ways, so a constant model output (a confidence
    map, a background level) restores without a rim at the volume border.
    """
    pixel = fov_mm / size
    centres_mm = (np.arange(size) + 0.5) * pixel - _pad_mm(n, zoom, fov_mm)
    inside = (centres_mm > 0) & (centres_mm < n * zoom)
    rows = np.zeros((size, n))
    rows[inside] = _interpolation_matrix(centres_mm[inside] / zoom - 0.5, n, pixel / zoom, clamp=True)
    return rows


# Singular values below this fraction of the largest are dropped from the
# least-squares inverse, bounding noise amplification when pixel ~ voxel size.
_RCOND = 0.1


@lru_cache(maxsize=64)
def _inverse_matrix(n: int, zoom: float, size: int, fov_mm: float) -> np.ndarray:
    """[n, size] float32 mapping model pixels back onto one input axis.

    When model pixels are no larger than voxels the forward map is injective
    and well conditioned, so its least-squares inverse recovers the input
    exactly (an identity model round-trips; restored outputs are not blurred
    twice). When the forward map down-sampled, the lost detail cannot come
    back and plain bilinear interpolation at the voxel centres is used.
    """
    pixel = fov_mm / size
    if zoom >= pixel:
        # Padding rows are zero, so the least-squares inverse ignores the padding.
        u, s, vt = np.linalg.svd(_resize_rows(n, zoom, size, fov_mm), full_matrices=False)
        keep = s >= _RCOND * s[0]
        inverse = (vt[keep].T / s[keep]) @ u[:, keep].T
        return _frozen(inverse)
    centres_mm = _pad_mm(n, zoom, fov_mm) + (np.arange(n) + 0.5) * zoom
    return _frozen(_interpolation_matrix(centres_mm / pixel - 0.5, size, 1.0, clamp=True))


def _frozen(matrix: np.ndarray) -> np.ndarray:
    """float32 and read-only: cached matrices are shared by every caller."""
    out = matrix.astype(np.float32)
    out.setflags(write=False)
    return out


def slice_geometry(shape: tuple[int, ...], zooms: tuple[float, ...], size: int) -> SliceGeometry:
    """The geometry `volume_to_slices` uses for a canonical volume of `shape` [X, Y, Z]."""
    zx, zy = float(zooms[0]), float(zooms[1])
    fov = max(shape[0] * zx, shape[1] * zy)
    return SliceGeometry(shape=tuple(int(n) for n in shape), zooms=(zx, zy), size=int(size), fov_mm=fov)


def slab_to_slices(slab: np.ndarray, geom: SliceGeometry) -> np.ndarray:
    """A canonical slab [X, Y, z] (any dtype) -> float32 [z, size, size] model slices of those z."""
    rows, cols = geom.forward_matrices()
    by_col = np.tensordot(cols, np.asarray(slab, dtype=np.float32), axes=(1, 0))  # [C, Y, z]
    by_row = np.tensordot(rows, by_col, axes=(1, 1))  # [R, C, z]
    return by_row.transpose(2, 0, 1)


def volume_to_slices(vol: np.ndarray, zooms: tuple[float, float, float], size: int) -> tuple[np.ndarray, SliceGeometry]:
    """Canonical [X, Y, Z] -> float32 [Z, size, size] slices and the geometry to undo it.

    Slab by slab along Z (each slice is resampled on its own), so a bool or integer volume is
    cast to float32 a slab at a time, never as a whole-volume copy.
    """
    if vol.ndim != 3:
        raise DataError(f"expected a 3-D canonical volume, got shape {vol.shape}")
    geom = slice_geometry(vol.shape, zooms, size)
    out = np.empty((geom.shape[2], geom.size, geom.size), dtype=np.float32)
    for part in slabs(geom.shape[2], geom.shape[0] * geom.shape[1]):
        out[part] = slab_to_slices(vol[:, :, part], geom)
    return out, geom


def slices_to_volume(slices: np.ndarray, geom: SliceGeometry, out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of `volume_to_slices`: [Z, size, size] -> float32 [X, Y, Z] on the canonical grid.

    Filled slab by slab along Z into `out` (a new array if None), which may be a strided view:
    `restore_volume` passes the canonical view of an array in the input's axis order, so the
    volume is never held twice (canonical, then reoriented).
    """
    expected = (geom.shape[2], geom.size, geom.size)
    if tuple(slices.shape) != expected:
        raise DataError(f"slices have shape {tuple(slices.shape)}, expected {expected}")
    out = np.empty(geom.shape, dtype=np.float32) if out is None else out
    rows, cols = geom.inverse_matrices()
    for part in slabs(geom.shape[2], geom.shape[0] * geom.shape[1]):
        by_col = np.tensordot(np.asarray(slices[part], dtype=np.float32), cols, axes=(2, 1))  # [z, R, X]
        by_row = np.tensordot(by_col, rows, axes=(1, 1))  # [z, X, Y]
        out[:, :, part] = by_row.transpose(1, 2, 0)
    return out
