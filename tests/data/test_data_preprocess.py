from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from data_fixtures import AFFINES, SHAPE, head, save_nifti

from medk2n.config import NormSpec, default_normalization
from medk2n.data.cases import load_case
from medk2n.data.nifti import read_volume, write_volume
from medk2n.data.preprocess import mask_to_slices, prepare_case, restore_volume
from medk2n.errors import DataError

NORMS = default_normalization()


def write_pair(folder: Path, affine: np.ndarray, shape=SHAPE) -> Path:
    save_nifti(folder / "flair.nii.gz", head(shape) * 300, affine)
    save_nifti(folder / "adc.nii.gz", head(shape, seed=1) * 1500, affine)
    return folder


@pytest.mark.parametrize("kind", sorted(AFFINES))
@pytest.mark.parametrize("size", [8, 32])
def test_prepare_and_restore_round_trip_on_the_input_grid(tmp_path, kind, size):
    case = write_pair(tmp_path / "case", AFFINES[kind])
    volumes = load_case(case, ["flair", "adc"])
    prepared = prepare_case(volumes, NORMS, size)
    n_slices = prepared.orientation.canonical_shape[2]
    assert prepared.slices["adc"].shape == (n_slices, size, size)
    assert prepared.brain.shape == (n_slices, size, size) and prepared.brain.dtype == bool
    assert prepared.brain.any()
    assert 0.0 <= prepared.slices["flair"].min() and prepared.slices["flair"].max() <= 1.0
    assert prepared.norm["adc"].kind == "range" and prepared.norm["flair"].kind == "percentile"

    adc, info = volumes["adc"]
    restored = restore_volume(prepared.slices["adc"], prepared, NORMS["adc"])
    assert restored.shape == adc.shape == info.shape and restored.dtype == np.float32
    scale = min(prepared.slicing.scale)
    if scale >= 1:  # model pixels finer than voxels: exact, in physical units
        np.testing.assert_allclose(restored, adc, atol=0.05)
    else:  # coarser model grid (8 px for 12 voxels): blurred but the same image
        assert np.corrcoef(restored.ravel(), adc.ravel())[0, 1] > 0.9
    weighted = restore_volume(prepared.slices["flair"], prepared, NORMS["flair"])
    assert weighted.shape == adc.shape and weighted.max() <= 1.0 + 1e-4
    write_volume(restored, tmp_path / "out.nii.gz", info)
    assert np.allclose(nib.load(tmp_path / "out.nii.gz").affine, info.affine)


def test_restore_returns_flipped_input_layout(tmp_path):
    """An LPS volume comes back in LPS voxel order, not in canonical order."""
    case = write_pair(tmp_path / "case", AFFINES["lps"])
    volumes = load_case(case, ["flair", "adc"])
    prepared = prepare_case(volumes, {"flair": {"kind": "percentile", "low": 0.5, "high": 99.5},
                                      "adc": {"kind": "range", "low": 0.0, "high": 4000.0}}, 32)
    restored = restore_volume(prepared.slices["adc"], prepared, {"kind": "range", "low": 0.0, "high": 4000.0})
    adc = volumes["adc"][0]
    assert np.abs(restored - adc).max() < np.abs(restored[::-1, ::-1] - adc).max()


def test_mismatched_geometry_names_both_files(tmp_path):
    case = tmp_path / "case"
    save_nifti(case / "flair.nii.gz", head() * 300)
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    save_nifti(case / "adc.nii.gz", head() * 1500, shifted)
    with pytest.raises(DataError, match=r"adc\.nii\.gz and .*flair\.nii\.gz.*--reference"):
        prepare_case(load_case(case, ["flair", "adc"]), NORMS, 16)


def test_reference_resamples_other_modalities_onto_its_grid(tmp_path):
    case = tmp_path / "case"
    save_nifti(case / "adc.nii.gz", head() * 1500)
    fine = np.diag([0.5, 0.5, 0.5, 1.0])
    save_nifti(case / "flair.nii.gz", head((24, 20, 16)) * 300, fine)
    volumes = load_case(case, ["adc", "flair"])
    prepared = prepare_case(volumes, NORMS, 16, reference="adc")
    assert prepared.reference.path.name == "adc.nii.gz"
    assert prepared.slices["flair"].shape == prepared.slices["adc"].shape == (SHAPE[2], 16, 16)
    out = restore_volume(prepared.slices["flair"], prepared, None)
    assert out.shape == SHAPE
    with pytest.raises(DataError, match="reference modality 't1'"):
        prepare_case(volumes, NORMS, 16, reference="t1")


def test_modality_without_normalisation_is_an_error(tmp_path):
    volumes = load_case(write_pair(tmp_path / "case", np.eye(4)), ["flair", "adc"])
    with pytest.raises(DataError, match="adc"):
        prepare_case(volumes, {"flair": NormSpec()}, 16)


def test_constant_tissue_after_reading_names_the_file(tmp_path):
    case = tmp_path / "case"
    binary = (head() > 0.5).astype(np.float32) * 7.0  # not constant overall, constant in tissue
    save_nifti(case / "flair.nii.gz", binary)
    volumes = {"flair": read_volume(case / "flair.nii.gz")}
    with pytest.raises(DataError, match=r"flair\.nii\.gz.*constant"):
        prepare_case(volumes, NORMS, 16)


def test_percentiles_come_from_the_head_not_the_noise_floor(tmp_path):
    """Unmasked scans have Rician noise everywhere: with percentiles over every voxel above
    zero (mostly background here), the brightest few percent of tissue were clipped to 1."""
    shape = (40, 40, 20)
    rng = np.random.default_rng(0)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grids) < 0.5  # ~30 % of the field of view
    t2 = np.hypot(rng.normal(0, 20, shape), rng.normal(0, 20, shape))  # noise floor
    t2[inside] = 800 + 50 * rng.standard_normal(inside.sum())
    csf = inside & (np.abs(grids[0]) < 0.2) & (np.abs(grids[1]) < 0.2)  # bright: ~7 % of the head
    t2[csf] = 2000 + 50 * rng.standard_normal(csf.sum())
    save_nifti(tmp_path / "case" / "t2.nii.gz", t2)
    save_nifti(tmp_path / "case" / "flair.nii.gz", head(shape) * 300)
    alone = prepare_case(load_case(tmp_path / "case", ["t2"]), NORMS, 40)
    together = prepare_case(load_case(tmp_path / "case", ["t2", "flair"]), NORMS, 40)
    hi = alone.norm["t2"].hi
    assert np.percentile(t2[inside], 99.0) < hi <= t2[inside].max()  # the head's 99.5th percentile
    assert (t2[csf] >= hi).mean() < 0.1  # bright tissue keeps its contrast
    # a modality is scaled by its own volume, whatever comes with it
    assert together.norm["t2"] == alone.norm["t2"]


def test_lesion_mask_lands_on_the_same_pixels_from_another_grid(tmp_path):
    """A mask stored LPS over RAS images (a different grid) is resampled onto the images' pixels."""
    case = write_pair(tmp_path / "case", AFFINES["iso"])
    prepared = prepare_case(load_case(case, ["flair", "adc"]), NORMS, 12)
    lesion = np.zeros(SHAPE, dtype=np.float32)
    lesion[3:5, 6:8, 2:4] = 1.0
    same = mask_to_slices(lesion, read_volume(case / "flair.nii.gz")[1], prepared)
    # The same voxels stored with the first two axes reversed: an LPS grid, not the images' RAS one.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps[:2, 3] = SHAPE[0] - 1, SHAPE[1] - 1
    flipped = save_nifti(tmp_path / "lps_mask.nii.gz", lesion[::-1, ::-1], lps)
    other = mask_to_slices(*read_volume(flipped, check_values=False), prepared)
    np.testing.assert_allclose(other, same, atol=1e-6)
    assert same.shape == prepared.brain.shape and 0 <= same.min() and same.max() <= 1
    # Slices 2 and 3 hold the lesion, each with 2 x 2 voxels of cover.
    np.testing.assert_allclose(same.sum(axis=(1, 2))[[1, 2, 3, 4]], [0, 4, 4, 0], atol=0.2)

