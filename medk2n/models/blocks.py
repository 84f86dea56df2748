"""Small layers shared by the fusion, head and baseline networks."""

from __future__ import annotations

import torch
from torch import nn


class FiLM(nn.Module):
    """Feature-wise affine conditioning x * (1 + gamma(c)) + beta(c); identity at initialisation."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.linear(cond).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return x * (1.0 + gamma) + beta


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 then pointwise 1x1: a 3x3 receptive field at a fraction of the cost."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Conv2d(in_dim, in_dim, kernel_size=3, padding=1, groups=in_dim),
            nn.Conv2d(in_dim, out_dim, kernel_size=1),
        )


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups that divide `channels`."""
    groups = max(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def channels_innermost(t: torch.Tensor, dim: int = 1) -> bool:
    """Whether `t` is laid out channels-last (its channel axis `dim` has stride 1), as CPU training lays out the
    model (train.loop); exported graphs are traced from channels-first tensors.

    Layers that would otherwise hand back a tensor or gradient in the other layout branch on this: an
    elementwise backward (GELU) that meets operands in two layouts ran 6-8x slower on CPU. While exporting it is
    False, so graphs keep the channels-first formulation (no transposes for the runtime to execute)."""
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return False
    return t.shape[dim] > 1 and t.stride(dim) == 1


def expand_targets(t: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat a per-sample tensor [B,...] for each of N targets -> [B*N,...]; channels-last maps stay so."""
    if t.dim() == 4 and channels_innermost(t):
        b, c, h, w = t.shape
        rows = t.permute(0, 2, 3, 1).unsqueeze(1).expand(b, n, h, w, c)
        return rows.reshape(b * n, h, w, c).permute(0, 3, 1, 2)
    return t.unsqueeze(1).expand(-1, n, *t.shape[1:]).flatten(0, 1)


def present_mean(slots: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Mean of slots [B,K,...] over the present ones (avail [B,K] 0/1); absent slots get weight exactly 0."""
    weights = avail / avail.sum(dim=1, keepdim=True).clamp_min(1.0)
    return (slots * weights.view(*weights.shape, *([1] * (slots.dim() - 2)))).sum(dim=1)
