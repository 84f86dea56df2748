"""MultiScaleNet: one fusion-width feature map per source frame from the FPN levels.

The paper fuses the encoder levels with a Mamba (selective state-space) scan
for global context. Mamba's scan is a custom CUDA kernel with no ONNX or
TensorRT export, so a GCNet-style global-context block (Cao et al., 2019:
attention pooling to one context vector, bottleneck transform, broadcast add)
provides the image-wide context here; every op in it exports to ONNX.

Everything downstream (fusion, gates, memory) runs at stride 8 with
`fusion_dim` channels, which keeps the 256x256 model small and exportable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GlobalContext(nn.Module):
    """x + transform(attention-pooled context of x): image-wide context in O(HW)."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(dim // reduction, 8)
        self.attend = nn.Conv2d(dim, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.attend(x).flatten(2), dim=-1)  # [B,1,HW]
        context = torch.bmm(x.flatten(2), weights.transpose(1, 2)).squeeze(-1)  # [B,C]
        return x + self.transform(context).unsqueeze(-1).unsqueeze(-1)


class MultiScaleNet(nn.Module):
    """Fuse the stride-4/8/16 FPN levels at stride 8, then add global context."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(3 * in_dim, out_dim, kernel_size=1)
        self.context = GlobalContext(out_dim)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        fine, mid, coarse = levels
        stacked = torch.cat(
            [F.avg_pool2d(fine, 2), mid, F.interpolate(coarse, scale_factor=2.0, mode="nearest")], dim=1
        )
        return self.context(self.project(stacked))


class SingleScale(nn.Module):
    """The ablation without MultiScaleNet (B0): project the stride-8 level only."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.project(levels[1])
