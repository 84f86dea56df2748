"""`medk2n-export` end to end: refusal on a tolerance breach writes nothing; --force writes and says so."""

import pytest
from click.testing import CliRunner

from medk2n.export import verify
from medk2n.export.cli import cli
from medk2n.manifest import read_manifest, verify_bundle

pytestmark = pytest.mark.slow


def test_cli_refuses_then_forces_a_tolerance_breach(monkeypatch, tiny_checkpoint, tmp_path):
    monkeypatch.setattr(verify, "FP32_MAX_OUTLIERS", -1.0)
    out = tmp_path / "bundles" / "b"
    args = [str(tiny_checkpoint), "--k", "2", "--n", "4", "--calib-slices", "4", "--out", str(out)]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2
    error_lines = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "FP32 ONNX vs PyTorch outside tolerance" in error_lines[0]
    assert "Traceback" not in refused.output
    assert list((tmp_path / "bundles").iterdir()) == []

    forced = CliRunner().invoke(cli, args + ["--force"])  # phantom slices: no --calib given
    assert forced.exit_code == 0, forced.output
    assert f"bundle: {out}" in forced.output
    manifest = read_manifest(out)
    verify_bundle(out, manifest)
    assert manifest.parity["fp32"]["passed"] is False and manifest.parity["fp32"]["forced"] is True
    assert manifest.accuracy["data"] == "phantom"
    assert sorted(p.name for p in (tmp_path / "bundles").iterdir()) == ["b"]
