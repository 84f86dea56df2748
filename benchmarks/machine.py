"""Where a number came from: the machine stamp, and the machine's practical FP32 peak.

Every result file carries `machine_stamp()` so README numbers are always
quoted with their machine. The peak is measured, not looked up: the best of
a few large single-precision matrix multiplies (torch, MKL/OpenBLAS on CPU,
cuBLAS with TF32 off on GPU) on the same thread count the backends get.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import medk2n

PACKAGES = ("numpy", "torch", "onnxruntime", "onnxruntime-gpu", "tensorrt")


def machine_stamp(threads: int | None = None) -> dict:
    """CPU, cores, threads used, GPU, package versions and the UTC date."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": physical_cores(),
        "threads": threads,
        "gpu": gpu_names(),
        "os": f"{platform.system()} {platform.release()}",
        "versions": {"python": platform.python_version(), "medk2n": medk2n.__version__, **package_versions()},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def format_machine(stamp: dict) -> str:
    """One line for Markdown: `Machine: CPU (n cores, t threads used), GPU: ...; versions; date`."""
    gpu = ", ".join(stamp.get("gpu") or []) or "none"
    cores = f"{stamp.get('logical_cpus')} logical CPUs"
    if stamp.get("physical_cores"):
        cores = f"{stamp['physical_cores']} cores / {cores}"
    threads = f", {stamp['threads']} threads used" if stamp.get("threads") else ""
    versions = ", ".join(f"{k} {v}" for k, v in stamp.get("versions", {}).items())
    return f"Machine: {stamp.get('cpu')} ({cores}{threads}), GPU: {gpu}; {versions}; {stamp.get('date')}"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def physical_cores(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """Distinct (physical id, core id) pairs; None where /proc/cpuinfo does not say."""
    try:
        blocks = cpuinfo.read_text().split("\n\n")
    except OSError:
        return None
    cores = set()
    for block in blocks:
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" in fields:
            cores.add((fields.get("physical id"), fields["core id"]))
    return len(cores) or None


def gpu_names() -> list[str]:
    """`nvidia-smi` GPU names with driver and memory; empty when there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _best_seconds(call, repeats: int) -> float:
    """Shortest of `repeats` timed calls after one untimed warm-up: a peak rate wants the best case."""
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def int8_gemm_gops(threads: int, size: int = 2048, repeats: int = 5) -> dict:
    """Best-of-`repeats` rate of ONNX Runtime's CPU integer GEMM (u8 x s8 -> s32 MatMulInteger, the kernel
    behind a quantised graph's MatMulIntegerToFloat), 2*size^3 operations per multiply: the INT8 peak an
    INT8 bundle's work is bounded by, measured with the library that runs it rather than taken from a
    datasheet (whether this CPU has VNNI decides it)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-127, 128, (size, size), dtype=np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"a": rng.integers(0, 256, (size, size), dtype=np.uint8)}
    best = _best_seconds(lambda: session.run(None, feed), repeats)
    return {"device": "cpu", "gops": 2 * size**3 / best / 1e9, "size": size, "threads": threads, "repeats": repeats,
            "method": f"onnxruntime MatMulInteger u8 x s8 {size}x{size}, best of {repeats}"}


def sgemm_gflops(threads: int, device: str = "cpu", size: int = 2048, repeats: int = 5) -> dict:
    """Best-of-`repeats` FP32 GEMM rate (2*size^3 FLOPs per multiply) on `device` with `threads`."""
    import torch

    torch.set_num_threads(threads)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the FP32 peak, not TF32
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)

    def multiply() -> None:
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()  # the kernel's time, not its launch

    best = _best_seconds(multiply, repeats)
    return {"device": device, "gflops": 2 * size**3 / best / 1e9, "size": size, "threads": threads,
            "repeats": repeats, "method": f"torch.mm float32 {size}x{size}, best of {repeats}"}
