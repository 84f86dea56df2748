"""Uncertainty and quality terms: the predictors learn the real error they predict.

Two predictors are trained, both against detached real errors so they observe
the synthesis without steering it:
- TaskHeadNet's evaluator (and the U-Net's error head): a per-pixel Laplace
  scale b per candidate head, by the heteroscedastic Laplace negative
  log-likelihood |y - mu|/b + log b (Kendall & Gal 2017; Tanno et al. 2021),
  the likelihood that matches the L1 objective. Its minimiser is
  b = E|y - mu|, so b is an expected absolute error, and the log b term makes
  the fit relative: a 2x error is as costly at b = 0.01 as at b = 0.1, which
  keeps the small errors of flat tissue from being drowned by the edges.
  It is taken inside the head mask only, as the image losses are: over air the
  synthesis is blanked, and fitting the untrained haze there is what left the
  old error regression with no capacity for the brain.
- the fusion's quality estimate Q: the final synthesis' error pooled to the
  stride-8 fusion grid, regressed in log space, |log Q - log(e + floor)| with
  log Q taken from Q's logits (Q drives the accept/reject of auxiliary frames; it
  is an internal gate, not an output). Regressed in linear space, Q (a sigmoid)
  could be pushed by the image loss, through the accept gate, into saturation
  near 0, where neither loss moves it again: on the blob test of
  tests/models/test_models_gate_training.py that left accept at 0.5 for every
  frame in 2 of 4 seeds. In log space its gradient does not vanish there.

The source check (models.gates.SourceCheckNet) is the one predictor trained
on a label rather than an error: which source the dataset replaced by another
contrast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medk2n.losses.image import weighted_mean
from medk2n.models.output import K2NOutput


STATE_ERROR_FLOOR = 1e-3  # errors below this (air, where the synthesis is blanked) count as this


def laplace_nll(scale: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean of |r|/b + log b (the Laplace NLL up to log 2); r is used as given (detach it first)."""
    return weighted_mean(residual.abs() / scale + torch.log(scale), weight)


def quality_loss(out: K2NOutput, target: torch.Tensor, valid: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """out: detailed output; target [B,N,H,W]; valid [B,N] 0/1 weights; mask [B,N,H,W] pixel weights (the head)."""
    residual = (out.candidates - target.unsqueeze(2)).detach()
    weight = valid[:, :, None, None] if mask is None else valid[:, :, None, None] * mask.to(target.dtype)
    loss = laplace_nll(out.quality, residual, weight.unsqueeze(2).expand_as(residual))
    if out.state_log_error is not None:
        factor = target.shape[-1] // out.state_log_error.shape[-1]
        pooled = F.avg_pool2d((out.images - target).abs().detach(), factor)
        misfit = (out.state_log_error - torch.log(pooled + STATE_ERROR_FLOOR)).abs()
        loss = loss + weighted_mean(misfit, valid[:, :, None, None].expand_as(pooled))
    return loss


def source_check_loss(out: K2NOutput, named_right: torch.Tensor | None) -> torch.Tensor:
    """Binary cross-entropy of SourceCheckNet's logits [B,K] against named_right [B,K] (1: the source holds
    its named contrast, 0: another one), over the present sources; 0 for a model without the check or a
    batch without labels."""
    if out.source_check is None or named_right is None:
        return out.images.new_zeros(())
    per_slot = F.binary_cross_entropy_with_logits(out.source_check, named_right.to(out.source_check.dtype),
                                                  reduction="none")
    return weighted_mean(per_slot, out.avail.to(per_slot.dtype))
