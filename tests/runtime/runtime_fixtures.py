"""Fixtures for the runtime: a fake bundle with the real IO contract and small NIfTI cases.

The fake model is a closed-form function of its inputs, so a test can predict
every output voxel from the input volumes and check the whole chain
(read -> preprocess -> batch -> infer -> restore -> write):

    images[b, n]     = gain[tgt[b, n]] * sum_k w[src[b, k]] avail[b, k] x[b, k] / sum_k w[src[b, k]] avail[b, k]
    scale[b, n]      = sum_k avail[b, k] / K

with w[id] = 1 + id and gain[id] = 1 - 0.1 id. Sources use "range"
normalisation (0..1000) so their model-space values are known exactly. The
manifest carries a conformal calibration whose quantile at level c is
QUANTILE_SLOPE * c, so a half-width is predictable too; `legacy=True` writes a
bundle as exported before the scale output (a "confidence" output, no calibration).
`source_check=True` adds the third output of a model with a source check:

    source_check[b, k] = CHECK[src[b, k]]    (0.2 for t2, 0.9 for every other modality)

so a request with t2 as a source reads as a mislabelled t2.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from medk2n.manifest import Manifest, ModelFile, TensorSpec, hash_bundle_files
from medk2n.runtime.uncertainty import LEVELS

MODALITIES = ["t1", "t2", "flair", "dwi", "adc", "pd"]  # six, so a K=2/N=4 bundle can serve a 2->4 request
NORMS = {
    "t1": {"kind": "range", "low": 0.0, "high": 1000.0},
    "t2": {"kind": "range", "low": 0.0, "high": 1000.0},
    "flair": {"kind": "range", "low": 0.0, "high": 1000.0},
    "dwi": {"kind": "percentile", "low": 0.5, "high": 99.5},
    "adc": {"kind": "range", "low": 0.0, "high": 4000.0},
    "pd": {"kind": "percentile", "low": 0.5, "high": 99.5},
}
SHAPE = (23, 19, 11)
QUANTILE_SLOPE = 2.0


def calibration(targets: list[str] = MODALITIES) -> dict:
    table = {t: [QUANTILE_SLOPE * level for level in LEVELS] for t in targets}
    return {"method": "test", "levels": list(LEVELS), "quantiles": {"fp32": table}}


def source_weight(modality: str) -> float:
    return 1.0 + MODALITIES.index(modality)


def target_gain(modality: str) -> float:
    return 1.0 - 0.1 * MODALITIES.index(modality)


def check_probability(modality: str) -> float:
    """The fake source check's p(a source named `modality` is that contrast)."""
    return 0.2 if modality == "t2" else 0.9


def fake_model(k: int, n: int | str, size: int, batch: int | str, second: str = "scale",
               source_check: bool = False) -> onnx.ModelProto:
    vocab = len(MODALITIES)
    weights = helper.make_tensor("w", TensorProto.FLOAT, [vocab], [source_weight(m) for m in MODALITIES])
    gains = helper.make_tensor("gain", TensorProto.FLOAT, [vocab], [target_gain(m) for m in MODALITIES])
    consts = [
        helper.make_tensor("axes_hw", TensorProto.INT64, [2], [2, 3]),
        helper.make_tensor("axis_k", TensorProto.INT64, [1], [1]),
        helper.make_tensor("k", TensorProto.FLOAT, [], [float(k)]),
    ]
    nodes = [
        helper.make_node("Gather", ["w", "src"], ["w_src"]),
        helper.make_node("Mul", ["w_src", "avail"], ["wa"]),
        helper.make_node("Unsqueeze", ["wa", "axes_hw"], ["wa4"]),
        helper.make_node("Mul", ["x", "wa4"], ["xw"]),
        helper.make_node("ReduceSum", ["xw", "axis_k"], ["num"], keepdims=1),
        helper.make_node("ReduceSum", ["wa4", "axis_k"], ["den"], keepdims=1),
        helper.make_node("Div", ["num", "den"], ["mean"]),
        helper.make_node("Gather", ["gain", "tgt"], ["g"]),
        helper.make_node("Unsqueeze", ["g", "axes_hw"], ["g4"]),
        helper.make_node("Mul", ["mean", "g4"], ["images"]),
        helper.make_node("ReduceSum", ["avail", "axis_k"], ["present"], keepdims=1),
        helper.make_node("Div", ["present", "k"], ["frac"]),
        helper.make_node("Unsqueeze", ["frac", "axes_hw"], ["frac4"]),
        helper.make_node("Shape", ["images"], ["out_shape"]),
        helper.make_node("Expand", ["frac4", "out_shape"], [second]),
    ]
    outputs = [
        helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, n, size, size]),
        helper.make_tensor_value_info(second, TensorProto.FLOAT, [batch, n, size, size]),
    ]
    initializers = [weights, gains, *consts]
    if source_check:
        initializers.append(helper.make_tensor("check", TensorProto.FLOAT, [vocab],
                                               [check_probability(m) for m in MODALITIES]))
        nodes.append(helper.make_node("Gather", ["check", "src"], ["source_check"]))
        outputs.append(helper.make_tensor_value_info("source_check", TensorProto.FLOAT, [batch, k]))
    graph = helper.make_graph(
        nodes, "fake_k2n",
        inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, k, size, size]),
            helper.make_tensor_value_info("src", TensorProto.INT64, [batch, k]),
            helper.make_tensor_value_info("tgt", TensorProto.INT64, [batch, n]),
            helper.make_tensor_value_info("avail", TensorProto.FLOAT, [batch, k]),
        ],
        outputs=outputs,
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def make_bundle(folder: Path, k: int = 2, n: int = 2, size: int = 32, batch: dict | None = None,
                plan: bool = False, legacy: bool = False, calibrated: bool = True, target_axis: bool = False,
                source_check: bool = False, check_thresholds: dict[str, float] | None = None) -> Path:
    """Write model.onnx (+ a dummy model.plan) and a manifest with real sha256 hashes.

    target_axis: the graph takes 1..n targets (a symbolic "targets" axis), as exports since
    2026-12-02 do; otherwise exactly n, as before."""
    second = "confidence" if legacy else "scale"
    dims: int | str = "targets" if target_axis else n
    batch = batch or {"min": 1, "opt": 4, "max": 8}
    fixed = batch["min"] == batch["max"]
    lead: int | str = batch["min"] if fixed else "batch"
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(fake_model(k, dims, size, lead, second, source_check), folder / "model.onnx")
    models = [ModelFile(file="model.onnx", format="onnx", precision="fp32")]
    if plan:
        (folder / "model.plan").write_bytes(b"not a real engine")
        models.append(ModelFile(file="model.plan", format="trt-plan", precision="fp32", trt_version="10.8.0",
                                compute_capability="8.9"))
    manifest = Manifest(
        k=k, n=n, image_size=size, modalities=list(MODALITIES), normalization=dict(NORMS), precision="fp32",
        models=models,
        inputs=[TensorSpec("x", "float32", [lead, k, size, size]), TensorSpec("src", "int64", [lead, k]),
                TensorSpec("tgt", "int64", [lead, dims]), TensorSpec("avail", "float32", [lead, k])],
        outputs=[TensorSpec("images", "float32", [lead, dims, size, size]),
                 TensorSpec(second, "float32", [lead, dims, size, size]),
                 *([TensorSpec("source_check", "float32", [lead, k])] if source_check else [])],
        batch=dict(batch), files=hash_bundle_files(folder), created="test",
        uncertainty=calibration() if calibrated and not legacy else {},
        source_check={"thresholds": dict(check_thresholds)} if check_thresholds else {},
    )
    (folder / "manifest.json").write_text(manifest.to_json())
    return folder


def edit_manifest(folder: Path, **changes: object) -> None:
    data = json.loads((folder / "manifest.json").read_text())
    data.update(changes)
    (folder / "manifest.json").write_text(json.dumps(data))


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundles") / "dynamic")


@pytest.fixture(scope="session")
def fixed_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundles") / "fixed", batch={"min": 4, "opt": 4, "max": 4})


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def make_affine(kind: str) -> np.ndarray:
    """Voxel->world affines the runtime must treat as ordinary input."""
    affine = np.eye(4)
    if kind == "iso":
        affine[:3, :3] = np.eye(3)
    elif kind == "aniso":
        affine[:3, :3] = np.diag([0.9, 1.2, 3.0])
    elif kind == "lps":
        affine[:3, :3] = np.diag([-1.0, -1.0, 2.0])
    elif kind == "oblique":
        affine[:3, :3] = rotation(2, 15) @ rotation(0, 10) @ np.diag([1.0, 1.1, 2.5])
    elif kind == "sagittal":  # voxel axis 0 runs inferior->superior
        affine[:3, :3] = np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    else:
        raise ValueError(kind)
    affine[:3, 3] = [-10.0, 12.0, -5.0]
    return affine


def fields(shape: tuple[int, int, int] = SHAPE) -> dict[str, np.ndarray]:
    """Smooth, asymmetric intensity fields in 0..1000 (a flip or transpose would show)."""
    u, v, w = np.meshgrid(*(np.linspace(0.0, 1.0, s) for s in shape), indexing="ij")
    return {
        "t1": (200 + 500 * v + 200 * u * w).astype(np.float32),
        "t2": (300 + 400 * u + 150 * v * v + 100 * w).astype(np.float32),
        "flair": (250 + 200 * v + 300 * u * w + 150 * (1 - w)).astype(np.float32),
    }


def save_nifti(array: np.ndarray, path: Path, affine: np.ndarray, qcode: int = 1, scode: int = 2) -> Path:
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def header_bomb(path: Path, shape: tuple[int, int, int]) -> Path:
    """A tiny .nii.gz whose header claims `shape` float32 voxels but holds a few bytes of data."""
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), make_affine("iso"))
    header = img.header.copy()
    header.set_data_shape(shape)
    raw = header.binaryblock + b"\0" * 4 + np.zeros(8, np.float32).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw))
    return path


def write_case(folder: Path, kind: str = "iso", modalities: tuple[str, ...] = ("t2", "flair"),
               shape: tuple[int, int, int] = SHAPE) -> Path:
    values = fields(shape)
    for m in modalities:
        save_nifti(values[m], folder / f"{m}.nii.gz", make_affine(kind))
    return folder


def expected_outputs(volumes: dict[str, np.ndarray], sources: list[str], targets: list[str], k: int = 2
                     ) -> dict[str, tuple[np.ndarray, float]]:
    """target -> (expected image, expected scale), both in output units, from the fake model's formula."""
    weights = [source_weight(m) for m in sources]
    mean = sum(w * np.clip(volumes[m] / 1000.0, 0, 1) for w, m in zip(weights, sources)) / sum(weights)
    out = {}
    for t in targets:
        image, scale = target_gain(t) * mean, len(sources) / k
        if NORMS[t]["kind"] == "range":
            image = NORMS[t]["low"] + image * (NORMS[t]["high"] - NORMS[t]["low"])
            scale = scale * (NORMS[t]["high"] - NORMS[t]["low"])
        out[t] = (image, scale)
    return out


def interior(affine: np.ndarray, shape: tuple[int, int, int], margin: int = 2) -> tuple[slice, ...]:
    """Voxels away from the in-plane border, where resampling mixes in the zero padding."""
    slice_axis = int(np.argmax(np.abs(affine[2, :3]) / np.linalg.norm(affine[:3, :3], axis=0)))
    return tuple(slice(None) if axis == slice_axis else slice(margin, s - margin) for axis, s in enumerate(shape))
