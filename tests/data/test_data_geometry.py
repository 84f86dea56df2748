from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medk2n.data.geometry import (
    check_same_geometry,
    from_canonical,
    orientation_codes,
    resample_to_reference,
    to_canonical,
)
from medk2n.data.nifti import VolumeInfo
from medk2n.errors import DataError

from data_fixtures import AFFINES, SHAPE, head


def info(affine: np.ndarray, shape=SHAPE, name: str = "vol.nii.gz") -> VolumeInfo:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_zooms(tuple(np.sqrt((affine[:3, :3] ** 2).sum(0))))
    return VolumeInfo(path=Path(name), affine=np.asarray(affine, dtype=float), header=header, shape=tuple(shape))


@pytest.mark.parametrize("kind", sorted(AFFINES))
def test_canonical_round_trip_is_exact_and_matches_nibabel(kind):
    affine = AFFINES[kind]
    array = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    canonical, orient = to_canonical(array, affine)
    expected = nib.as_closest_canonical(nib.Nifti1Image(array, affine))
    np.testing.assert_array_equal(canonical, np.asarray(expected.dataobj))
    assert orientation_codes(expected.affine) == "RAS"
    np.testing.assert_allclose(orient.zooms, expected.header.get_zooms()[:3], rtol=1e-6)
    assert orient.canonical_shape == canonical.shape
    back = from_canonical(canonical, orient)
    np.testing.assert_array_equal(back, array)
    assert back.shape == array.shape


def test_orientation_codes_and_permuted_zooms():
    assert orientation_codes(AFFINES["lps"]) == "LPS"
    assert orientation_codes(AFFINES["permuted"]) == "ASL"
    _, orient = to_canonical(np.zeros(SHAPE, np.float32), AFFINES["permuted"])
    # voxel axis 2 (1.5 mm, towards L) becomes canonical x; axis 0 (A) y; axis 1 (S) z
    assert orient.zooms == pytest.approx((1.5, 1.0, 2.0))
    assert orient.canonical_shape == (SHAPE[2], SHAPE[0], SHAPE[1])


def test_from_canonical_rejects_wrong_shape():
    _, orient = to_canonical(np.zeros(SHAPE, np.float32), AFFINES["lps"])
    with pytest.raises(DataError):
        from_canonical(np.zeros((3, 3, 3), np.float32), orient)


@pytest.mark.parametrize("kind", ["iso", "oblique"])
def test_resample_onto_identical_grid_is_identity(kind):
    array = head()
    grid = info(AFFINES[kind])
    np.testing.assert_allclose(resample_to_reference(array, grid, grid), array, atol=1e-5)


def test_resample_onto_shifted_grid_gives_shifted_values():
    array = head()
    ref_affine = np.eye(4)
    ref_affine[0, 3] = 1.0  # reference voxel i sits on source voxel i + 1
    out = resample_to_reference(array, info(np.eye(4)), info(ref_affine))
    np.testing.assert_allclose(out[:-1], array[1:], atol=1e-6)
    assert np.all(out[-1] == 0)  # outside the source


def test_resample_half_voxel_shift_is_linear_and_nearest_for_order0():
    ramp = np.broadcast_to(np.arange(SHAPE[0], dtype=np.float32)[:, None, None], SHAPE).copy()
    ref_affine = np.eye(4)
    ref_affine[0, 3] = 0.5
    out = resample_to_reference(ramp, info(np.eye(4)), info(ref_affine))
    np.testing.assert_allclose(out[:-1], ramp[:-1] + 0.5, atol=1e-5)
    nearest = resample_to_reference(ramp, info(np.eye(4)), info(ref_affine), order=0)
    assert set(np.unique(nearest[:-1])) <= set(np.unique(ramp))


def test_resample_onto_flipped_grid_flips():
    array = head()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[0, 3], lps[1, 3] = SHAPE[0] - 1, SHAPE[1] - 1  # same voxel centres, axes reversed
    out = resample_to_reference(array, info(np.eye(4)), info(lps))
    np.testing.assert_allclose(out, array[::-1, ::-1], atol=1e-5)


def test_resample_onto_finer_grid_has_reference_shape():
    fine = np.diag([0.5, 0.5, 0.5, 1.0])
    out = resample_to_reference(head(), info(np.eye(4)), info(fine, shape=(20, 16, 10)))
    assert out.shape == (20, 16, 10)
    np.testing.assert_allclose(out[::2, ::2, ::2], head()[:10, :8, :5], atol=1e-5)


def test_check_same_geometry_accepts_tiny_differences_and_names_both_files():
    a = info(np.eye(4), name="t1.nii.gz")
    nearly = np.eye(4)
    nearly[0, 3] = 5e-4
    check_same_geometry({"t1": a, "t2": info(nearly, name="t2.nii.gz")})
    moved = np.eye(4)
    moved[0, 3] = 0.01
    with pytest.raises(DataError, match=r"flair\.nii\.gz.*t1\.nii\.gz.*--reference"):
        check_same_geometry({"t1": a, "flair": info(moved, name="flair.nii.gz")})
    with pytest.raises(DataError, match="shape"):
        check_same_geometry({"t1": a, "adc": info(np.eye(4), shape=(12, 10, 9), name="adc.nii.gz")})
