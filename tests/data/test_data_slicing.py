import numpy as np
import pytest

from medk2n.data.slicing import slices_to_volume, volume_to_slices
from medk2n.errors import DataError


def gaussian(shape, zooms, sigma_mm=4.0, centre_mm=None):
    """A smooth blob in physical space (mm), sampled on a voxel grid."""
    axes = [(np.arange(n) + 0.5) * z for n, z in zip(shape, zooms)]
    centre = centre_mm or [n * z / 2 for n, z in zip(shape, zooms)]
    grids = np.meshgrid(*axes, indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids[:2], centre[:2]))
    return (np.exp(-r2 / (2 * sigma_mm**2)) * (1 + 0.1 * grids[2])).astype(np.float32)


@pytest.mark.parametrize(
    "shape, zooms, size",
    [
        ((12, 10, 8), (1.0, 1.0, 1.0), 16),
        ((12, 10, 8), (1.0, 1.0, 1.0), 8),
        ((20, 12, 5), (0.5, 1.0, 3.0), 16),
        ((9, 14, 4), (1.3, 0.7, 2.0), 32),
    ],
)
def test_shape_round_trip(shape, zooms, size):
    vol = np.random.default_rng(0).random(shape).astype(np.float32)
    slices, geom = volume_to_slices(vol, zooms, size)
    assert slices.shape == (shape[2], size, size) and slices.dtype == np.float32
    back = slices_to_volume(slices, geom)
    assert back.shape == shape and back.dtype == np.float32


@pytest.mark.parametrize("shape, zooms", [((12, 10, 3), (1.0, 1.0, 1.0)), ((20, 12, 3), (0.5, 1.0, 2.0))])
def test_upsampling_round_trip_is_exact(shape, zooms):
    """Model pixels no larger than voxels: the inverse recovers any image, not only smooth ones."""
    vol = np.random.default_rng(1).random(shape).astype(np.float32)
    slices, geom = volume_to_slices(vol, zooms, 32)
    assert min(geom.scale) >= 1
    np.testing.assert_allclose(slices_to_volume(slices, geom), vol, atol=1e-4)


def test_downsampling_round_trip_is_close_for_smooth_images():
    vol = gaussian((48, 40, 3), (1.0, 1.0, 1.0), sigma_mm=6.0)
    slices, geom = volume_to_slices(vol, (1.0, 1.0, 1.0), 24)
    assert max(geom.scale) < 1
    back = slices_to_volume(slices, geom)
    assert np.abs(back - vol).max() < 0.05 * vol.max()


def test_round_trip_detects_a_wrong_inverse():
    vol = gaussian((48, 40, 3), (1.0, 1.0, 1.0), sigma_mm=6.0, centre_mm=(16.0, 26.0))
    slices, geom = volume_to_slices(vol, (1.0, 1.0, 1.0), 24)
    back = slices_to_volume(slices[:, :, ::-1].copy(), geom)  # mirrored output must not round-trip
    assert np.abs(back - vol).max() > 0.05 * vol.max()


def _spread(weights: np.ndarray) -> float:
    """Standard deviation (in samples) of a 1-D intensity profile."""
    pos = np.arange(len(weights))
    mean = (pos * weights).sum() / weights.sum()
    return float(np.sqrt(((pos - mean) ** 2 * weights).sum() / weights.sum()))


def test_anisotropic_voxels_keep_physical_aspect():
    """A round blob sampled with 0.5 x 1.0 mm voxels is round in the model slices."""
    shape, zooms = (40, 20, 1), (0.5, 1.0, 1.0)
    vol = gaussian(shape, zooms, sigma_mm=3.0)
    assert _spread(vol[:, 10, 0]) == pytest.approx(2 * _spread(vol[20, :, 0]), rel=0.05)  # 2:1 in voxels
    slices, geom = volume_to_slices(vol, zooms, 64)
    assert geom.scale == pytest.approx((1.6, 3.2))
    image = slices[0]
    assert _spread(image.sum(axis=1)) == pytest.approx(_spread(image.sum(axis=0)), rel=0.03)  # 1:1 in pixels


def test_non_square_matrix_is_centred_with_zero_padding():
    vol = np.ones((20, 10, 2), np.float32)  # 20 mm wide (x, columns), 10 mm deep (y, rows)
    slices, geom = volume_to_slices(vol, (1.0, 1.0, 1.0), 20)
    assert geom.fov_mm == 20 and geom.pixel_mm == 1 and geom.pad_mm == (0.0, 5.0)
    np.testing.assert_allclose(slices[:, :5], 0)
    np.testing.assert_allclose(slices[:, 15:], 0)
    np.testing.assert_allclose(slices[:, 5:15], 1, atol=1e-6)


def test_slices_show_anterior_up_and_right_on_the_right():
    vol = np.zeros((16, 16, 1), np.float32)
    vol[14, 8, 0] = 1.0  # far right (high x)
    vol[8, 14, 0] = 2.0  # far anterior (high y)
    slices, _ = volume_to_slices(vol, (1.0, 1.0, 1.0), 16)
    right = np.unravel_index(np.argmax(np.where(slices[0] < 1.5, slices[0], 0)), (16, 16))
    anterior = np.unravel_index(np.argmax(slices[0]), (16, 16))
    assert right[1] > 12 and 6 <= right[0] <= 9
    assert anterior[0] < 4 and 6 <= anterior[1] <= 9


def test_slices_to_volume_rejects_wrong_shape():
    _, geom = volume_to_slices(np.ones((8, 8, 3), np.float32), (1.0, 1.0, 1.0), 16)
    with pytest.raises(DataError, match="expected"):
        slices_to_volume(np.zeros((3, 8, 8), np.float32), geom)


@pytest.mark.parametrize("size", [32, 64])
def test_constant_model_output_restores_to_the_same_constant(size):
    """Model outputs are non-zero in the padding (e.g. confidence); the border must not get a rim."""
    slices = np.full((5, size, size), 0.7, dtype=np.float32)
    _, geom = volume_to_slices(np.zeros((37, 23, 5), np.float32), (1.2, 0.9, 3.0), size)
    np.testing.assert_allclose(slices_to_volume(slices, geom), 0.7, atol=1e-4)
