"""INT8 as explicit Q/DQ ONNX, calibrated on real slices.

One file serves two consumers: ONNX Runtime CPU (signed int8 QDQ is the fast
form on x86 with VNNI) and TensorRT, which builds INT8 kernels from the Q/DQ
pairs in a strongly typed network. TensorRT dictates the options
(DEPLOY_NOTES.md): symmetric quantisation (all zero points 0), per-channel
weights and per-tensor activations, and no int32 bias dequantisation.

Placement (measured on the default preset, batch 8 at 256^2, ORT 1.32 CPU,
see `benchmarks/ort_probe.py`): Q/DQ goes on the *inputs* of the weighted ops
only, TensorRT's own recipe ("quantize the inputs of weighted operations, not
their outputs"). Which weighted ops:

- MatMul/Gemm with a constant weight (Hiera qkv/proj/MLP, the fusion nets):
  ORT CPU runs DQ->MatMul(->Add bias) as one MatMulIntegerToFloat, the one
  INT8 kernel that pays on CPU here (about 3x faster than the FP32 GEMMs).
- Conv with group 1 on feature maps at stride 4 and coarser (the FPN neck,
  the multi-scale and fusion nets).
- Left in float: attention's activation x activation MatMuls, depthwise
  convs and every conv of the decoder heads at half and full resolution.
  Those run 16-32 channel maps at up to 256^2 and are memory bound: ORT CPU
  only has a quantised conv for Q->Conv->Q, so quantising them adds Q/DQ
  passes over the largest tensors of the model (measured: every Conv
  quantised made INT8 slower than FP32). Elementwise ops, norms, softmax and
  the sigmoid gates stay in float as before.

The FP32 graph is quantised without ORT's pre-optimisation: that fuses the
exporter's MatMul + bias Add into Gemm, and ORT has no float-output QGemm, so
every quantised Linear would fall back to DQ + float Gemm. For the same
reason the CPU runner disables ORT's `MatMulAddFusion` on INT8 models
(`medk2n.runtime.runners.INT8_DISABLED_OPTIMIZERS`).
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
TENSORRT_QDQ_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    # Inputs of weighted ops only (TensorRT placement recommendation; fewer rounding points).
    "OpTypesToExcludeOutputQuantization": list(QDQ_OP_TYPES),
}
# Convs on maps finer than image_size / CONV_MIN_STRIDE (decoder heads) stay float.
CONV_MIN_STRIDE = 4


def quantize_int8(
    fp32: Path, dst: Path, reader: CalibrationDataReader, workdir: Path, exclude: Sequence[str] = ()
) -> None:
    """Calibrate `fp32` with `reader` (MinMax ranges) and write the QDQ model to `dst`.

    `quant_pre_process` only infers shapes here (symbolic shape inference
    fails on the Hiera graph, hence skipped; its graph optimisation is skipped
    as explained in the module docstring). The exporter's optimiser already
    folded weight transposes, so Linear weights reach their MatMul as plain
    initializers the quantiser recognises.
    """
    prepared = workdir / "int8-preprocessed.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True, skip_optimization=True)
    nodes = quantizable_nodes(onnx.load(str(prepared), load_external_data=False), set(exclude))
    quantize_static(
        str(prepared),
        str(dst),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QDQ_OP_TYPES),
        nodes_to_quantize=nodes,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options=dict(TENSORRT_QDQ_OPTIONS),
    )


def quantizable_nodes(model: onnx.ModelProto, exclude: set[str] = frozenset()) -> list[str]:
    """Names of the weighted nodes that get Q/DQ (placement policy in the module docstring)."""
    graph = model.graph
    weights = {init.name: list(init.dims) for init in graph.initializer}
    shapes = {
        value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in list(graph.value_info) + list(graph.input)
    }
    size = max((d.dim_value for value in graph.input for d in value.type.tensor_type.shape.dim[2:]), default=0)
    max_side = size // CONV_MIN_STRIDE  # the image inputs are [B, K, H, W]
    chosen = []
    for node in graph.node:
        if node.name in exclude or node.op_type not in QDQ_OP_TYPES or len(node.input) < 2:
            continue
        weight = weights.get(node.input[1])
        if weight is None:  # activation x activation (attention scores / values)
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            shape = shapes.get(node.input[0], [])
            if group != 1 or len(shape) != 4 or not 0 < max(shape[2:]) <= max_side:
                continue
        chosen.append(node.name)
    return chosen


def qdq_op_counts(path: Path) -> dict[str, dict[str, int] | int]:
    """Which weighted ops got Q/DQ and which stayed float, by op type, plus the Q/DQ node counts.

    A quantisable node left in float is either left out on purpose (see the
    module docstring) or had its weight reach it through an op the quantiser
    does not look through; the count makes both visible in the manifest.
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
