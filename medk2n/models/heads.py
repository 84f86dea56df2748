"""TaskHeadNet: a shared decoder per target, Kh candidate heads, a quality evaluator, and selection.

Every target gets one decoder from the fused stride-8 state (plus the slots'
stride-4 FPN level) up to full resolution. Hiera's finest level is stride 4,
so on its own the decoder can only paint what a 16x16 grid holds at 64^2:
`SourceDetail` gives it the source pixels themselves at full, half and quarter
resolution (modality-aware), the way U-Net skips and SAM2's high-resolution
decoder features do, so edges, CSF and small lesions survive into the
synthesis. The slots are mixed per target with the fusion's gates, so the
gates govern the fine-scale paths as well as the stride-8 state: a frame they
turn down does not leak back through its pixels. Every decoder layer is
conditioned on the target.

The Kh candidate heads share that decoder and differ in their last two layers
(a full-resolution decoder per head cost a whole decoder's time per head, and
identical heads trained by identical losses were near-duplicates): the loss
gives most of each image's candidate loss to the head that is best on it
(relaxed winner-takes-all, losses.head_weights), so the heads specialise and
choosing between them is a real choice.
A quality evaluator predicts each candidate's per-pixel Laplace scale b,
trained by the heteroscedastic Laplace likelihood |y - mu|/b + log b inside
the head (losses.quality): the likelihood that matches the L1 objective, whose
optimum is b = E|y - mu|, so b is the expected absolute error in normalised
intensity units. It only observes the candidates (its inputs are detached), so
it learns to predict the error without pulling the decoders.

Selection is per target image by predicted mean error inside the sources'
signal (the scale is untrained over air, where the loss never looks): a
softmax over -error in training (every head gets gradient), a one-hot argmin
in eval (exportable, no branching). Selecting whole images rather than pixels
keeps seams between heads out of the synthesis, and keeps the exported graph's
choice stable: near-ties between per-pixel errors would flip under float32
reordering between backends, a slice-wide mean practically never does.

The `scale` output is the selected candidate's b. It is not yet an interval:
export calibrates it split-conformally on held-out subjects (export.conformal)
and the runtime turns it into a half-width at a stated coverage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medk2n.models.blocks import FiLM, SeparableConv, channels_innermost, expand_targets, group_norm

# Soft selection in training: a 0.01 gap in predicted mean error gives the better head e-times the weight.
SELECTION_TEMPERATURE = 0.01
# Smallest Laplace scale (normalised units): keeps |r|/b finite where a head is nearly exact.
SCALE_FLOOR = 1e-3
# A normalised source intensity above this is signal, not air (as the runtime's synthesis support).
SIGNAL_LEVEL = 0.05


def laplace_scale(raw: torch.Tensor) -> torch.Tensor:
    """Positive scale from an unconstrained output; softplus keeps it linear for large errors."""
    return F.softplus(raw) + SCALE_FLOOR


def signal_support(x: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    """x [B,K,H,W], avail [B,K] -> [B,H,W] 1 where any present source has signal (exportable, no branching)."""
    return ((x * avail[:, :, None, None]).amax(dim=1) > SIGNAL_LEVEL).to(x.dtype)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def cat_channels(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on channels in channels-last layout: torch.cat returns a contiguous tensor when its inputs'
    layouts differ, and oneDNN's depthwise convolution runs ~2x slower on CPU from that layout (same values)."""
    for part in parts:
        if part.requires_grad and channels_innermost(part):
            # Its gradient arrives as a channel slice of the concatenation's: strided, and the elementwise
            # backward it meets next (GELU) ran 6x slower on that than on a dense channels-last copy.
            part.register_hook(_dense_channels_last)
    return torch.cat(parts, dim=1).contiguous(memory_format=torch.channels_last)


def _dense_channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


class SourceDetail(nn.Module):
    """A small convolutional pyramid over each source slice (full, 1/2, 1/4 resolution), per slot.

    Hiera starts at stride 4, so this is the decoder's only view of the source pixels,
    the way a U-Net's encoder skips are: contrast synthesis is mostly a per-voxel map of
    the sources' intensities plus local context, and the voxels that matter most (CSF,
    lesions) are a few percent of a slice. Each level is group-normalised, as the U-Net's
    blocks are (unnormalised, a thin path learnt those voxels far more slowly: T2 of CSF
    stayed grey after the demo's 2000 steps), and conditioned on the slot's modality, so
    FLAIR's and ADC's intensities land in different channels.

    The slots are mixed per target by TaskHeadNet with the fusion's gates (`slot_weights`),
    so a source the gates turn down does not come back through its pixels.
    """

    def __init__(self, cond_dim: int, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, kernel_size=3, padding=1)
        self.modality = nn.Linear(cond_dim, width)
        self.refine = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.modality_film = FiLM(cond_dim, width)
        self.down_half = nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1)
        self.refine_half = nn.Conv2d(width, width, kernel_size=3, padding=1)
        self.down_quarter = nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1)
        self.norms = nn.ModuleList(group_norm(c) for c in (width, width, width, width, 2 * width))
        self.act = nn.GELU()
        self.width = width

    def forward(self, x: torch.Tensor, c_modal: torch.Tensor) -> list[torch.Tensor]:
        """x [B,K,H,W], c_modal [B,K,D] -> [full [B,K,W,H,W], half [B,K,W,H/2,W/2], quarter [B,K,2W,H/4,W/4]]."""
        c = c_modal.flatten(0, 1)
        n = self.norms
        h = self.act(n[0](self.stem(x.flatten(0, 1).unsqueeze(1))) + self.modality(c)[:, :, None, None])
        full = self.act(self.modality_film(n[1](self.refine(h)), c))
        half = self.act(n[3](self.refine_half(self.act(n[2](self.down_half(full))))))
        quarter = self.act(n[4](self.down_quarter(half)))
        return [t.unflatten(0, x.shape[:2]) for t in (full, half, quarter)]


def mix_slots(slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-target weighted mean of per-slot maps: slots [B,K,C,H,W], weights [B,N,K,h,w] (any h,w dividing H,W,
    or 1x1 for one weight per slot; 0 = slot ignored) -> [B*N,C,H,W]. Spatial weights are resized to the level
    bilinearly; 1x1 weights broadcast (resizing a constant would only fill full-resolution maps with it)."""
    b, k, c, hh, ww = slots.shape
    n = weights.shape[1]
    w = weights.flatten(0, 2).unsqueeze(1)
    if w.shape[-2:] != (1, 1) and w.shape[-2:] != (hh, ww):
        w = F.interpolate(w, size=(hh, ww), mode="bilinear", align_corners=False)
    w = w.unflatten(0, (b, n, k))  # [B,N,K,1,H,W] or [B,N,K,1,1,1]
    # Channels-last slots are mixed with channels as the last axis, so the result and its gradient keep the
    # layout of the convolutions around them (a GELU backward that meets a gradient in the other layout ran
    # 8x slower in CPU training); same values. The export traces the channels-first order.
    channels_last = channels_innermost(slots, dim=2)
    if channels_last:
        w, slots = w.permute(0, 1, 2, 4, 5, 3), slots.permute(0, 1, 3, 4, 2)  # [B,N,K,H,W,1], [B,K,H,W,C]
    total = (w * slots.unsqueeze(1)).sum(dim=2) / w.sum(dim=2).clamp_min(1e-6)
    return (total.permute(0, 1, 4, 2, 3) if channels_last else total).flatten(0, 1)


class DecoderTrunk(nn.Module):
    """Stride 4 -> full resolution with source detail, shared by the candidate heads; returns hidden features."""

    def __init__(self, dim: int, detail: int, cond_dim: int) -> None:
        super().__init__()
        mid, fine = max(dim // 2, 16), max(dim // 4, 16)
        self.up1 = SeparableConv(dim + detail, mid)
        self.up2 = SeparableConv(mid + detail, fine)
        # Every decoder layer is conditioned on the target (as the U-Net's are): the same
        # voxel maps to opposite intensities in different targets (CSF bright on T2, dark on
        # DWI/T1), which shared layers fed target-modulated inputs only fit as a compromise.
        # The per-pixel non-linear map of the sources' intensities that contrast synthesis
        # mostly is lives in the candidate heads (CandidateHeads), one per head.
        self.films = nn.ModuleList(FiLM(cond_dim, c) for c in (mid, fine))
        self.act = nn.GELU()
        self.hidden_dim = fine

    def forward(self, x: torch.Tensor, half: torch.Tensor, full: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.act(self.films[0](self.up1(cat_channels([upsample2(x), half])), cond))
        return self.act(self.films[1](self.up2(cat_channels([upsample2(h), full])), cond))


class CandidateHeads(nn.Module):
    """Kh candidate syntheses per target modality from the shared hidden features, each its own per-pixel MLP.

    The paper's TaskHeadNet has K_head heads *per target*: here each target modality of the
    vocabulary owns its Kh MLPs, picked by the target id (a gather of weights, then two
    batched pointwise products; exportable). Shared heads fed target-modulated features
    had to fit opposite intensity maps (CSF bright on T2 and ADC, dark on FLAIR and T1) with
    one non-linearity. The Kh heads of a target differ because the loss makes them
    specialise (losses.head_weights: the best head of each image takes most of the candidate
    loss), not by their initialisation alone."""

    def __init__(self, hidden: int, num_heads: int, vocab: int) -> None:
        super().__init__()
        self.num_heads, self.hidden = num_heads, hidden
        pixel = nn.Conv2d(hidden, num_heads * hidden, kernel_size=1)
        out = nn.Conv2d(num_heads * hidden, num_heads, kernel_size=1, groups=num_heads)
        # The default convolution initialisation, copied to every target.
        self.pixel_weight = nn.Parameter(pixel.weight.detach()[:, :, 0, 0].repeat(vocab, 1, 1))
        self.pixel_bias = nn.Parameter(pixel.bias.detach().repeat(vocab, 1))
        self.out_weight = nn.Parameter(out.weight.detach()[:, :, 0, 0].reshape(1, num_heads, hidden).repeat(vocab, 1, 1))
        self.out_bias = nn.Parameter(out.bias.detach().repeat(vocab, 1))
        self.act = nn.GELU()

    def forward(self, hidden: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """hidden [M,C,H,W], tgt [M] target ids -> candidates in (0,1) [M,Kh,H,W]."""
        m, c, hh, ww = hidden.shape
        if channels_innermost(hidden):
            # The same products with pixels as rows, so channels-last features are read in place and their
            # gradient comes back in their layout (a reshape to [M,C,HW] copied them, and the decoder's GELU
            # backward then met a gradient in the other layout, 8x slower). Export traces the branch below.
            flat = hidden.permute(0, 2, 3, 1).reshape(m, hh * ww, c)
            h = torch.baddbmm(self.pixel_bias[tgt].unsqueeze(1), flat, self.pixel_weight[tgt].transpose(1, 2))
            h = self.act(h).reshape(m, hh * ww, self.num_heads, self.hidden)  # [M,HW,Kh,C]
            out = (self.out_weight[tgt].unsqueeze(1) * h).sum(dim=-1) + self.out_bias[tgt].unsqueeze(1)
            return torch.sigmoid(out.reshape(m, hh, ww, self.num_heads).permute(0, 3, 1, 2))
        flat = hidden.reshape(m, c, hh * ww)
        h = torch.bmm(self.pixel_weight[tgt], flat) + self.pixel_bias[tgt].unsqueeze(-1)  # [M,Kh*C,HW]
        h = self.act(h).reshape(m, self.num_heads, self.hidden, hh * ww)
        out = (self.out_weight[tgt].unsqueeze(-1) * h).sum(dim=2) + self.out_bias[tgt].unsqueeze(-1)
        return torch.sigmoid(out.reshape(m, self.num_heads, hh, ww))


class QualityEvaluator(nn.Module):
    """Per-pixel Laplace scale b (expected absolute error) of every candidate, given the shared features and all
    candidates at once (so it can judge each against the others).

    It works at half resolution and upsamples its log-scale bilinearly: the expected error varies
    over a few pixels, not pixel to pixel, and at full resolution this predictor cost as much
    as the decoder layer it judges."""

    def __init__(self, hidden_dim: int, cond_dim: int, num_heads: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(hidden_dim + num_heads, hidden_dim, kernel_size=1)
        self.film = FiLM(cond_dim, hidden_dim)
        self.spatial = SeparableConv(hidden_dim, hidden_dim)
        self.out = nn.Conv2d(hidden_dim, num_heads, kernel_size=1)
        nn.init.constant_(self.out.bias, -3.0)  # b starts near 0.05, the order of a first synthesis' error
        self.act = nn.GELU()

    def forward(self, hidden: torch.Tensor, candidates: torch.Tensor, c_task: torch.Tensor) -> torch.Tensor:
        """hidden [M,C,H,W], candidates [M,Kh,H,W] -> scale [M,Kh,H,W]."""
        x = F.avg_pool2d(cat_channels([hidden, candidates]), 2)
        h = self.act(self.film(self.inp(x), c_task))
        return laplace_scale(upsample2(self.out(self.act(self.spatial(h)))))


@dataclass
class HeadOutput:
    images: torch.Tensor  # [B,N,H,W]
    scale: torch.Tensor  # [B,N,H,W] Laplace scale of the selected candidate
    candidates: torch.Tensor  # [B,N,Kh,H,W]
    quality: torch.Tensor  # [B,N,Kh,H,W] Laplace scale (expected absolute error) per candidate


class TaskHeadNet(nn.Module):
    def __init__(self, dim: int, skip_dim: int, num_heads: int, vocab: int) -> None:
        super().__init__()
        trunk = max(dim // 2, 8)
        self.skip = nn.Conv2d(skip_dim, trunk, kernel_size=1)
        self.detail = SourceDetail(dim, 16)
        self.merge = nn.Conv2d(dim + trunk + 2 * self.detail.width, trunk, kernel_size=1)
        self.spatial = nn.Conv2d(trunk, trunk, kernel_size=3, padding=1, groups=trunk)
        self.norm = group_norm(trunk)
        self.film = FiLM(dim, trunk)
        self.act = nn.GELU()
        # Target-aware pixel mapping: the same source edge means a different intensity in each target.
        w = self.detail.width
        self.detail_film = nn.ModuleList(FiLM(dim, c) for c in (w, w, 2 * w))
        self.decoder = DecoderTrunk(trunk, self.detail.width, dim)
        self.heads = CandidateHeads(self.decoder.hidden_dim, num_heads, vocab)
        self.evaluator = QualityEvaluator(self.decoder.hidden_dim, dim, num_heads)

    def forward(self, features: torch.Tensor, skip: torch.Tensor, c_task: torch.Tensor, tgt: torch.Tensor,
                x: torch.Tensor, c_modal: torch.Tensor, avail: torch.Tensor, slot_weights: torch.Tensor) -> HeadOutput:
        """features [B,N,D,h,w] (stride 8); skip [B,K,S,2h,2w] (each slot's stride-4 level); c_task [B,N,D];
        tgt [B,N] target ids; x [B,K,H,W], c_modal [B,K,D], avail [B,K]; slot_weights [B,N,K,h',w'] how much of each present slot
        reaches each target's fine-scale paths (0 for absent slots)."""
        n = features.shape[1]
        cond = c_task.flatten(0, 1)
        full, half, quarter = (self.act(film(mix_slots(t, slot_weights), cond))
                               for film, t in zip(self.detail_film, self.detail(x, c_modal)))
        skip = self.skip(mix_slots(skip, slot_weights))
        t = self.merge(torch.cat([upsample2(features.flatten(0, 1)), skip, quarter], dim=1))
        t = self.act(self.film(self.norm(self.spatial(t)), cond))
        hidden = self.decoder(t, half, full, cond)
        candidates = self.heads(hidden, tgt.flatten())  # [M,Kh,H,W]
        quality = self.evaluator(hidden.detach(), candidates.detach(), cond)
        support = expand_targets(signal_support(x, avail), n)
        image, scale = self._select(candidates, quality, support)
        return HeadOutput(
            images=image.unflatten(0, (-1, n)),
            scale=scale.unflatten(0, (-1, n)),
            candidates=candidates.unflatten(0, (-1, n)),
            quality=quality.unflatten(0, (-1, n)),
        )

    def _select(self, candidates: torch.Tensor, quality: torch.Tensor,
                support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[M,Kh,H,W] x2, support [M,H,W] -> selected image and its scale map, each [M,H,W]."""
        inside = support.unsqueeze(1)
        # [M,Kh] predicted mean absolute error over the sources' signal
        score = (quality * inside).sum(dim=(2, 3)) / inside.sum(dim=(2, 3)).clamp_min(1.0)
        if self.training:
            weights = torch.softmax(-score.detach() / SELECTION_TEMPERATURE, dim=1)
        else:
            best = torch.argmin(score, dim=1, keepdim=True)
            heads = torch.arange(score.shape[1], device=score.device)
            weights = (heads.unsqueeze(0) == best).to(candidates.dtype)
        weights = weights[:, :, None, None]
        return (weights * candidates).sum(dim=1), (weights * quality).sum(dim=1)
