"""Image side of CMIM (paper eq. 12-13): one embedding space for generated and real slices.

A small CNN maps a slice to a unit vector in the text-embedding space. The
same projector embeds generated images (anchors, aligned with the text of
their target modality by the contrastive loss) and real images (positives and
negatives of the triplet loss). It is used only by the training losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ImageEmbedder(nn.Module):
    def __init__(self, out_dim: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=4, stride=4), nn.GELU(),
            nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 4 * width, kernel_size=3, stride=2, padding=1), nn.GELU(),
        )
        self.head = nn.Linear(4 * width, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,N,H,W] -> unit vectors [B,N,out_dim]."""
        h = self.net(images.flatten(0, 1).unsqueeze(1)).mean(dim=(2, 3))
        return F.normalize(self.head(h), dim=-1).unflatten(0, images.shape[:2])
