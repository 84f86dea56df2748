import pytest
import torch

from medk2n.config import LossConfig
from medk2n.losses import total_loss
from medk2n.models.unet import MODALITY_DROPOUT, drop_modalities


def test_shapes_ranges_and_detailed_output(make_model, make_inputs):
    model = make_model(arch="unet")
    x, src, tgt = make_inputs(b=2, k=3, n=2)
    out = model.forward_detailed(x, src, tgt)
    assert out.images.shape == out.scale.shape == (2, 2, 64, 64)
    assert out.candidates.shape == out.quality.shape == (2, 2, 1, 64, 64)
    assert out.gates == {} and out.image_embed is None and out.state_log_error is None
    assert bool(((out.images >= 0) & (out.images <= 1)).all())
    assert bool((out.scale > 0).all()) and torch.equal(out.scale, out.quality[:, :, 0])
    model.eval()
    model.merge_lora()  # a no-op, so export treats both architectures alike
    with torch.no_grad():
        images, scale = model(x, src, tgt)
    assert images.shape == scale.shape == (2, 2, 64, 64)


def test_gradients_reach_every_layer(make_model, make_inputs):
    model = make_model(arch="unet")
    x, src, tgt = make_inputs(b=2, k=2, n=2)
    target = torch.rand(2, 2, 64, 64)
    for _ in range(2):  # the target embedding gets gradient once the zero-initialised FiLMs have moved
        model.zero_grad()
        total_loss(model.forward_detailed(x, src, tgt), target, tgt, model, LossConfig())[0].backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad.sign()
    silent = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not silent


def test_conditioning_on_sources_targets_and_availability(make_model, make_inputs):
    model = make_model(arch="unet").eval()
    with torch.no_grad():  # FiLM starts as identity; give the target embedding a say
        model.bottleneck_film.linear.weight.normal_(std=0.1)
    x, src, tgt = make_inputs(b=1, k=2, n=1)
    avail = torch.tensor([[1.0, 0.0]])
    other = x.clone()
    other[:, 1] = torch.rand(1, 64, 64)
    with torch.no_grad():
        base = model(x, src, tgt)[0]
        assert (base - model(x, src.flip(1).contiguous(), tgt)[0]).abs().max() > 1e-5
        assert (base - model(x, src, (tgt + 1) % 7)[0]).abs().max() > 1e-5
        torch.testing.assert_close(model(x, src, tgt, avail)[0], model(other, src, tgt, avail)[0], atol=1e-6, rtol=0)


def test_modality_dropout_keeps_at_least_one_present_source():
    torch.manual_seed(0)
    avail = torch.ones(4000, 3)
    avail[:, 2] = 0.0
    dropped = drop_modalities(avail, MODALITY_DROPOUT)
    assert bool((dropped <= avail).all()) and bool((dropped.sum(dim=1) >= 1).all())
    assert dropped[:, 2].sum() == 0
    rate = 1 - dropped[:, :2].mean().item()
    assert 0.1 < rate < MODALITY_DROPOUT + 0.02  # dropped sometimes, less than p because one always stays


def test_training_mode_drops_sources_eval_does_not(make_model, make_inputs):
    model = make_model(arch="unet")
    x, src, tgt = make_inputs(b=8, k=2, n=1)
    torch.manual_seed(1)
    train_runs = [model(x, src, tgt)[0] for _ in range(4)]
    assert any(not torch.allclose(train_runs[0], run) for run in train_runs[1:])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, src, tgt)[0], model(x, src, tgt)[0])


@pytest.mark.parametrize("arch", ["unet", "medk2n"])
def test_build_model_arch_switch(make_model, arch):
    from medk2n.models.medk2n import MedK2N
    from medk2n.models.unet import UNetBaseline

    assert isinstance(make_model(arch=arch), UNetBaseline if arch == "unet" else MedK2N)


def test_unknown_arch_is_a_config_error():
    from medk2n.config import preset
    from medk2n.errors import ConfigError
    from medk2n.models import build_model

    cfg = preset("tiny").model
    cfg.arch = "gan"
    with pytest.raises(ConfigError, match="unknown arch"):
        build_model(cfg)
