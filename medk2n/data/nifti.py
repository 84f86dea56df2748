"""NIfTI read/write contract: `read_volume -> (array, VolumeInfo)`, `write_volume(array, path, info)`.

Reading validates what the rest of the pipeline assumes (3-D, finite, not
constant) and fails with a `DataError` naming the file. Writing keeps the
input's affine and header (qform/sform codes, zooms), stores float32, and is
atomic: a temporary file in the destination folder renamed into place, so an
interrupted run never leaves half a volume behind.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medk2n.errors import DataError
from medk2n.fsutil import chmod_plain

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Largest volume read by default: 2^28 voxels (1 GiB as float32), e.g. 640^3; 512^3 fits.
# A header is untrusted input: its claimed shape is checked against this and against the
# bytes the file actually holds before anything is allocated.
MAX_VOXELS = 1 << 28


@dataclass
class VolumeInfo:
    """What is needed to write a result back exactly onto the input grid."""

    path: Path
    affine: np.ndarray  # 4x4 voxel -> world (mm)
    header: nib.Nifti1Header
    shape: tuple[int, int, int]

    @property
    def zooms(self) -> tuple[float, float, float]:
        return tuple(float(z) for z in self.header.get_zooms()[:3])


def strip_nifti_suffix(name: str) -> str | None:
    """`FLAIR.nii.gz` -> `FLAIR`; None when the name is not a NIfTI file."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def read_volume(path: str | Path, check_values: bool = True,
                max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, VolumeInfo]:
    """Load a 3-D NIfTI as float32 with its geometry; reject what the model cannot use."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise DataError(f"{path}: not a NIfTI image ({type(img).__name__})")
        check_claimed_size(img, path, max_voxels)
        data = np.asanyarray(img.dataobj)
    except DataError:
        raise
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(f"{path}: unreadable or truncated NIfTI ({type(exc).__name__}: {exc})") from None
    shape = data.shape
    if len(shape) == 4 and shape[3] == 1:
        data = data[..., 0]
    elif len(shape) != 3:
        raise DataError(f"{path}: expected a 3-D volume, got {len(shape)}-D shape {tuple(shape)}")
    if min(data.shape) < 2:
        raise DataError(f"{path}: degenerate 3-D shape {tuple(data.shape)} (a 2-D image?)")
    if np.iscomplexobj(data):
        raise DataError(f"{path}: complex-valued data is not supported")
    array = np.asarray(data, dtype=np.float32)
    if check_values:
        check_volume_values(array, path)
    header = img.header.copy()
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{path}: invalid (singular or non-finite) affine")
    return array, VolumeInfo(path=path, affine=affine, header=header, shape=tuple(array.shape))


def check_claimed_size(img: nib.Nifti1Image, path: Path, max_voxels: int = MAX_VOXELS) -> None:
    """Refuse a header whose shape exceeds `max_voxels`, or claims more data than the file holds.

    A 416-byte .nii.gz can claim gigabytes; nibabel would allocate them before failing. The
    uncompressed size of a gzip file is in its last four bytes (mod 2^32, exact below 4 GiB).
    """
    shape = tuple(int(s) for s in img.header.get_data_shape())
    voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if voxels > max_voxels:
        raise DataError(f"{path}: header claims shape {shape} = {voxels} voxels, above the limit of "
                        f"{max_voxels} (--max-voxels)")
    needed = voxels * np.dtype(img.header.get_data_dtype()).itemsize + int(img.header.get_data_offset())
    held = _stored_bytes(path)
    if held is not None and needed < 1 << 32 and held < needed:
        raise DataError(f"{path}: unreadable or truncated NIfTI (its header claims {needed} bytes of image "
                        f"data, the file holds {held})")


def _stored_bytes(path: Path) -> int | None:
    """Uncompressed size of a .nii (its size) or single-member .nii.gz (gzip ISIZE); None if unknown."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return size
        if size < 18:
            return None
        fh.seek(-4, os.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def check_volume_values(array: np.ndarray, path: str | Path) -> None:
    """NaN/Inf and constant volumes cannot be normalised; name the file and stop."""
    finite = np.isfinite(array)
    if not finite.all():
        bad = int((~finite).sum())
        raise DataError(f"{path}: contains {bad} NaN/Inf voxels")
    if float(array.max()) == float(array.min()):
        raise DataError(f"{path}: constant volume (every voxel is {float(array.min()):g})")


def write_volume(array: np.ndarray, path: str | Path, like: VolumeInfo) -> Path:
    """Write float32 `array` with `like`'s affine and header, atomically."""
    path = Path(path)
    array = np.asarray(array, dtype=np.float32)
    if tuple(array.shape) != tuple(like.shape):
        raise DataError(f"{path}: output shape {array.shape} differs from input grid {like.shape}")
    header = like.header.copy()
    header.set_data_dtype(np.float32)
    header["scl_slope"] = np.nan  # stored values are the real values
    header["scl_inter"] = np.nan
    img = nib.Nifti1Image(array, like.affine, header=header)
    # nibabel recomputes qform/sform from the affine with the header's codes;
    # keep the input's codes exactly.
    sform, scode = like.header.get_sform(coded=True)
    qform, qcode = like.header.get_qform(coded=True)
    img.set_sform(like.affine if sform is None else sform, int(scode))
    img.set_qform(like.affine if qform is None else qform, int(qcode))
    save_image_atomic(img, path)
    return path


def save_image_atomic(img: nib.Nifti1Image, path: str | Path) -> None:
    """nib.save to a temporary sibling, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        chmod_plain(tmp)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
