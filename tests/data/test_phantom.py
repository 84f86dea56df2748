"""Physics phantom: contrasts follow the signal equations, geometry varies like real data, output is safe."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medk2n.data.phantom import GEOMETRIES, MODALITIES, generate_dataset, generate_subject, save_montage
from medk2n.errors import DataError

SPACING = 3.0  # coarse grids keep the suite fast; the physics is the same at any spacing
FILES = (*MODALITIES, "brain_mask", "lesion_mask")


@pytest.fixture(scope="module")
def subject() -> dict:
    return generate_subject(np.random.default_rng(5), SPACING, "isotropic", lesions=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> list[Path]:
    return generate_dataset(tmp_path_factory.mktemp("phantom") / "ds", subjects=4, seed=11, spacing=SPACING)


def _tissue(subject: dict, name: str, threshold: float = 0.8) -> np.ndarray:
    """Voxels that are mostly one tissue and outside lesions."""
    return (subject[name] > threshold) & (subject["lesion_mask"] == 0) & (subject["brain_mask"] > 0)


def _medians(subject: dict, modality: str) -> dict[str, float]:
    image = subject[modality]
    return {
        "gm": float(np.median(image[_tissue(subject, "gm")])),
        "wm": float(np.median(image[_tissue(subject, "wm")])),
        "csf": float(np.median(image[_tissue(subject, "csf", 0.9)])),
    }


def test_contrasts_follow_tissue_physics(subject):
    t1, t2, flair = _medians(subject, "t1"), _medians(subject, "t2"), _medians(subject, "flair")
    pd, dwi, adc = _medians(subject, "pd"), _medians(subject, "dwi"), _medians(subject, "adc")
    assert t1["wm"] > t1["gm"] > t1["csf"]  # T1w: short T1 is bright
    assert t2["csf"] > t2["gm"] > t2["wm"]  # T2w: long T2 is bright
    assert flair["csf"] < 0.5 * flair["gm"] and flair["gm"] > flair["wm"]  # TI nulls CSF
    assert pd["gm"] > pd["wm"]  # grey matter holds more water
    assert dwi["gm"] > dwi["csf"] and dwi["wm"] > dwi["csf"]  # free water loses its signal at b=1000
    assert 2500.0 < adc["csf"] < 3300.0  # free water at 37 C, in 1e-6 mm^2/s
    assert 600.0 < adc["wm"] < adc["gm"] < 1000.0


def test_lesions_have_restricted_diffusion_and_oedema(subject):
    lesion = subject["lesion_mask"] > 0
    tested = 0
    for name in ("gm", "wm"):
        inside = lesion & (subject[name] > 0.6)
        if inside.sum() < 10:
            continue
        normal = _tissue(subject, name, 0.6)
        tested += 1
        for modality, brighter in (("dwi", True), ("adc", False), ("t2", True), ("flair", True)):
            ratio = np.median(subject[modality][inside]) / np.median(subject[modality][normal])
            assert (ratio > 1.15) if brighter else (ratio < 0.8), (name, modality, ratio)
    assert tested > 0


def test_adc_is_in_physical_units_and_weighted_images_are_scanner_scaled(subject):
    brain = subject["brain_mask"] > 0
    adc = subject["adc"]
    assert adc.min() >= 0.0 and np.all(adc[~brain] == 0.0)
    assert 600.0 < np.median(adc[brain]) < 1200.0 and adc.max() < 4500.0
    for modality in ("t1", "t2", "flair", "pd", "dwi"):
        image = subject[modality]
        assert image.dtype == np.float32 and image.min() >= 0.0  # magnitude images
        assert np.percentile(image[brain], 99) > 50.0  # not rescaled to [0, 1]
        background = np.median(image[~brain])
        assert 0.0 < background < 0.2 * np.median(image[brain])  # Rician noise floor outside the head


def test_anatomy_lives_in_world_coordinates():
    """LPS storage flips the voxel order, not the anatomy: same seed -> same brain in world space."""
    ras = generate_subject(np.random.default_rng(2), SPACING, "isotropic", lesions=0)
    lps = generate_subject(np.random.default_rng(2), SPACING, "lps", lesions=0)
    assert nib.aff2axcodes(ras["affine"]) == ("R", "A", "S") and nib.aff2axcodes(lps["affine"]) == ("L", "P", "S")
    np.testing.assert_allclose(lps["affine"] @ [lps["gm"].shape[0] - 1, lps["gm"].shape[1] - 1, 0, 1],
                               ras["affine"] @ [0, 0, 0, 1])
    np.testing.assert_allclose(lps["gm"][::-1, ::-1, :], ras["gm"], atol=1e-4)
    assert np.abs(lps["gm"] - ras["gm"]).max() > 0.5  # the stored voxel order really differs


def test_dataset_files_share_one_grid_per_case(dataset):
    assert [case.name for case in dataset] == ["sub-000", "sub-001", "sub-002", "sub-003"]
    for case in dataset:
        images = {name: nib.load(case / f"{name}.nii.gz") for name in FILES}
        reference = images["t1"]
        for name, img in images.items():
            assert img.shape == reference.shape, (case, name)
            np.testing.assert_array_equal(img.affine, reference.affine)
            expected = np.uint8 if name.endswith("_mask") else np.float32
            assert img.get_data_dtype() == expected, (case, name)
            codes = (int(img.header["qform_code"]), int(img.header["sform_code"]))
            assert codes[0] == codes[1] and codes[0] in (1, 4), (case, name, codes)
            zooms = np.asarray(img.header.get_zooms()[:3])
            np.testing.assert_allclose(zooms, np.linalg.norm(img.affine[:3, :3], axis=0), rtol=1e-5)
        assert all(n % 32 != 0 for n in reference.shape), (case, reference.shape)
        assert np.asarray(images["brain_mask"].dataobj).any()


def test_dataset_cycles_through_real_world_geometries(dataset):
    affines = [nib.load(case / "t1.nii.gz").affine for case in dataset]
    codes = [nib.aff2axcodes(a) for a in affines]
    zooms = [np.linalg.norm(a[:3, :3], axis=0) for a in affines]
    directions = [a[:3, :3] / z for a, z in zip(affines, zooms)]
    assert len(GEOMETRIES) == 4
    assert codes[0] == ("R", "A", "S") and np.allclose(zooms[0], SPACING)  # isotropic
    assert zooms[1].max() / zooms[1].min() > 2.5  # thick slices
    assert codes[2][:2] == ("L", "P")  # LPS-flipped
    off_diagonal = np.abs(directions[3] - np.diag(np.diag(directions[3]))).max()
    assert 0.05 < off_diagonal < 0.5  # oblique by a few degrees


def test_seed_determines_the_data():
    first = generate_subject(np.random.default_rng(9), 4.0, "oblique")
    again = generate_subject(np.random.default_rng(9), 4.0, "oblique")
    other = generate_subject(np.random.default_rng(10), 4.0, "oblique")
    for name in FILES:
        np.testing.assert_array_equal(first[name], again[name])
    np.testing.assert_array_equal(first["affine"], again["affine"])
    assert first["t1"].shape != other["t1"].shape or not np.array_equal(first["t1"], other["t1"])


def test_tissue_jitter_draws_other_contrasts():
    """The same anatomy and noise draw with a larger tissue spread: contrasts a model never saw."""
    usual = generate_subject(np.random.default_rng(9), 4.0, "isotropic", lesions=0)
    unusual = generate_subject(np.random.default_rng(9), 4.0, "isotropic", lesions=0, tissue_jitter=0.2)
    np.testing.assert_array_equal(usual["brain_mask"], unusual["brain_mask"])
    wm, gm = usual["wm"] > 0.9, usual["gm"] > 0.9
    ratio = [np.median(s["t2"][gm]) / np.median(s["t2"][wm]) for s in (usual, unusual)]
    assert abs(ratio[0] - ratio[1]) > 0.02


def test_dataset_is_reproducible_and_extends_with_more_subjects(dataset, tmp_path):
    smaller = generate_dataset(tmp_path / "again", subjects=2, seed=11, spacing=SPACING)
    for case, original in zip(smaller, dataset):
        for name in ("t1", "adc", "lesion_mask"):
            img, ref = nib.load(case / f"{name}.nii.gz"), nib.load(original / f"{name}.nii.gz")
            np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(ref.dataobj))
            np.testing.assert_array_equal(img.affine, ref.affine)


def test_refuses_to_overwrite_an_existing_case(tmp_path):
    case = tmp_path / "ds" / "sub-001"
    case.mkdir(parents=True)
    (case / "t1.nii.gz").write_bytes(b"user data")
    with pytest.raises(DataError, match="sub-001"):
        generate_dataset(tmp_path / "ds", subjects=2, seed=0, spacing=SPACING)
    assert (case / "t1.nii.gz").read_bytes() == b"user data"
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["sub-001"]  # nothing else written


@pytest.mark.parametrize(
    "kwargs",
    [dict(subjects=0, seed=0), dict(subjects=1, seed=-1), dict(subjects=1, seed=0, spacing=0.1),
     dict(subjects=1, seed=0, tissue_jitter=0.5)],
)
def test_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(DataError):
        generate_dataset(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()  # checked before anything is created


def test_montage_is_a_png(dataset, tmp_path):
    png = save_montage(dataset[1], tmp_path / "views" / "montage.png")
    assert png == tmp_path / "views" / "montage.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in png.parent.iterdir()] == ["montage.png"]  # no temporary left behind


def test_montage_needs_images(tmp_path):
    with pytest.raises(DataError, match="no modality volumes"):
        save_montage(tmp_path, tmp_path / "m.png")
