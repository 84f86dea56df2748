"""The evaluation protocol synthesis papers use, applied to one subject's volumes.

Both prediction and truth are scaled per volume to [0, 1] by their own
0.5-99.5 percentiles inside the brain (so a model is not rewarded or punished
for global intensity scale, which weighted MRI does not have), then PSNR,
SSIM and MAE are taken at data range 1 over the whole volume and inside the
brain mask. Quantitative targets (normalisation kind "range", e.g. ADC) also
get the mean absolute error in their physical units.

The predicted error (the Laplace scale, and the interval half-width when the
bundle is calibrated) is scored inside the brain in the same space as the
error it predicts (`interval_space`): on the percentile scale for weighted
targets, the scale carried by that scaling's slope, and in physical units for
quantitative ones. There it gets the Spearman correlation with |error|, the
AUSE of its sparsification curve and the coverage of its intervals.

Where the dataset ships a lesion mask, the lesion gets its own two numbers,
because a whole-brain score hides it: an infarct is 0.5-2 % of the brain,
yet it is why the scan was taken. `lesion_mae` is the mean absolute error
inside the lesion and `lesion_bias` the mean signed error there (negative:
the synthesis paints the lesion darker, i.e. with less contrast, than the
truth). Both are on the same percentile scale as the other metrics, so a
missed bright lesion also shifts every other voxel (a lesion of more than
0.5 % of the brain sets its volume's 99.5th percentile), which is why it
costs whole-brain PSNR.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medk2n.eval.metrics import mae, psnr, ssim

PSNR_CAP = 100.0  # identical volumes give inf; cap so means stay finite


def percentile_scale(volume: np.ndarray, mask: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    lo, hi = _percentile_interval(volume, mask, low, high)
    if hi <= lo:
        return np.zeros_like(volume, dtype=np.float32)
    return np.clip((volume - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _percentile_interval(volume: np.ndarray, mask: np.ndarray, low: float = 0.5,
                         high: float = 99.5) -> tuple[float, float]:
    values = volume[mask] if mask.any() else volume.ravel()
    lo, hi = np.percentile(values, [low, high])
    return float(lo), float(hi)


def percentile_slope(volume: np.ndarray, mask: np.ndarray) -> float:
    """The slope of `percentile_scale(volume, mask)`: what carries a spread in the volume's units onto that scale."""
    lo, hi = _percentile_interval(volume, mask)
    return 1.0 / (hi - lo) if hi > lo else 0.0


def interval_space(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, spreads: Sequence[np.ndarray],
                   physical: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """(|error|, [spread, ...]) of the voxels in `mask`, in the space the protocol scores errors in.

    Each spread is a scale or a half-width in the prediction's units. Export's conformal
    calibration and the evaluation both call this, so an interval is fitted and judged on
    the same errors.
    """
    mask = np.asarray(mask, dtype=bool)
    if physical:
        error, slope = np.abs(np.asarray(pred, np.float32) - np.asarray(truth, np.float32)), 1.0
    else:
        error = np.abs(percentile_scale(pred, mask) - percentile_scale(truth, mask))
        slope = percentile_slope(pred, mask)
    return error[mask], [np.asarray(s, dtype=np.float32)[mask] * np.float32(slope) for s in spreads]


def score_volume(
    pred: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    physical: bool = False,
    lesion: np.ndarray | None = None,
) -> dict[str, float]:
    """Metrics for one synthesised volume; arrays share the input grid (slice axis last is not assumed).

    `lesion` (optional, same grid): lesion mask; adds lesion_mae and lesion_bias
    when it has a voxel inside `mask`. The predicted error is scored by the caller, on
    `interval_space`.
    """
    mask = np.asarray(mask, dtype=bool)
    p = percentile_scale(pred, mask)
    t = percentile_scale(truth, mask)
    # SSIM is defined on 2-D images: score each plane along the last axis.
    p2, t2, m2 = np.moveaxis(p, -1, 0), np.moveaxis(t, -1, 0), np.moveaxis(mask, -1, 0)
    keep = m2.reshape(m2.shape[0], -1).any(axis=1)
    out = {
        "psnr": min(psnr(p, t), PSNR_CAP),
        "ssim": ssim(p2, t2),
        "mae": mae(p, t),
        "masked_psnr": min(psnr(p, t, mask), PSNR_CAP),
        "masked_ssim": ssim(p2[keep], t2[keep], m2[keep]),
        "masked_mae": mae(p, t, mask),
        "masked_psnr_affine": min(affine_fitted_psnr(p, t, mask), PSNR_CAP),
    }
    if lesion is not None:
        inside = np.asarray(lesion, dtype=bool) & mask
        if inside.any():
            out["lesion_mae"] = mae(p, t, inside)
            out["lesion_bias"] = float(np.mean(p[inside] - t[inside], dtype=np.float64))
    if physical:
        out["masked_mae_physical"] = mae(pred, truth, mask)
    return out


def affine_fitted_psnr(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """PSNR inside `mask` after the least-squares affine map of `pred` onto `truth` (both percentile-scaled).

    A diagnostic beside masked PSNR, not a replacement: it forgives a synthesis its global intensity
    layout and scores what is left (anatomy, contrast between tissues). The layout can dominate: a
    noisy, lesion-bright reference (DWI) has a 99.5th percentile far above its tissue that a
    synthesis, a conditional median, lacks, so both land at different places on their own scales.
    One subject's DWI masked PSNR swung by 3 dB between two trainings of one network, and where B5
    and the U-Net differed by up to 2.9 dB in masked PSNR this score put them within 0.51 dB
    (docs/experiments.md, 2026-12-03, night). The slope may not be negative: an inverted
    contrast is a wrong synthesis, not a layout (fitted freely, a copy of FLAIR scored as an ADC).
    The identity is one of the maps allowed, so the score is never below masked PSNR."""
    x = np.asarray(pred, dtype=np.float64)[mask]
    y = np.asarray(truth, dtype=np.float64)[mask]
    if x.size == 0:
        return float("nan")
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    if coef[0] < 0:  # the best map with slope >= 0 is then the constant one (the objective is convex in the slope)
        return psnr(np.full_like(y, y.mean()), y)
    return psnr(design @ coef, y)


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of every metric over subjects."""
    keys = sorted({k for row in rows for k, v in row.items() if isinstance(v, (int, float))})
    summary = {}
    for key in keys:
        values = np.array([row[key] for row in rows if key in row], dtype=np.float64)
        summary[key] = {
            "mean": float(values.mean()),
            "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n": int(len(values)),
        }
    return summary
