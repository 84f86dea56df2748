"""Training objective of Med-K2N (paper eq. 14) and of the baseline.

    L = l1 * L1 + ssim * (1 - SSIM) + cmim * L_con + metric * L_tri + quality * L_q
        + lesion * L1_lesion + histogram * W1 + gradient * L1_grad + source_check * BCE_check

L1_lesion (our addition, see LossConfig) is L1 weighted by the shipped lesion
mask's cover of each pixel; it is 0 for batches without lesion masks. W1 (our
addition) is the distance between the intensity histograms of synthesis and
truth inside the mask, for the image and each candidate head (mean over heads).
L1_grad (our addition, off unless configured) is the L1 between their row and
column differences, for the image and the mean over candidate heads.

L1, L1_lesion and SSIM cover the selected image and the candidate heads: in
eval TaskHeadNet outputs one head alone, so the SSIM term must reach the
heads, not only the soft mixture of training. Across the heads these terms are
weighted by `head_weights`, a relaxed winner-takes-all (Rupprecht et al.
2017, multiple-hypothesis learning): the head with the lowest L1 on an image
takes 1 - HEAD_EPSILON of that image's candidate loss, the others share the
rest. Equal weights trained identical heads into near-duplicates, which left
the quality-driven selection nothing to choose between; the small share keeps
every head a usable synthesis.

BCE_check (our addition) trains SourceCheckNet, for models built with it, to
tell a source that holds its named contrast from one the dataset replaced by
another contrast (models.gates); it is 0 without the per-slot `named_right`
labels the training dataset emits.

CMIM terms (L_con, L_tri) exist only for models built with CMIM switched on
(config.ABLATIONS "cmim"), i.e. whose detailed output carries `image_embed`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medk2n.config import LossConfig
from medk2n.losses.cmim import contrastive_loss, triplet_loss
from medk2n.losses.image import gradient_l1, histogram_l1, masked_l1, ssim
from medk2n.losses.quality import quality_loss, source_check_loss
from medk2n.models.output import K2NOutput


def total_loss(
    out: K2NOutput,
    target: torch.Tensor,
    tgt: torch.Tensor,
    model: nn.Module,
    cfg: LossConfig,
    mask: torch.Tensor | None = None,
    tgt_valid: torch.Tensor | None = None,
    lesion: torch.Tensor | None = None,
    named_right: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 14 over the valid targets.

    target [B,N,H,W]; tgt [B,N]; mask [B,N,H,W] pixel weights for L1/SSIM
    (None = every pixel); tgt_valid [B,N] (0 = padded target, excluded from
    every term; None = all valid); lesion [B,H,W] lesion cover per pixel
    (None = no lesion masks); named_right [B,K] 1 where a source holds its named contrast, 0 where
    the dataset put another contrast there (None = unknown: no source-check term). Returns the loss
    and the value of each term, {"l1", "ssim" (1 - SSIM of the image plus that of the heads), "lesion", "histogram", "gradient",
    "source_check", "cmim", "metric", "quality"}, as floats.
    """
    valid = torch.ones_like(target[:, :, 0, 0]) if tgt_valid is None else tgt_valid.to(target.dtype)
    weight = valid[:, :, None, None].expand_as(target)
    if mask is not None:
        weight = weight * mask.to(target.dtype)
    heads = head_weights(out.candidates, target, weight)
    terms = {
        "l1": _image_and_candidates_l1(out, target, weight, heads),
        "ssim": 2.0 - ssim(out.images, target, weight) - ssim(out.candidates, _per_head(target, out), heads * weight.unsqueeze(2)),
        "lesion": _lesion_l1(out, target, valid, lesion, heads),
        "histogram": _image_and_candidates_histogram(out, target, weight),
        "gradient": _image_and_heads(gradient_l1, out, target, weight),
        "quality": quality_loss(out, target, valid, mask),
        "source_check": source_check_loss(out, named_right),
    }
    if out.image_embed is not None:
        terms["cmim"] = contrastive_loss(out.image_embed, model.text_embeddings, tgt, valid, cfg.temperature)
        terms["metric"] = triplet_loss(
            out.image_embed, model.embed_images(target), tgt, valid, out.source_embed, out.src, out.avail, cfg.margin
        )
    else:
        terms["cmim"] = terms["metric"] = torch.zeros((), device=target.device)
    loss = sum(getattr(cfg, name) * value for name, value in terms.items())
    return loss, {name: float(value.detach()) for name, value in terms.items()}


# Share of an image's candidate loss left to the heads that are not its best (relaxed winner-takes-all).
HEAD_EPSILON = 0.05


def head_weights(candidates: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """candidates [B,N,Kh,H,W], target/weight [B,N,H,W] -> [B,N,Kh,1,1], summing to 1 over the heads:
    1 - HEAD_EPSILON for the head with the lowest weighted L1 on the image, the rest shared by the others."""
    kh = candidates.shape[2]
    if kh == 1:
        return torch.ones_like(candidates[:, :, :, :1, :1])
    w = weight.unsqueeze(2)
    with torch.no_grad():
        error = ((candidates - target.unsqueeze(2)).abs() * w).sum(dim=(3, 4)) / w.sum(dim=(3, 4)).clamp_min(1e-8)
        best = F.one_hot(error.argmin(dim=2), kh).to(candidates.dtype)
    shares = best * (1.0 - HEAD_EPSILON) + (1.0 - best) * (HEAD_EPSILON / (kh - 1))
    return shares[..., None, None]


def _per_head(target: torch.Tensor, out: K2NOutput) -> torch.Tensor:
    return target.unsqueeze(2).expand_as(out.candidates)


def _lesion_l1(out: K2NOutput, target: torch.Tensor, valid: torch.Tensor, lesion: torch.Tensor | None,
               heads: torch.Tensor) -> torch.Tensor:
    """L1 of the image and of the candidates inside the lesions, as the main L1 covers both."""
    if lesion is None:
        return torch.zeros((), device=target.device)
    return _image_and_candidates_l1(out, target, valid[:, :, None, None] * lesion.to(target.dtype)[:, None], heads)


def _image_and_candidates_l1(out: K2NOutput, target: torch.Tensor, weight: torch.Tensor,
                             heads: torch.Tensor) -> torch.Tensor:
    """Weighted L1 of the selected image plus that of the candidate heads, weighted across heads by
    `heads` [B,N,Kh,1,1] (weight [B,N,H,W]); each part is on the scale of one image's L1."""
    return masked_l1(out.images, target, weight) + masked_l1(out.candidates, _per_head(target, out),
                                                             heads * weight.unsqueeze(2))


def _image_and_candidates_histogram(out: K2NOutput, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Histogram distance of the selected image plus the mean over candidate heads.

    Eval outputs one head alone, so each head's histogram must match, not only
    the mixture's. histogram_l1 divides by the member pixels of every head, so
    the candidate part is a mean over heads.
    """
    return _image_and_heads(histogram_l1, out, target, weight)


def _image_and_heads(term: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], out: K2NOutput,
                     target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """term(image) + term(all candidate heads at once): for a term that normalises by its counted
    pixels (histogram, gradient) the second part is a mean over heads, each of which eval may output alone."""
    heads = out.candidates
    return term(out.images, target, weight) + term(
        heads, target.unsqueeze(2).expand_as(heads), weight.unsqueeze(2).expand_as(heads)
    )
