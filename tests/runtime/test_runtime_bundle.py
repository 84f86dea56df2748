"""load_bundle: verified, contract-checked bundles only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from runtime_fixtures import MODALITIES, edit_manifest, make_bundle

from medk2n.config import NormSpec
from medk2n.errors import BundleError
from medk2n.runtime.bundle import load_bundle


def test_load_bundle_reads_the_contract(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert (bundle.k, bundle.n, bundle.image_size) == (2, 2, 32)
    assert bundle.modalities == MODALITIES
    assert bundle.modality_id("dwi") == 3
    assert bundle.norms["adc"] == NormSpec(kind="range", low=0.0, high=4000.0)
    assert not bundle.fixed_batch
    assert bundle.model_path(bundle.model("onnx", "fp32")).is_file()


def test_tampered_bundle_is_refused(tmp_path: Path, bundle_dir: Path) -> None:
    copy = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 mismatch"):
        load_bundle(copy)


def test_incomplete_bundle_is_refused(tmp_path: Path, bundle_dir: Path) -> None:
    copy = Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing from bundle"):
        load_bundle(copy)


def test_folder_without_manifest_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a medk2n bundle"):
        load_bundle(tmp_path)


def test_tensor_shapes_must_match_k_and_n(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "b")
    edit_manifest(folder, k=3)
    with pytest.raises(BundleError, match="tensor 'x'"):
        load_bundle(folder)


def test_fixed_batch_dimension_must_equal_the_batch(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "b", batch={"min": 4, "opt": 4, "max": 4})
    edit_manifest(folder, batch={"min": 1, "opt": 4, "max": 8})
    with pytest.raises(BundleError, match="batch fixed only when min == max"):
        load_bundle(folder)


def test_bad_batch_range_is_refused(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "b")
    edit_manifest(folder, batch={"min": 8, "opt": 4, "max": 8})
    with pytest.raises(BundleError, match="min <= opt <= max"):
        load_bundle(folder)


def _sealed(folder: Path) -> None:
    """Write manifest.sha256 as export does."""
    import hashlib

    digest = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    (folder / "manifest.sha256").write_text(f"{digest}  manifest.json\n")


def test_an_edited_manifest_is_refused_when_sealed(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "sealed")
    _sealed(folder)
    load_bundle(folder)
    edit_manifest(folder, normalization={**load_bundle(folder).manifest.normalization,
                                         "adc": {"kind": "range", "low": 0.0, "high": 3000.0}})
    with pytest.raises(BundleError, match=r"manifest\.json: does not match manifest\.sha256"):
        load_bundle(folder)


@pytest.mark.parametrize("entry", ["/etc/passwd", "../outside.onnx", "sub/../../x.onnx"])
def test_a_path_leaving_the_bundle_is_refused_before_it_is_read(tmp_path: Path, entry: str) -> None:
    folder = make_bundle(tmp_path / "b")
    data_files = {**load_bundle(folder).manifest.files, entry: "0" * 64}
    edit_manifest(folder, files=data_files)
    with pytest.raises(BundleError, match=f"file entry {entry!r} leaves the bundle folder"):
        load_bundle(folder)
    edit_manifest(folder, files=load_bundle_files(folder, entry), models=[
        {"file": entry, "format": "onnx", "precision": "fp32"}])
    with pytest.raises(BundleError, match="leaves the bundle folder"):
        load_bundle(folder)


def load_bundle_files(folder: Path, drop: str) -> dict:
    import json

    return {k: v for k, v in json.loads((folder / "manifest.json").read_text())["files"].items() if k != drop}


@pytest.mark.parametrize("field, value, message", [
    ("k", "2", "k must be an integer in 1..64"),
    ("n", True, "n must be an integer in 1..64"),
    ("image_size", 20000, "image_size must be an integer in 8..4096"),
    ("modalities", "t1,t2", "modalities must be a list of names"),
    ("batch", {"min": 1, "opt": "8", "max": 8}, "batch.opt must be an integer"),
])
def test_malformed_manifest_fields_are_one_line_errors(tmp_path: Path, field: str, value, message: str) -> None:
    folder = make_bundle(tmp_path / "b")
    edit_manifest(folder, **{field: value})
    with pytest.raises(BundleError, match=message):
        load_bundle(folder)


def test_a_graph_that_disagrees_with_its_manifest_is_refused_at_load(tmp_path: Path) -> None:
    from medk2n.runtime.synthesizer import Synthesizer

    folder = make_bundle(tmp_path / "b", size=32)
    other = make_bundle(tmp_path / "other", size=64)  # same names, other static size
    shutil.copy(other / "model.onnx", folder / "model.onnx")
    from medk2n.manifest import hash_bundle_files

    edit_manifest(folder, files=hash_bundle_files(folder))  # hashes fine: only the contract is wrong
    with pytest.raises(BundleError, match=r"model\.onnx: graph tensor 'x' is float32 \['batch', 2, 64, 64\], "
                                          r"the manifest says float32 \['batch', 2, 32, 32\]"):
        Synthesizer(folder, backend="cpu")


def test_a_source_check_output_is_part_of_the_contract(tmp_path: Path, bundle_dir: Path) -> None:
    folder = make_bundle(tmp_path / "checked", source_check=True)
    assert load_bundle(folder).has_source_check and not load_bundle(bundle_dir).has_source_check
    outputs = json.loads((folder / "manifest.json").read_text())["outputs"]
    outputs[-1]["shape"] = ["batch", 3]  # one probability per source slot: K = 2
    edit_manifest(folder, outputs=outputs)
    with pytest.raises(BundleError, match=r"tensor 'source_check' is float32 \['batch', 3\], expected float32 "
                                          r"\[batch, 2\]"):
        load_bundle(folder)
