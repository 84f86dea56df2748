import math
import warnings

import pytest
import torch
from safetensors.torch import save_file

from medk2n.errors import CheckpointError, ConfigError
from medk2n.models.encoder import ENCODER_PRESETS, SliceEncoder, load_sam2_checkpoint, tile_windows


@pytest.fixture(scope="module")
def sam2_tiny_state():
    """The state dict of a real SAM2.1 Hiera-tiny model, made by SAM2's own builder (random weights)."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    model = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_micro_encoder_levels_and_modality_input():
    torch.manual_seed(0)
    encoder = SliceEncoder("hiera_micro", feature_dim=32, num_modalities=7, lora_rank=4, lora_alpha=8.0)
    x = torch.rand(2, 3, 64, 64)
    src = torch.tensor([[0, 1, 2], [3, 4, 5]])
    levels = encoder(x, src)
    assert [tuple(t.shape) for t in levels] == [(6, 32, 16, 16), (6, 32, 8, 8), (6, 32, 4, 4)]
    # At init each modality maps [0,1] onto SAM2's ImageNet-normalised input.
    rgb = encoder.modality_input(torch.ones(1, 1, 2, 2), torch.tensor([[3]]))
    torch.testing.assert_close(rgb[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


def _padded_tokens(side: int, window: int) -> int:
    return (math.ceil(side / window) * window) ** 2 if window else side**2


@pytest.mark.parametrize("size", [64, 128, 256, 288, 384, 512])
def test_tiled_windows_never_pad_more_than_sam2s_and_keep_their_count(size):
    from sam2.modeling.backbones.hieradet import Hiera

    changes = tile_windows(Hiera(**ENCODER_PRESETS["hiera_t"].trunk), size)
    for side, sam2, tiled in changes:
        assert tiled <= max(sam2, side + 1)
        assert math.ceil(side / tiled) == math.ceil(side / sam2)  # SAM2's windows per side
        assert _padded_tokens(side, tiled) <= _padded_tokens(side, sam2)
    if size in (64, 128, 256, 384):  # sizes whose maps split evenly: no padding at all
        assert all(side % tiled == 0 for side, _, tiled in changes)


def test_tiled_windows_at_256_remove_the_padding_of_stages_3_and_4():
    from sam2.modeling.backbones.hieradet import Hiera

    trunk = Hiera(**ENCODER_PRESETS["hiera_t"].trunk)
    assert [b.window_size for b in trunk.blocks] == [8, 8, 4, 4, 14, 0, 14, 0, 14, 0, 14, 7]
    tile_windows(trunk, 256)
    assert [b.window_size for b in trunk.blocks] == [8, 8, 4, 4, 8, 0, 8, 0, 8, 0, 8, 4]


@pytest.mark.parametrize("size", [96, 160, 288])
def test_tiled_hiera_t_runs_at_sizes_whose_maps_do_not_split_evenly(size):
    torch.manual_seed(0)
    encoder = SliceEncoder("hiera_t", feature_dim=32, num_modalities=7, lora_rank=0, lora_alpha=1.0,
                           image_size=size, windows="tile")
    levels = encoder(torch.rand(1, 1, size, size), torch.tensor([[0]]))
    assert [tuple(t.shape[-2:]) for t in levels] == [(size // s, size // s) for s in (4, 8, 16)]
    assert all(torch.isfinite(t).all() for t in levels)


def test_window_layouts_share_weights_and_differ_only_where_sam2_pads():
    def build(size, windows):
        torch.manual_seed(0)
        return SliceEncoder("hiera_t", feature_dim=32, num_modalities=7, lora_rank=0, lora_alpha=1.0,
                            image_size=size, windows=windows).eval()

    x, src = torch.rand(1, 1, 128, 128), torch.tensor([[2]])
    tiled, padded = build(128, "tile"), build(128, "sam2")
    assert {k: v.shape for k, v in tiled.state_dict().items()} == {k: v.shape for k, v in padded.state_dict().items()}
    with torch.no_grad():
        assert not torch.allclose(tiled(x, src)[2], padded(x, src)[2])  # stage 3 is padded at 128^2
        micro = [SliceEncoder("hiera_micro", 32, 7, 4, 8.0, image_size=64, windows=w).eval() for w in ("tile", "sam2")]
        micro[1].load_state_dict(micro[0].state_dict())
        x64 = torch.rand(2, 1, 64, 64)
        # hiera_micro's windows tile its maps at 64^2 already: the demo model computes what it always did.
        for a, b in zip(micro[0](x64, torch.tensor([[0], [3]])), micro[1](x64, torch.tensor([[0], [3]]))):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unknown_window_layout_is_a_config_error():
    with pytest.raises(ConfigError, match="windows"):
        SliceEncoder("hiera_micro", 32, 7, 4, 8.0, image_size=64, windows="global")
    with pytest.raises(ConfigError, match="encoder_windows"):
        from medk2n.config import ModelConfig

        ModelConfig(encoder_windows="global")


def test_unknown_encoder_preset_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown encoder"):
        SliceEncoder("hiera_xl", feature_dim=32, num_modalities=7, lora_rank=4, lora_alpha=8.0)


def test_official_sam2_checkpoint_loads_into_hiera_t(sam2_tiny_state, tmp_path):
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": sam2_tiny_state}, path)
    encoder = SliceEncoder("hiera_t", feature_dim=256, num_modalities=7, lora_rank=8, lora_alpha=16.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every encoder key is in the file: nothing to warn about
        report = load_sam2_checkpoint(encoder, path)
    assert report == {"missing": [], "unexpected": []}
    loaded = encoder.image_encoder.state_dict()
    encoder_keys = [k for k in sam2_tiny_state if k.startswith("image_encoder.")]
    assert len(encoder_keys) > 100
    for key in encoder_keys:
        assert torch.equal(loaded[key[len("image_encoder."):]], sam2_tiny_state[key]), key


def test_safetensors_checkpoint_loads_too(sam2_tiny_state, tmp_path):
    path = tmp_path / "encoder.safetensors"
    trunk_only = {k: v.contiguous() for k, v in sam2_tiny_state.items() if k.startswith("image_encoder.trunk.")}
    save_file(trunk_only, str(path))
    encoder = SliceEncoder("hiera_t", feature_dim=256, num_modalities=7, lora_rank=8, lora_alpha=16.0)
    with pytest.warns(UserWarning, match="missing"):
        report = load_sam2_checkpoint(encoder, path)
    assert report["missing"] and all(k.startswith("neck.") for k in report["missing"])
    key = "image_encoder.trunk.blocks.3.attn.qkv.weight"
    assert torch.equal(encoder.image_encoder.state_dict()[key[len("image_encoder."):]], sam2_tiny_state[key])


def test_mismatched_checkpoints_raise_checkpoint_error(sam2_tiny_state, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save({"model": sam2_tiny_state}, path)
    micro = SliceEncoder("hiera_micro", feature_dim=32, num_modalities=7, lora_rank=4, lora_alpha=8.0)
    with pytest.raises(CheckpointError, match="shapes do not fit"):
        load_sam2_checkpoint(micro, path)

    unrelated = tmp_path / "unrelated.pt"
    torch.save({"model": {"backbone.weight": torch.zeros(3)}}, unrelated)
    with pytest.raises(CheckpointError, match="no 'image_encoder"):
        load_sam2_checkpoint(micro, unrelated)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_sam2_checkpoint(micro, garbage)

    with pytest.raises(CheckpointError, match="not found"):
        load_sam2_checkpoint(micro, tmp_path / "absent.pt")


def test_build_model_loads_sam2_weights_and_trains_only_trunk_adapters(sam2_tiny_state, tmp_path):
    from medk2n.config import ModelConfig
    from medk2n.models import build_model

    path = tmp_path / "sam2.pt"
    torch.save({"model": sam2_tiny_state}, path)
    cfg = ModelConfig(encoder="hiera_t", encoder_checkpoint=str(path), image_size=64, fusion_dim=32)
    model = build_model(cfg, text_embeddings=torch.zeros(7, 384))
    key = "trunk.blocks.0.attn.qkv.weight"
    assert torch.equal(model.encoder.image_encoder.state_dict()[key], sam2_tiny_state["image_encoder." + key])
    trunk = dict(model.encoder.image_encoder.trunk.named_parameters())
    assert {n for n, p in trunk.items() if p.requires_grad} == {n for n in trunk if "lora_" in n}
    assert all(p.requires_grad for p in model.encoder.image_encoder.neck.parameters())

    # Restoring from a medk2n checkpoint: same frozen set, the SAM2 file is not read.
    cfg.encoder_checkpoint = str(tmp_path / "moved_away.pt")
    restored = build_model(cfg, text_embeddings=torch.zeros(7, 384), pretrained=False)
    assert [n for n, p in restored.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if p.requires_grad
    ]


def test_untrained_official_encoder_warns():
    from medk2n.config import ModelConfig
    from medk2n.models import build_model

    with pytest.warns(UserWarning, match="trains from scratch"):
        build_model(ModelConfig(image_size=64, fusion_dim=32), text_embeddings=torch.zeros(7, 384))
