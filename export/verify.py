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
from medk2n.export.spec import OUTPUT_NAMES, SOURCE_CHECK
from medk2n.runtime.runners import session_options

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
# The source check's probabilities, over the present source slots of the held-out slices. FP32 ONNX
# vs PyTorch: at most FP32_MAX_ABS anywhere (the check reads pooled features, no argmin ties). FP16 and
# INT8 vs FP32: the runtime compares a case's median probability with 0.5, so a reduced precision may
# move a probability by at most CHECK_MAX_ABS_REDUCED.
CHECK_MAX_ABS_REDUCED = 0.05

Outputs = dict[str, np.ndarray]


def output_names(count: int) -> tuple[str, ...]:
    """Names of a graph's `count` outputs, in order: images, scale, and the source check when present."""
    return (*OUTPUT_NAMES, SOURCE_CHECK)[:count]


def run_torch(model: torch.nn.Module, samples: SampleSet, batch: int) -> Outputs:
    """The PyTorch reference (a FixedKN wrapper) on `samples`, batch by batch."""
    parts: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for feeds, valid in iter_batches(samples.feeds, batch):
            result = model(*(torch.from_numpy(feeds[name]) for name in ("x", "src", "tgt", "avail")))
            for name, tensor in zip(output_names(len(result)), result):
                parts.setdefault(name, []).append(tensor[:valid].float().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def onnx_session(path: Path) -> ort.InferenceSession:
    """A CPU session: parity is judged on the reference provider, the same on every machine."""
    return ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])


def run_onnx(path: Path, samples: SampleSet, batch: int) -> Outputs:
    session = onnx_session(path)
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feeds, valid in iter_batches(samples.feeds, batch):
        for name, array in zip(names, session.run(names, feeds)):
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
    if sorted(reference) != sorted(candidate):
        raise ExportError(f"outputs {sorted(candidate)} != the reference's {sorted(reference)}")
    result = {}
    for name in reference:
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
    if SOURCE_CHECK in errors:
        passed = passed and errors[SOURCE_CHECK]["max_abs"] <= FP32_MAX_ABS
    tolerance = {"abs": FP32_MAX_ABS, "max_outliers": FP32_MAX_OUTLIERS}
    return {"reference": "pytorch", **errors, "tolerance": tolerance, "passed": passed}


def check_agreement(reference: Outputs, candidate: Outputs, samples: SampleSet) -> dict | None:
    """How far a reduced precision moves the source check's probabilities (present slots only), and
    on how many frames it flips the side of 0.5; None for a graph without a check."""
    if SOURCE_CHECK not in reference:
        return None
    present = samples.feeds["avail"] > 0
    ref, cand = reference[SOURCE_CHECK][present], candidate[SOURCE_CHECK][present]
    worst = figure(float(np.abs(cand - ref).max())) if ref.size else 0.0
    flips = figure(float(np.mean((ref < 0.5) != (cand < 0.5)))) if ref.size else 0.0
    return {"max_abs": worst, "flipped": flips, "frames": int(ref.size),
            "passed": worst <= CHECK_MAX_ABS_REDUCED}


def _with_check(result: dict, check: dict | None) -> dict:
    """`result` with the source check's agreement folded into its verdict and tolerance."""
    if check is not None:
        result["source_check_agreement"] = check
        result["tolerance"]["source_check_max_abs"] = CHECK_MAX_ABS_REDUCED
        result["passed"] = result["passed"] and check["passed"]
    return result


SCALE_TOLERANCE = {"min_scale_spearman": SCALE_MIN_SPEARMAN, "or_max_scale_relative_p99": SCALE_TIE_RELATIVE}


def fp16_parity(fp32: Outputs, fp16: Outputs, samples: SampleSet) -> dict:
    errors = compare(fp32, fp16)
    scale = scale_agreement(fp32, fp16, samples)
    passed = errors["images"]["psnr_db"] >= FP16_MIN_PSNR_DB and scale["passed"]
    return _with_check({"reference": "onnx-fp32", **errors, "scale_agreement": scale,
                        "tolerance": {"min_psnr_db": FP16_MIN_PSNR_DB, **SCALE_TOLERANCE}, "passed": passed},
                       check_agreement(fp32, fp16, samples))


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


def int8_drop(fp32_db: float, int8_db: float, scale: dict | None = None, check: dict | None = None) -> dict:
    """Quality drop of INT8 vs FP32, both scored against the real target slices (masked_psnr), the
    INT8 scale's agreement with FP32's (`scale_agreement`) and the source check's (`check_agreement`)."""
    drop = fp32_db - int8_db
    scale = scale or {"spearman": 1.0, "relative_p99": 0.0, "passed": True}
    return _with_check({
        "fp32_psnr_db": figure(fp32_db),
        "int8_psnr_db": figure(int8_db),
        "drop_db": figure(drop),
        "scale_agreement": scale,
        "tolerance": {"max_drop_db": INT8_MAX_DROP_DB, **SCALE_TOLERANCE},
        "passed": drop <= INT8_MAX_DROP_DB and scale["passed"],
    }, check)


def gate(result: dict, what: str, force: bool) -> None:
    """Refuse a result outside tolerance unless forced; a forced result stays marked as failed."""
    if result["passed"]:
        return
    if not force:
        measured = {k: v for k, v in result.items() if k not in ("passed", "tolerance", "reference")}
        raise ExportError(f"{what} outside tolerance {result['tolerance']}: {measured} (--force to accept)")
    result["forced"] = True
