"""Export gates: parity between backends and accuracy against ground truth.

Each precision has one stated tolerance. A breach raises ExportError unless
the user passes --force; either way the measured figures and the tolerance go
into the manifest, so a bundle always says how close it is to its checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from medk2n.errors import ExportError
from medk2n.export.calibration import SampleSet, iter_batches
from medk2n.export.spec import OUTPUT_NAMES

# ONNX FP32 vs PyTorch, images in [0, 1] and the scale (an expected error, mostly < 0.5): at most FP32_MAX_OUTLIERS of the
# voxels may differ by more than FP32_MAX_ABS. Not a plain max: the heads pick, per voxel, the
# candidate with the lowest predicted error (argmin, eq. 12), and where two candidates tie to
# float precision the backends may pick different ones, a legitimate isolated difference.
FP32_MAX_ABS = 1e-3
FP32_MAX_OUTLIERS = 1e-3
FP16_MIN_PSNR_DB = 40.0  # ONNX FP16 images vs ONNX FP32 images
INT8_MAX_DROP_DB = 1.0  # brain-masked PSNR vs ground truth, FP32 minus INT8, held-out slices
PSNR_CAP_DB = 200.0  # identical outputs: report a finite ceiling, JSON has no infinity
# FP16 / INT8 scale vs FP32 scale, inside the brain: the uncertainty map must keep its voxel
# ranking (its whole job); its level is recalibrated per precision by the conformal step. A map
# that is equal to FP32's within SCALE_TIE_RELATIVE (99th percentile of the relative difference)
# passes too: its rank differences are among near-ties (an untrained, nearly flat scale).
SCALE_MIN_SPEARMAN = 0.9
SCALE_TIE_RELATIVE = 0.01

Outputs = dict[str, np.ndarray]


def run_torch(model: torch.nn.Module, samples: SampleSet, batch: int) -> Outputs:
    """The PyTorch reference on `samples`, batch by batch."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in OUTPUT_NAMES}
    with torch.inference_mode():
        for feeds, valid in iter_batches(samples.feeds, batch):
            result = model(*(torch.from_numpy(feeds[name]) for name in ("x", "src", "tgt", "avail")))
            for name, tensor in zip(OUTPUT_NAMES, result):
                parts[name].append(tensor[:valid].float().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def onnx_session(path: Path) -> ort.InferenceSession:
    """A CPU session: parity is judged on the reference provider, the same on every machine."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, samples: SampleSet, batch: int) -> Outputs:
    session = onnx_session(path)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in OUTPUT_NAMES}
    for feeds, valid in iter_batches(samples.feeds, batch):
        for name, array in zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), feeds)):
            parts[name].append(array[:valid])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def check_finite(outputs: Outputs, what: str) -> None:
    for name, array in outputs.items():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise ExportError(f"{what}: output {name!r} has {bad} NaN/Inf values")


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all (or the masked) voxels, capped at PSNR_CAP_DB."""
    diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = float(diff[np.broadcast_to(mask, diff.shape)].mean() if mask is not None else diff.mean())
    if mse <= 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(data_range**2 / mse))


def figure(value: float) -> float:
    """Round a measured figure to 6 significant digits so repeated exports record the same number."""
    return float(f"{value:.6g}")


def compare(reference: Outputs, candidate: Outputs) -> dict[str, dict[str, float]]:
    """Per output: max abs error, PSNR, and the fraction of voxels off by more than FP32_MAX_ABS."""
    result = {}
    for name in OUTPUT_NAMES:
        error = np.abs(candidate[name] - reference[name])
        result[name] = {
            "max_abs": figure(float(error.max())),
            "psnr_db": figure(psnr(candidate[name], reference[name])),
            "outliers": figure(float(np.mean(error > FP32_MAX_ABS))),
        }
    return result


def first_target(samples: SampleSet) -> SampleSet:
    """The same slices asking for their first target only: the graph's smallest target count."""
    feeds = {**samples.feeds, "tgt": np.ascontiguousarray(samples.feeds["tgt"][:, :1])}
    return SampleSet(feeds, samples.target[:, :1], samples.brain)


def fp32_parity(reference: Outputs, candidate: Outputs) -> dict:
    errors = compare(reference, candidate)
    passed = all(errors[name]["outliers"] <= FP32_MAX_OUTLIERS for name in OUTPUT_NAMES)
    tolerance = {"abs": FP32_MAX_ABS, "max_outliers": FP32_MAX_OUTLIERS}
    return {"reference": "pytorch", **errors, "tolerance": tolerance, "passed": passed}


SCALE_TOLERANCE = {"min_scale_spearman": SCALE_MIN_SPEARMAN, "or_max_scale_relative_p99": SCALE_TIE_RELATIVE}


def fp16_parity(fp32: Outputs, fp16: Outputs, samples: SampleSet) -> dict:
    errors = compare(fp32, fp16)
    scale = scale_agreement(fp32, fp16, samples)
    passed = errors["images"]["psnr_db"] >= FP16_MIN_PSNR_DB and scale["passed"]
    return {"reference": "onnx-fp32", **errors, "scale_agreement": scale,
            "tolerance": {"min_psnr_db": FP16_MIN_PSNR_DB, **SCALE_TOLERANCE}, "passed": passed}


def scale_agreement(reference: Outputs, candidate: Outputs, samples: SampleSet) -> dict:
    """Spearman between two precisions' scale maps over the brain pixels of the held-out slices, and
    the 99th percentile of their relative difference there."""
    from medk2n.eval.metrics import spearman  # noqa: PLC0415 - numpy-only helper of the eval package

    brain = np.broadcast_to(samples.brain[:, None], reference["scale"].shape)
    if not brain.any():
        return {"spearman": 1.0, "relative_p99": 0.0, "passed": True}
    ref, cand = reference["scale"][brain].astype(np.float64), candidate["scale"][brain].astype(np.float64)
    rank = figure(spearman(ref, cand))
    relative = figure(float(np.percentile(np.abs(cand - ref) / np.maximum(np.abs(ref), 1e-12), 99)))
    return {"spearman": rank, "relative_p99": relative,
            "passed": rank >= SCALE_MIN_SPEARMAN or relative <= SCALE_TIE_RELATIVE}


def masked_psnr(outputs: Outputs, samples: SampleSet) -> float:
    """Mean over slices and targets of the brain-masked PSNR against ground truth."""
    values = [
        psnr(outputs["images"][i, j], samples.target[i, j], samples.brain[i])
        for i in range(len(samples))
        for j in range(samples.target.shape[1])
        if samples.brain[i].any()
    ]
    return float(np.mean(values))


def int8_drop(fp32_db: float, int8_db: float, scale: dict | None = None) -> dict:
    """Quality drop of INT8 vs FP32, both scored against the real target slices (masked_psnr), and the
    INT8 scale's agreement with FP32's (`scale_agreement`)."""
    drop = fp32_db - int8_db
    scale = scale or {"spearman": 1.0, "relative_p99": 0.0, "passed": True}
    return {
        "fp32_psnr_db": figure(fp32_db),
        "int8_psnr_db": figure(int8_db),
        "drop_db": figure(drop),
        "scale_agreement": scale,
        "tolerance": {"max_drop_db": INT8_MAX_DROP_DB, **SCALE_TOLERANCE},
        "passed": drop <= INT8_MAX_DROP_DB and scale["passed"],
    }


def gate(result: dict, what: str, force: bool) -> None:
    """Refuse a result outside tolerance unless forced; a forced result stays marked as failed."""
    if result["passed"]:
        return
    if not force:
        measured = {k: v for k, v in result.items() if k not in ("passed", "tolerance", "reference")}
        raise ExportError(f"{what} outside tolerance {result['tolerance']}: {measured} (--force to accept)")
    result["forced"] = True
