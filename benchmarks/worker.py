"""Measurements that run in a fresh spawned process, one backend and batch each.

A fresh `spawn` child per measurement keeps backends from sharing threads,
allocators or caches, and makes peak memory honest: the child's VmHWM (peak
resident set of its address space) covers only the interpreter, the
libraries that backend needs and what it allocated. ORT children never
import torch. The baseline (VmRSS after imports, before the model is
loaded) is reported too, so the model's own share is visible.
"""

from __future__ import annotations

import importlib
import multiprocessing
import resource
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

MEMORY_METHOD = ("peak RSS (VmHWM) of a fresh spawned process that loaded only this backend and ran only this "
                 "batch size; includes the Python interpreter and the backend's libraries")
# Imported before the baseline RSS is read, so the baseline is "libraries loaded, no model yet".
BACKEND_MODULES = {
    "torch": ("torch", "medk2n.models.runner", "medk2n.train.checkpoint"),
    "ort": ("onnxruntime", "medk2n.runtime.backends", "medk2n.runtime.bundle"),
}
ORT_BACKENDS = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-tensorrt": "tensorrt", "trt-plan": "trt-plan"}


@dataclass(frozen=True)
class Job:
    """One backend on one batch: what the child loads, feeds and how often."""

    backend: str  # torch-cpu | torch-cuda | ort-cpu | ort-cuda | ort-tensorrt | trt-plan
    source: Path  # checkpoint folder (torch-*) or bundle folder
    precision: str
    feed: dict[str, np.ndarray]
    threads: int
    warmup: int
    iters: int


def run_isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """Call `fn(*args)` in a fresh spawned process and return its result (exceptions re-raised here)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def measure_backend(job: Job) -> dict:
    """Child: load the backend, time it through the runner interface, report memory."""
    from medk2n.benchmarks.timing import time_runner

    family = "torch" if job.backend.startswith("torch-") else "ort"
    for module in BACKEND_MODULES[family]:
        importlib.import_module(module)
    baseline = _vm_mb("VmRSS")
    runner = _torch_runner(job) if family == "torch" else _ort_runner(job)
    with runner:
        times = time_runner(runner, job.feed, job.warmup, job.iters)
        providers = runner.providers
    result = {"times_s": times, "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(), "providers": providers}
    if job.backend == "torch-cuda":
        import torch

        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _torch_runner(job: Job):
    import torch

    from medk2n.models.runner import TorchRunner
    from medk2n.train.checkpoint import load_checkpoint

    torch.set_num_threads(job.threads)
    device = job.backend.removeprefix("torch-")
    model, _, _ = load_checkpoint(job.source, device=device)
    return TorchRunner(model, device=device, name=job.backend)


def _ort_runner(job: Job):
    from medk2n.runtime.backends import backend_chain, make_runner
    from medk2n.runtime.bundle import load_bundle

    bundle = load_bundle(job.source)
    choice = backend_chain(ORT_BACKENDS[job.backend], bundle, job.precision)[0]
    return make_runner(choice, bundle, threads=job.threads)


def measure_sgemm(threads: int, device: str, size: int) -> dict:
    """Child: the machine's practical FP32 peak on `threads` threads."""
    from medk2n.benchmarks.machine import sgemm_gflops

    return sgemm_gflops(threads, device, size)


def measure_int8_gemm(threads: int, size: int) -> dict:
    """Child: the machine's practical INT8 GEMM peak in ONNX Runtime on `threads` threads."""
    from medk2n.benchmarks.machine import int8_gemm_gops

    return int8_gemm_gops(threads, size)


def measure_end_to_end(bundle: Path, backend: str, case_dir: Path, sources: list[str], targets: list[str],
                       threads: int, warm_feed: dict[str, np.ndarray], warmup: int) -> dict:
    """Child: one whole case through `run_cases` (read/preprocess/infer/postprocess/write), runner warmed first."""
    from medk2n.runtime.pipeline import run_cases
    from medk2n.runtime.synthesizer import Synthesizer

    with Synthesizer(bundle, backend=backend, threads=threads) as synth, \
            tempfile.TemporaryDirectory(prefix="medk2n-bench-e2e-") as out:
        warm = {name: array[:synth.batch_size] for name, array in warm_feed.items()}
        for _ in range(warmup):
            synth.runner.infer(warm)
        report = run_cases(synth, [case_dir], sources, targets, Path(out), raise_errors=True)[0]
        choice = synth.choice
        return {"backend": f"{choice.backend} ({choice.model.file}, {choice.model.precision})", "providers": synth.runner.providers,
                "batch_size": synth.batch_size, "slices": report.slices, "slices_inferred": report.slices_inferred,
                "timings_s": dict(report.timings), "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """VmHWM of this process (exec resets it, unlike ru_maxrss); ru_maxrss where /proc is absent."""
    peak = _vm_mb("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _vm_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
