"""INT8 as explicit Q/DQ ONNX, calibrated on real slices.

One file serves two consumers: ONNX Runtime CPU (signed int8 QDQ is the fast
form on x86 with VNNI) and TensorRT, which builds INT8 kernels from the Q/DQ
pairs in a strongly typed network. TensorRT dictates the options
(DEPLOY_NOTES.md): symmetric quantisation (all zero points 0), per-channel
weights and per-tensor activations, and no int32 bias dequantisation.
Only the weighted ops are quantised, as TensorRT's own INT8 recipe does;
elementwise ops, norms, softmax and the sigmoid gates stay in float and are
fused around the Q/DQ pairs by the consumers.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

QDQ_OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
TENSORRT_QDQ_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}


def quantize_int8(
    fp32: Path, dst: Path, reader: CalibrationDataReader, workdir: Path, exclude: Sequence[str] = ()
) -> None:
    """Calibrate `fp32` with `reader` (MinMax ranges) and write the QDQ model to `dst`.

    `quant_pre_process` folds constants and infers shapes first (symbolic
    shape inference fails on the Hiera graph, hence skipped), so weights that
    reach a MatMul through a Transpose become plain initializers the
    quantiser recognises.
    """
    prepared = workdir / "int8-preprocessed.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QDQ_OP_TYPES),
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options=dict(TENSORRT_QDQ_OPTIONS),
    )


def qdq_op_counts(path: Path) -> dict[str, dict[str, int] | int]:
    """Which weighted ops got Q/DQ and which stayed float, by op type, plus the Q/DQ node counts.

    A quantisable node left in float usually means its weight reached it
    through an op the quantiser does not look through; the count makes that
    visible in the manifest instead of silently costing speed.
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    dequantised = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    weighted = [node for node in graph.node if node.op_type in QDQ_OP_TYPES]
    quantized = Counter(node.op_type for node in weighted if dequantised & set(node.input))
    kept_float = Counter(node.op_type for node in weighted if not dequantised & set(node.input))
    nodes = Counter(node.op_type for node in graph.node)
    return {
        "quantized": dict(sorted(quantized.items())),
        "float": dict(sorted(kept_float.items())),
        "QuantizeLinear": nodes["QuantizeLinear"],
        "DequantizeLinear": nodes["DequantizeLinear"],
    }
