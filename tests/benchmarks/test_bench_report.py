"""latency.md / .json / .png from a fixed results dict."""

from __future__ import annotations

import json

import pytest

from medk2n.benchmarks.latency import end_to_end_summary
from medk2n.benchmarks.latency_report import latency_markdown, result_stem, write_latency
from medk2n.errors import MedK2NError

MACHINE = {"cpu": "Test CPU", "logical_cpus": 2, "physical_cores": 2, "threads": 2, "gpu": [],
           "versions": {"python": "3.11.7"}, "date": "2026-01-02T03:04:05+00:00"}


def _row(backend, model, precision, batch, p50, slices, speedup, peak_fraction):
    return {"backend": backend, "model": model, "source": f"/x/{model}", "precision": precision, "device": "cpu",
            "batch": batch, "status": "ok", "p50_ms": p50, "p95_ms": p50 * 1.5, "p99_ms": p50 * 2, "mean_ms": p50,
            "min_ms": p50, "max_ms": p50 * 2, "slices_per_s": slices, "times_ms": [p50], "baseline_rss_mb": 50.0,
            "peak_rss_mb": 123.4, "providers": ["x"], "speedup_vs": "torch-cpu", "speedup": speedup,
            "gflops_achieved": 0.5 * slices, "peak_fraction": 0.5 * slices / 100.0}


def results() -> dict:
    e2e = end_to_end_summary({
        "backend": "cpu (model.onnx, fp32)", "providers": ["CPUExecutionProvider"], "batch_size": 8,
        "slices": 100, "slices_inferred": 80, "peak_rss_mb": 300.0,
        "timings_s": {"read": 0.1, "preprocess": 0.2, "infer": 10.0, "postprocess": 0.3, "write": 0.2},
    })
    return {
        "kind": "latency", "machine": MACHINE,
        "settings": {"threads": 2, "warmup": 3, "iters": 20, "batch_sizes": [1, 8], "checkpoint": "/x/ckpt",
                     "bundles": ["/x/b32"]},
        "model": {"arch": "medk2n", "encoder": "hiera_micro", "k": 2, "n": 4, "image_size": 32,
                  "gflops_per_slice": 0.5},
        "inputs": {"case": "phantom sub-000 (1.5 mm)", "sources": ["t1", "t2"], "targets": ["flair"],
                   "slice_index": [50]},
        "memory_method": "VmHWM of a fresh child",
        "peak": {"cpu": {"device": "cpu", "gflops": 100.0, "threads": 2, "method": "torch.mm 2048"}},
        "rows": [_row("torch-cpu", "checkpoint", "fp32", 1, 20.0, 50.0, 1.0, 0.25),
                 _row("ort-cpu", "b32", "fp32", 1, 5.0, 200.0, 4.0, 1.0)],
        "not_run": [{"backend": "ort-cuda", "model": "b32", "source": "/x/b32", "precision": "fp32",
                     "device": "cuda", "reason": "this onnxruntime has no CUDAExecutionProvider"}],
        "e2e": e2e,
    }


def test_end_to_end_overhead_is_pre_post_io_over_infer():
    e2e = results()["e2e"]
    assert e2e["overhead_s"] == pytest.approx(0.8)
    assert e2e["overhead_pct_of_infer"] == pytest.approx(8.0)
    assert e2e["target_met"] is True
    slow = end_to_end_summary({**e2e, "timings_s": {**e2e["timings_s"], "write": 1.2}})
    assert slow["overhead_pct_of_infer"] == pytest.approx(18.0) and slow["target_met"] is False


def test_markdown_tables():
    md = latency_markdown(results())
    lines = md.splitlines()
    assert "| ort-cpu | b32 | fp32 | 1 | 5.00 | 7.50 | 10.00 | 200.0 | 123 | 4.00x vs torch-cpu | 100.00 | 100.0 |" in lines
    assert "| torch-cpu | checkpoint | fp32 | 1 | 20.00 | 30.00 | 40.00 | 50.0 | 123 | 1.00x vs torch-cpu | 25.00 | 25.0 |" in lines
    assert any(line.startswith("| ort-cuda | b32 | fp32 | - | not run: this onnxruntime has no CUDAExecutionProvider")
               for line in lines)
    assert "| infer | 10.000 | 100.0 |" in lines
    assert "| pre+post+IO | 0.800 | 8.0 |" in lines
    assert "Target: pre+post+IO < 10 % of infer on CPU: met." in lines
    assert lines[2].startswith("Machine: Test CPU (2 cores / 2 logical CPUs, 2 threads used), GPU: none;")
    assert "CPU 100.0 GFLOP/s" in md and "0.500 GFLOP per slice" in md
    assert "torch-cpu 50 MB" in md


def test_write_latency_with_tag(tmp_path):
    paths = write_latency(results(), tmp_path, tag="h100")
    assert [p.name for p in paths] == ["latency-h100.json", "latency-h100.md", "latency-h100.png"]
    assert json.loads(paths[0].read_text())["tag"] == "h100"
    assert paths[1].read_text().startswith("# Latency (h100)\n")
    assert paths[2].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temporaries left


def test_result_stem_rejects_path_like_tags():
    assert result_stem(None) == "latency"
    with pytest.raises(MedK2NError, match="--tag"):
        result_stem("../gpu")
