import json
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import SHAPE, head, save_nifti

from medk2n.data.cases import (
    Case,
    discover_dataset,
    find_case_files,
    load_case,
    normalise_modality_name,
    resolve_cases,
)
from medk2n.errors import DataError


def test_modality_aliases():
    assert [normalise_modality_name(n) for n in ["T2W", "t2f", "T1n", "t1ce", "T1GD", "PDw", "trace", "FLAIR"]] == [
        "t2", "flair", "t1", "t1c", "t1c", "pd", "dwi", "flair"
    ]


def test_generic_case_is_case_insensitive_and_sorts_masks_and_unknowns(tmp_path, write_case):
    case = write_case(tmp_path / "case001", {"FLAIR.nii.gz": None, "T2W.nii": None, "adc": None,
                                             "brain_mask": None, "lesion_mask": None, "swi": None})
    (case / "notes.txt").write_text("not an image")
    files = find_case_files(case)
    assert {m: p.name for m, p in files.items()} == {"flair": "FLAIR.nii.gz", "t2": "T2W.nii", "adc": "adc.nii.gz"}
    [found] = discover_dataset(tmp_path)
    assert found.name == "case001"
    assert set(found.masks) == {"brain", "lesion"}
    assert [p.name for p in found.unknown] == ["swi.nii.gz"]


def test_missing_modality_names_case_found_and_unknown_files(tmp_path, write_case):
    case = write_case(tmp_path / "case001", {"flair": None, "t2": None, "swi": None})
    with pytest.raises(DataError, match=r"case001: missing modality 'adc' \(found: flair, t2\).*swi\.nii\.gz"):
        find_case_files(case, ["flair", "ADC"])


def test_two_files_for_one_modality_is_an_error(tmp_path, write_case):
    case = write_case(tmp_path / "case001", {"t2": None, "T2w": None})
    with pytest.raises(DataError, match=r"several files map to modality 't2' \(T2w\.nii\.gz, t2\.nii\.gz\)"):
        find_case_files(case, ["t2"])


def test_missing_case_and_empty_dataset(tmp_path):
    with pytest.raises(DataError, match="nope"):
        find_case_files(tmp_path / "nope")
    with pytest.raises(DataError, match="no cases found"):
        discover_dataset(tmp_path)
    with pytest.raises(DataError, match="missing"):
        discover_dataset(tmp_path / "missing")


def test_isles_2022_layout_with_derivative_masks(tmp_path):
    for i in (1, 2):
        sub, ses = f"sub-strokecase000{i}", "ses-0001"
        base = tmp_path / sub / ses
        save_nifti(base / "dwi" / f"{sub}_{ses}_dwi.nii.gz", head())
        save_nifti(base / "dwi" / f"{sub}_{ses}_adc.nii.gz", head() * 1000)
        save_nifti(base / "anat" / f"{sub}_{ses}_FLAIR.nii.gz", head((14, 12, 10)))
        (base / "dwi" / f"{sub}_{ses}_dwi.json").write_text("{}")
    save_nifti(tmp_path / "derivatives" / "sub-strokecase0001" / "ses-0001" / "sub-strokecase0001_ses-0001_msk.nii.gz",
               np.zeros(SHAPE))
    cases = discover_dataset(tmp_path)
    assert [c.name for c in cases] == ["sub-strokecase0001", "sub-strokecase0002"]
    assert sorted(cases[0].files) == ["adc", "dwi", "flair"]
    assert cases[0].files["flair"].name == "sub-strokecase0001_ses-0001_FLAIR.nii.gz"
    assert cases[0].masks["lesion"].name.endswith("_msk.nii.gz") and cases[1].masks == {}
    assert not cases[0].unknown


def test_brats_2023_layout(tmp_path, write_case):
    for name in ("BraTS-GLI-00000-000", "BraTS-GLI-00002-000"):
        write_case(tmp_path / name, {f"{name}-{token}": None for token in ("t1n", "t1c", "t2w", "t2f", "seg")})
    cases = discover_dataset(tmp_path)
    assert [c.name for c in cases] == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]
    assert sorted(cases[0].files) == ["flair", "t1", "t1c", "t2"]
    assert cases[0].files["t2"].name == "BraTS-GLI-00000-000-t2w.nii.gz"
    assert cases[0].masks["lesion"].name.endswith("-seg.nii.gz")


def write_nnunet(root: Path, write_case, channels: dict | None = None, key: str = "channel_names") -> Path:
    """Dataset001_Brain/: dataset.json, imagesTr (2 cases + labels), imagesTs (1 case)."""
    channels = channels or {"0": "T2", "1": "FLAIR"}
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({key: channels, "labels": {"background": 0, "lesion": 1},
                                                   "numTraining": 2, "file_ending": ".nii.gz"}))
    for folder, cases in (("imagesTr", ("brain_001", "brain_002")), ("imagesTs", ("brain_101",))):
        write_case(root / folder, {f"{case}_{int(i):04d}": None for case in cases for i in channels})
    save_nifti(root / "labelsTr" / "brain_001.nii.gz", np.zeros(SHAPE))
    return root


@pytest.mark.parametrize("key", ["channel_names", "modality"])  # nnU-Net v2 / v1 dataset.json
def test_nnunet_raw_layout(tmp_path, write_case, key):
    root = write_nnunet(tmp_path / "Dataset001_Brain", write_case, key=key)
    cases = discover_dataset(root)
    assert [c.name for c in cases] == ["brain_001", "brain_002", "brain_101"]
    assert {m: p.name for m, p in cases[0].files.items()} == {"t2": "brain_001_0000.nii.gz",
                                                               "flair": "brain_001_0001.nii.gz"}
    assert cases[0].masks["lesion"].name == "brain_001.nii.gz" and cases[2].masks == {}
    # an images folder alone (what nnUNetv2_predict -i takes) reads its own cases, channels from the parent
    assert [c.name for c in resolve_cases(root / "imagesTs")] == ["brain_101"]


def test_nnunet_files_of_undeclared_channels_are_unknown_and_bad_json_is_one_error(tmp_path, write_case):
    root = write_nnunet(tmp_path / "Dataset002_X", write_case)
    write_case(root / "imagesTs", {"brain_101_0007": None})
    [case] = resolve_cases(root / "imagesTs")
    assert sorted(case.files) == ["flair", "t2"] and [p.name for p in case.unknown] == ["brain_101_0007.nii.gz"]
    (root / "dataset.json").write_text('{"labels": {}}')
    with pytest.raises(DataError, match="dataset.json: no 'channel_names'"):
        discover_dataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json: not a readable nnU-Net dataset.json"):
        discover_dataset(root)


def test_resolve_cases_reads_any_level_under_the_names_discovery_gives(tmp_path, write_case):
    for name in ("BraTS-GLI-00000-000", "BraTS-GLI-00002-000"):
        write_case(tmp_path / "brats" / name, {f"{name}-{token}": None for token in ("t2w", "t2f")})
    sub = tmp_path / "isles" / "rawdata" / "sub-strokecase0001"
    for ses in ("ses-0001", "ses-0002"):
        save_nifti(sub / ses / "anat" / f"{sub.name}_{ses}_FLAIR.nii.gz", head())
        save_nifti(sub / ses / "dwi" / f"{sub.name}_{ses}_adc.nii.gz", head())
    save_nifti(tmp_path / "isles" / "derivatives" / sub.name / "ses-0001" / f"{sub.name}_ses-0001_msk.nii.gz",
               np.zeros(SHAPE))
    generic = write_case(tmp_path / "plain" / "case001", {"t2": None, "flair": None})
    assert [c.name for c in resolve_cases(tmp_path / "brats")] == [c.name for c in discover_dataset(tmp_path / "brats")]
    assert [c.name for c in resolve_cases(tmp_path / "brats" / "BraTS-GLI-00002-000")] == ["BraTS-GLI-00002-000"]
    by_subject = resolve_cases(sub)
    assert [c.name for c in by_subject] == [c.name for c in discover_dataset(tmp_path / "isles")] == [
        "sub-strokecase0001_ses-0001", "sub-strokecase0001_ses-0002"]
    assert "lesion" in by_subject[0].masks  # derivatives found above rawdata/
    assert [c.name for c in resolve_cases(generic)] == ["case001"]
    assert [c.name for c in resolve_cases(tmp_path / "plain")] == ["case001"]
    with pytest.raises(DataError, match="nowhere: folder not found"):
        resolve_cases(tmp_path / "nowhere")


def test_generic_cases_named_like_bids_subjects_stay_generic(tmp_path, write_case):
    write_case(tmp_path / "sub-000", {"t1": None, "flair": None})
    [case] = discover_dataset(tmp_path)
    assert case.name == "sub-000" and sorted(case.files) == ["flair", "t1"]


def test_load_case_reads_requested_modalities(tmp_path, write_case):
    case = write_case(tmp_path / "case001", {"flair": None, "t2": None, "adc": None})
    volumes = load_case(case, ["FLAIR", "adc"])
    assert list(volumes) == ["flair", "adc"]
    array, info = volumes["adc"]
    assert array.shape == SHAPE and array.dtype == np.float32 and info.path.name == "adc.nii.gz"


def _bad_volume(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "case001" / "t2.nii.gz"
    good = head()
    if kind == "4-D":
        return save_nifti(path, np.stack([good, good], axis=-1))
    if kind == "2-D":
        return save_nifti(path, good[:, :, 0])
    if kind == "single slice":
        return save_nifti(path, good[:, :, :1])
    if kind in ("NaN", "Inf"):
        good[3, 3, 3] = np.nan if kind == "NaN" else np.inf
        return save_nifti(path, good)
    if kind == "constant":
        return save_nifti(path, np.full(SHAPE, 5.0))
    if kind == "truncated":
        save_nifti(path, np.random.default_rng(0).random((30, 30, 30)))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("4-D", "4-D"),
        ("2-D", "2-D"),
        ("single slice", "degenerate"),
        ("NaN", "NaN/Inf"),
        ("Inf", "NaN/Inf"),
        ("constant", "constant"),
        ("truncated", "unreadable or truncated"),
    ],
)
def test_bad_volumes_raise_data_error_naming_the_file(tmp_path, kind, message):
    path = _bad_volume(tmp_path, kind)
    with pytest.raises(DataError, match=message) as err:
        load_case(path.parent, ["t2"])
    assert "t2.nii.gz" in str(err.value)


def test_file_listed_but_gone_names_the_file(tmp_path):
    case = Case(name="case001", files={"t2": tmp_path / "case001" / "t2.nii.gz"}, masks={})
    with pytest.raises(DataError, match=r"t2\.nii\.gz: file not found"):
        load_case(case, ["t2"])


def test_unknown_modality_file_is_named_when_the_modality_is_missing(tmp_path, write_case):
    write_case(tmp_path / "case001", {"t2_weird": None})
    with pytest.raises(DataError, match=r"t2_weird\.nii\.gz"):
        load_case(tmp_path / "case001", ["t2"])


def test_nnunet_with_uncompressed_files_finds_its_labels_too(tmp_path, write_case):
    """dataset.json's file_ending ".nii": images and labels are plain NIfTI, and the label is still the case's."""
    root = tmp_path / "Dataset003_Plain"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": {"background": 0},
                                                   "numTraining": 1, "file_ending": ".nii"}))
    write_case(root / "imagesTr", {"brain_001_0000.nii": None})
    save_nifti(root / "labelsTr" / "brain_001.nii", np.zeros(SHAPE))
    [case] = discover_dataset(root)
    assert case.files["t2"].name == "brain_001_0000.nii" and case.masks["lesion"].name == "brain_001.nii"
