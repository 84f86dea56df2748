"""SAM2 Hiera image encoder with LoRA, fed one MRI slice per source frame.

Built by composition from the `sam2` package's own classes (Hiera trunk,
FPN neck, `ImageEncoder`), exactly as the SAM2.1 YAML configs assemble them
but without Hydra, so official SAM2 checkpoints load key for key.

A 1-channel slice becomes Hiera's 3-channel input through a per-modality
scale and bias (the learned modality embedding of the inputs): initialised to
SAM2's ImageNet normalisation, so a pretrained trunk sees what it was trained
on, and free to learn a different mapping per contrast.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine
from torch import nn

from medk2n.config import ENCODER_WINDOWS
from medk2n.errors import CheckpointError, ConfigError
from medk2n.models.lora import apply_lora

log = logging.getLogger(__name__)

# SAM2 normalises RGB input with the ImageNet statistics.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_SAM2_PREFIX = "image_encoder."


@dataclass(frozen=True)
class HieraPreset:
    """Trunk arguments and whether an official SAM2 checkpoint exists for it."""

    trunk: dict = field(default_factory=dict)
    pretrained_available: bool = True


ENCODER_PRESETS: dict[str, HieraPreset] = {
    # sam2.1_hiera_t.yaml
    "hiera_t": HieraPreset(
        dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
             window_pos_embed_bkg_spatial_size=(7, 7))
    ),
    # sam2.1_hiera_b+.yaml (Hiera defaults otherwise)
    "hiera_b+": HieraPreset(dict(embed_dim=112, num_heads=2)),
    # One block per stage and small windows: a real Hiera for CPU tests and the demo.
    "hiera_micro": HieraPreset(
        dict(embed_dim=32, num_heads=1, stages=(1, 1, 1, 1), global_att_blocks=(),
             window_spec=(8, 4, 4, 2), window_pos_embed_bkg_spatial_size=(4, 4)),
        pretrained_available=False,
    ),
}

# Hiera downsamples by 32 overall and its first-stage windows must tile the
# stride-4 map, so slices must be a multiple of this.
SIZE_MULTIPLE = 32


class ModalityInput(nn.Module):
    """Per-modality affine map of a [0,1] slice onto the encoder's 3 input channels."""

    def __init__(self, num_modalities: int) -> None:
        super().__init__()
        std = torch.tensor(_IMAGENET_STD)
        mean = torch.tensor(_IMAGENET_MEAN)
        self.scale = nn.Parameter((1.0 / std).repeat(num_modalities, 1))
        self.bias = nn.Parameter((-mean / std).repeat(num_modalities, 1))

    def forward(self, x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """x [B,K,H,W], src [B,K] -> [B*K, 3, H, W]."""
        scale = self.scale[src].unsqueeze(-1).unsqueeze(-1)  # [B,K,3,1,1]
        bias = self.bias[src].unsqueeze(-1).unsqueeze(-1)
        rgb = x.unsqueeze(2) * scale + bias
        return rgb.flatten(0, 1)


class SliceEncoder(nn.Module):
    """Encodes every source frame independently; returns FPN levels at strides 4, 8, 16.

    The stride-32 level is dropped after the neck (SAM2's `scalp=1`); its
    content still reaches stride 16 through the FPN top-down path.
    """

    def __init__(
        self, preset: str, feature_dim: int, num_modalities: int, lora_rank: int, lora_alpha: float,
        image_size: int | None = None, windows: str = "sam2",
    ) -> None:
        super().__init__()
        if preset not in ENCODER_PRESETS:
            raise ConfigError(f"unknown encoder {preset!r}; choose one of {sorted(ENCODER_PRESETS)}")
        if feature_dim % 2:
            raise ConfigError(f"feature_dim must be even (sine position encoding), got {feature_dim}")
        self.preset = preset
        self.modality_input = ModalityInput(num_modalities)
        trunk = Hiera(**ENCODER_PRESETS[preset].trunk)
        if windows not in ENCODER_WINDOWS:
            raise ConfigError(f"encoder windows must be one of {list(ENCODER_WINDOWS)}, got {windows!r}")
        if windows == "tile":
            if image_size is None:
                raise ConfigError("encoder windows 'tile' need the image size the trunk will see")
            tile_windows(trunk, image_size)
        if lora_rank > 0:
            apply_lora(trunk, lora_rank, lora_alpha)
        neck = FpnNeck(
            position_encoding=PositionEmbeddingSine(num_pos_feats=feature_dim, normalize=True, temperature=10000),
            d_model=feature_dim,
            backbone_channel_list=trunk.channel_list,
            fpn_top_down_levels=[2, 3],
            fpn_interp_model="nearest",
        )
        self.image_encoder = ImageEncoder(trunk, neck, scalp=1)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor, src: torch.Tensor) -> list[torch.Tensor]:
        """x [B,K,H,W], src [B,K] -> [stride-4, stride-8, stride-16] maps, each [B*K, D, H/s, W/s]."""
        return self.image_encoder(self.modality_input(x, src))["backbone_fpn"]

    def freeze_pretrained(self) -> None:
        """Train only the adapters of the trunk (LoRA); the neck and input map stay trainable."""
        for name, param in self.image_encoder.trunk.named_parameters():
            param.requires_grad_("lora_" in name)


def tile_windows(trunk: Hiera, image_size: int) -> list[tuple[int, int, int]]:
    """Size each windowed block's attention window to tile its map; returns (map side, SAM2's window, new window).

    SAM2 chose its window sizes (Hiera-tiny: 8, 4, 14, 7 per stage) for 1024^2 inputs, whose stage
    maps (256, 128, 64, 32 tokens a side) they tile. At 256^2 the stage-3 and stage-4 maps are 16 and
    8 tokens a side, and windows of 14 and 7 pad them to 28 and 14: the windowed blocks there run
    their qkv projection, attention and output projection on 3x the tokens, two thirds of them
    padding (39.1 against 31.8 GFLOP per K=2, N=4 slice of the default preset; docs/experiments.md).
    Keeping SAM2's number of windows per side and sizing the windows to the map (16 tokens: two
    windows of 8) removes the padding and keeps what the windows are for, local attention between
    the global blocks. Blocks that pool their queries need a window divisible by the pooling stride,
    so theirs is rounded up to it. The weights do not depend on window size (the window position
    embedding belongs to stage 1, whose windows already tile any size Hiera accepts), so SAM2
    checkpoints load either way; a network trained with one layout computes another function under
    the other, hence the model config records which (`ModelConfig.encoder_windows`).
    """
    side = image_size // 4  # stage-1 map: the patch embedding has stride 4
    changes = []
    for block in trunk.blocks:
        window = block.window_size
        if window > 0:
            per_side = math.ceil(side / window)
            fitted = math.ceil(side / per_side)
            if block.q_stride:
                fitted = math.ceil(fitted / block.q_stride[0]) * block.q_stride[0]
            block.window_size = fitted
            changes.append((side, window, fitted))
        if block.q_stride:
            side //= block.q_stride[0]
    return changes


def warn_if_untrained(preset: str) -> None:
    if ENCODER_PRESETS[preset].pretrained_available:
        warnings.warn(
            f"encoder {preset}: no SAM2 checkpoint given (encoder_checkpoint), the encoder trains from scratch",
            stacklevel=3,
        )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: SAM2 checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types for bad files
        raise CheckpointError(f"{path}: unreadable SAM2 checkpoint: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict (optionally under 'model'), got {type(state).__name__}")
    return state


def load_sam2_checkpoint(encoder: SliceEncoder, path: str | Path) -> dict[str, list[str]]:
    """Load the `image_encoder.*` weights of an official SAM2 checkpoint into `encoder`.

    Accepts SAM2's `.pt` files (state dict under "model"; read with
    `weights_only=True`) and `.safetensors`. Keys outside the image encoder
    (mask decoder, memory attention) are ignored. A shape mismatch or a file
    with no matching key raises `CheckpointError`; missing keys (other than
    the LoRA adapters, which SAM2 files never hold) and unexpected encoder keys
    are reported with `warnings.warn`. Returns {"missing": [...], "unexpected": [...]}.
    """
    path = Path(path)
    source = _read_state_dict(path)
    source = {k[len(_SAM2_PREFIX):]: v for k, v in source.items() if k.startswith(_SAM2_PREFIX)}
    target = encoder.image_encoder.state_dict()
    matched = sorted(set(source) & set(target))
    if not matched:
        raise CheckpointError(f"{path}: no '{_SAM2_PREFIX}*' key matches the {encoder.preset} encoder")
    wrong = [f"{k} {tuple(source[k].shape)}!={tuple(target[k].shape)}" for k in matched
             if source[k].shape != target[k].shape]
    if wrong:
        raise CheckpointError(
            f"{path}: {len(wrong)} tensor shapes do not fit the {encoder.preset} encoder "
            f"(feature_dim {encoder.feature_dim}), e.g. {', '.join(wrong[:3])}"
        )
    encoder.image_encoder.load_state_dict({k: source[k] for k in matched}, strict=False)
    report = {
        "missing": sorted(k for k in set(target) - set(source) if "lora_" not in k),
        "unexpected": sorted(set(source) - set(target)),
    }
    if report["missing"] or report["unexpected"]:
        warnings.warn(
            f"{path}: loaded {len(matched)} encoder tensors; missing {report['missing'][:5]} "
            f"({len(report['missing'])}), unexpected {report['unexpected'][:5]} ({len(report['unexpected'])})",
            stacklevel=2,
        )
    log.info("loaded %d SAM2 encoder tensors from %s", len(matched), path)
    return report
