"""The exporter: checkpoint -> verified bundle, one function per format.

Like ultralytics' exporter, the formats are a table and every format step
runs through one wrapper that times it and turns any tool failure into a
one-line ExportError naming the step. Every request is validated, and a
missing TensorRT detected, before the first expensive step. FP32 ONNX is
always built and checked against PyTorch first; FP16 and INT8 are derived
from it and checked against it; a TensorRT plan is built from the ONNX of the
requested precision.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import onnx
import onnxruntime
import onnxscript
import torch

import medk2n
from medk2n.errors import ExportError, MedK2NError
from medk2n.export import bundle, calibration, check_threshold, conformal, precision, quantize, tensorrt_build, verify
from medk2n.export.calibration import SampleSet
from medk2n.export.onnx_export import check_onnx, export_onnx
from medk2n.export.source import Source, load_source
from medk2n.export.spec import DEFAULT_OPSET, ENGINES, PRECISIONS, SOURCE_CHECK, GraphSpec, parse_batch
from medk2n.export.wrapper import prepare_for_export
from medk2n.manifest import Manifest, ModelFile, training_roles
from medk2n.models.medk2n import has_source_check
from medk2n.runtime.bundle import Bundle

CALIB_SEED = 0
EVAL_SEED = 1


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: Path
    out: Path
    k: int
    n: int
    engine: str = "onnx"
    precision: str = "fp32"
    size: int | None = None  # None: the checkpoint's image_size
    calib: Path | None = None  # None: phantom subjects generated on the fly
    heldout: Path | None = None  # subjects for the conformal calibration (None: --calib's untrained ones)
    calib_tasks: tuple[str, ...] = ()  # "SOURCES:TARGETS" requests that get their own conformal table
    calib_slices: int = 64
    batch: str = "1"
    opset: int = DEFAULT_OPSET
    force: bool = False  # accept figures outside tolerance (recorded as failed)
    overwrite: bool = False  # replace a non-empty --out


@dataclass
class _Context:
    """What the format steps share while one bundle is being built."""

    options: ExportOptions
    source: Source
    spec: GraphSpec
    stage: Path  # becomes the bundle folder
    scratch: Path  # intermediate files, never published
    calib: SampleSet
    held_out: SampleSet
    outputs: dict[str, verify.Outputs] = field(default_factory=dict)  # "pytorch", "fp32", ...
    models: list[ModelFile] = field(default_factory=list)
    parity: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)
    uncertainty: dict = field(default_factory=dict)
    check: dict = field(default_factory=dict)  # the source check's fitted thresholds (export.check_threshold)
    requests: list = field(default_factory=list)  # parsed --calib-task requests
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return calibration.batch_size(self.spec.batch)


@dataclass
class ExportResult:
    path: Path
    manifest: Manifest
    timings: dict[str, float]


def _export_fp32(ctx: _Context, path: Path) -> None:
    vocab = len(ctx.source.config.model.modalities)
    graph, reference = prepare_for_export(ctx.source.model, ctx.spec)
    ctx.outputs["pytorch"] = verify.run_torch(reference, ctx.held_out, ctx.batch)
    export_onnx(graph, ctx.spec, vocab, path)
    ctx.outputs["fp32"] = _check_and_run(path, ctx)
    ctx.parity["fp32"] = verify.fp32_parity(ctx.outputs["pytorch"], ctx.outputs["fp32"])
    if ctx.spec.dynamic_targets:
        # The target axis is symbolic: check the graph at one target too, against PyTorch and
        # against the first column of its own N-target answer (targets never mix).
        one = verify.first_target(ctx.held_out)
        single = verify.run_onnx(path, one, ctx.batch)
        result = verify.fp32_parity(verify.run_torch(reference, one, ctx.batch), single)
        # The source check reads the sources only: it must not change with the target count.
        first = {k: v if k == SOURCE_CHECK else v[:, :1] for k, v in ctx.outputs["fp32"].items()}
        result["vs_first_of_n"] = verify.fp32_parity(first, single)
        result["passed"] = result["passed"] and result["vs_first_of_n"]["passed"]
        ctx.parity["fp32"]["one_target"] = result
        ctx.parity["fp32"]["passed"] = ctx.parity["fp32"]["passed"] and result["passed"]
    ctx.accuracy["psnr_db"]["fp32"] = verify.figure(verify.masked_psnr(ctx.outputs["fp32"], ctx.held_out))
    verify.gate(ctx.parity["fp32"], "FP32 ONNX vs PyTorch", ctx.options.force)


def _export_fp16(ctx: _Context, path: Path) -> None:
    precision.convert_fp16(ctx.stage / FORMATS["fp32"].file, path)
    ctx.outputs["fp16"] = _check_and_run(path, ctx)
    ctx.parity["fp16"] = verify.fp16_parity(ctx.outputs["fp32"], ctx.outputs["fp16"], ctx.held_out)
    ctx.accuracy["psnr_db"]["fp16"] = verify.figure(verify.masked_psnr(ctx.outputs["fp16"], ctx.held_out))
    verify.gate(ctx.parity["fp16"], "FP16 ONNX vs FP32 ONNX", ctx.options.force)


def _export_int8(ctx: _Context, path: Path) -> None:
    # Calibration keeps every intermediate tensor of a batch: at 256^2 the default preset needs
    # over 20 GiB at batch 8, so calibrate at the smallest batch the graph takes (same ranges).
    reader = calibration.FeedReader(ctx.calib.feeds, ctx.spec.batch.min)
    quantize.quantize_int8(ctx.stage / FORMATS["fp32"].file, path, reader, ctx.scratch)
    ctx.outputs["int8"] = _check_and_run(path, ctx)
    ctx.parity["int8"] = {"reference": "onnx-fp32", **verify.compare(ctx.outputs["fp32"], ctx.outputs["int8"])}
    fp32_db = verify.masked_psnr(ctx.outputs["fp32"], ctx.held_out)
    int8_db = verify.masked_psnr(ctx.outputs["int8"], ctx.held_out)
    scale = verify.scale_agreement(ctx.outputs["fp32"], ctx.outputs["int8"], ctx.held_out)
    check = verify.check_agreement(ctx.outputs["fp32"], ctx.outputs["int8"], ctx.held_out)
    result = verify.int8_drop(fp32_db, int8_db, scale, check)
    result["quantized_ops"] = quantize.qdq_op_counts(path)
    result["calibration"] = {
        "slices": len(ctx.calib),
        "method": "MinMax",
        "source_modalities": calibration.source_coverage(ctx.calib, ctx.source.config.model.modalities),
    }
    ctx.accuracy["psnr_db"]["int8"] = verify.figure(int8_db)
    ctx.accuracy["int8"] = result
    verify.gate(result, "INT8 quality drop vs FP32", ctx.options.force)


def _check_and_run(path: Path, ctx: _Context) -> verify.Outputs:
    """onnx.checker, shape inference and the I/O contract, then run on the held-out slices (finite outputs)."""
    check_onnx(path, ctx.spec)
    outputs = verify.run_onnx(path, ctx.held_out, ctx.batch)
    verify.check_finite(outputs, str(path.name))
    return outputs


@dataclass(frozen=True)
class _Format:
    file: str
    build: Callable[[_Context, Path], None]


FORMATS: dict[str, _Format] = {
    "fp32": _Format("model.onnx", _export_fp32),
    "fp16": _Format("model.fp16.onnx", _export_fp16),
    "int8": _Format("model.int8.onnx", _export_int8),
}


@contextmanager
def _step(timings: dict[str, float], name: str) -> Iterator[None]:
    """Time a step; any failure that is not already ours becomes one ExportError line naming it."""
    start = time.perf_counter()
    try:
        yield
    except MedK2NError:
        raise
    except Exception as exc:  # noqa: BLE001 - tools fail in many ways; the user needs the step and the message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"{name} failed: {type(exc).__name__}: {first}") from exc
    finally:
        timings[name] = round(time.perf_counter() - start, 3)


def _validate(options: ExportOptions) -> None:
    if options.engine not in ENGINES:
        raise ExportError(f"--engine {options.engine!r}: choose one of {', '.join(ENGINES)}")
    if options.precision not in PRECISIONS:
        raise ExportError(f"--precision {options.precision!r}: choose one of {', '.join(PRECISIONS)}")
    if options.calib_slices < 1:
        raise ExportError(f"--calib-slices {options.calib_slices}: must be at least 1")
    if options.calib_tasks and options.heldout is None and options.calib is None:
        raise ExportError("--calib-task needs held-out subjects: give --heldout or --calib")


def export_bundle(options: ExportOptions, progress: Callable[[str], None] = lambda _: None) -> ExportResult:
    """Export `options.checkpoint` to a verified bundle at `options.out` (atomically)."""
    _validate(options)
    batch = parse_batch(options.batch)
    trt = tensorrt_build.require_tensorrt() if options.engine == "trt" else None
    bundle.check_target(options.out, options.overwrite)
    progress(f"loading checkpoint {options.checkpoint}")
    source = load_source(options.checkpoint, options.k, options.n)
    spec = GraphSpec(options.k, options.n, options.size or source.config.model.image_size, batch, options.opset,
                     source_check=has_source_check(source.model))
    requests = [conformal.parse_task(text, list(source.config.model.modalities), options.k, options.n,
                                     training_roles(source.config.train)) for text in options.calib_tasks]
    with tempfile.TemporaryDirectory(prefix="medk2n-export-") as scratch, bundle.staging(
        options.out, options.overwrite
    ) as stage:
        ctx = _prepare_context(options, source, spec, stage, Path(scratch), progress)
        ctx.requests = requests
        steps = ["fp32"] if options.precision == "fp32" else ["fp32", options.precision]
        for name in steps:
            progress(f"exporting onnx-{name}")
            fmt = FORMATS[name]
            with _step(ctx.timings, f"onnx-{name}"):
                fmt.build(ctx, stage / fmt.file)
            ctx.models.insert(0, ModelFile(file=fmt.file, format="onnx", precision=name))
        with _step(ctx.timings, "conformal"):
            ctx.uncertainty = _calibrate_uncertainty(ctx, progress)
        if spec.source_check:
            with _step(ctx.timings, "check-threshold"):
                ctx.check = _calibrate_check(ctx, progress)
        if trt is not None:
            progress("building TensorRT plan")
            with _step(ctx.timings, "trt-plan"):
                ctx.models.insert(0, _build_trt(trt, ctx))
        manifest = bundle.write_manifest(stage, _manifest(ctx))
        bundle.publish(stage, options.out, options.overwrite)
    return ExportResult(Path(options.out), manifest, ctx.timings)


def _prepare_context(
    options: ExportOptions, source: Source, spec: GraphSpec, stage: Path, scratch: Path, progress
) -> _Context:
    progress("preparing slices" + (f" from {options.calib}" if options.calib else " from phantom subjects"))
    timings: dict[str, float] = {}
    with _step(timings, "slices"):
        calib_pool, held_pool = calibration.load_pools(
            source.config.model, spec.size, options.calib, options.calib_slices
        )
    roles, vocab = training_roles(source.config.train), list(source.config.model.modalities)
    held_out = calibration.draw_samples(held_pool, spec, EVAL_SEED, roles, vocab)
    ctx = _Context(
        options=options,
        source=source,
        spec=spec,
        stage=stage,
        scratch=scratch,
        calib=calibration.draw_samples(calib_pool, spec, CALIB_SEED, roles, vocab),
        held_out=held_out,
        timings=timings,
    )
    ctx.parity["slices"] = len(held_out)
    ctx.accuracy.update(
        metric="brain-masked PSNR vs ground truth (dB), mean over held-out slices and targets",
        slices=len(held_out),
        data=Path(options.calib).name if options.calib else "phantom",
        psnr_db={},
    )
    return ctx


def _held_out(ctx: _Context, without: str, progress: Callable[[str], None]) -> tuple[Bundle, list, str] | None:
    """(the staged bundle, the held-out cases, where they came from) for the steps fitted on subjects the model
    never saw; None, after saying what the bundle goes `without`, when there are none."""
    options = ctx.options
    cases, origin = conformal.heldout_cases(options.heldout, options.calib, ctx.source.record.get("training", {}))
    if not cases:
        progress(f"no held-out subjects ({origin}): {without}")
        return None
    return Bundle(path=ctx.stage, manifest=_manifest(ctx), norms=dict(ctx.source.config.model.normalization)), \
        cases, origin


def _calibrate_uncertainty(ctx: _Context, progress: Callable[[str], None]) -> dict:
    """Conformal calibration on held-out subjects through the staged ONNX models (export.conformal)."""
    found = _held_out(ctx, "the bundle will write no uncertainty maps", progress)
    if found is None:
        return {}
    staged, cases, origin = found
    return conformal.calibrate(staged, cases, origin, training_roles(ctx.source.config.train), ctx.requests,
                               progress)


def _calibrate_check(ctx: _Context, progress: Callable[[str], None]) -> dict:
    """Per-contrast source-check thresholds on the same held-out subjects (export.check_threshold)."""
    found = _held_out(ctx, "the source check keeps the network's boundary, p = 0.5", progress)
    if found is None:
        return {}
    staged, cases, origin = found
    return check_threshold.calibrate_check(staged, cases, origin, training_roles(ctx.source.config.train), progress)


def _build_trt(trt: ModuleType, ctx: _Context) -> ModelFile:
    target = tensorrt_build.build_target(trt)
    name = tensorrt_build.plan_filename(ctx.options.precision, target)
    cache = tensorrt_build.timing_cache_path(tensorrt_build.default_cache_dir(), target)
    onnx_file = ctx.stage / FORMATS[ctx.options.precision].file
    tensorrt_build.build_plan(trt, onnx_file, ctx.stage / name, ctx.spec, cache)
    return ModelFile(
        file=name,
        format="trt-plan",
        precision=ctx.options.precision,
        trt_version=target.trt_version,
        compute_capability=target.compute_capability,
    )


def _versions(ctx: _Context) -> dict[str, str]:
    versions = {
        "medk2n": medk2n.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx-opset": str(ctx.spec.opset),
    }
    trt_model = next((m for m in ctx.models if m.format == "trt-plan"), None)
    if trt_model is not None:
        versions["tensorrt"] = str(trt_model.trt_version)
    return versions


def _manifest(ctx: _Context) -> Manifest:
    model_cfg = ctx.source.config.model
    return Manifest(
        k=ctx.spec.k,
        n=ctx.spec.n,
        image_size=ctx.spec.size,
        modalities=list(model_cfg.modalities),
        normalization={m: vars(model_cfg.normalization[m]).copy() for m in model_cfg.modalities},
        precision=ctx.options.precision,
        models=ctx.models,
        inputs=ctx.spec.inputs(),
        outputs=ctx.spec.outputs(),
        batch=ctx.spec.batch.as_dict(),
        parity=ctx.parity,
        accuracy=ctx.accuracy,
        versions=_versions(ctx),
        source=ctx.source.record,
        roles=training_roles(ctx.source.config.train),
        uncertainty=ctx.uncertainty,
        source_check=ctx.check,
    )
