"""The three weighting networks that decide how much an auxiliary frame contributes.

For auxiliary frame i and target task j (the paper's dynamic weighting, the
equations between the task memory, eq. 2-3, and CMIM, eq. 12-13):
  PreWeightNet   w_ij  = sigmoid(MLP[x_task-aware, m_j])                 global weight
  ThresholdNet   tau_ij = 0.05 + 0.85 sigmoid(MLP(GateController[w, m, C_ij, p_ij]))
  EffiWeightNet  w_eff = eps + (1 - 2 eps) sigmoid(MLP(Proj[w, tau, m, x_gate, c_task, c_modal]))
                 (B4/B5 then multiply it by the threshold step sigmoid((w - tau) / 0.05), as B3 applies it)
x_task-aware is the auxiliary feature after the task-memory read (eq. 3),
m_j the memory readout of the current fused state, C_ij the agreement between
base and auxiliary features, p_ij a learned prior for the (source modality,
target modality) pair, c_task / c_modal the target and source embeddings.
Image-wide inputs enter as pooled vectors; w_eff is a per-pixel map.
"""

from __future__ import annotations

import torch
from torch import nn

# B3 (threshold without EffiWeightNet) applies the threshold as a soft step of this width.
THRESHOLD_SOFTNESS = 0.05
TAU_MIN, TAU_RANGE = 0.05, 0.85


def pooled(x: torch.Tensor) -> torch.Tensor:
    """Global average over the spatial axes: [M,D,h,w] -> [M,D]."""
    return x.mean(dim=(2, 3))


def conflict_statistics(base: torch.Tensor, aux: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """C_ij: mean and spread of the per-pixel cosine similarity of two feature maps -> [M,2].

    High mean = the auxiliary frame repeats the base; low or spread-out values
    flag conflicting (or noisy) content.
    """
    dot = (base * aux).sum(dim=1)
    norms = base.norm(dim=1) * aux.norm(dim=1)
    cos = (dot / (norms + eps)).flatten(1)
    mean = cos.mean(dim=1, keepdim=True)
    spread = ((cos - mean) ** 2).mean(dim=1, keepdim=True).add(eps).sqrt()
    return torch.cat([mean, spread], dim=1)


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class PreWeightNet(nn.Module):
    """w_global in (0,1): how much auxiliary frame i should contribute to task j."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = _mlp(2 * dim, dim, 1)

    def forward(self, aux_task_aware: torch.Tensor, memory_read: torch.Tensor) -> torch.Tensor:
        """[M,D,h,w] x2 -> [M,1]."""
        return torch.sigmoid(self.mlp(torch.cat([pooled(aux_task_aware), pooled(memory_read)], dim=1)))


class ThresholdNet(nn.Module):
    """tau in [0.05, 0.9]: the bar the auxiliary contribution has to clear for this pair."""

    def __init__(self, dim: int, num_modalities: int, prior_dim: int = 8) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.prior = nn.Embedding(num_modalities * num_modalities, prior_dim)
        self.controller = nn.Sequential(nn.Linear(1 + dim + 2 + prior_dim, dim), nn.GELU())
        self.mlp = _mlp(dim, max(dim // 2, 8), 1)

    def forward(
        self, w: torch.Tensor, memory_read: torch.Tensor, conflict: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor
    ) -> torch.Tensor:
        """w [M,1], memory_read [M,D,h,w], conflict [M,2], src/tgt [M] ids -> [M,1]."""
        p_ij = self.prior(src * self.num_modalities + tgt)
        state = self.controller(torch.cat([w, pooled(memory_read), conflict, p_ij], dim=1))
        return TAU_MIN + TAU_RANGE * torch.sigmoid(self.mlp(state))


class EffiWeightNet(nn.Module):
    """Spatial effective weights w_eff in [eps, 1-eps] applied to the auxiliary features."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.pixel_proj = nn.Conv2d(2 * dim, dim, kernel_size=1)
        self.vector_proj = nn.Linear(2 + 2 * dim, dim)
        self.mlp = nn.Sequential(
            nn.GELU(), nn.Conv2d(dim, max(dim // 2, 8), kernel_size=1), nn.GELU(),
            nn.Conv2d(max(dim // 2, 8), 1, kernel_size=1),
        )

    def forward(
        self,
        w: torch.Tensor,
        tau: torch.Tensor,
        memory_read: torch.Tensor,
        x_gate: torch.Tensor,
        c_task: torch.Tensor,
        c_modal: torch.Tensor,
    ) -> torch.Tensor:
        """w, tau [M,1]; memory_read, x_gate [M,D,h,w]; c_task, c_modal [M,D] -> [M,1,h,w].

        Proj over the concatenation is split into a per-pixel part and a
        per-image part added as a bias: the same linear map, without
        broadcasting the vectors to every pixel first.
        """
        pixel = self.pixel_proj(torch.cat([memory_read, x_gate], dim=1))
        vector = self.vector_proj(torch.cat([w, tau, c_task, c_modal], dim=1))
        logits = self.mlp(pixel + vector.unsqueeze(-1).unsqueeze(-1))
        # Squashed into [eps, 1-eps] rather than clamped: a clamp passes no gradient once the sigmoid
        # crosses 1-eps, and on the blob test (tests/models/test_models_gate_training.py) w_eff then sat
        # at 0.999 for a noise frame for good in 2 of 4 seeds.
        return self.eps + (1.0 - 2.0 * self.eps) * torch.sigmoid(logits)


def threshold_filter(w: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Soft step in (0,1): ~1 where w clears tau, fading to 0 below it."""
    return torch.sigmoid((w - tau) / THRESHOLD_SOFTNESS)


def threshold_weight(w: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """B3 without EffiWeightNet: keep w where it clears tau, fade it out below (soft step)."""
    return w * threshold_filter(w, tau)


class SourceCheckNet(nn.Module):
    """Logit of p(frame k holds the contrast it is named as), one per source frame.

    A quality score learnt only from the synthesis error cannot tell a frame that *is* a contrast from
    one that is *named* it: an ADC map given under FLAIR's name is sharp and noise-free, and the fusion
    took it (docs/experiments.md: B5 lost 2-9x more to a wrong contrast than to losing the source). This
    check is supervised directly, by binary cross-entropy against the dataset's 'contrast' artefact
    (losses.source_check_loss), and reads the frame's features beside the embedding of its declared
    contrast, so a contrast that does not match its name is what it learns to see. Noise and motion
    ghosts are deliberately not its business: a noisy FLAIR is still a FLAIR, and the quality gates
    weigh what is left in it (refusing noisy frames outright, as a first version of this check did,
    raised B5's loss under noise from 0.10-0.35 dB to 0.86-1.07). It is frame-wide: a mislabelled
    series is wrong in every slice.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = _mlp(3 * dim, dim, 1)

    def forward(self, feats: torch.Tensor, c_modal: torch.Tensor) -> torch.Tensor:
        """feats [B,K,D,h,w] (modality embedding added), c_modal [B,K,D] -> logits [B,K]."""
        mean = feats.mean(dim=(3, 4))
        spread = feats.var(dim=(3, 4), unbiased=False).add(1e-6).sqrt()
        return self.mlp(torch.cat([mean, spread, c_modal], dim=2))[..., 0]
