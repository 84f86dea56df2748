"""FP16 ONNX from the FP32 graph: half-precision compute, FP32 inputs/outputs and fragile ops.

Uses ONNX Runtime's copy of the converter (`onnxruntime.transformers.float16`)
rather than onnxconverter-common's: on our graphs the latter flips the target
type of `Cast` nodes to FP16 without updating the recorded value types (the
exporter's `one_hot(...).to(float)`), which ONNX Runtime then refuses to load.

Inputs and outputs stay FP32 (`keep_io_types`) so the runtime feeds the same
arrays to every precision. Ops that overflow or lose too much in FP16 stay
FP32: LayerNormalization after attention overflows in SAM-family encoders
(its variance sums squares), Softmax/Exp overflow for large logits, and the
reductions and powers inside norms and the quality/gate statistics lose the
small differences the hard gates compare (DEPLOY_NOTES.md "FP16").
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.transformers import float16
from onnxruntime.transformers.onnx_model import OnnxModel

FP16_BLOCK_OPS = (
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Exp",
    "Erf",
)


def convert_fp16(src: Path, dst: Path) -> None:
    """Write the FP16 version of the ONNX model at `src` to `dst`."""
    model = onnx.load(str(src))
    blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_BLOCK_OPS))
    converted = OnnxModel(float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked))
    # The converter appends its input casts after their consumers and leaves the
    # exporter's value types as they were; ONNX Runtime tolerates both, onnx.checker
    # and TensorRT's parser do not. Sort, and let shape inference retype everything.
    converted.topological_sort()
    del converted.model.graph.value_info[:]
    onnx.save(onnx.shape_inference.infer_shapes(converted.model, strict_mode=True), str(dst))
