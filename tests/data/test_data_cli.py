import numpy as np
import pytest
from click.testing import CliRunner
from data_fixtures import head, save_nifti

from medk2n.data.cli import cli, main


def run(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def good_root(tmp_path, write_case):
    write_case(tmp_path / "case001", {"flair": None, "adc": None})
    write_case(tmp_path / "case002", {"flair": None, "adc": None}, affine=np.diag([-1.0, -1.0, 2.0, 1.0]))
    return tmp_path


def test_check_good_dataset_exits_zero_with_a_table(good_root):
    result = run("check", str(good_root), "--require", "flair,adc")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["case", "modalities"]
    row1 = next(line for line in lines if line.startswith("case001"))
    row2 = next(line for line in lines if line.startswith("case002"))
    assert "adc,flair" in row1 and "12x10x8" in row1 and "RAS" in row1 and row1.endswith("ok")
    assert "1x1x2" in row2 and "LPS" in row2
    assert lines[-1] == "2 case(s): 2 usable, 0 unusable"


def test_check_reports_every_problem_and_exits_one(tmp_path, write_case):
    write_case(tmp_path / "a_missing", {"flair": None})
    nan = head()
    nan[2, 2, 2] = np.nan
    write_case(tmp_path / "b_nan", {"flair": nan, "adc": None})
    shifted = np.eye(4)
    shifted[0, 3] = 3.0
    write_case(tmp_path / "c_grid", {"flair": None})
    save_nifti(tmp_path / "c_grid" / "adc.nii.gz", head(), shifted)
    write_case(tmp_path / "d_unknown", {"flair": None, "adc": None, "swi": None})
    (tmp_path / "e_truncated").mkdir()
    save_nifti(tmp_path / "e_truncated" / "flair.nii.gz", np.random.default_rng(0).random((30, 30, 30)))
    data = (tmp_path / "e_truncated" / "flair.nii.gz").read_bytes()
    (tmp_path / "e_truncated" / "flair.nii.gz").write_bytes(data[: len(data) // 2])
    write_case(tmp_path / "f_4d", {"flair": np.stack([head(), head()], -1)})

    result = run("check", str(tmp_path), "--require", "flair", "--require", "adc")
    assert result.exit_code == 1, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[2:-1]}
    assert "missing adc" in rows["a_missing"]
    assert "flair.nii.gz: contains 1 NaN/Inf voxels" in rows["b_nan"]
    assert "flair grid differs from adc" in rows["c_grid"] and "--reference" in rows["c_grid"]
    assert "warning: unknown modality files ignored: swi.nii.gz" in rows["d_unknown"]
    assert "unreadable or truncated" in rows["e_truncated"]
    assert "4-D" in rows["f_4d"]
    assert result.output.splitlines()[-1] == "6 case(s): 1 usable, 5 unusable"
    assert "Traceback" not in result.output


def test_reference_makes_mismatched_grids_usable(tmp_path, write_case):
    write_case(tmp_path / "case001", {"flair": None})
    shifted = np.eye(4)
    shifted[0, 3] = 3.0
    save_nifti(tmp_path / "case001" / "adc.nii.gz", head(), shifted)
    assert run("check", str(tmp_path), "--reference", "adc").exit_code == 0
    result = run("check", str(tmp_path), "--reference", "dwi")
    assert result.exit_code == 1 and "reference modality 'dwi' missing" in result.output


def test_missing_dataset_is_one_line_error_without_traceback(tmp_path):
    result = run("check", str(tmp_path / "nowhere"))
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'nowhere'}: folder not found (expected a case folder or a dataset root)"
    assert "Traceback" not in result.output


def test_help_works_for_every_command():
    for args in (["-h"], ["check", "-h"], ["phantom", "-h"]):
        result = run(*args)
        assert result.exit_code == 0 and "Usage:" in result.output
    assert "--montage / --no-montage" in run("phantom", "-h").output


def test_main_entry_point_exits_with_the_command_status(good_root):
    with pytest.raises(SystemExit) as exit_info:
        main(["check", str(good_root)])
    assert exit_info.value.code == 0


def test_phantom_command_writes_cases_that_pass_check(tmp_path):
    pytest.importorskip("scipy")
    pytest.importorskip("nilearn")
    out = tmp_path / "phantom"
    result = run("phantom", "--out", str(out), "--subjects", "1", "--seed", "0", "--spacing", "6")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out / "sub-000")
    assert (out / "sub-000" / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checked = run("check", str(out), "--require", "t1,t2,flair,pd,dwi,adc")
    assert checked.exit_code == 0, checked.output


def test_phantom_refuses_to_overwrite_with_one_line_error(tmp_path):
    pytest.importorskip("scipy")
    pytest.importorskip("nilearn")
    (tmp_path / "sub-000").mkdir()
    (tmp_path / "sub-000" / "keep.txt").write_text("mine")
    result = run("phantom", "--out", str(tmp_path), "--subjects", "1", "--no-montage")
    assert result.exit_code == 2 and result.output.startswith("error: ") and "Traceback" not in result.output
