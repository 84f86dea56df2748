"""Generators: `build_model(cfg)` is the one way to make one.

Submodules are imported inside `build_model`, so importing this package does
not import sam2 (which starts Hydra) or the text model.
"""

from __future__ import annotations

import torch
from torch import nn

from medk2n.config import ModelConfig
from medk2n.errors import ConfigError

ARCHS = ("medk2n", "unet")


def build_model(cfg: ModelConfig, text_embeddings: torch.Tensor | None = None, pretrained: bool = True) -> nn.Module:
    """Build the generator `cfg.arch` describes.

    text_embeddings: the [V, text_dim] modality description embeddings for
      Med-K2N; None computes them with the bundled sentence model (about 2 s,
      cached per process). Pass the tensor from a checkpoint to skip that.
      The U-Net baseline has no CMIM and ignores it.
    pretrained: load `cfg.encoder_checkpoint` (SAM2 weights) when set. Pass
      False when a medk2n checkpoint will overwrite every weight anyway; the
      trunk is frozen to its LoRA adapters either way, so fresh and restored
      models train the same parameters.
    """
    if cfg.arch == "unet":
        from medk2n.models.unet import UNetBaseline

        return UNetBaseline(cfg)
    if cfg.arch != "medk2n":
        raise ConfigError(f"unknown arch {cfg.arch!r}; choose one of {', '.join(ARCHS)}")
    from medk2n.models.encoder import load_sam2_checkpoint, warn_if_untrained
    from medk2n.models.medk2n import MedK2N

    if text_embeddings is None:
        from medk2n.models.text import modality_text_embeddings

        text_embeddings = modality_text_embeddings(cfg.modalities)
    model = MedK2N(cfg, text_embeddings)
    if cfg.encoder_checkpoint:
        if pretrained:
            load_sam2_checkpoint(model.encoder, cfg.encoder_checkpoint)
        model.encoder.freeze_pretrained()
    elif pretrained:  # restoring a medk2n checkpoint: its weights are trained, nothing to warn about
        warn_if_untrained(cfg.encoder)
    return model
