"""load_bundle: verified, contract-checked bundles only."""

from __future__ import annotations

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
