"""`medk2n-bench memory`: the peak RSS of a real medk2n-run child, per volume size and per checkout."""

from __future__ import annotations

import json

from click.testing import CliRunner

from medk2n.benchmarks.cli import cli
from medk2n.benchmarks.memory import TARGETS


def test_memory_runs_medk2n_run_in_a_child_and_reports_its_peak(tmp_path):
    out = tmp_path / "results"
    result = CliRunner().invoke(cli, ["memory", "--sizes", "20", "--work", str(tmp_path / "work"), "--threads", "1",
                                      "--note", "before: the commit before", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "memory.json").read_text())
    (row,) = data["rows"]
    assert row["code"] == "current" and row["size"] == 20
    assert 20 < row["peak_rss_mb"] < 2000  # an interpreter with ONNX Runtime loaded, not the parent's
    assert row["outputs"] == sorted([f"{t}.nii.gz" for t in TARGETS] + [f"{t}_uncertainty.nii.gz" for t in TARGETS])
    text = (out / "memory.md").read_text()
    assert "| current | 20³ |" in text and "before: the commit before" in text


def test_a_code_that_is_no_checkout_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["memory", "--code", f"before={tmp_path}", "--work", str(tmp_path / "w"),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "expected LABEL=PATH of a project checkout" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
