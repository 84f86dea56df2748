"""Pixel losses of eq. 14: masked L1 and structural similarity (SSIM).

Both take per-pixel weights [B,N,H,W] (brain mask times target validity), so
padded targets and background contribute nothing.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
# Stabilisers of Wang et al. (2004) for data range 1.
_C1 = 0.01**2
_C2 = 0.03**2


def weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(w * v) / sum(w), 0 when every weight is 0."""
    return (values * weight).sum() / weight.sum().clamp_min(1e-8)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weighted_mean((pred - target).abs(), weight)


@functools.lru_cache(maxsize=4)
def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of images [B,N,H,W] with values in [0,1] (Gaussian 11x11 window, sigma 1.5)."""
    shape = pred.shape
    x = pred.reshape(-1, 1, *shape[-2:])
    y = target.reshape(-1, 1, *shape[-2:])
    window = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA).to(x.device, x.dtype)
    pad = SSIM_WINDOW // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), window)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / ((mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2))
    return ssim.reshape(shape)


def ssim(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean SSIM (1 = identical)."""
    return weighted_mean(ssim_map(pred, target), weight)
