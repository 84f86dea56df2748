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


def expand_targets(t: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat a per-sample tensor [B,...] for each of N targets -> [B*N,...]."""
    return t.unsqueeze(1).expand(-1, n, *t.shape[1:]).flatten(0, 1)


def present_mean(slots: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """Mean of slots [B,K,...] over the present ones (avail [B,K] 0/1); absent slots get weight exactly 0."""
    weights = avail / avail.sum(dim=1, keepdim=True).clamp_min(1.0)
    return (slots * weights.view(*weights.shape, *([1] * (slots.dim() - 2)))).sum(dim=1)
