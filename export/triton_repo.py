"""A Triton Inference Server model repository from a verified bundle.

Serving many volumes beyond one workstation goes to Triton (DESIGN.md
"Scale-out"), not to a server of our own. The bundle manifest already holds
what Triton needs (tensor names, dtypes, shapes, the batch range), so the
repository is written from it alone:

    REPO/<model>/config.pbtxt             platform, max_batch_size, I/O, dynamic batching, instances
    REPO/<model>/<version>/model.onnx     (or model.plan): the bundle's file, byte for byte
    REPO/<model>/<version>/manifest.json  the bundle's manifest (and manifest.sha256): vocabulary,
                                          normalisation, hashes

`config.pbtxt` also carries the served file's sha256 and precision as model
parameters, so `medk2n-run --backend triton` can check that the server holds
exactly the model its bundle describes before it sends a slice.

The text is written by hand rather than through tritonclient's protobuf
classes: export then needs no tritonclient, and the tests parse every file
against Triton's own schema (`model_config_pb2`).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from medk2n.errors import ExportError
from medk2n.fsutil import make_temp_dir, swap_in_dir
from medk2n.manifest import MANIFEST_HASH_NAME, MANIFEST_NAME, ModelFile, TensorSpec, sha256_file
from medk2n.runtime.bundle import Bundle, load_bundle
from medk2n.runtime.triton import FILE_PARAMETER, PRECISION_PARAMETER, SHA256_PARAMETER

# bundle model format -> (Triton platform, the file name Triton's backend loads by default)
PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "trt-plan": ("tensorrt_plan", "model.plan")}
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64"}
KINDS = ("gpu", "cpu")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class TritonOptions:
    bundle: Path
    out: Path
    model_name: str = "medk2n"
    version: int = 1
    format: str = "onnx"  # onnx | trt-plan
    precision: str | None = None  # default: the manifest's
    kind: str = "gpu"  # instance group: gpu | cpu
    instances: int = 1
    max_queue_delay_us: int = 2000
    overwrite: bool = False


def write_repository(options: TritonOptions) -> Path:
    """Write REPO/<model>/ whole or not at all; returns that folder."""
    _check_options(options)
    bundle = load_bundle(options.bundle)
    precision = options.precision or bundle.manifest.precision
    model = bundle.model(options.format, precision)
    if model is None:
        have = bundle.precisions(options.format)
        raise ExportError(f"{bundle.path}: no {options.format} model at precision {precision} "
                          f"(bundle has: {', '.join(have) if have else 'none'})")
    if model.format == "trt-plan" and options.kind == "cpu":
        raise ExportError("a TensorRT plan runs on a GPU only: use --kind gpu, or --format onnx for CPU instances")
    text = model_config(bundle, model, options)
    final = options.out / options.model_name
    if final.exists() and not options.overwrite:
        raise ExportError(f"{final}: already exists (use --overwrite to replace it)")
    options.out.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(options.out, options.model_name, ".tmp")
    try:
        version = tmp / str(options.version)
        version.mkdir()
        served = version / PLATFORMS[model.format][1]
        shutil.copyfile(bundle.model_path(model), served)
        if sha256_file(served) != bundle.sha256(model):
            raise ExportError(f"{served}: the copy of {model.file} does not match the manifest's sha256")
        for name in (MANIFEST_NAME, MANIFEST_HASH_NAME):  # bundles older than manifest.sha256 have none
            if (bundle.path / name).exists():
                shutil.copyfile(bundle.path / name, version / name)
        (tmp / "config.pbtxt").write_text(text)
        swap_in_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _check_options(options: TritonOptions) -> None:
    if not NAME_PATTERN.fullmatch(options.model_name):
        raise ExportError(f"model name {options.model_name!r}: use letters, digits, '_', '.' or '-'")
    if options.format not in PLATFORMS:
        raise ExportError(f"format {options.format!r}: choose from {', '.join(PLATFORMS)}")
    if options.kind not in KINDS:
        raise ExportError(f"instance kind {options.kind!r}: choose from {', '.join(KINDS)}")
    if options.version < 1 or options.instances < 1 or options.max_queue_delay_us < 0:
        raise ExportError("version and instances must be >= 1 and the queue delay >= 0")


def batch_settings(bundle: Bundle) -> tuple[int, list[int]]:
    """(max_batch_size, preferred batch sizes) from the bundle's batch range.

    Triton's batcher hands the model any batch from 1 to max_batch_size, so a
    graph exported for exactly B > 1 rows cannot take part; one fixed at 1 can
    (every request is then its own batch)."""
    lo, opt, hi = bundle.batch["min"], bundle.batch["opt"], bundle.batch["max"]
    if lo == hi and hi > 1:
        raise ExportError(f"{bundle.path}: the graph takes exactly {hi} rows, but Triton's dynamic batcher sends "
                          f"1..{hi}: re-export the bundle with a batch range, e.g. --batch 1:{hi}:{hi}")
    return hi, sorted({opt, hi})


def model_config(bundle: Bundle, model: ModelFile, options: TritonOptions) -> str:
    """config.pbtxt text: tensors as the manifest declares them, batch dimension dropped."""
    max_batch, preferred = batch_settings(bundle)
    platform = PLATFORMS[model.format][0]
    lines = [
        f"# Written by medk2n-export triton from {bundle.path.name}/{model.file} ({model.precision}).",
        f'name: "{options.model_name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        "input [",
        ",\n".join(_tensor(spec) for spec in bundle.manifest.inputs),
        "]",
        "output [",
        ",\n".join(_tensor(spec) for spec in bundle.manifest.outputs),
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
        f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
        "}",
        f"instance_group [ {{ count: {options.instances} kind: KIND_{options.kind.upper()} }} ]",
        _parameter(SHA256_PARAMETER, bundle.sha256(model)),
        _parameter(PRECISION_PARAMETER, model.precision),
        _parameter(FILE_PARAMETER, model.file),
    ]
    return "\n".join(lines) + "\n"


def _tensor(spec: TensorSpec) -> str:
    if spec.dtype not in TRITON_DTYPES:
        raise ExportError(f"tensor {spec.name!r}: dtype {spec.dtype} has no Triton type here")
    dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in spec.shape[1:])
    return f'  {{ name: "{spec.name}" data_type: {TRITON_DTYPES[spec.dtype]} dims: [ {dims} ] }}'


def _parameter(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
