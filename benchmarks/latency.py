"""`medk2n-bench latency`: every backend on the same slices, same threads, in one run.

The run, in order: load and check the checkpoint and bundles (batch sizes
inside every bundle's range), build the real-slice feed, measure the FP32
peak, time torch eager (the baseline) and each bundle on each backend and
batch in its own spawned process (`worker`), then one whole volume end to
end. Backends this machine cannot run are kept as "not run: <reason>" rows
so a CPU result never silently looks like a complete one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medk2n.benchmarks.feeds import PHANTOM_SPACING, CaseFeed, case_feed, phantom_case
from medk2n.benchmarks.machine import machine_stamp
from medk2n.benchmarks.timing import summarize
from medk2n.benchmarks.worker import (MEMORY_METHOD, Job, measure_backend, measure_end_to_end, measure_int8_gemm,
                                      measure_sgemm, run_isolated)
from medk2n.errors import BundleError, MedK2NError
from medk2n.runtime.bundle import Bundle, load_bundle

BASELINES = {"cpu": "torch-cpu", "cuda": "torch-cuda"}
OVERHEAD_STAGES = ("read", "preprocess", "postprocess", "write")
OVERHEAD_TARGET_PCT = 10.0  # DESIGN target on CPU: pre+post+IO under 10 % of infer


@dataclass
class LatencyOptions:
    checkpoint: Path
    bundles: list[Path]
    batch_sizes: list[int]
    threads: int
    warmup: int = 3
    iters: int = 20
    volume_case: Path | None = None  # None: a 1.5 mm phantom subject generated for the run
    sgemm_size: int = 2048


def parse_batch_sizes(text: str) -> list[int]:
    """"1,8" -> [1, 8]; anything else is a one-line error."""
    parts = [p.strip() for p in text.split(",")]
    if not all(re.fullmatch(r"[0-9]+", p) for p in parts) or any(int(p) < 1 for p in parts):
        raise MedK2NError(f"--batch-sizes {text!r}: expected comma-separated positive integers, e.g. 1,8")
    return sorted(set(int(p) for p in parts))


def run_latency(opts: LatencyOptions, progress: Callable[[str], None] = print) -> dict:
    """All measurements of one run as one JSON-ready dict."""
    _check_options(opts)
    cfg = _checkpoint_config(opts.checkpoint)
    bundles = _load_bundles(opts.bundles, opts.batch_sizes, list(cfg.model.modalities))
    first = bundles[0]
    with tempfile.TemporaryDirectory(prefix="medk2n-bench-") as scratch:
        case_dir = opts.volume_case or phantom_case(Path(scratch) / "phantom")
        progress(f"preparing real slices from {case_dir}")
        feed = case_feed(first, Path(case_dir), max(opts.batch_sizes + [first.batch["opt"]]))
        devices = _devices()
        peaks = {}
        for device in devices:
            progress(f"measuring the {device} FP32 peak (sgemm)")
            peaks[device] = run_isolated(measure_sgemm, opts.threads, device, opts.sgemm_size)
        jobs, not_run = plan_backends(opts.checkpoint, bundles, devices)
        rows = [row for spec in jobs for row in _measure(spec, opts, feed, progress)]
        if any(b.manifest.precision == "int8" for b in bundles):
            progress("measuring the CPU INT8 peak (onnxruntime MatMulInteger)")
            int8_peak = run_isolated(measure_int8_gemm, opts.threads, opts.sgemm_size)
        else:
            int8_peak = None
        volumes = []
        requests = [feed.targets] + ([feed.targets[:1]] if len(feed.targets) > 1 else [])
        for bundle in bundles:  # a whole volume through every bundle, all targets and the first alone
            for targets in requests:
                progress(f"end to end: {case_dir.name} through {bundle.path}, {len(feed.sources)}→{len(targets)}")
                raw = run_isolated(measure_end_to_end, bundle.path, "auto", Path(case_dir), feed.sources, targets,
                                   opts.threads, feed.feed, opts.warmup)
                volumes.append({"bundle": bundle.path.name, "precision": bundle.manifest.precision,
                                "targets": list(targets), **end_to_end_summary(raw)})
    e2e, one = volumes[0], (volumes[1] if len(requests) > 1 else None)  # the first bundle's, in request order
    gflops = model_gflops(cfg, first)
    _add_ratios(rows, peaks, gflops)
    per_request = {first.n: gflops}  # each N's FLOPs once: model_summary builds and traces the model
    for targets in requests:
        per_request.setdefault(len(targets), model_gflops(cfg, first, len(targets)))
    for volume in volumes:
        add_compute_limit(volume, per_request[len(volume["targets"])], peaks, int8_peak)
    return {
        "kind": "latency",
        "machine": machine_stamp(opts.threads),
        "settings": {"threads": opts.threads, "warmup": opts.warmup, "iters": opts.iters,
                     "batch_sizes": opts.batch_sizes, "checkpoint": str(opts.checkpoint),
                     "bundles": [str(b.path) for b in bundles]},
        "model": {"arch": cfg.model.arch, "encoder": cfg.model.encoder, "k": first.k, "n": first.n,
                  "image_size": first.image_size, "gflops_per_slice": gflops},
        "inputs": {"case": str(case_dir) if opts.volume_case else f"phantom sub-000 ({PHANTOM_SPACING} mm)",
                   "sources": feed.sources, "targets": feed.targets, "slice_index": feed.slice_index},
        "memory_method": MEMORY_METHOD,
        "peak": peaks,
        "rows": rows,
        "not_run": not_run,
        "int8_peak": int8_peak,
        "e2e": e2e,
        "e2e_one_target": one,
        "volumes": volumes,
        "dynamic_targets": first.dynamic_targets,
    }


def _check_options(opts: LatencyOptions) -> None:
    if not opts.bundles:
        raise MedK2NError("--bundles: give at least one bundle folder")
    if opts.threads < 1 or opts.iters < 1 or opts.warmup < 0:
        raise MedK2NError(f"need --threads >= 1, --iters >= 1 and --warmup >= 0 "
                          f"(got {opts.threads}, {opts.iters}, {opts.warmup})")
    if opts.volume_case is not None and not Path(opts.volume_case).is_dir():
        raise MedK2NError(f"{opts.volume_case}: --volume-case folder not found")


def _load_bundles(paths: list[Path], batch_sizes: list[int], vocabulary: list[str]) -> list[Bundle]:
    """Verified bundles of the checkpoint's vocabulary, one IO shape, accepting every requested batch size."""
    bundles = [load_bundle(p) for p in paths]
    first = bundles[0]
    for bundle in bundles:
        if bundle.modalities != vocabulary:
            raise BundleError(f"{bundle.path}: modality vocabulary {bundle.modalities} is not the checkpoint's "
                              f"{vocabulary}; was it exported from another checkpoint?")
        shape = (bundle.k, bundle.n, bundle.image_size, bundle.modalities)
        if shape != (first.k, first.n, first.image_size, first.modalities):
            raise BundleError(f"{bundle.path}: K={bundle.k}, N={bundle.n}, size {bundle.image_size} or vocabulary "
                              f"differ from {first.path}; benchmark bundles of one model together")
        lo, hi = bundle.batch["min"], bundle.batch["max"]
        outside = [b for b in batch_sizes if not lo <= b <= hi]
        if outside:
            kind = "fixed batch" if lo == hi else "dynamic batch range"
            raise BundleError(f"{bundle.path}: batch size {outside[0]} is outside the bundle's {kind} {lo}..{hi}")
    return bundles


def _checkpoint_config(checkpoint: Path):
    from medk2n.train.checkpoint import read_checkpoint_config

    return read_checkpoint_config(checkpoint)[0]


def _devices() -> list[str]:
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def plan_backends(checkpoint: Path, bundles: list[Bundle], devices: list[str]) -> tuple[list[dict], list[dict]]:
    """(what to run, what cannot run here and why): torch eager first, then each bundle's backends."""
    import onnxruntime as ort

    jobs, not_run = [], []
    providers = ort.get_available_providers()
    has_trt = importlib.util.find_spec("tensorrt") is not None

    def add(backend: str, source: Path, label: str, precision: str, reason: str | None) -> None:
        entry = {"backend": backend, "model": label, "source": str(source), "precision": precision,
                 "device": "cpu" if backend.endswith("-cpu") else "cuda"}
        if reason is None:
            jobs.append(entry)
        else:
            not_run.append({**entry, "reason": reason})

    add("torch-cpu", checkpoint, "checkpoint", "fp32", None)
    add("torch-cuda", checkpoint, "checkpoint", "fp32",
        None if "cuda" in devices else "torch.cuda.is_available() is False (no CUDA GPU or CPU-only torch)")
    for bundle in bundles:
        precision = bundle.manifest.precision
        label = bundle.path.name
        onnx = None if bundle.model("onnx", precision) else f"bundle has no {precision} ONNX model"
        for backend, provider in (("ort-cpu", "CPUExecutionProvider"), ("ort-cuda", "CUDAExecutionProvider"),
                                  ("ort-tensorrt", "TensorrtExecutionProvider")):
            missing = None if provider in providers else f"this onnxruntime has no {provider}"
            add(backend, bundle.path, label, precision, onnx or missing)
        plan = None if bundle.model("trt-plan", precision) else f"bundle has no {precision} TensorRT plan"
        add("trt-plan", bundle.path, label, precision, plan or (None if has_trt else "tensorrt is not installed"))
    return jobs, not_run


def _measure(spec: dict, opts: LatencyOptions, feed: CaseFeed, progress: Callable[[str], None]) -> list[dict]:
    """One spawned child per batch size; a GPU backend that fails to start becomes a failed row."""
    rows = []
    for batch in opts.batch_sizes:
        progress(f"{spec['backend']} {spec['model']} {spec['precision']} batch {batch}")
        job = Job(spec["backend"], Path(spec["source"]), spec["precision"], feed.batch(batch), opts.threads,
                  opts.warmup, opts.iters)
        row = {**spec, "batch": batch}
        try:
            raw = run_isolated(measure_backend, job)
        except Exception as exc:  # noqa: BLE001 - the child's error, whatever its type, becomes the row's reason
            if spec["device"] == "cpu":
                raise MedK2NError(f"{spec['backend']} on {spec['source']} failed: {_one_line(exc)}") from None
            rows.append({**row, "status": "failed", "reason": _one_line(exc)})
            continue
        rows.append({**row, "status": "ok", **summarize(raw["times_s"], batch),
                     "times_ms": [t * 1e3 for t in raw["times_s"]],
                     **{k: v for k, v in raw.items() if k != "times_s"}})
    return rows


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def model_gflops(cfg, bundle: Bundle, n: int | None = None) -> float:
    """FLOPs per slice (GFLOP) of the checkpoint's model at the bundle's K and image size, N targets (the bundle's N)."""
    from medk2n.models.summary import model_summary

    model_cfg = dataclasses.replace(cfg.model, image_size=bundle.image_size)
    return model_summary(model_cfg, k=bundle.k, n=bundle.n if n is None else n)["gflops_per_slice"]


def add_compute_limit(volume: dict, gflops_per_slice: float, peaks: dict, int8_peak: dict | None) -> None:
    """In place: the volume's inference time if every FLOP ran at the measured peak (FP32 GEMM peak; the
    INT8 GEMM peak for an INT8 bundle on CPU), and how far the measured inference is above it. A floor,
    not a forecast: no graph runs all its work as large GEMMs, and an INT8 graph keeps float parts."""
    device = "cpu" if volume["backend"].startswith("cpu") else "cuda"
    if volume["precision"] == "int8" and device == "cpu":
        rate, source = (int8_peak or {}).get("gops"), "int8 GEMM peak"
    else:
        rate, source = peaks.get(device, {}).get("gflops"), f"{device} FP32 GEMM peak"
    volume["gflop"] = volume["slices_inferred"] * gflops_per_slice
    volume["limit_s"] = volume["gflop"] / rate if rate else None
    volume["limit_peak"] = source if rate else None
    infer = volume["timings_s"].get("infer", 0.0)
    volume["infer_over_limit"] = infer / volume["limit_s"] if volume["limit_s"] else None


def _add_ratios(rows: list[dict], peaks: dict, gflops: float) -> None:
    """In place: speed-up vs torch eager on the same device and batch, GFLOP/s achieved and share of peak."""
    p50 = {(r["backend"], r["batch"]): r["p50_ms"] for r in rows if r["status"] == "ok"}
    for row in rows:
        if row["status"] != "ok":
            continue
        baseline = BASELINES[row["device"]] if (BASELINES[row["device"]], row["batch"]) in p50 else "torch-cpu"
        row["speedup_vs"] = baseline
        row["speedup"] = p50[(baseline, row["batch"])] / row["p50_ms"]
        row["gflops_achieved"] = gflops * row["slices_per_s"]
        peak = peaks.get(row["device"])
        row["peak_fraction"] = row["gflops_achieved"] / peak["gflops"] if peak else None


def end_to_end_summary(raw: dict) -> dict:
    """Stage seconds, and read+preprocess+postprocess+write as a % of infer (target < 10 % on CPU)."""
    timings = raw["timings_s"]
    overhead = sum(timings.get(stage, 0.0) for stage in OVERHEAD_STAGES)
    infer = timings.get("infer", 0.0)
    pct = 100.0 * overhead / infer if infer > 0 else None
    return {**raw, "overhead_s": overhead, "overhead_pct_of_infer": pct, "target_pct": OVERHEAD_TARGET_PCT,
            "target_met": pct is not None and pct < OVERHEAD_TARGET_PCT}
