"""medk2n-run end to end on NIfTI files: outputs, reports, and every bad input."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner, Result
from runtime_fixtures import (QUANTILE_SLOPE, SHAPE, expected_outputs, fields, interior, make_affine, make_bundle,
                              save_nifti, write_case)

from medk2n.runtime.cli import command

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*args: object) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args])


def synth_args(bundle: Path, *cases: Path, out: Path, sources: str = "t2,flair", targets: str = "dwi,adc") -> list:
    return [bundle, *cases, "--sources", sources, "--targets", targets, "--out", out, "--backend", "cpu"]


def assert_clean_failure(result: Result, out: Path, case: str, names: str) -> None:
    """Non-zero exit, one stderr line naming the case/file, no traceback, nothing left in OUT."""
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and names in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not (out / case).exists()
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [name for name in leftovers if name.startswith(".")], leftovers


@pytest.mark.parametrize("kind", ["iso", "aniso", "lps", "oblique", "sagittal"])
def test_outputs_on_the_input_grid(tmp_path: Path, bundle_dir: Path, kind: str) -> None:
    case = write_case(tmp_path / f"case_{kind}", kind)
    out = tmp_path / "out"
    result = run(*synth_args(bundle_dir, case, out=out))
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    source = nib.load(case / "t2.nii.gz")
    expected = expected_outputs(fields(), ["t2", "flair"], ["dwi", "adc"])
    inner = interior(source.affine, SHAPE)
    for target in ("dwi", "adc"):
        for suffix in ("", "_uncertainty"):
            img = nib.load(out / case.name / f"{target}{suffix}.nii.gz")
            assert img.shape == SHAPE
            np.testing.assert_allclose(img.affine, source.affine, atol=1e-5)
            assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 2
            assert img.get_data_dtype() == np.float32
        image = nib.load(out / case.name / f"{target}.nii.gz").get_fdata()
        np.testing.assert_allclose(image[inner], expected[target][0][inner], atol=20.0 if target == "adc" else 5e-3)
        # half-width of the 90 % interval: q(0.9) = 1.8 times the scale (2 of 2 sources: 1, times the range)
        width = QUANTILE_SLOPE * 0.9 * expected[target][1]
        np.testing.assert_allclose(nib.load(out / case.name / f"{target}_uncertainty.nii.gz").get_fdata(), width,
                                   rtol=1e-5)
    assert sorted(p.name for p in out.iterdir()) == [case.name]


def test_png_and_json_report(tmp_path: Path, bundle_dir: Path) -> None:
    case = write_case(tmp_path / "case001", "aniso")
    out, report = tmp_path / "out", tmp_path / "report.json"
    result = run(*synth_args(bundle_dir, case, out=out), "--png", "--json", report, "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert "backend: cpu" in result.stdout and "CPUExecutionProvider" in result.stdout
    png = (out / "case001" / "montage.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    summary = json.loads(report.read_text())
    assert summary["backend"] == "cpu" and summary["providers"] == ["CPUExecutionProvider"]
    assert summary["batch_size"] == 3 and summary["failed"] == []
    (case_report,) = summary["cases"]
    assert case_report["ok"] and case_report["slices"] == SHAPE[2]
    assert set(case_report["timings"]) == {"read", "preprocess", "infer", "postprocess", "write"}
    assert sorted(case_report["outputs"]) == sorted(
        ["adc.nii.gz", "adc_uncertainty.nii.gz", "dwi.nii.gz", "dwi_uncertainty.nii.gz", "montage.png"])


def test_montage_layout(tmp_path: Path, bundle_dir: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    case = write_case(tmp_path / "case001")
    result = run(*synth_args(bundle_dir, case, out=tmp_path / "out", targets="adc"), "--png")
    assert result.exit_code == 0, result.output
    image = np.asarray(pil.open(tmp_path / "out" / "case001" / "montage.png"))
    # 32-pixel slices enlarged 5x; each row = title strip, caption strip, tiles, a gap; notes underneath.
    tile, strip, row = 160, 22, 22 + 22 + 160 + 4
    assert image.shape[1] == 2 * tile + 2 and image.shape[0] > 3 * row
    assert image[:strip].max() == 255  # the row title is drawn
    assert image[2 * strip:2 * strip + tile, :tile].max() > 0  # first source tile
    synthesis = slice(row + strip, row + 2 * strip + tile)  # the synthesis row's caption and tiles
    assert image[synthesis, :tile].max() > 0 and image[synthesis, tile + 2:].max() == 0  # one target, one tile
    assert image[3 * row:].max() == 255  # the windowing note


def bad_case(tmp_path: Path, problem: str) -> tuple[Path, str]:
    """A case with one defect, and the text its error line must contain."""
    case = write_case(tmp_path / "case_bad", modalities=("t2",))
    flair = case / "flair.nii.gz"
    values = fields()["flair"]
    affine = make_affine("iso")
    if problem == "missing":
        return case, "missing modality 'flair'"
    if problem == "geometry":
        shifted = affine.copy()
        shifted[0, 3] += 4.0
        save_nifti(values, flair, shifted)
        return case, "case_bad"
    if problem == "4d":
        save_nifti(np.stack([values, values], axis=-1), flair, affine)
        return case, "flair.nii.gz: expected a 3-D volume"
    if problem == "nan":
        values = values.copy()
        values[3, 4, 5] = np.nan
        save_nifti(values, flair, affine)
        return case, "flair.nii.gz: contains 1 NaN"
    if problem == "constant":
        save_nifti(np.full(SHAPE, 7.0, np.float32), flair, affine)
        return case, "flair.nii.gz: constant volume"
    if problem == "truncated":
        save_nifti(values, flair, affine)
        data = flair.read_bytes()
        flair.write_bytes(data[: len(data) // 2])
        return case, "flair.nii.gz: unreadable or truncated"
    raise ValueError(problem)


@pytest.mark.parametrize("problem", ["missing", "geometry", "4d", "nan", "constant", "truncated"])
def test_bad_case_fails_cleanly(tmp_path: Path, bundle_dir: Path, problem: str) -> None:
    case, names = bad_case(tmp_path, problem)
    out = tmp_path / "out"
    assert_clean_failure(run(*synth_args(bundle_dir, case, out=out)), out, case.name, names)


def test_reference_resolves_mismatched_geometry(tmp_path: Path, bundle_dir: Path) -> None:
    case, _ = bad_case(tmp_path, "geometry")
    out = tmp_path / "out"
    result = run(*synth_args(bundle_dir, case, out=out), "--reference", "t2")
    assert result.exit_code == 0, result.output
    img = nib.load(out / case.name / "dwi.nii.gz")
    np.testing.assert_allclose(img.affine, nib.load(case / "t2.nii.gz").affine)


@pytest.mark.parametrize("sources, targets, names", [
    ("t2,mri", "dwi", "unknown modality 'mri'"),
    ("t1,t2,flair", "dwi", "at most K=2"),
    ("t2", "dwi,adc,t1", "at most N=2"),
    ("t2,flair", "flair", "both a source and a target"),
])
def test_bad_request_fails_cleanly(tmp_path: Path, bundle_dir: Path, sources: str, targets: str,
                                   names: str) -> None:
    case = write_case(tmp_path / "case001", modalities=("t1", "t2", "flair"))
    out = tmp_path / "out"
    result = run(*synth_args(bundle_dir, case, out=out, sources=sources, targets=targets))
    assert_clean_failure(result, out, "case001", names)
    assert "case001" in result.stderr


def test_tampered_bundle_fails_cleanly(tmp_path: Path, bundle_dir: Path) -> None:
    bundle = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-3] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(data))
    out = tmp_path / "out"
    result = run(*synth_args(bundle, write_case(tmp_path / "case001"), out=out))
    assert_clean_failure(result, out, "case001", "model.onnx: sha256 mismatch")


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path, bundle_dir: Path) -> None:
    case = write_case(tmp_path / "case001")
    out = tmp_path / "out"
    (out / "case001").mkdir(parents=True)
    (out / "case001" / "notes.txt").write_text("mine")
    result = run(*synth_args(bundle_dir, case, out=out))
    assert result.exit_code != 0 and "--overwrite" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert [p.name for p in (out / "case001").iterdir()] == ["notes.txt"]
    result = run(*synth_args(bundle_dir, case, out=out), "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "case001").iterdir()) == [
        "adc.nii.gz", "adc_uncertainty.nii.gz", "dwi.nii.gz", "dwi_uncertainty.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == ["case001"]


def test_output_never_replaces_the_input(tmp_path: Path, bundle_dir: Path) -> None:
    case = write_case(tmp_path / "data" / "case001")
    result = run(*synth_args(bundle_dir, case, out=tmp_path / "data"), "--overwrite")
    assert result.exit_code != 0 and "would replace input" in result.stderr
    assert sorted(p.name for p in case.iterdir()) == ["flair.nii.gz", "t2.nii.gz"]


def test_one_bad_case_does_not_stop_the_good_ones(tmp_path: Path, bundle_dir: Path) -> None:
    good_a = write_case(tmp_path / "a_good", "lps")
    bad, _ = bad_case(tmp_path, "nan")
    good_b = write_case(tmp_path / "z_good", "oblique")
    out, report = tmp_path / "out", tmp_path / "r.json"
    result = run(*synth_args(bundle_dir, good_a, bad, good_b, out=out), "--json", report)
    assert result.exit_code != 0
    assert sorted(p.name for p in out.iterdir()) == ["a_good", "z_good"]
    assert "3 case(s): 2 written" in result.stdout and "1 failed (case_bad)" in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "case_bad" in result.stderr
    summary = json.loads(report.read_text())
    assert summary["failed"] == ["case_bad"]
    assert [c["ok"] for c in summary["cases"]] == [True, False, True]


def test_cases_with_the_same_name_are_refused(tmp_path: Path, bundle_dir: Path) -> None:
    a = write_case(tmp_path / "x" / "case001")
    b = write_case(tmp_path / "y" / "case001")
    result = run(*synth_args(bundle_dir, a, b, out=tmp_path / "out"))
    assert result.exit_code != 0 and "several cases are named 'case001'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_help_works() -> None:
    result = run("-h")
    assert result.exit_code == 0 and "--sources" in result.stdout and "trt-plan" in result.stdout


def test_gz_case_names_are_case_insensitive(tmp_path: Path, bundle_dir: Path) -> None:
    case = write_case(tmp_path / "case001")
    (case / "t2.nii.gz").rename(case / "T2w.nii.gz")
    with gzip.open(case / "flair.nii.gz") as fh:
        (case / "FLAIR.nii").write_bytes(fh.read())
    (case / "flair.nii.gz").unlink()
    result = run(*synth_args(bundle_dir, case, out=tmp_path / "out", targets="adc"))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("coverage", ["0", "1", "1.5", "-0.2"])
def test_coverage_outside_zero_one_is_a_one_line_error(tmp_path: Path, bundle_dir: Path, coverage: str) -> None:
    case = write_case(tmp_path / "case001")
    result = run(*synth_args(bundle_dir, case, out=tmp_path / "out"), "--coverage", coverage)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"error: --coverage {float(coverage):g}: must be strictly "
                                                  "between 0 and 1 (e.g. 0.9 for 90 %)"]
    assert not (tmp_path / "out").exists()


def test_a_bundle_without_calibration_says_so_once(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "legacy", legacy=True)
    cases = [write_case(tmp_path / name) for name in ("case001", "case002")]
    result = run(str(folder), *map(str, cases), "--sources", "t2,flair", "--targets", "dwi",
                 "--out", str(tmp_path / "out"), "--backend", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("note:") == 1 and "predates" in result.stderr
    for case in cases:
        assert [p.name for p in (tmp_path / "out" / case.name).iterdir()] == ["dwi.nii.gz"]


def test_a_target_without_calibration_gets_no_map_and_one_note(tmp_path: Path) -> None:
    from runtime_fixtures import calibration, edit_manifest

    folder = make_bundle(tmp_path / "partial")
    edit_manifest(folder, uncertainty=calibration(targets=["dwi"]))
    case = write_case(tmp_path / "case001")
    result = run(*synth_args(folder, case, out=tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == ["note: no conformal calibration for adc in this bundle: "
                                                  "no uncertainty map for it"]
    assert sorted(p.name for p in (tmp_path / "out" / "case001").iterdir()) == [
        "adc.nii.gz", "dwi.nii.gz", "dwi_uncertainty.nii.gz"]


def test_a_source_failing_the_source_check_is_reported_and_still_synthesised(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "checked", source_check=True)
    case = write_case(tmp_path / "case001")
    report = tmp_path / "run.json"
    result = run(*synth_args(folder, case, out=tmp_path / "out"), "--json", report)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING:")]
    assert warnings == ["WARNING: case001: source 't2' does not look like T2 to the model (source check p = 0.200 "
                        "< 0.500): check that series' label; a synthesis from another contrast is wrong"]
    (case_report,) = json.loads(report.read_text())["cases"]
    assert case_report["source_check"] == {"t2": 0.2, "flair": 0.9}
    assert case_report["source_check_thresholds"] == {"t2": 0.5, "flair": 0.5}  # no fitted lines: the network's
    assert case_report["warnings"] == [w.removeprefix("WARNING: ") for w in warnings]
    assert sorted(p.name for p in (tmp_path / "out" / "case001").iterdir()) == [
        "adc.nii.gz", "adc_uncertainty.nii.gz", "dwi.nii.gz", "dwi_uncertainty.nii.gz"]


def test_exclude_mislabelled_synthesises_from_the_sources_the_check_believes(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "checked", source_check=True)
    case = write_case(tmp_path / "case001")
    out, report = tmp_path / "out", tmp_path / "run.json"
    result = run(*synth_args(folder, case, out=out), "--json", report, "--exclude-mislabelled")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING:")]
    assert warnings == ["WARNING: case001: source 't2' does not look like T2 to the model (source check p = 0.200 "
                        "< 0.500): left out (--exclude-mislabelled); synthesised from flair only"]
    (case_report,) = json.loads(report.read_text())["cases"]
    assert case_report["excluded_sources"] == ["t2"]
    assert case_report["source_check"] == {"t2": 0.2, "flair": 0.9}  # what the check said of every source given
    # The fake model's output is the weighted mean of the present sources: FLAIR alone now, and its
    # scale (present slots / K) halves; both differ from the synthesis that trusted t2.
    source = nib.load(case / "t2.nii.gz")
    inner = interior(source.affine, SHAPE)
    alone, both = (expected_outputs(fields(), names, ["dwi", "adc"]) for names in (["flair"], ["t2", "flair"]))
    image = nib.load(out / "case001" / "adc.nii.gz").get_fdata()
    np.testing.assert_allclose(image[inner], alone["adc"][0][inner], atol=20.0)
    assert np.abs(image[inner] - both["adc"][0][inner]).max() > 100.0
    halfwidth = nib.load(out / "case001" / "adc_uncertainty.nii.gz").get_fdata()
    np.testing.assert_allclose(halfwidth[inner], QUANTILE_SLOPE * 0.9 * alone["adc"][1], rtol=1e-4)


def test_the_bundles_fitted_check_thresholds_decide_which_source_is_doubted(tmp_path: Path) -> None:
    # Fitted at export per contrast (export.check_threshold): T2's line below its p = 0.2, FLAIR's above 0.9.
    folder = make_bundle(tmp_path / "checked", source_check=True, check_thresholds={"t2": 0.1, "flair": 0.95})
    case = write_case(tmp_path / "case001")
    report = tmp_path / "run.json"
    result = run(*synth_args(folder, case, out=tmp_path / "out"), "--json", report, "--exclude-mislabelled")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING:")]
    assert warnings == ["WARNING: case001: source 'flair' does not look like FLAIR to the model (source check "
                        "p = 0.900 < 0.950): left out (--exclude-mislabelled); synthesised from t2 only"]
    (case_report,) = json.loads(report.read_text())["cases"]
    assert case_report["excluded_sources"] == ["flair"]
    assert case_report["source_check_thresholds"] == {"t2": 0.1, "flair": 0.95}


def test_exclude_mislabelled_keeps_a_source_when_the_check_doubts_every_one(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "checked", source_check=True)
    case = write_case(tmp_path / "case001", modalities=("t2",))
    report = tmp_path / "run.json"
    result = run(*synth_args(folder, case, out=tmp_path / "out", sources="t2"), "--json", report,
                 "--exclude-mislabelled")
    assert result.exit_code == 0, result.output
    assert "kept: the check doubts every source, so none was left out" in result.stderr
    assert json.loads(report.read_text())["cases"][0]["excluded_sources"] == []


def test_exclude_mislabelled_with_a_bundle_without_a_check_says_it_cannot_act(tmp_path: Path,
                                                                              bundle_dir: Path) -> None:
    out, report = tmp_path / "out", tmp_path / "run.json"
    result = run(*synth_args(bundle_dir, write_case(tmp_path / "case001"), out=out), "--json", report,
                 "--exclude-mislabelled")
    assert result.exit_code == 0, result.output
    assert "note: this bundle's model has no source check: --exclude-mislabelled cannot act" in result.stderr
    assert json.loads(report.read_text())["cases"][0]["excluded_sources"] is None


def test_sources_passing_the_check_and_bundles_without_one_warn_nothing(tmp_path: Path, bundle_dir: Path) -> None:
    checked = make_bundle(tmp_path / "checked", source_check=True)
    case = write_case(tmp_path / "case001", modalities=("t1", "flair"))
    for folder, expected in ((checked, {"t1": 0.9, "flair": 0.9}), (bundle_dir, None)):
        out, report = tmp_path / f"out-{folder.name}", tmp_path / f"{folder.name}.json"
        result = run(*synth_args(folder, case, out=out, sources="t1,flair"), "--json", report)
        assert result.exit_code == 0, result.output
        assert "WARNING" not in result.stderr
        assert json.loads(report.read_text())["cases"][0]["source_check"] == expected


def test_montage_names_a_source_that_fails_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The montage is what a reader looks at: the failing source's caption says so."""
    from medk2n.runtime import pipeline

    folder = make_bundle(tmp_path / "checked", source_check=True)
    seen = {}
    real = pipeline.labelled_grid

    def spy(rows, notes):
        seen["rows"], seen["notes"] = rows, notes
        return real(rows, notes)

    monkeypatch.setattr(pipeline, "labelled_grid", spy)
    result = run(*synth_args(folder, write_case(tmp_path / "case001"), out=tmp_path / "out"), "--png")
    assert result.exit_code == 0, result.output
    assert [label for label, _ in seen["rows"][0][1]] == ["t2 check 0.20 FAIL", "flair check 0.90"]
    assert seen["notes"][-1].startswith("Source check: the model's p")
