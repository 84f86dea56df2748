import pytest
import torch

from medk2n.config import ABLATIONS, LossConfig
from medk2n.errors import ConfigError
from medk2n.losses import total_loss
from medk2n.models.blocks import FiLM
from medk2n.models.multiscale import MultiScaleNet, SingleScale

EXPECTED_GATES = {
    "B0": set(),
    "B1": {"w_eff", "accept"},
    "B2": {"w_global", "w_eff", "accept"},
    "B3": {"w_global", "tau", "w_eff", "accept"},
    "B4": {"w_global", "tau", "w_eff", "accept"},
    "B5": {"w_global", "tau", "w_eff", "accept"},
}


def _in_unit_interval(t: torch.Tensor) -> bool:
    return bool(((t >= 0) & (t <= 1)).all())


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_shapes_ranges_and_modules_per_ablation(make_model, make_inputs, ablation):
    model = make_model(ablation=ablation)
    x, src, tgt = make_inputs(b=2, k=2, n=3)
    out = model.forward_detailed(x, src, tgt)
    assert out.images.shape == out.scale.shape == (2, 3, 64, 64)
    assert out.candidates.shape == out.quality.shape == (2, 3, 2, 64, 64)
    assert _in_unit_interval(out.images) and bool((out.scale > 0).all()) and bool((out.quality > 0).all())
    assert set(out.gates) == EXPECTED_GATES[ablation]
    switches = ABLATIONS[ablation]
    assert (model.fusion is None) == (not switches["task_memory"])
    assert isinstance(model.scales, MultiScaleNet if switches["multiscale"] else SingleScale)
    assert (out.image_embed is not None) == switches["cmim"] == (model.embedder is not None)
    if out.gates:
        assert out.gates["accept"].shape == (2, 3, 1) and out.gates["w_eff"].shape == (2, 3, 1, 8, 8)
        assert out.state_log_error.shape == (2, 3, 8, 8) and bool((out.state_log_error < 0).all())
    if "tau" in out.gates:
        tau = out.gates["tau"]
        assert bool(((tau >= 0.05 - 1e-6) & (tau <= 0.9 + 1e-6)).all())
    if switches["effiweight"]:
        w_eff = out.gates["w_eff"]
        assert bool(((w_eff >= 1e-3) & (w_eff <= 1 - 1e-3)).all())
    if switches["cmim"]:
        assert out.image_embed.shape == (2, 3, 384) and out.source_embed.shape == (2, 2, 384)
        torch.testing.assert_close(out.image_embed.norm(dim=-1), torch.ones(2, 3))
    model.eval()
    with torch.no_grad():
        images, scale = model(x, src, tgt)
    assert images.shape == scale.shape == (2, 3, 64, 64)
    assert _in_unit_interval(images) and bool((scale > 0).all())


@pytest.mark.parametrize("k,n", [(1, 1), (3, 2)])
def test_any_number_of_sources_and_targets(make_model, make_inputs, k, n):
    model = make_model().eval()
    x, src, tgt = make_inputs(b=1, k=k, n=n)
    with torch.no_grad():
        out = model.forward_detailed(x, src, tgt)
    assert out.images.shape == (1, n, 64, 64)
    assert all(v.shape[2] == k - 1 for v in out.gates.values())


def _group_has_gradient(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_gradients_reach_adapters_fusion_heads_and_embedder(make_model, make_inputs):
    model = make_model(lora_rank=4)  # the tiny preset trains its (never pretrained) trunk without adapters
    x, src, tgt = make_inputs(b=2, k=2, n=2)
    target = torch.rand(2, 2, 64, 64)

    def step() -> None:
        model.zero_grad()
        out = model.forward_detailed(x, src, tgt)
        total_loss(out, target, tgt, model, LossConfig())[0].backward()

    step()
    # Zero-initialised output layers (SharedEnc, FiLM) pass no gradient upstream
    # until they have moved once, as intended; take one step first.
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.05 * p.grad.sign()
    step()
    lora_b = [m.lora_B for m in model.encoder.modules() if hasattr(m, "lora_B") and m.lora_B is not None]
    assert lora_b and all(b.grad is not None and b.grad.abs().sum() > 0 for b in lora_b)
    fusion = model.fusion
    groups = {
        "modality_input": model.encoder.modality_input, "neck": model.encoder.image_encoder.neck,
        "multiscale": model.scales, "modality_embed": model.modality_embed, "task_embed": model.task_embed,
        "prototypes": fusion.prototypes, "preweight": fusion.preweight, "threshold": fusion.threshold,
        "effiweight": fusion.effiweight, "shared": fusion.shared, "quality": fusion.quality,
        "evaluator": model.heads.evaluator, "embedder": model.embedder,
        "decoder": model.heads.decoder, "candidate_heads": model.heads.heads,
    }
    missing = [name for name, module in groups.items() if not _group_has_gradient(module)]
    assert not missing


def test_source_and_target_identities_change_the_output(make_model, make_inputs):
    model = make_model().eval()
    with torch.no_grad():  # as after training: the zero-initialised (identity) conditioning layers have moved
        for module in model.modules():
            if isinstance(module, FiLM):
                module.linear.weight.normal_(std=0.1)
    x, src, tgt = make_inputs(b=1, k=2, n=2)
    with torch.no_grad():
        base, _ = model(x, src, tgt)
        other_src, _ = model(x, src.flip(1).contiguous(), tgt)
        other_tgt, _ = model(x, src, (tgt + 1) % 7)
    assert (base - other_src).abs().max() > 1e-4
    assert (base - other_tgt).abs().max() > 1e-4


@pytest.mark.parametrize("ablation", ["B0", "B5"])
@pytest.mark.parametrize("training", [False, True])
def test_absent_source_is_ignored_exactly(make_model, make_inputs, ablation, training):
    model = make_model(ablation=ablation).train(training)
    if model.fusion is not None:  # as after training: SharedEnc's zero-initialised output has moved
        with torch.no_grad():
            model.fusion.shared.out.weight.normal_(std=0.1)
    x, src, tgt = make_inputs(b=2, k=2, n=2)
    avail = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    other = x.clone()
    other[:, 1] = torch.rand(2, 64, 64) * 5.0
    with torch.no_grad():
        a = model(x, src, tgt, avail)
        b = model(other, src, tgt, avail)
        c = model(x, src, tgt, torch.ones(2, 2))
    for got, want in zip(a, b):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    if training or model.fusion is None:  # control: the same frame matters when present (soft gate > 0)
        assert not torch.allclose(a[0], c[0])


def test_eval_is_deterministic_and_gates_as_trained(make_model, make_inputs):
    model = make_model()
    x, src, tgt = make_inputs(b=4, k=3, n=2)
    with torch.no_grad():
        soft = model.forward_detailed(x, src, tgt)
    assert bool(((soft.gates["accept"] > 0) & (soft.gates["accept"] < 1)).all())
    model.eval()
    with torch.no_grad():
        first = model.forward_detailed(x, src, tgt)
        second = model.forward_detailed(x, src, tgt)
    assert torch.equal(first.images, second.images) and torch.equal(first.scale, second.scale)
    # The acceptance gate evaluated (and exported) is the soft one it was trained as.
    torch.testing.assert_close(first.gates["accept"], soft.gates["accept"])


def test_merge_lora_keeps_outputs(make_model, make_inputs):
    model = make_model(lora_rank=4).eval()
    with torch.no_grad():
        for m in model.encoder.modules():
            if hasattr(m, "lora_B") and m.lora_B is not None:
                m.lora_B.normal_(std=0.05)
    x, src, tgt = make_inputs(b=2, k=2, n=4)
    with torch.no_grad():
        before = model(x, src, tgt)
        model.merge_lora()
        after = model(x, src, tgt)
    assert not any("lora_" in k for k in model.state_dict())
    for got, want in zip(after, before):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_text_embeddings_are_a_saved_buffer_of_the_right_shape(make_model):
    from medk2n.config import preset
    from medk2n.models import build_model

    model = make_model()
    assert model.state_dict()["text_embeddings"].shape == (7, 384)
    assert "text_embeddings" not in dict(model.named_parameters())
    with pytest.raises(ConfigError, match="text_embeddings must be"):
        build_model(preset("tiny").model, text_embeddings=torch.zeros(6, 384))


def test_bad_shapes_are_rejected(make_model, make_inputs):
    from medk2n.config import preset
    from medk2n.models import build_model

    model = make_model()
    x, src, tgt = make_inputs(b=2, k=2, n=2)
    with pytest.raises(ValueError, match="expected x"):
        model(x, src[:, :1], tgt)
    with pytest.raises(ValueError, match="avail"):
        model(x, src, tgt, torch.ones(2, 3))
    cfg = preset("tiny").model
    cfg.image_size = 48
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_model(cfg, text_embeddings=torch.zeros(7, 384))


def test_q_fit_reaches_the_fused_state_with_a_tenth_of_its_gradient(make_model, make_inputs, monkeypatch):
    """Q's regression on the real error (losses.quality) trains Q fully and the features under it by
    Q_FIT_GRADIENT_SHARE only: at full strength it reshaped the encoder features the source check reads."""
    from medk2n.models import fusion

    assert 0.0 < fusion.Q_FIT_GRADIENT_SHARE < 1.0
    x, src, tgt = make_inputs(b=2, k=2, n=2)
    grads = {}
    for share in (1.0, 0.25):
        monkeypatch.setattr(fusion, "Q_FIT_GRADIENT_SHARE", share)
        model = make_model(ablation="B5").train()
        torch.manual_seed(3)
        model.forward_detailed(x, src, tgt).state_log_error.sum().backward()
        grads[share] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    full, part = grads[1.0], grads[0.25]
    assert set(full) == set(part)
    q_params = [name for name in full if name.startswith("fusion.quality.")]
    encoder = [name for name in full if name.startswith("encoder.") and bool(full[name].abs().sum() > 0)]
    assert q_params and encoder
    for name in q_params:
        torch.testing.assert_close(part[name], full[name])
    for name in encoder:
        expected = full[name] * 0.25
        assert float((part[name] - expected).norm()) <= 1e-4 * float(expected.norm()), name
