"""Choose a backend and build its runner.

`triton` sends the slices to a model on a Triton Inference Server
(runtime/triton.py); `auto` never picks it, since it needs an address.

`auto` walks the chain users expect (DESIGN.md "Runtime"): the bundle's
TensorRT plan when `tensorrt` is importable, then ONNX Runtime's TensorRT
execution provider, then CUDA, then CPU, judged from what this onnxruntime
build offers. `open_runner` activates the candidates in that order and falls
through when one cannot start (ORT lists CUDA even where the CUDA libraries
are missing), so `auto` always ends on something that runs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from medk2n.errors import BundleError, MedK2NError
from medk2n.manifest import ModelFile
from medk2n.runtime.bundle import Bundle
from medk2n.runtime.runners import INT8_DISABLED_OPTIMIZERS, OrtRunner, Provider, Runner
from medk2n.runtime.trt_plan import TrtPlanRunner, import_tensorrt
from medk2n.runtime.triton import TritonRunner, TritonServer

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda", "tensorrt", "trt-plan", "triton")
PRECISIONS = ("fp32", "fp16", "int8")
ORT_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
# FP32 references are compared without TF32 rounding (CUDA EP defaults use_tf32=1).
CUDA_OPTIONS = {"device_id": "0", "use_tf32": "0"}


# Distributions that all unpack into the one `onnxruntime` package folder.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")


def installed_ort_builds() -> list[str]:
    """The ONNX Runtime distributions installed in this environment."""
    from importlib import metadata

    found = []
    for name in ORT_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def ort_conflict_note() -> str | None:
    """One line when several ONNX Runtime builds are installed at once, else None.

    They share one folder, so whichever was installed last overwrote parts of the other: the
    GPU build next to a CPU `onnxruntime` (medk2n's [cpu] and [gpu] extras both, or another
    package's requirement) gives a runtime without CUDA that `pip check` does not flag. Say so,
    and how to keep one build."""
    builds = installed_ort_builds()
    if len(builds) < 2:
        return None
    keep = next((b for b in builds if b != "onnxruntime"), builds[0])
    return (f"{' and '.join(builds)} are installed together and overwrite each other's files (providers now: "
            f"{', '.join(ort.get_available_providers())}); keep one: "
            f"pip uninstall -y {' '.join(builds)} && pip install {keep}")


@dataclass(frozen=True)
class BackendChoice:
    backend: str  # cpu | cuda | tensorrt | trt-plan | triton
    model: ModelFile
    reason: str
    server: TritonServer | None = None  # triton only

    def describe(self) -> str:
        return f"{self.backend} ({self.model.file}, {self.model.precision}): {self.reason}"


def backend_chain(backend: str, bundle: Bundle, precision: str | None = None,
                  server: TritonServer | None = None) -> list[BackendChoice]:
    """Candidates in preference order; a named backend gives one or a clear error."""
    if backend not in BACKENDS:
        raise MedK2NError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if (backend == "triton") != (server is not None):
        raise MedK2NError("a Triton server address (--url HOST:PORT) goes with --backend triton, and only with it")
    precision = precision or bundle.manifest.precision
    if backend == "triton":
        served = bundle.model("onnx", precision) or bundle.model("trt-plan", precision) or _require(
            bundle, "onnx", precision)  # which of the bundle's files the server must hold (checked by sha256)
        return [BackendChoice("triton", served, f"model {server.model!r} on {server.url}", server)]
    if backend == "auto":
        return _auto_chain(bundle, precision)
    if backend == "trt-plan":
        import_tensorrt()
        plan = _require(bundle, "trt-plan", precision)
        return [BackendChoice("trt-plan", plan, "requested")]
    onnx = _require(bundle, "onnx", precision)
    available = ort.get_available_providers()
    if ORT_PROVIDERS[backend] not in available:
        raise MedK2NError(f"backend {backend!r} needs onnxruntime's {ORT_PROVIDERS[backend]}, which this "
                          f"onnxruntime lacks (available: {', '.join(available)}); install medk2n[gpu] "
                          "(onnxruntime-gpu) on an NVIDIA machine or use --backend cpu")
    return [BackendChoice(backend, onnx, "requested")]


def select_backend(backend: str, bundle: Bundle, precision: str | None = None) -> BackendChoice:
    """The first choice of `backend_chain` (what `auto` would try first)."""
    choice = backend_chain(backend, bundle, precision)[0]
    log.info("backend: %s", choice.describe())
    return choice


def _auto_chain(bundle: Bundle, precision: str) -> list[BackendChoice]:
    chain = []
    plan = bundle.model("trt-plan", precision)
    if plan is not None and importlib.util.find_spec("tensorrt") is not None:
        chain.append(BackendChoice("trt-plan", plan, "bundle has a TensorRT plan and tensorrt is installed"))
    onnx = bundle.model("onnx", precision)
    if onnx is not None:
        available = ort.get_available_providers()
        for backend in ("tensorrt", "cuda", "cpu"):
            if ORT_PROVIDERS[backend] in available:
                chain.append(BackendChoice(backend, onnx, f"best onnxruntime provider available ({', '.join(available)})"
                                           if not chain else f"fallback; onnxruntime offers {ORT_PROVIDERS[backend]}"))
    if not chain:
        raise BundleError(f"{bundle.path}: nothing runnable at precision {precision} (onnx: "
                          f"{bundle.precisions('onnx') or 'none'}; trt-plan: {bundle.precisions('trt-plan') or 'none'})")
    return chain


def _require(bundle: Bundle, fmt: str, precision: str) -> ModelFile:
    model = bundle.model(fmt, precision)
    if model is None:
        have = bundle.precisions(fmt)
        raise BundleError(f"{bundle.path}: no {fmt} model at precision {precision} "
                          f"(bundle has: {', '.join(have) if have else 'none'})")
    return model


def make_runner(choice: BackendChoice, bundle: Bundle, threads: int | None = None) -> Runner:
    """An inactive runner for `choice`."""
    if choice.server is not None:
        return TritonRunner(choice.server)
    path = bundle.model_path(choice.model)
    if choice.backend == "trt-plan":
        return TrtPlanRunner(path, choice.model.trt_version, choice.model.compute_capability)
    providers: list[Provider] = ["CPUExecutionProvider"]
    if choice.backend in ("cuda", "tensorrt"):
        providers.insert(0, ("CUDAExecutionProvider", dict(CUDA_OPTIONS)))
    if choice.backend == "tensorrt":
        providers.insert(0, ("TensorrtExecutionProvider", tensorrt_ep_options(bundle, choice.model)))
    # On CPU the Q/DQ graph runs on ORT's own int8 kernels; let the quantised MatMuls reach them.
    disabled = INT8_DISABLED_OPTIMIZERS if choice.backend == "cpu" and choice.model.precision == "int8" else ()
    return OrtRunner(path, providers, threads=threads, name=f"ort-{choice.backend}", disabled_optimizers=disabled)


def open_runner(chain: list[BackendChoice], bundle: Bundle, threads: int | None = None) -> tuple[Runner, BackendChoice]:
    """Activate the first candidate that starts; the last one's failure is raised."""
    for choice, fallback in zip(chain, chain[1:]):
        try:
            return _started(choice, bundle, threads), choice
        except MedK2NError as exc:
            log.warning("backend %s could not start (%s); trying %s", choice.backend, exc, fallback.backend)
    return _started(chain[-1], bundle, threads), chain[-1]


def _started(choice: BackendChoice, bundle: Bundle, threads: int | None) -> Runner:
    runner = make_runner(choice, bundle, threads)
    runner.activate()
    try:
        if isinstance(runner, TritonRunner):
            runner.check_serves(bundle, choice.model)
        if hasattr(runner, "io_signature"):
            where = runner.name if isinstance(runner, TritonRunner) else bundle.model_path(choice.model)
            check_graph_io(runner.io_signature(), bundle, where)
    except BundleError:
        runner.deactivate()
        raise
    log.info("backend: %s", choice.describe())
    return runner


def check_graph_io(signature: dict[str, tuple[str, list]], bundle: Bundle, path: Path | str) -> None:
    """The model's own inputs and outputs must be the manifest's: names, dtypes, ranks and static dims.

    A manifest that disagrees with its graph would otherwise surface as a raw ONNX Runtime error at
    the first batch, or, worse, as a wrong tensor read by name.
    """
    declared = {spec.name: spec for spec in [*bundle.manifest.inputs, *bundle.manifest.outputs]}
    if sorted(signature) != sorted(declared):
        raise BundleError(f"{path}: graph tensors {sorted(signature)} differ from the manifest's {sorted(declared)}")
    for name, (dtype, shape) in signature.items():
        spec = declared[name]
        static_ok = len(shape) == len(spec.shape) and all(
            not isinstance(a, int) or not isinstance(b, int) or a == b for a, b in zip(shape, spec.shape))
        if dtype != spec.dtype or not static_ok:
            raise BundleError(f"{path}: graph tensor {name!r} is {dtype} {shape}, the manifest says "
                              f"{spec.dtype} {spec.shape}")


def trt_cache_dir() -> Path:
    """User cache for TensorRT engines and timing caches ($XDG_CACHE_HOME/medk2n/trt)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "medk2n" / "trt"


def tensorrt_ep_options(bundle: Bundle, model: ModelFile) -> dict[str, Any]:
    """TensorRT EP options: engine + timing cache keyed by model sha256 and batch profile.

    ORT's own engine file names add the GPU and TensorRT version, so a cache
    folder per (model, profile) is enough to never load a stale engine.
    """
    batch = bundle.batch
    cache = trt_cache_dir() / f"{bundle.sha256(model)[:16]}-b{batch['min']}-{batch['opt']}-{batch['max']}"
    cache.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "device_id": "0",
        "trt_fp16_enable": str(model.precision == "fp16"),
        "trt_int8_enable": str(model.precision == "int8"),  # QDQ model: scales come from the graph, no table
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
    }
    if model.precision == "fp16":
        options["trt_layer_norm_fp32_fallback"] = "True"  # SAM2 LayerNorm overflows in FP16 (DEPLOY_NOTES)
    if not bundle.fixed_batch:
        for key in ("min", "opt", "max"):
            options[f"trt_profile_{key}_shapes"] = profile_shapes(bundle, batch[key])
    return options


def profile_shapes(bundle: Bundle, batch: int) -> str:
    """`x:BxKxHxW,src:BxK,...` for every input, batch dimension set to `batch`."""
    return ",".join(
        f"{spec.name}:" + "x".join(str(batch) if i == 0 else str(d) for i, d in enumerate(spec.shape))
        for spec in bundle.manifest.inputs
    )
