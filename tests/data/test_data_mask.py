import numpy as np
import pytest

from medk2n.data.mask import brain_mask, fill_holes_2d, grow_2d, largest_component


def ball(shape=(24, 24, 12), radius=0.7):
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return sum(g**2 for g in grids) < radius**2


def test_brain_mask_drops_specks_and_fills_dark_ventricles():
    inside = ball()
    volume = np.where(inside, 100.0, 0.0).astype(np.float32)
    volume += np.random.default_rng(0).uniform(0, 3, volume.shape).astype(np.float32)  # noise floor
    ventricle = ball(radius=0.25)
    volume[ventricle] = 2.0  # dark CSF inside the brain
    volume[0, 0, 0] = volume[23, 23, 11] = 100.0  # isolated bright specks
    mask = brain_mask(volume)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, inside)


def test_largest_component_keeps_only_the_biggest_region():
    mask = np.zeros((10, 10, 4), bool)
    mask[1:4, 1:4, :] = True  # 36 voxels
    mask[6:10, 5:10, :] = True  # 80 voxels, touches the border
    out = largest_component(mask)
    assert out.sum() == 80 and out[6:10, 5:10].all()
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_largest_component_follows_winding_paths():
    """A spiral-like path needs many sweeps; it is still one component."""
    mask = np.zeros((9, 9, 1), bool)
    mask[1, 1:8] = mask[1:8, 7] = mask[7, 1:8] = mask[3:8, 1] = mask[3, 1:6] = mask[3:6, 5] = True
    mask[0, 0] = True  # a separate, smaller component
    out = largest_component(mask)
    assert out.sum() == mask.sum() - 1 and not out[0, 0, 0]


def test_fill_holes_is_per_slice_and_keeps_open_regions():
    mask = np.zeros((8, 8, 2), bool)
    mask[1:7, 1:7, :] = True
    mask[3:5, 3:5, 0] = False  # closed hole in slice 0
    mask[3:5, 3:8, 1] = False  # notch open to the border in slice 1
    out = fill_holes_2d(mask)
    assert out[3:5, 3:5, 0].all()
    assert not out[3:5, 3:8, 1].any()


def test_grow_2d_adds_a_ring_in_plane_only():
    mask = np.zeros((3, 7, 7), dtype=bool)
    mask[1, 3, 3] = True
    grown = grow_2d(mask, 1)
    assert grown[1].sum() == 5 and not grown[0].any() and not grown[2].any()  # a plus, no slice bleed
    assert grow_2d(mask, 2)[1].sum() == 13 and grow_2d(mask, 0).sum() == 1
    assert mask.sum() == 1  # input untouched


def test_scipy_and_numpy_masks_agree_voxel_for_voxel_on_every_phantom_geometry():
    from medk2n.data.mask import fill_holes_2d_numpy, largest_component_numpy
    from medk2n.data.phantom import GEOMETRIES, generate_subject

    for i, geometry in enumerate(GEOMETRIES):
        subject = generate_subject(np.random.default_rng([5, i]), 3.0, geometry)
        for modality in ("t1", "flair", "adc"):
            volume = subject[modality]
            top = float(np.percentile(volume[volume > volume.min()], 99.0))
            foreground = volume > volume.min() + 0.1 * (top - volume.min())
            component = largest_component(foreground)
            np.testing.assert_array_equal(component, largest_component_numpy(foreground), err_msg=geometry)
            np.testing.assert_array_equal(fill_holes_2d(component), fill_holes_2d_numpy(component), err_msg=geometry)


def test_scipy_and_numpy_agree_on_random_masks_with_ties_and_edge_slices():
    from medk2n.data.mask import fill_holes_2d_numpy, largest_component_numpy

    rng = np.random.default_rng(0)
    for density in (0.3, 0.5, 0.7):
        mask = rng.random((12, 11, 5)) < density
        np.testing.assert_array_equal(largest_component(mask), largest_component_numpy(mask))
        np.testing.assert_array_equal(fill_holes_2d(mask), fill_holes_2d_numpy(mask))
    tie = np.zeros((6, 6, 2), dtype=bool)
    tie[0:2, 0:2, :] = True
    tie[4:6, 4:6, :] = True  # two components of equal size: the first in C order wins in both
    np.testing.assert_array_equal(largest_component(tie), largest_component_numpy(tie))
    ring = np.zeros((7, 7, 3), dtype=bool)
    ring[1:6, 1:6, :] = True
    ring[3, 3, :] = False  # a hole in the first and last slices too
    assert fill_holes_2d(ring).all(axis=2)[3, 3] and fill_holes_2d_numpy(ring).all(axis=2)[3, 3]


def test_labels_are_uint16_when_they_fit_and_int32_when_not():
    """A head has a few components: uint16 labels (half the memory). Salt noise with more than
    65535 components falls back to int32. The largest component is the same either way."""
    ndimage = pytest.importorskip("scipy.ndimage")
    from medk2n.data.mask import _label, largest_component_numpy

    head = np.zeros((40, 40, 40), bool)
    head[5:35, 6:30, 8:33] = True
    noise = np.random.default_rng(0).random((100, 100, 100)) < 0.15
    assert _label(ndimage, head)[0].dtype == np.uint16
    labels, count = _label(ndimage, noise)
    assert labels.dtype == np.int32 and count > 65535
    for mask in (head, noise):
        np.testing.assert_array_equal(largest_component(mask), largest_component_numpy(mask))
