"""Image-synthesis metrics as synthesis papers report them (numpy only).

PSNR, SSIM and MAE at data range 1 on images already normalised to [0, 1]
(per-volume 0.5-99.5 percentile scaling), on the whole image and inside a
brain mask. SSIM is the Wang et al. 2004 definition with an 11-tap Gaussian
window (sigma 1.5, K1 0.01, K2 0.03) computed per 2-D slice, as in
scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`, the setting its docs give for matching Wang et
al. Over the whole image it leaves out the map's border (half a window, 5
pixels), as that reference does: there the window reaches past the image, and
averaging it in read 0.741 where the reference reads 0.694 on the same images.
The masked variant averages the SSIM map inside the mask.
"""

from __future__ import annotations

import numpy as np

_K1, _K2, _SIGMA, _TAPS = 0.01, 0.03, 1.5, 11


def psnr(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    err = _select(pred - truth, mask)
    mse = float(np.mean(err.astype(np.float64) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def mae(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    return float(np.mean(np.abs(_select(pred - truth, mask).astype(np.float64))))


def ssim(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """Mean SSIM over the last two axes (each 2-D slice), optionally inside `mask`.

    Without a mask the border half-window of each slice is cropped (slices too small to crop,
    which the reference refuses, are averaged whole)."""
    smap = ssim_map(pred, truth, data_range)
    if mask is None:
        half = _TAPS // 2
        if min(smap.shape[-2:]) > 2 * half:
            smap = smap[..., half:-half, half:-half]
    return float(np.mean(_select(smap, mask)))


def ssim_map(pred: np.ndarray, truth: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch {x.shape} vs {y.shape}")
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    mu_x, mu_y = _blur(x), _blur(y)
    sxx = _blur(x * x) - mu_x**2
    syy = _blur(y * y) - mu_y**2
    sxy = _blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return num / den


def _gaussian_kernel() -> np.ndarray:
    r = np.arange(_TAPS) - _TAPS // 2
    k = np.exp(-(r**2) / (2 * _SIGMA**2))
    return k / k.sum()


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter over the last two axes, reflect-padded (same size out)."""
    k = _gaussian_kernel()
    pad = _TAPS // 2
    out = img
    for axis in (-2, -1):
        width = [(0, 0)] * out.ndim
        width[axis] = (pad, pad)
        padded = np.pad(out, width, mode="reflect")
        windows = np.lib.stride_tricks.sliding_window_view(padded, _TAPS, axis=axis)
        out = windows @ k
    return out


def _select(values: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.asarray(values).ravel()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != np.shape(values):
        mask = np.broadcast_to(mask, np.shape(values))
    if not mask.any():
        raise ValueError("mask selects no voxels")
    return np.asarray(values)[mask]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties) without scipy."""
    ra, rb = _rank(np.ravel(a)), _rank(np.ravel(b))
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def _rank(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average = (ends - counts + ends - 1) / 2.0
    return average[inverse.ravel()].astype(np.float64)
