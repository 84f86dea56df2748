"""Quality regression: the error predictors learn the real error they predict.

Two predictors are trained, both against detached real absolute errors so
they observe the synthesis without steering it:
- TaskHeadNet's evaluator: per pixel, per candidate head (its prediction of
  the selected head becomes the confidence map);
- the fusion's quality estimate Q: the final synthesis' error pooled to the
  stride-8 fusion grid (Q drives the accept/reject of auxiliary frames).
They are trained over the whole slice (target validity only, not the brain
mask), so the confidence map is meaningful in the background too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medk2n.losses.image import weighted_mean
from medk2n.models.output import K2NOutput


def quality_loss(out: K2NOutput, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """out: detailed output; target [B,N,H,W]; valid [B,N] 0/1 weights."""
    real = (out.candidates - target.unsqueeze(2)).abs().detach()
    weight = valid[:, :, None, None, None].expand_as(real)
    loss = weighted_mean((out.quality - real).abs(), weight)
    if out.state_error is not None:
        factor = target.shape[-1] // out.state_error.shape[-1]
        pooled = F.avg_pool2d((out.images - target).abs().detach(), factor)
        loss = loss + weighted_mean((out.state_error - pooled).abs(), valid[:, :, None, None].expand_as(pooled))
    return loss
