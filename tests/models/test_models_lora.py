import torch
from sam2.modeling.backbones.hieradet import Hiera
from torch import nn

from medk2n.models.lora import LoRALinear, apply_lora, lora_parameters, merge_lora


def _micro_hiera() -> Hiera:
    return Hiera(embed_dim=16, num_heads=1, stages=(1, 1), q_pool=1, window_spec=(4, 2),
                 global_att_blocks=(), window_pos_embed_bkg_spatial_size=(2, 2))


def test_lora_linear_is_identity_at_init_and_keeps_base_keys():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    layer = LoRALinear.from_linear(base, rank=2, alpha=4.0)
    x = torch.randn(5, 8)
    assert torch.equal(layer(x), base(x))
    assert set(layer.state_dict()) == {"weight", "bias", "lora_A", "lora_B"}


def test_merge_folds_the_update_and_removes_the_adapter():
    torch.manual_seed(0)
    layer = LoRALinear(8, 6, rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 8)
    before = layer(x)
    assert not torch.allclose(before, nn.functional.linear(x, layer.weight, layer.bias))
    layer.merge()
    assert layer.merged
    assert set(layer.state_dict()) == {"weight", "bias"}
    torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=0)


def test_apply_lora_wraps_attention_qkv_and_proj_only():
    torch.manual_seed(0)
    trunk = _micro_hiera()
    keys_before = set(trunk.state_dict())
    x = torch.randn(1, 3, 32, 32)
    reference = [t.clone() for t in trunk(x)]
    count = apply_lora(trunk, rank=2, alpha=4.0)
    assert count == 2 * len(trunk.blocks)
    assert {k for k in trunk.state_dict() if "lora_" not in k} == keys_before
    # The stage-change block's own `proj` (dim change) is not attention and stays a plain Linear.
    assert type(trunk.blocks[1].proj) is nn.Linear
    for got, want in zip(trunk(x), reference):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_merge_lora_matches_unmerged_outputs_after_training_steps():
    torch.manual_seed(0)
    trunk = _micro_hiera()
    apply_lora(trunk, rank=2, alpha=4.0)
    optimizer = torch.optim.SGD(lora_parameters(trunk), lr=0.1)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        optimizer.zero_grad()
        sum(t.square().mean() for t in trunk(x)).backward()
        optimizer.step()
    assert any(m.lora_B.abs().sum() > 0 for m in trunk.modules() if isinstance(m, LoRALinear))
    with torch.no_grad():
        before = [t.clone() for t in trunk(x)]
        assert merge_lora(trunk) == 2 * len(trunk.blocks)
        after = trunk(x)
    assert not lora_parameters(trunk)
    for got, want in zip(after, before):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
