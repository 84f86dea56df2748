"""FP16 and INT8 (QDQ, dynamic batch) bundles: gates, recorded figures, TensorRT-ready structure."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from medk2n.export import calibration, verify
from medk2n.export.exporter import export_bundle
from medk2n.export.precision import FP16_BLOCK_OPS
from medk2n.export.spec import GraphSpec, parse_batch
from medk2n.manifest import read_manifest, verify_bundle
from medk2n.runtime.bundle import load_bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fp16_bundle(make_options, tmp_path_factory):
    return export_bundle(make_options(tmp_path_factory.mktemp("fp16") / "b", precision="fp16"))


@pytest.fixture(scope="module")
def int8_bundle(make_options, tmp_path_factory):
    return export_bundle(make_options(tmp_path_factory.mktemp("int8") / "b", precision="int8", batch="1:2:4"))


def test_fp16_bundle(fp16_bundle):
    path = fp16_bundle.path
    manifest = read_manifest(path)
    verify_bundle(path, manifest)
    load_bundle(path)
    assert manifest.precision == "fp16"
    assert [(m.file, m.precision) for m in manifest.models] == [("model.fp16.onnx", "fp16"), ("model.onnx", "fp32")]
    parity = manifest.parity["fp16"]
    assert parity["passed"] and parity["reference"] == "onnx-fp32"
    assert verify.FP16_MIN_PSNR_DB <= parity["images"]["psnr_db"] < verify.PSNR_CAP_DB  # really ran in FP16
    assert np.isfinite(manifest.accuracy["psnr_db"]["fp16"])
    check = parity["source_check_agreement"]
    assert check["passed"] and check["frames"] > 0 and parity["tolerance"]["source_check_max_abs"] == 0.05


def test_fp16_graph_keeps_io_and_fragile_ops_in_fp32(fp16_bundle):
    model = onnx.load(str(fp16_bundle.path / "model.fp16.onnx"))
    graph = model.graph
    float_io = {v.name: v.type.tensor_type.elem_type for v in list(graph.input) + list(graph.output)}
    assert float_io["x"] == float_io["images"] == float_io["scale"] == float_io["source_check"] == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.value_info) + list(inferred.input)}
    blocked = [n for n in graph.node if n.op_type in FP16_BLOCK_OPS]
    assert any(n.op_type == "LayerNormalization" for n in blocked)
    for node in blocked:  # never FP16; integer inputs (the base order's comparison counts) are fine
        assert all(types.get(i, onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT16 for i in node.input if i), node.name
    sums = [n for n in blocked if n.op_type == "ReduceSum"]
    assert any(types.get(n.input[0]) == onnx.TensorProto.FLOAT for n in sums)  # float sums exist and stay FP32


def test_int8_bundle_records_quality_and_quantised_ops(int8_bundle):
    path = int8_bundle.path
    manifest = read_manifest(path)
    verify_bundle(path, manifest)
    load_bundle(path)
    assert [(m.file, m.precision) for m in manifest.models] == [("model.int8.onnx", "int8"), ("model.onnx", "fp32")]
    assert manifest.batch == {"min": 1, "opt": 2, "max": 4} and manifest.inputs[0].shape[0] == "batch"
    int8 = manifest.accuracy["int8"]
    for key in ("fp32_psnr_db", "int8_psnr_db", "drop_db"):
        assert np.isfinite(int8[key])
    assert int8["drop_db"] == pytest.approx(int8["fp32_psnr_db"] - int8["int8_psnr_db"], abs=1e-4)
    assert int8["tolerance"] == {"max_drop_db": verify.INT8_MAX_DROP_DB, **verify.SCALE_TOLERANCE,
                                 "source_check_max_abs": verify.CHECK_MAX_ABS_REDUCED}
    check = int8["source_check_agreement"]  # the tiny preset builds the source check
    assert check["passed"] and check["frames"] > 0 and 0.0 <= check["max_abs"] <= verify.CHECK_MAX_ABS_REDUCED
    assert int8["scale_agreement"]["passed"] and -1.0 <= int8["scale_agreement"]["spearman"] <= 1.0
    ops = int8["quantized_ops"]
    assert ops["quantized"].get("Conv", 0) > 0 and ops["quantized"].get("MatMul", 0) > 0
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] >= ops["QuantizeLinear"]
    assert int8["calibration"]["slices"] > 0
    assert set(int8["calibration"]["source_modalities"]) == {"t1", "t2", "flair", "pd", "dwi", "adc"}
    assert np.isfinite(manifest.parity["int8"]["images"]["psnr_db"])


def test_int8_graph_is_symmetric_qdq_without_int32_bias(int8_bundle):
    """What TensorRT needs from explicit quantisation: zero points all 0, int8 only, bias left in float."""
    graph = onnx.load(str(int8_bundle.path / "model.int8.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    assert not any(i.data_type == onnx.TensorProto.INT32 for i in graph.initializer)


def test_int8_dynamic_batch_runs_any_batch_in_range(int8_bundle, phantom_data, tiny_model):
    _, cfg = tiny_model
    spec = GraphSpec(k=2, n=4, size=64, batch=parse_batch("1:2:4"))
    _, held = calibration.load_pools(cfg.model, 64, phantom_data, calib_slices=1)
    samples = calibration.draw_samples(held, spec, seed=3)
    session = verify.onnx_session(int8_bundle.path / "model.int8.onnx")
    one = session.run(["images"], {k: v[:1] for k, v in samples.feeds.items()})[0]
    three = session.run(["images"], {k: v[:3] for k, v in samples.feeds.items()})[0]
    assert three.shape == (3, 4, 64, 64)
    np.testing.assert_allclose(three[:1], one, atol=1e-5)
