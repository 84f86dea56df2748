"""CMIM: modality identity of the generated images (paper eq. 12-13).

contrastive (eq. 12): InfoNCE between the embedding of each generated image
  and the text embeddings of every modality in the vocabulary; the correct
  class is the target modality, so the generator is pushed to produce an image
  that "reads as" the contrast it was asked for.
triplet (eq. 13): anchor = generated image, positive = the real target image,
  negatives = real images of other modalities in the same sample (the other
  targets and the present sources); cosine distance with a margin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medk2n.losses.image import weighted_mean


def contrastive_loss(
    image_embed: torch.Tensor, text_embeddings: torch.Tensor, tgt: torch.Tensor, valid: torch.Tensor, temperature: float
) -> torch.Tensor:
    """image_embed [B,N,D] (unit), text_embeddings [V,D] (unit), tgt [B,N], valid [B,N] -> scalar."""
    logits = image_embed @ text_embeddings.t() / temperature  # [B,N,V]
    ce = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="none")
    return weighted_mean(ce, valid.flatten())


def triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    tgt: torch.Tensor,
    valid: torch.Tensor,
    source_embed: torch.Tensor,
    src: torch.Tensor,
    avail: torch.Tensor,
    margin: float,
) -> torch.Tensor:
    """anchor/positive [B,N,D] (unit), tgt/valid [B,N], source_embed [B,K,D], src/avail [B,K] -> scalar.

    Averaged over every (anchor, negative) pair whose negative is a valid image
    of a different modality; 0 when a batch has no such pair.
    """
    pool = torch.cat([positive, source_embed], dim=1)  # [B,N+K,D]
    pool_ids = torch.cat([tgt, src], dim=1)
    pool_ok = torch.cat([valid, avail], dim=1)
    is_negative = (pool_ids.unsqueeze(1) != tgt.unsqueeze(2)).to(anchor.dtype) * pool_ok.unsqueeze(1)
    weight = is_negative * valid.unsqueeze(2)  # [B,N,N+K]
    d_pos = 1.0 - (anchor * positive).sum(dim=-1, keepdim=True)  # [B,N,1]
    d_neg = 1.0 - anchor @ pool.transpose(1, 2)  # [B,N,N+K]
    return weighted_mean(F.relu(d_pos - d_neg + margin), weight)
