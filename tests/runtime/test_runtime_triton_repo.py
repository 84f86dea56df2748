"""`medk2n-export triton`: a Triton model repository from a bundle, checked against Triton's own schema.

Kept beside the runtime tests: it is written from a bundle alone (no torch)
and uses the runtime's fake bundles; every config.pbtxt is parsed with
tritonclient's `model_config_pb2`, as Triton itself parses it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from runtime_fixtures import make_bundle
from tritonclient.grpc import model_config_pb2 as pb

from medk2n.errors import ExportError
from medk2n.export.cli import triton_cli
from medk2n.export.triton_repo import TritonOptions, write_repository
from medk2n.manifest import sha256_file


def parse(folder: Path) -> pb.ModelConfig:
    return text_format.Parse((folder / "config.pbtxt").read_text(), pb.ModelConfig())


def test_onnx_repository_matches_the_manifest(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", k=2, n=4, size=32, target_axis=True,
                         batch={"min": 1, "opt": 4, "max": 8}, source_check=True)
    folder = write_repository(TritonOptions(bundle=bundle, out=tmp_path / "repo", kind="cpu", instances=2))
    config = parse(folder)
    assert config.name == "medk2n" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    dims = {t.name: (t.data_type, list(t.dims)) for t in [*config.input, *config.output]}
    assert dims == {"x": (pb.TYPE_FP32, [2, 32, 32]), "src": (pb.TYPE_INT64, [2]), "tgt": (pb.TYPE_INT64, [-1]),
                    "avail": (pb.TYPE_FP32, [2]), "images": (pb.TYPE_FP32, [-1, 32, 32]),
                    "scale": (pb.TYPE_FP32, [-1, 32, 32]), "source_check": (pb.TYPE_FP32, [2])}
    (group,) = config.instance_group
    assert group.kind == pb.ModelInstanceGroup.KIND_CPU and group.count == 2
    assert config.parameters["medk2n_sha256"].string_value == sha256_file(bundle / "model.onnx")
    assert config.parameters["medk2n_precision"].string_value == "fp32"
    assert (folder / "1" / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()
    assert (folder / "1" / "manifest.json").read_bytes() == (bundle / "manifest.json").read_bytes()


def test_plan_repository_and_fixed_n_graph(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", k=2, n=3, plan=True, batch={"min": 1, "opt": 2, "max": 2})
    folder = write_repository(TritonOptions(bundle=bundle, out=tmp_path / "repo", format="trt-plan",
                                            model_name="k2n3", version=3))
    config = parse(folder)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 2
    assert list(config.dynamic_batching.preferred_batch_size) == [2]
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert {t.name: list(t.dims) for t in config.output}["images"] == [3, 32, 32]
    assert (folder / "3" / "model.plan").exists() and folder.name == "k2n3"


def test_a_graph_fixed_at_one_row_is_served_one_row_per_batch(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", batch={"min": 1, "opt": 1, "max": 1})
    config = parse(write_repository(TritonOptions(bundle=bundle, out=tmp_path / "repo")))
    assert config.max_batch_size == 1 and list(config.dynamic_batching.preferred_batch_size) == [1]
    assert [list(t.dims) for t in config.input][0] == [2, 32, 32]


@pytest.mark.parametrize("change, message", [
    ({"batch": {"min": 4, "opt": 4, "max": 4}}, "re-export the bundle with a batch range"),
    ({"format": "trt-plan"}, "no trt-plan model at precision fp32"),
    ({"precision": "int8"}, "no onnx model at precision int8"),
    ({"kind": "cpu", "format": "trt-plan", "plan": True}, "a TensorRT plan runs on a GPU only"),
    ({"model_name": "../x"}, "model name '../x'"),
])
def test_what_cannot_be_served_is_refused_with_nothing_written(tmp_path: Path, change: dict, message: str) -> None:
    bundle = make_bundle(tmp_path / "bundle", batch=change.pop("batch", None), plan=change.pop("plan", False))
    out = tmp_path / "repo"
    with pytest.raises(ExportError, match=message.replace("(", r"\(")):
        write_repository(TritonOptions(bundle=bundle, out=out, **change))
    assert not out.exists() or not any(out.iterdir())


def test_cli_verb_writes_the_repository_and_keeps_an_existing_model(tmp_path: Path, bundle_dir: Path) -> None:
    out = tmp_path / "repo"
    first = CliRunner().invoke(triton_cli, [str(bundle_dir), "--out", str(out), "--kind", "cpu"])
    assert first.exit_code == 0, first.output
    assert "medk2n/config.pbtxt" in first.output and "medk2n/1/model.onnx" in first.output
    again = CliRunner().invoke(triton_cli, [str(bundle_dir), "--out", str(out)])
    assert again.exit_code == 2 and again.stderr.strip() == f"error: {out / 'medk2n'}: already exists (use --overwrite to replace it)"
    assert parse(out / "medk2n").instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    replaced = CliRunner().invoke(triton_cli, [str(bundle_dir), "--out", str(out), "--overwrite"])
    assert replaced.exit_code == 0 and parse(out / "medk2n").instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert sorted(p.name for p in out.iterdir()) == ["medk2n"]  # no temporary folder left behind


def test_console_entry_dispatches_the_triton_verb(tmp_path: Path, bundle_dir: Path) -> None:
    from medk2n.export.cli import main

    with pytest.raises(SystemExit) as done:
        main(["triton", str(bundle_dir), "--out", str(tmp_path / "repo")])
    assert done.value.code == 0 and (tmp_path / "repo" / "medk2n" / "config.pbtxt").exists()
