import json

import onnx
import pytest
from onnx import TensorProto, helper

from medk2n.errors import ExportError
from medk2n.export import bundle
from medk2n.manifest import Manifest, ModelFile, read_manifest, verify_bundle


def _tiny_onnx(path):
    node = helper.make_node("Identity", ["a"], ["b"])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(path))


def _manifest():
    return Manifest(
        k=2, n=4, image_size=64, modalities=["t1", "t2"],
        normalization={"t1": {"kind": "percentile", "low": 0.5, "high": 99.5},
                       "t2": {"kind": "percentile", "low": 0.5, "high": 99.5}},
        precision="fp32", models=[ModelFile(file="model.onnx", format="onnx", precision="fp32")],
        inputs=[], outputs=[], batch={"min": 1, "opt": 1, "max": 1},
    )


def test_check_target_refuses_non_empty_folder_and_files(tmp_path):
    bundle.check_target(tmp_path / "new", overwrite=False)
    (tmp_path / "empty").mkdir()
    bundle.check_target(tmp_path / "empty", overwrite=False)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(ExportError, match="not empty.*--overwrite"):
        bundle.check_target(full, overwrite=False)
    bundle.check_target(full, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="not a folder"):
        bundle.check_target(tmp_path / "file", overwrite=True)


def test_staging_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        with bundle.staging(out, overwrite=False) as stage:
            (stage / "model.onnx").write_text("partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_publish_swaps_an_old_bundle_out(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.onnx").write_text("old")
    with bundle.staging(out, overwrite=True) as stage:
        (stage / "model.onnx").write_text("new")
        bundle.publish(stage, out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    assert [p.name for p in out.iterdir()] == ["model.onnx"]


def test_write_manifest_embeds_json_and_hashes(tmp_path):
    _tiny_onnx(tmp_path / "model.onnx")
    written = bundle.write_manifest(tmp_path, _manifest())
    assert written.created and set(written.files) == {"model.onnx"}
    manifest = read_manifest(tmp_path)
    verify_bundle(tmp_path, manifest)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    embedded = json.loads(props[bundle.METADATA_KEY])
    assert embedded["files"] == {} and embedded["created"] == ""
    assert embedded["k"] == 2 and embedded["models"][0]["file"] == "model.onnx"
    bundle.embed_manifest(tmp_path / "model.onnx", _manifest())  # re-embedding replaces, never duplicates
    keys = [p.key for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props]
    assert keys.count(bundle.METADATA_KEY) == 1


def test_manifest_carries_the_trained_roles_and_reads_older_manifests(tmp_path):
    from medk2n.config import TrainConfig
    from medk2n.manifest import training_roles

    assert training_roles(TrainConfig()) == {}
    assert training_roles(TrainConfig(sources=["flair", "adc"])) == {"sources": ["flair", "adc"]}
    _tiny_onnx(tmp_path / "model.onnx")
    manifest = _manifest()
    manifest.roles = training_roles(TrainConfig(sources=["t1"], targets=["t2"]))
    bundle.write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path).roles == {"sources": ["t1"], "targets": ["t2"]}
    data = json.loads((tmp_path / "manifest.json").read_text())
    del data["roles"]  # written before roles existed
    assert Manifest.from_dict(data).roles == {}
