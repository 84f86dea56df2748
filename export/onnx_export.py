"""FP32 ONNX export of the fixed-K/N graph, and the structural checks every ONNX file passes.

Uses the `torch.export`-based exporter (`dynamo=True`, the default since
torch 2.9; the TorchScript exporter is deprecated): it traces Hiera's window
partitioning and the unrolled fusion loop into one static graph and runs the
onnxscript optimiser (constant folding, dead-code removal) on the result.
"""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Iterator

import onnx
import torch

from medk2n.errors import ExportError
from medk2n.export.spec import BATCH_AXIS, INPUT_NAMES, OUTPUT_NAMES, GraphSpec
from medk2n.export.wrapper import FixedKN, example_inputs

_ONNX_DTYPES = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}


def trace_batch(spec: GraphSpec) -> int:
    """Batch of the example inputs: torch.export specialises size-1 dims, so a dynamic axis is traced at >= 2."""
    if spec.batch.fixed:
        return spec.batch.min
    return min(max(2, spec.batch.opt), spec.batch.max)


def export_onnx(graph: FixedKN, spec: GraphSpec, vocab_size: int, path: Path) -> None:
    """Write `graph` as a single-file ONNX model (weights inline, < 2 GB for every preset)."""
    args = example_inputs(spec, vocab_size, trace_batch(spec))
    dynamic_shapes = None
    if not spec.batch.fixed:
        batch = torch.export.Dim(BATCH_AXIS, min=spec.batch.min, max=spec.batch.max)
        dynamic_shapes = {name: {0: batch} for name in INPUT_NAMES}
    with _quiet_exporter():
        torch.onnx.export(
            graph,
            args,
            str(path),
            dynamo=True,
            opset_version=spec.opset,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            optimize=True,
            verbose=False,
        )


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints progress, warns per skipped fold and about deprecations; keep the CLI output ours."""
    logger = logging.getLogger("onnxscript")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def check_onnx(path: Path, spec: GraphSpec) -> None:
    """onnx.checker with strict shape inference, then the graph's I/O must be exactly the spec's."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path}: ONNX check failed: {str(exc).splitlines()[0]}") from None
    graph = onnx.load(str(path), load_external_data=False).graph
    _check_io(path, "input", graph.input, spec.inputs())
    _check_io(path, "output", graph.output, spec.outputs())


def _check_io(path: Path, kind: str, values, expected) -> None:
    got = {v.name: v for v in values}
    if sorted(got) != sorted(t.name for t in expected):
        raise ExportError(f"{path}: graph {kind}s {sorted(got)} != expected {[t.name for t in expected]}")
    for tensor in expected:
        ttype = got[tensor.name].type.tensor_type
        shape = [d.dim_param or d.dim_value for d in ttype.shape.dim]
        if ttype.elem_type != _ONNX_DTYPES[tensor.dtype] or shape != tensor.shape:
            raise ExportError(
                f"{path}: {kind} {tensor.name!r} is {onnx.TensorProto.DataType.Name(ttype.elem_type)} {shape}, "
                f"expected {tensor.dtype} {tensor.shape}"
            )
