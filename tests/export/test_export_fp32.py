"""The shared K=2/N=4 FP32 bundle: manifest, hashes, metadata, one graph for every task, determinism."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from medk2n.errors import BundleError, ExportError
from medk2n.export import bundle, calibration, verify
from medk2n.export.exporter import export_bundle
from medk2n.manifest import read_manifest, sha256_file, verify_bundle
from medk2n.runtime.bundle import load_bundle

pytestmark = pytest.mark.slow


def test_manifest_describes_the_bundle(fp32_bundle, tiny_model, tiny_checkpoint):
    _, cfg = tiny_model
    path = fp32_bundle.path
    manifest = read_manifest(path)
    verify_bundle(path, manifest)
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "manifest.sha256", "model.onnx"]
    assert (manifest.k, manifest.n, manifest.image_size, manifest.precision) == (2, 4, 64, "fp32")
    assert manifest.modalities == cfg.model.modalities
    assert manifest.normalization["adc"] == {"kind": "range", "low": 0.0, "high": 4000.0, "standard": None}
    assert [(m.file, m.format, m.precision) for m in manifest.models] == [("model.onnx", "onnx", "fp32")]
    assert [t.name for t in manifest.inputs] == ["x", "src", "tgt", "avail"]
    assert [t.name for t in manifest.outputs] == ["images", "scale", "source_check"]  # tiny builds the check
    assert manifest.outputs[2].shape == [1, 2]
    assert manifest.outputs[0].shape == [1, "targets", 64, 64] and manifest.batch == {"min": 1, "opt": 1, "max": 1}
    assert set(manifest.files) == {"model.onnx"}
    assert {"medk2n", "torch", "onnx", "onnxruntime", "onnx-opset"} <= set(manifest.versions)
    assert manifest.source["weights_sha256"] == sha256_file(tiny_checkpoint / "model.safetensors")
    assert manifest.source["config"] == cfg.to_dict()
    parity = manifest.parity["fp32"]
    assert parity["passed"] and parity["reference"] == "pytorch"
    assert parity["images"]["max_abs"] <= 1e-2 and parity["images"]["psnr_db"] > 60
    assert parity["source_check"]["max_abs"] <= verify.FP32_MAX_ABS
    one = parity["one_target"]  # the symbolic target axis, checked at one target too
    assert one["passed"] and one["images"]["psnr_db"] > 60 and one["vs_first_of_n"]["images"]["max_abs"] <= 1e-5
    assert np.isfinite(manifest.accuracy["psnr_db"]["fp32"])
    load_bundle(path)  # the runtime accepts it


def test_onnx_carries_the_manifest_as_json(fp32_bundle):
    model = onnx.load(str(fp32_bundle.path / "model.onnx"))
    embedded = json.loads({p.key: p.value for p in model.metadata_props}[bundle.METADATA_KEY])
    manifest = json.loads((fp32_bundle.path / "manifest.json").read_text())
    assert embedded == {**manifest, "files": {}, "created": ""}
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {18}


def test_tampering_is_detected(fp32_bundle, tmp_path):
    copy = shutil.copytree(fp32_bundle.path, tmp_path / "bundle")
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        verify_bundle(copy, read_manifest(copy))
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing from bundle"):
        verify_bundle(copy, read_manifest(copy))


# (sources, targets); a None source is absent (avail 0): 1->4 through the same 2-source graph.
TASKS = [
    (("flair", "adc"), ("dwi", "t2", "t1", "pd")),
    (("t1", "t2"), ("flair", "pd", "dwi", "adc")),
    (("dwi", "pd"), ("t1", "t1", "flair", "t2")),
    (("t2", None), ("t1", "flair", "pd", "adc")),
    (("adc", None), ("dwi", "t2", "flair", "t1")),
]


def test_one_graph_answers_every_task(fp32_bundle, tiny_model, phantom_data):
    model, cfg = tiny_model
    vocab = cfg.model.modalities
    _, held = calibration.load_pools(cfg.model, 64, phantom_data, calib_slices=1)
    session = verify.onnx_session(fp32_bundle.path / "model.onnx")
    results = {}
    for sources, targets in TASKS:
        live = [s for s in sources if s is not None]
        x = np.zeros((1, 2, 64, 64), np.float32)
        x[0, : len(live)] = held.images[0, [vocab.index(s) for s in live]]
        src = np.array([[vocab.index(s or live[0]) for s in sources]], np.int64)
        tgt = np.array([[vocab.index(t) for t in targets]], np.int64)
        avail = np.array([[float(s is not None) for s in sources]], np.float32)
        feeds = {"x": x, "src": src, "tgt": tgt, "avail": avail}
        images, scale, check = session.run(["images", "scale", "source_check"], feeds)
        with torch.inference_mode():
            ref = model.synthesize(*(torch.from_numpy(feeds[k]) for k in ("x", "src", "tgt", "avail")))
            # the check reads the sources alone: the same probabilities without fusion or heads
            alone = torch.sigmoid(model.source_check_logits(torch.from_numpy(x), torch.from_numpy(src)))
        parity = verify.fp32_parity(
            {"images": ref.images.numpy(), "scale": ref.scale.numpy(), "source_check": alone.numpy()},
            {"images": images, "scale": scale, "source_check": check},
        )
        assert parity["passed"], (sources, targets, parity)
        assert check.shape == (1, 2) and ((check > 0) & (check < 1)).all()
        results[(sources, targets)] = images
    first = results[TASKS[0]]
    assert all(not np.allclose(first, other) for task, other in results.items() if task != TASKS[0])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_the_graph_computes_only_the_targets_asked_for(fp32_bundle, tiny_model, phantom_data, count):
    """The target axis is symbolic: 1..N targets, each the same as in a full-N call."""
    model, cfg = tiny_model
    vocab = cfg.model.modalities
    _, held = calibration.load_pools(cfg.model, 64, phantom_data, calib_slices=1)
    session = verify.onnx_session(fp32_bundle.path / "model.onnx")
    x = held.images[:2, [vocab.index("flair"), vocab.index("adc")]].astype(np.float32)
    feeds = {"x": x[:1], "src": np.array([[vocab.index("flair"), vocab.index("adc")]], np.int64),
             "avail": np.ones((1, 2), np.float32)}
    every = np.array([[vocab.index(t) for t in ("dwi", "t2", "t1", "pd")]], np.int64)
    full, _ = session.run(["images", "scale"], {**feeds, "tgt": every})
    part, scale = session.run(["images", "scale"], {**feeds, "tgt": every[:, :count]})
    assert part.shape == scale.shape == (1, count, 64, 64)
    np.testing.assert_allclose(part, full[:, :count], atol=1e-5)


def test_reexport_gives_the_same_manifest_and_bytes(fp32_bundle, make_options, tmp_path):
    again = export_bundle(make_options(tmp_path / "again"))
    first = json.loads((fp32_bundle.path / "manifest.json").read_text())
    second = json.loads((again.path / "manifest.json").read_text())
    assert first.pop("created") and second.pop("created")
    assert first == second  # includes the sha256 of every file


def test_existing_bundle_is_not_overwritten(fp32_bundle, make_options):
    before = sha256_file(fp32_bundle.path / "manifest.json")
    with pytest.raises(ExportError, match="not empty.*--overwrite"):
        export_bundle(make_options(fp32_bundle.path))
    assert sha256_file(fp32_bundle.path / "manifest.json") == before
