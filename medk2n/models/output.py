"""The generator contract shared by Med-K2N and the baseline: input checks and the detailed output."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class K2NOutput:
    """Shapes: B batch, K sources, N targets, Kh candidate heads, h x w the stride-8 fusion grid.

    gates holds the fusion's per-frame values for the modules the ablation
    switched on, one entry per auxiliary frame (K-1; empty when K == 1 or in B0
    and the U-Net): "w_global" and "tau" [B,N,K-1] (B2+, B3+), "w_eff"
    [B,N,K-1,h,w] (the weight actually applied), "accept" [B,N,K-1].
    """

    images: torch.Tensor  # [B,N,H,W] in [0,1]
    scale: torch.Tensor  # [B,N,H,W] Laplace scale b > 0: expected absolute error, normalised units
    candidates: torch.Tensor  # [B,N,Kh,H,W]
    quality: torch.Tensor  # [B,N,Kh,H,W] Laplace scale of each candidate
    src: torch.Tensor  # [B,K]
    tgt: torch.Tensor  # [B,N]
    avail: torch.Tensor  # [B,K] float 0/1
    gates: dict[str, torch.Tensor] = field(default_factory=dict)
    state_log_error: torch.Tensor | None = None  # [B,N,h,w] log of the fusion's quality estimate Q of the final state
    image_embed: torch.Tensor | None = None  # [B,N,text_dim] generated images (CMIM on)
    source_embed: torch.Tensor | None = None  # [B,K,text_dim] real source images (CMIM on)
    source_check: torch.Tensor | None = None  # [B,K] SourceCheckNet logits (model.source_check on)


def check_inputs(x: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, avail: torch.Tensor | None) -> None:
    """Shape contract of every generator (shapes only, so tracing stays branch-free)."""
    if x.dim() != 4 or src.shape != x.shape[:2] or tgt.dim() != 2 or tgt.shape[0] != x.shape[0]:
        raise ValueError(
            f"expected x [B,K,H,W], src [B,K], tgt [B,N]; got {tuple(x.shape)}, {tuple(src.shape)}, {tuple(tgt.shape)}"
        )
    if avail is not None and avail.shape != src.shape:
        raise ValueError(f"avail must be [B,K] like src {tuple(src.shape)}, got {tuple(avail.shape)}")
