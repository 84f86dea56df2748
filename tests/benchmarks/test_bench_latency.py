"""`medk2n-bench latency`: bad input as one-line errors, and one small real run on a tiny bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from medk2n.benchmarks.cli import cli
from medk2n.benchmarks.latency import parse_batch_sizes
from medk2n.config import preset
from medk2n.data.phantom import generate_dataset
from medk2n.errors import MedK2NError
from medk2n.export.exporter import ExportOptions, export_bundle
from medk2n.models import build_model
from medk2n.train.checkpoint import save_checkpoint

ALL_BACKENDS = {"torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-tensorrt", "trt-plan"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A 32x32 tiny checkpoint, a coarse phantom case and its FP32 bundle (dynamic batch 1..2)."""
    root = tmp_path_factory.mktemp("bench")
    cfg = preset("tiny")
    cfg.model.image_size = 32
    torch.manual_seed(0)
    text = torch.randn(len(cfg.model.modalities), cfg.model.text_dim)  # skips the sentence model (seconds)
    model = build_model(cfg.model, text_embeddings=text, pretrained=False)
    checkpoint = save_checkpoint(root / "ckpt", model, cfg, {"step": 0})
    case = generate_dataset(root / "data", subjects=1, seed=0, spacing=6.0)[0]
    bundle = root / "b32"
    export_bundle(ExportOptions(checkpoint=checkpoint, out=bundle, k=2, n=4, calib=root / "data", calib_slices=2,
                                batch="1:2:2"))
    int8 = root / "b32-int8"
    export_bundle(ExportOptions(checkpoint=checkpoint, out=int8, k=2, n=4, calib=root / "data", calib_slices=2,
                                batch="1:2:2", precision="int8"))
    return {"checkpoint": checkpoint, "case": case, "bundle": bundle, "int8": int8, "root": root}


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, ["latency", *(str(a) for a in args)])


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in result.output


def test_compute_floor_is_flops_over_the_peak_of_the_bundles_precision():
    from medk2n.benchmarks.latency import add_compute_limit

    peaks, int8_peak = {"cpu": {"gflops": 100.0}}, {"gops": 400.0}
    fp32 = {"backend": "cpu (model.onnx, fp32)", "precision": "fp32", "slices_inferred": 50, "timings_s": {"infer": 4.0}}
    int8 = {**fp32, "backend": "cpu (model.int8.onnx, int8)", "precision": "int8"}
    add_compute_limit(fp32, 2.0, peaks, int8_peak)
    add_compute_limit(int8, 2.0, peaks, int8_peak)
    assert fp32["gflop"] == 100.0 and fp32["limit_s"] == pytest.approx(1.0) and fp32["infer_over_limit"] == pytest.approx(4.0)
    assert int8["limit_s"] == pytest.approx(0.25) and int8["limit_peak"] == "int8 GEMM peak"
    add_compute_limit(int8, 2.0, peaks, None)  # no INT8 peak measured: no floor rather than a wrong one
    assert int8["limit_s"] is None and int8["infer_over_limit"] is None


@pytest.mark.parametrize("text, expected", [("1,8", [1, 8]), (" 8, 1,1 ", [1, 8]), ("4", [4])])
def test_parse_batch_sizes(text, expected):
    assert parse_batch_sizes(text) == expected


@pytest.mark.parametrize("text", ["", "0", "1,,2", "a", "-1", "1.5"])
def test_parse_batch_sizes_rejects(text):
    with pytest.raises(MedK2NError, match="--batch-sizes"):
        parse_batch_sizes(text)


def test_bad_inputs_fail_in_one_line(tiny, tmp_path):
    out = tmp_path / "out"
    common = ["--batch-sizes", "1", "--out", out]
    assert_one_line_error(run("--checkpoint", tmp_path / "nope", "--bundles", tiny["bundle"], *common),
                          "nope", "checkpoint")
    assert_one_line_error(run("--checkpoint", tiny["checkpoint"], "--bundles", tmp_path, *common), str(tmp_path))
    assert_one_line_error(run("--checkpoint", tiny["checkpoint"], "--bundles", tiny["bundle"],
                              *common, "--batch-sizes", "1,x"), "--batch-sizes")
    assert_one_line_error(run("--checkpoint", tiny["checkpoint"], "--bundles", tiny["bundle"],
                              *common, "--batch-sizes", "1,4"), "batch size 4", "1..2")
    assert_one_line_error(run("--checkpoint", tiny["checkpoint"], "--bundles", tiny["bundle"], "--tag", "a/b",
                              *common), "--tag")
    assert not out.exists()


@pytest.mark.slow
def test_small_real_run_writes_every_backend(tiny, tmp_path):
    out = tmp_path / "results"
    result = run("--checkpoint", tiny["checkpoint"], "--bundles", tiny["bundle"], tiny["int8"], "--batch-sizes", "1,2",
                 "--threads", "1", "--warmup", "1", "--iters", "2", "--volume-case", tiny["case"], "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["latency.json", "latency.md", "latency.png"]
    data = json.loads((out / "latency.json").read_text())

    ran = {(r["backend"], r["batch"]) for r in data["rows"] if r["status"] == "ok"}
    assert {("torch-cpu", 1), ("torch-cpu", 2), ("ort-cpu", 1), ("ort-cpu", 2)} <= ran
    assert {r["backend"] for r in data["rows"]} | {r["backend"] for r in data["not_run"]} == ALL_BACKENDS
    assert all(r["reason"] for r in data["not_run"])
    for row in data["rows"]:
        if row["status"] != "ok":
            continue
        assert len(row["times_ms"]) == 2
        numbers = [row[k] for k in ("p50_ms", "p95_ms", "p99_ms", "slices_per_s", "peak_rss_mb", "speedup",
                                    "gflops_achieved", "peak_fraction")]
        assert all(math.isfinite(v) and v > 0 for v in numbers), row
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["peak_rss_mb"] >= row["baseline_rss_mb"]
    torch_row = next(r for r in data["rows"] if r["backend"] == "torch-cpu" and r["batch"] == 2)
    assert torch_row["speedup"] == pytest.approx(1.0)
    assert data["model"]["gflops_per_slice"] > 0 and data["peak"]["cpu"]["gflops"] > 0
    assert data["machine"]["threads"] == 1 and data["settings"]["iters"] == 2
    assert data["inputs"]["sources"] == ["t1", "t2"] and len(data["inputs"]["slice_index"]) == 2

    e2e = data["e2e"]
    assert set(e2e["timings_s"]) == {"read", "preprocess", "infer", "postprocess", "write"}
    assert 0 < e2e["slices_inferred"] <= e2e["slices"]
    assert math.isfinite(e2e["overhead_pct_of_infer"])
    one = data["e2e_one_target"]  # the same volume asking for its first target only
    assert data["dynamic_targets"] and one["slices_inferred"] == e2e["slices_inferred"]
    assert set(one["timings_s"]) == set(e2e["timings_s"])

    # A whole volume through each bundle, 2->4 and 2->1, beside its FLOPs at the measured peak.
    volumes = data["volumes"]
    assert [(v["bundle"], v["precision"], len(v["targets"])) for v in volumes] == [
        ("b32", "fp32", 4), ("b32", "fp32", 1), ("b32-int8", "int8", 4), ("b32-int8", "int8", 1)]
    assert data["int8_peak"]["gops"] > 0
    for v in volumes:
        assert v["limit_peak"] == ("int8 GEMM peak" if v["precision"] == "int8" else "cpu FP32 GEMM peak")
        assert v["limit_s"] > 0 and math.isfinite(v["infer_over_limit"]) and v["infer_over_limit"] > 0
    assert volumes[1]["gflop"] < volumes[0]["gflop"]  # one target is less work than four
    assert volumes[0]["timings_s"] == e2e["timings_s"] and volumes[1]["timings_s"] == one["timings_s"]

    md = (out / "latency.md").read_text()
    assert "## Whole volume through every bundle" in md and "| b32-int8 | int8 | 2→1 |" in md
    assert "Measured CPU INT8 peak" in md
    assert "## One target vs all targets" in md and f"| 2→1 | {data['inputs']['targets'][0]} |" in md
    for backend in ALL_BACKENDS:
        assert f"| {backend} |" in md
    assert "| pre+post+IO |" in md and "Machine: " in md
