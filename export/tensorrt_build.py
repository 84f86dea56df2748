"""TensorRT plan from the bundle's FP32/FP16/QDQ ONNX, as a strongly typed network.

TensorRT 11 removed the builder precision flags and INT8 calibrators; the
precision of every layer comes from the network itself (FP16 tensors from the
FP16 ONNX, INT8 from explicit Q/DQ). TensorRT 10 needs the STRONGLY_TYPED
creation flag for that, TensorRT 11 is always strongly typed. `tensorrt` and
`cuda-python` are imported only when a plan is built; the pure functions
below (profile shapes, plan names, timing-cache keys) are what the tests exercise on
machines without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from medk2n.errors import ExportError
from medk2n.export.spec import INPUT_NAMES, GraphSpec

TRT_MISSING = "TensorRT engine build needs the [trt] extra (pip install medk2n[trt]) and an NVIDIA GPU"
WORKSPACE_BYTES = 4 << 30
OPTIMIZATION_LEVEL = 3  # TensorRT's default; 4-5 search longer for little gain on convs/attention

Shape = tuple[int, ...]


@dataclass(frozen=True)
class BuildTarget:
    """What a plan is tied to: rebuild when either changes."""

    trt_version: str
    compute_capability: str  # "8.9"


def require_tensorrt() -> ModuleType:
    """The `tensorrt` module, or ExportError before any expensive work when it or a GPU is missing."""
    try:
        import tensorrt
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise ExportError(TRT_MISSING) from None
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        raise ExportError(f"{TRT_MISSING}; no CUDA device is visible")
    return tensorrt


def build_target(trt: ModuleType, device: int = 0) -> BuildTarget:
    from cuda.bindings import runtime as cudart

    attrs = cudart.cudaDeviceAttr
    _, major = cudart.cudaDeviceGetAttribute(attrs.cudaDevAttrComputeCapabilityMajor, device)
    _, minor = cudart.cudaDeviceGetAttribute(attrs.cudaDevAttrComputeCapabilityMinor, device)
    return BuildTarget(trt_version=trt.__version__, compute_capability=f"{major}.{minor}")


def profile_shapes(spec: GraphSpec) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape of every input for the optimisation profile, from the batch range and,
    for a graph with a target axis, 1..N targets (optimised for N)."""
    fewest = 1 if spec.dynamic_targets else spec.n
    lo, opt, hi = (spec.shapes(b, t) for b, t in ((spec.batch.min, fewest), (spec.batch.opt, spec.n),
                                                   (spec.batch.max, spec.n)))
    return {name: (tuple(lo[name]), tuple(opt[name]), tuple(hi[name])) for name in INPUT_NAMES}


def plan_filename(precision: str, target: BuildTarget) -> str:
    """`model.fp16.sm89.trt10.13.0.35.plan`: the name says which GPU and TensorRT it runs on."""
    sm = target.compute_capability.replace(".", "")
    return f"model.{precision}.sm{sm}.trt{target.trt_version}.plan"


def timing_cache_path(cache_dir: Path, target: BuildTarget) -> Path:
    """Timing caches are valid per GPU architecture and TensorRT version only."""
    sm = target.compute_capability.replace(".", "")
    return Path(cache_dir) / f"timing.sm{sm}.trt{target.trt_version}.cache"


def default_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "medk2n" / "tensorrt"


def network_flags(trt: ModuleType) -> int:
    """STRONGLY_TYPED on TensorRT 10; TensorRT 11 is always strongly typed (flag removed)."""
    if int(trt.__version__.split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def build_plan(trt: ModuleType, onnx_path: Path, plan_path: Path, spec: GraphSpec, cache_path: Path) -> None:
    """Parse, configure (workspace, optimisation level, profile, timing cache), build, save."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0) if parser.num_errors else "unknown parser error"
        raise ExportError(f"{onnx_path}: TensorRT cannot parse the model: {first}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.builder_optimization_level = OPTIMIZATION_LEVEL
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes(spec).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    plan_path.write_bytes(bytes(serialized))
    _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))


def _write_atomic(path: Path, data: bytes) -> None:
    """The timing cache is shared by every build on this machine: never leave a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
