"""Med-K2N: K source slices -> N target slices with a per-voxel Laplace scale (expected absolute error).

    x [B,K,H,W] --SliceEncoder (SAM2 Hiera + LoRA, per-modality input map)--> FPN levels per frame
              --MultiScaleNet--> F_k [B,K,C,H/8,W/8] (+ modality embedding c_modal)
              --SourceCheckNet (optional)--> s_k = p(frame k holds the contrast it is named as)
              --SequentialFusion per target (task prototypes, gates, quality acceptance)--> f [B,N,C,H/8,W/8]
              --TaskHeadNet (+ the slots' stride-4 level and source pixels at full/half/quarter
                resolution, mixed per target by accept x w_eff; task embedding c_task)--> images, scale

Ablations (config.ABLATIONS) decide which modules exist: B0 builds the
encoder and heads only and averages the present frames' features; B1 adds
MultiScaleNet, the task prototypes ("task memory") and the sequential fusion with quality
acceptance; B2..B4 add PreWeightNet, ThresholdNet, EffiWeightNet; B5 adds the
CMIM image embedder used by the training losses.
"""

from __future__ import annotations

import torch
from torch import nn

from medk2n.config import ModelConfig
from medk2n.errors import ConfigError
from medk2n.models.blocks import expand_targets, present_mean
from medk2n.models.cmim import ImageEmbedder
from medk2n.models.encoder import SIZE_MULTIPLE, SliceEncoder
from medk2n.models.fusion import SequentialFusion
from medk2n.models.gates import EffiWeightNet, PreWeightNet, SourceCheckNet, ThresholdNet
from medk2n.models.heads import TaskHeadNet
from medk2n.models.lora import merge_lora
from medk2n.models.prototypes import TaskPrototypes
from medk2n.models.multiscale import MultiScaleNet, SingleScale
from medk2n.models.output import K2NOutput, check_inputs

# The source check's logit becomes the fusion's trust through a sigmoid twice as steep as its probability:
# a frame the check puts at p = 0.9 passes at 0.99 and one at p = 0.1 at 0.01. At the probability itself
# every clean FLAIR (p ~0.9 on the phantom) gave up a tenth of its share of the fusion.
SOURCE_CHECK_TEMPERATURE = 0.5


class MedK2N(nn.Module):
    def __init__(self, cfg: ModelConfig, text_embeddings: torch.Tensor) -> None:
        super().__init__()
        vocab, dim, switches = len(cfg.modalities), cfg.fusion_dim, cfg.switches
        if tuple(text_embeddings.shape) != (vocab, cfg.text_dim):
            raise ConfigError(
                f"text_embeddings must be [{vocab}, {cfg.text_dim}] for this vocabulary, got {tuple(text_embeddings.shape)}"
            )
        if cfg.image_size % SIZE_MULTIPLE:
            raise ConfigError(f"image_size must be a multiple of {SIZE_MULTIPLE} for Hiera, got {cfg.image_size}")
        self.encoder = SliceEncoder(cfg.encoder, cfg.feature_dim, vocab, cfg.lora_rank, cfg.lora_alpha,
                                    image_size=cfg.image_size, windows=cfg.encoder_windows)
        self.scales = MultiScaleNet(cfg.feature_dim, dim) if switches["multiscale"] else SingleScale(cfg.feature_dim, dim)
        self.modality_embed = nn.Embedding(vocab, dim)
        self.task_embed = nn.Embedding(vocab, dim)
        self.fusion = (
            SequentialFusion(
                dim,
                TaskPrototypes(vocab, dim, cfg.memory_slots),
                PreWeightNet(dim) if switches["preweight"] else None,
                ThresholdNet(dim, vocab) if switches["threshold"] else None,
                EffiWeightNet(dim, cfg.eps) if switches["effiweight"] else None,
                base_by_quality=cfg.base_by_quality,
            )
            if switches["task_memory"]
            else None
        )
        self.heads = TaskHeadNet(dim, cfg.feature_dim, cfg.num_candidate_heads, vocab)
        self.embedder = ImageEmbedder(cfg.text_dim) if switches["cmim"] else None
        self.register_buffer("text_embeddings", text_embeddings.detach().float().clone())
        # The check gates the fusion; B0 has none to gate, and ignores the switch as it does base_by_quality.
        # Built last, so every other module starts from the same draws as in a model without it: the
        # comparison with and without the check is not also a comparison of two initialisations.
        self.source_check = SourceCheckNet(dim) if cfg.source_check and self.fusion is not None else None

    def forward(
        self, x: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, avail: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.synthesize(x, src, tgt, avail)
        return out.images, out.scale

    def forward_detailed(
        self, x: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, avail: torch.Tensor | None = None
    ) -> K2NOutput:
        out = self.synthesize(x, src, tgt, avail)
        if self.embedder is not None:
            out.image_embed = self.embedder(out.images)
            out.source_embed = self.embedder(x)
        return out

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """CMIM embedding of real slices [B,N,H,W] -> [B,N,text_dim] (same projector as the generated ones)."""
        if self.embedder is None:
            raise ConfigError("this model has CMIM switched off (ablation), so it has no image embedder")
        return self.embedder(images)

    def merge_lora(self) -> None:
        merge_lora(self)

    def _encode(self, x: torch.Tensor, src: torch.Tensor, avail: torch.Tensor) -> list[torch.Tensor]:
        """Encoder levels [B*K,D,h,w] per slot. In training only the present frames are encoded (early in the
        curriculum half the slots are padding); an absent slot's levels are zeros, which nothing downstream
        reads (every use is weighted by avail). Eval and export encode every slot: one static graph."""
        if not self.training or bool(avail.all()):
            return self.encoder(x, src)
        present = avail.flatten() > 0
        encoded = self.encoder(x.flatten(0, 1)[present].unsqueeze(1), src.flatten()[present].unsqueeze(1))
        levels = []
        for level in encoded:
            full = level.new_zeros((present.numel(), *level.shape[1:]))
            full[present] = level
            levels.append(full)
        return levels

    def source_check_logits(self, x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """The source check alone, [B,K,H,W] x [B,K] -> [B,K] logits: what a report on the sources needs,
        without the fusion, heads and image embedder a full forward would run per slice."""
        if self.source_check is None:
            raise ConfigError("this model has no source check (model.source_check off, or B0)")
        _, c_modal, feats = self._features(x, src, torch.ones_like(x[:, :, 0, 0]))
        return self.source_check(feats, c_modal)

    def _features(self, x, src, avail) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(encoder levels, c_modal [B,K,C], per-frame features F_k + c_modal [B,K,C,h,w])."""
        levels = self._encode(x, src, avail)
        c_modal = self.modality_embed(src)
        feats = self.scales(levels).unflatten(0, (-1, x.shape[1])) + c_modal.unsqueeze(-1).unsqueeze(-1)
        return levels, c_modal, feats

    def synthesize(self, x, src, tgt, avail) -> K2NOutput:
        """The forward pass with every intermediate the losses and the export read (no CMIM embeddings)."""
        check_inputs(x, src, tgt, avail)
        k, n = x.shape[1], tgt.shape[1]
        avail = torch.ones_like(x[:, :, 0, 0]) if avail is None else avail.to(x.dtype)
        levels, c_modal, feats = self._features(x, src, avail)
        c_task = self.task_embed(tgt)  # [B,N,C]
        check = None if self.source_check is None else self.source_check(feats, c_modal)  # [B,K] logits
        gates: dict[str, torch.Tensor] = {}
        state_log_error = None
        # How much of each slot reaches each target's fine-scale paths: every present slot alike
        # without a fusion (B0), else the base frame fully and each auxiliary frame by the share of
        # it the fusion took into the fused state (accept x w_eff): which of the two gates carries
        # the decision is learned and differs between runs, so the pixels follow both.
        slot_weights = avail[:, None, :, None, None].expand(-1, n, -1, 1, 1)
        if self.fusion is None:
            fused = present_mean(feats, avail).unsqueeze(1).expand(-1, n, -1, -1, -1)
        else:
            result = self.fusion(
                expand_targets(feats, n), expand_targets(src, n), tgt.flatten(),
                expand_targets(avail, n), c_task.flatten(0, 1), expand_targets(c_modal, n),
                None if check is None else expand_targets(torch.sigmoid(check / SOURCE_CHECK_TEMPERATURE), n),
            )
            fused = result.features.unflatten(0, (-1, n))
            gates = {name: value.unflatten(0, (-1, n)) for name, value in result.gates.items()}
            state_log_error = result.log_error_map[:, 0].unflatten(0, (-1, n))
            if k > 1:
                used = gates["accept"][..., None, None] * gates["w_eff"]  # [B,N,K-1,h,w]
                slot_weights = torch.cat([torch.ones_like(used[:, :, :1]), used], dim=2)
                if result.order is not None:  # fusion order -> slot order, which the heads' inputs keep
                    slot_weights = torch.einsum("mik,mi...->mk...", result.order, slot_weights.flatten(0, 1))
                    slot_weights = slot_weights.unflatten(0, (-1, n))
                slot_weights = slot_weights * avail[:, None, :, None, None]
        heads = self.heads(fused, levels[0].unflatten(0, (-1, k)), c_task, tgt, x, c_modal, avail, slot_weights)
        return K2NOutput(
            images=heads.images, scale=heads.scale, candidates=heads.candidates, quality=heads.quality,
            src=src, tgt=tgt, avail=avail, gates=gates, state_log_error=state_log_error, source_check=check,
        )


def has_source_check(model: nn.Module) -> bool:
    """Whether `model` carries a source check (Med-K2N built with model.source_check; never B0 or the U-Net):
    the export gives it a third output and the runtime reports it."""
    return getattr(model, "source_check", None) is not None


def graph_outputs(model: nn.Module, x: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor,
                  avail: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What an exported graph of `model` returns: (images, scale), plus the source check's probabilities
    [B,K] when it has one. The export wrapper traces this and the PyTorch runner serves it, so a
    checkpoint and its bundle answer with the same outputs."""
    if not has_source_check(model):
        return tuple(model(x, src, tgt, avail))
    out = model.synthesize(x, src, tgt, avail)
    return out.images, out.scale, torch.sigmoid(out.source_check)
