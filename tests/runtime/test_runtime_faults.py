"""Faults that are not plain bad input: concurrent runs, per-case crashes, full disks, header bombs."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner, Result
from runtime_fixtures import fields, header_bomb, save_nifti, write_case

import medk2n.runtime.pipeline as pipeline
from medk2n.errors import DataError
from medk2n.runtime.cli import command
from medk2n.runtime.outputs import case_output


def run(*args: object) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args])


def args(bundle: Path, *cases: Path, out: Path, targets: str = "dwi,adc") -> list:
    return [bundle, *cases, "--sources", "t2,flair", "--targets", targets, "--out", out, "--backend", "cpu"]


def test_a_folder_published_meanwhile_is_kept_not_replaced(tmp_path: Path) -> None:
    """The race of two runs on one --out: the later publisher finds the folder and refuses."""
    out = tmp_path / "out"
    with pytest.raises(DataError, match="appeared while this run worked on it"):
        with case_output(out, "case1", overwrite=False) as tmp:
            (tmp / "t1.nii.gz").write_bytes(b"mine")
            (out / "case1").mkdir()  # the other run publishes first
            (out / "case1" / "dwi.nii.gz").write_bytes(b"theirs")
    assert [p.name for p in (out / "case1").iterdir()] == ["dwi.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == ["case1"]  # no temporary folder left


def test_two_concurrent_runs_on_one_out_never_lose_a_result(tmp_path: Path, bundle_dir: Path) -> None:
    cases = [write_case(tmp_path / "in" / f"case{i}") for i in range(6)]
    out = tmp_path / "out"
    runs = {}
    for targets in ("dwi,adc", "t1"):
        report = tmp_path / f"{targets}.json"
        cmd = [sys.executable, "-m", "medk2n.runtime.cli", *map(str, args(bundle_dir, *cases, out=out, targets=targets)),
               "--json", str(report)]
        runs[targets] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), report)
    summaries = {}
    for targets, (proc, report) in runs.items():
        proc.communicate(timeout=300)
        summaries[targets] = json.loads(report.read_text())
    expected = {"dwi,adc": {"dwi.nii.gz", "dwi_uncertainty.nii.gz", "adc.nii.gz", "adc_uncertainty.nii.gz"},
                "t1": {"t1.nii.gz", "t1_uncertainty.nii.gz"}}
    for case in cases:
        files = {p.name for p in (out / case.name).iterdir()}
        owners = [t for t, summary in summaries.items()
                  if any(c["name"] == case.name and c["ok"] for c in summary["cases"])]
        assert len(owners) == 1 and files == expected[owners[0]]  # one whole result, the one reported written
        for targets, summary in summaries.items():
            if targets not in owners:  # the other run says it did not write this case, and why
                (report,) = [c for c in summary["cases"] if c["name"] == case.name]
                assert not report["ok"] and ("already exists" in report["error"] or "appeared" in report["error"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_crash_inside_one_case_is_that_case_s_report(tmp_path: Path, bundle_dir: Path, monkeypatch) -> None:
    good, bad = write_case(tmp_path / "good"), write_case(tmp_path / "bad")
    real_finish = pipeline.finish_stage

    def finish(synth, loaded, *rest, **kw):
        if loaded.report.name == "bad":
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code\nstack")
        return real_finish(synth, loaded, *rest, **kw)

    monkeypatch.setattr(pipeline, "finish_stage", finish)
    out, report = tmp_path / "out", tmp_path / "run.json"
    result = run(*args(bundle_dir, bad, good, out=out), "--json", report)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        "error: bad: RuntimeError: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code"]
    assert sorted(p.name for p in out.iterdir()) == ["good"]
    assert json.loads(report.read_text())["failed"] == ["bad"]


def test_a_full_disk_stops_the_run_with_one_line_and_a_summary(tmp_path: Path, bundle_dir: Path,
                                                               monkeypatch) -> None:
    cases = [write_case(tmp_path / name) for name in ("first", "second", "third")]
    calls = {"n": 0}
    real_write = pipeline.write_volume

    def write(array, path, like):
        calls["n"] += 1
        if "second" in str(path.parent.name):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(array, path, like)

    monkeypatch.setattr(pipeline, "write_volume", write)
    out, report = tmp_path / "out", tmp_path / "run.json"
    result = run(*args(bundle_dir, *cases, out=out), "--json", report)
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "No space left on device; stopping the run" in line
    assert sorted(p.name for p in out.iterdir()) == ["first"]  # nothing partial of the second, no third
    summary = json.loads(report.read_text())
    assert [c["name"] for c in summary["cases"]] == ["first"] and "No space left" in summary["fault"]


def test_an_output_folder_that_cannot_be_made_stops_before_any_work(tmp_path: Path, bundle_dir: Path) -> None:
    case = write_case(tmp_path / "case1")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run(*args(bundle_dir, case, out=blocker / "out"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {blocker / 'out'}: output folder is not writable")


@pytest.mark.parametrize("shape, message", [
    ((4000, 4000, 4000), "above the limit of"),  # past --max-voxels: refused on the header alone
    ((512, 512, 512), "header claims 536870912 bytes of image data, the file holds 384"),
])
def test_a_header_bomb_is_refused_before_allocation(tmp_path: Path, bundle_dir: Path, shape, message) -> None:
    case = write_case(tmp_path / "bomb", modalities=("t2",))
    header_bomb(case / "flair.nii.gz", shape)
    good = write_case(tmp_path / "good")
    out = tmp_path / "out"
    result = run(*args(bundle_dir, case, good, out=out))
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert str(case / "flair.nii.gz") in line and message in line
    assert sorted(p.name for p in out.iterdir()) == ["good"]


def test_max_voxels_is_a_user_limit(tmp_path: Path, bundle_dir: Path) -> None:
    case = write_case(tmp_path / "case1")  # 23 x 19 x 11 = 4807 voxels
    result = run(*args(bundle_dir, case, out=tmp_path / "out"), "--max-voxels", "4000")
    assert result.exit_code == 2 and "4807 voxels, above the limit of 4000 (--max-voxels)" in result.stderr
    assert run(*args(bundle_dir, case, out=tmp_path / "out2"), "--max-voxels", "4807").exit_code == 0


def test_sigterm_is_one_line_and_leaves_no_partial(tmp_path: Path, bundle_dir: Path) -> None:
    """A run killed politely mid-case: exit 130, one line, nothing half-written in OUT."""
    big = [write_case(tmp_path / "in" / f"case{i}", shape=(96, 96, 60)) for i in range(8)]
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "medk2n.runtime.cli", *map(str, args(bundle_dir, *big, out=out))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out.exists() and any(p.name.endswith(".partial") or not p.name.startswith(".")
                                    for p in out.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.01)  # wait until the run is writing a case
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted", err
    assert "Traceback" not in err
    for case in out.iterdir():
        assert not case.name.startswith("."), case  # no partial left
        assert {p.name for p in case.iterdir()} == {"dwi.nii.gz", "dwi_uncertainty.nii.gz", "adc.nii.gz",
                                                    "adc_uncertainty.nii.gz"}  # whole cases only


def test_partials_of_killed_runs_are_removed_not_those_of_live_ones(tmp_path: Path) -> None:
    from medk2n.runtime.outputs import remove_stale_partials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".case1.{dead.pid}.abc.partial"
    live = tmp_path / f".case1.{os.getpid()}.def.partial"
    other = tmp_path / f".case2.{dead.pid}.ghi.partial"
    for folder in (stale, live, other):
        folder.mkdir()
    assert remove_stale_partials(tmp_path, "case1") == [stale]
    assert live.is_dir() and other.is_dir() and not stale.exists()
