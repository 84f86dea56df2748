"""Baseline: a conditional U-Net generator with modality dropout (pix2pix-style, no adversary).

Same inputs and outputs as Med-K2N, so the same training loop, losses, export
and runtime apply and the comparison is about the architecture only:
- each source slot gets a shared stem plus its modality embedding; slots are
  averaged over the present ones (avail), so K is free and absent sources are
  ignored exactly;
- modality dropout: in training each present source is dropped with
  probability MODALITY_DROPOUT (at least one is kept), the usual recipe for
  one model that serves any subset of its inputs;
- the decoder runs once per target, FiLM-conditioned on the target embedding;
- a small error head predicts the per-pixel Laplace scale (expected absolute
  error) of the output from detached decoder features, trained by the same
  Laplace likelihood as Med-K2N's evaluator: the `scale` output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medk2n.config import ModelConfig
from medk2n.models.blocks import FiLM, expand_targets, group_norm, present_mean
from medk2n.models.heads import laplace_scale
from medk2n.models.output import K2NOutput, check_inputs

MODALITY_DROPOUT = 0.3
LEVELS = 4  # resolutions H, H/2, H/4, H/8


def conv_block(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1), group_norm(out_dim), nn.GELU(),
        nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1), group_norm(out_dim), nn.GELU(),
    )


def drop_modalities(avail: torch.Tensor, p: float) -> torch.Tensor:
    """Randomly mark present sources absent with probability p, keeping at least one per sample."""
    keep = (torch.rand_like(avail) >= p).to(avail.dtype) * avail
    return torch.where(keep.sum(dim=1, keepdim=True) == 0, avail, keep)


class UpStep(nn.Module):
    """Upsample, merge the skip, convolve, condition on the target."""

    def __init__(self, in_dim: int, out_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_dim, out_dim, kernel_size=1)
        self.conv = nn.Sequential(nn.Conv2d(2 * out_dim, out_dim, kernel_size=3, padding=1), group_norm(out_dim))
        self.film = FiLM(cond_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, skip: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self.reduce(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return self.act(self.film(self.conv(torch.cat([x, skip], dim=1)), cond))


class UNetBaseline(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        vocab, w = len(cfg.modalities), cfg.unet_width
        widths = [w * 2**i for i in range(LEVELS)]
        self.stem = nn.Conv2d(1, w, kernel_size=3, padding=1)
        self.modality_embed = nn.Embedding(vocab, w)
        self.down = nn.ModuleList(
            conv_block(widths[max(i - 1, 0)], widths[i]) for i in range(LEVELS)
        )
        self.task_embed = nn.Embedding(vocab, widths[-1])
        self.bottleneck_film = FiLM(widths[-1], widths[-1])
        self.up = nn.ModuleList(UpStep(widths[i + 1], widths[i], widths[-1]) for i in reversed(range(LEVELS - 1)))
        self.out = nn.Conv2d(w, 1, kernel_size=1)
        self.error_head = nn.Sequential(nn.Conv2d(w + 1, w, kernel_size=1), nn.GELU(), nn.Conv2d(w, 1, kernel_size=1))

    def forward(self, x, src, tgt, avail=None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.forward_detailed(x, src, tgt, avail)
        return out.images, out.scale

    def forward_detailed(self, x, src, tgt, avail=None) -> K2NOutput:
        check_inputs(x, src, tgt, avail)
        n = tgt.shape[1]
        avail = torch.ones_like(x[:, :, 0, 0]) if avail is None else avail.to(x.dtype)
        used = drop_modalities(avail, MODALITY_DROPOUT) if self.training else avail
        skips = self._encode(x, src, used)
        cond = self.task_embed(tgt).flatten(0, 1)
        h = self.bottleneck_film(expand_targets(skips[-1], n), cond)
        for step, skip in zip(self.up, reversed(skips[:-1])):
            h = step(h, expand_targets(skip, n), cond)
        image = torch.sigmoid(self.out(h))
        error = laplace_scale(self.error_head(torch.cat([h.detach(), image.detach()], dim=1)))
        return K2NOutput(
            images=image[:, 0].unflatten(0, (-1, n)),
            scale=error[:, 0].unflatten(0, (-1, n)),
            candidates=image.unflatten(0, (-1, n)),
            quality=error.unflatten(0, (-1, n)),
            src=src, tgt=tgt, avail=avail,
        )

    def merge_lora(self) -> None:
        """Nothing to merge: the baseline has no adapters (kept so export treats every arch alike)."""

    def _encode(self, x: torch.Tensor, src: torch.Tensor, avail: torch.Tensor) -> list[torch.Tensor]:
        k = x.shape[1]
        slots = self.stem(x.flatten(0, 1).unsqueeze(1)).unflatten(0, (-1, k))
        slots = F.gelu(slots + self.modality_embed(src)[..., None, None])
        h = present_mean(slots, avail)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        return skips
