"""medk2n-run reads the dataset layouts `medk2n-data check` reads, and one study given file by file."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner, Result
from runtime_fixtures import fields, make_affine, save_nifti, write_case

from medk2n.data.cases import discover_dataset
from medk2n.runtime.cli import command

TARGETS = ["adc", "adc_uncertainty", "dwi", "dwi_uncertainty"]


def run(bundle: Path, *args: object) -> Result:
    return CliRunner().invoke(command, [str(bundle), *[str(a) for a in args], "--targets", "dwi,adc",
                                        "--backend", "cpu"])


def write_volumes(files: dict[str, Path], kind: str = "iso") -> None:
    """`{modality: path}`: the fixture's closed-form fields, written where each layout puts them."""
    values = fields()
    for modality, path in files.items():
        save_nifti(values[modality], path, make_affine(kind))


def assert_written(out: Path, names: list[str], grid_of: dict[str, Path]) -> None:
    """OUT holds exactly `names`, each with every output on its input's grid."""
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        assert sorted(p.name for p in (out / name).iterdir()) == [f"{t}.nii.gz" for t in TARGETS]
        source = nib.load(grid_of[name])
        for target in TARGETS:
            image = nib.load(out / name / f"{target}.nii.gz")
            assert image.shape == source.shape
            np.testing.assert_allclose(image.affine, source.affine, atol=1e-5)


def brats(root: Path) -> dict[str, Path]:
    grids = {}
    for i, name in enumerate(("BraTS-GLI-00000-000", "BraTS-GLI-00001-000")):
        files = {m: root / name / f"{name}-{token}.nii.gz" for m, token in (("t2", "t2w"), ("flair", "t2f"))}
        write_volumes(files, ("lps", "oblique")[i])
        save_nifti(np.zeros(fields()["t2"].shape), root / name / f"{name}-seg.nii.gz", make_affine("lps"))
        grids[name] = files["t2"]
    return grids


def isles(root: Path) -> dict[str, Path]:
    """ISLES 2022 as it ships: rawdata/sub-*/ses-*/{anat,dwi}, derivatives beside rawdata."""
    grids = {}
    for sub, sessions in (("sub-strokecase0001", ("ses-0001",)), ("sub-strokecase0002", ("ses-0001", "ses-0002"))):
        for ses in sessions:
            base = root / "rawdata" / sub / ses
            files = {"flair": base / "anat" / f"{sub}_{ses}_FLAIR.nii.gz", "t2": base / "anat" / f"{sub}_{ses}_T2w.nii.gz"}
            write_volumes(files, "aniso")
            (base / "anat" / f"{sub}_{ses}_FLAIR.json").write_text("{}")
            grids[sub if len(sessions) == 1 else f"{sub}_{ses}"] = files["t2"]
    save_nifti(np.zeros(fields()["t2"].shape), root / "derivatives" / "sub-strokecase0001" / "ses-0001"
               / "sub-strokecase0001_ses-0001_msk.nii.gz", make_affine("aniso"))
    return grids


def nnunet(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "FLAIR", "1": "T2"},
                                                   "labels": {"background": 0}, "file_ending": ".nii.gz"}))
    grids = {}
    for folder, case in (("imagesTr", "brain_001"), ("imagesTs", "brain_101"), ("imagesTs", "brain_102")):
        files = {"flair": root / folder / f"{case}_0000.nii.gz", "t2": root / folder / f"{case}_0001.nii.gz"}
        write_volumes(files, "sagittal")
        grids[case] = files["t2"]
    return grids


LAYOUTS = {"brats": brats, "isles": isles, "nnunet": nnunet}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_dataset_root_runs_every_case_under_the_names_check_gives(tmp_path: Path, bundle_dir: Path,
                                                                    layout: str) -> None:
    root = tmp_path / layout
    grids = LAYOUTS[layout](root)
    out = tmp_path / "out"
    result = run(bundle_dir, root, "--sources", "t2,flair", "--out", out)
    assert result.exit_code == 0, result.output
    assert_written(out, sorted(grids), grids)
    assert sorted(c.name for c in discover_dataset(root)) == sorted(grids)
    assert f"{len(grids)} case(s): {len(grids)} written" in result.stdout


@pytest.mark.parametrize("layout,level,names", [
    ("brats", "BraTS-GLI-00001-000", ["BraTS-GLI-00001-000"]),
    ("isles", "rawdata/sub-strokecase0002", ["sub-strokecase0002_ses-0001", "sub-strokecase0002_ses-0002"]),
    ("isles", "rawdata", ["sub-strokecase0001", "sub-strokecase0002_ses-0001", "sub-strokecase0002_ses-0002"]),
    ("nnunet", "imagesTs", ["brain_101", "brain_102"]),
])
def test_any_folder_level_of_a_layout_runs(tmp_path: Path, bundle_dir: Path, layout: str, level: str,
                                           names: list[str]) -> None:
    grids = LAYOUTS[layout](tmp_path / layout)
    out = tmp_path / "out"
    result = run(bundle_dir, tmp_path / layout / level, "--sources", "t2,flair", "--out", out)
    assert result.exit_code == 0, result.output
    assert_written(out, names, grids)


def test_a_folder_of_no_layout_is_one_error_naming_it(tmp_path: Path, bundle_dir: Path) -> None:
    (tmp_path / "empty" / "dicom").mkdir(parents=True)
    result = run(bundle_dir, tmp_path / "empty", "--sources", "t2,flair", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "empty: no cases found" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_single_study_writes_straight_into_out(tmp_path: Path, bundle_dir: Path) -> None:
    study = write_case(tmp_path / "scans" / "anything", "oblique")
    flair = study.rename(tmp_path / "scans" / "x") / "flair.nii.gz"
    t2 = flair.with_name("t2.nii.gz")
    out = tmp_path / "patient42"
    result = run(bundle_dir, "-i", f"T2w={t2}", "-i", f"flair={flair}", "--out", out)  # sources: the -i order
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [f"{t}.nii.gz" for t in TARGETS]
    np.testing.assert_allclose(nib.load(out / "dwi.nii.gz").affine, nib.load(t2).affine, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patient42", "scans"]  # no partial left beside OUT

    again = run(bundle_dir, "-i", f"t2={t2}", "-i", f"flair={flair}", "--out", out)
    assert again.exit_code == 2 and "patient42: output folder already exists" in again.stderr
    into_inputs = run(bundle_dir, "-i", f"t2={t2}", "-i", f"flair={flair}", "--out", t2.parent, "--overwrite")
    assert into_inputs.exit_code != 0 and "would replace input" in into_inputs.stderr
    assert sorted(p.name for p in t2.parent.iterdir()) == ["flair.nii.gz", "t2.nii.gz"]


@pytest.mark.parametrize("args,message", [
    (["-i", "flair"], "expected MODALITY=FILE"),
    (["-i", "t2=a.nii.gz", "-i", "T2W=b.nii.gz"], "modality 't2' given twice"),
    (["-i", "t2=missing.nii.gz", "-i", "flair=missing2.nii.gz"], "missing.nii.gz"),
    (["-i", "t2=a.nii.gz", "case_dir"], "not both"),
    ([], "no input"),
])
def test_single_study_bad_input_is_one_line(tmp_path: Path, bundle_dir: Path, args: list, message: str) -> None:
    out = tmp_path / "out"
    result = run(bundle_dir, *args, "--out", out)
    assert result.exit_code != 0 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert not out.exists()


def test_case_folders_still_need_sources(tmp_path: Path, bundle_dir: Path) -> None:
    case = write_case(tmp_path / "case001")
    result = run(bundle_dir, case, "--out", tmp_path / "out")
    assert result.exit_code != 0 and "--sources is required" in result.stderr
