"""CPU training lays the model out channels-last (train.loop._model) and the heads then take layout-specific
branches (heads.mix_slots, CandidateHeads, cat_channels' gradient hook) for speed; exports trace the
channels-first branches. Both must be the same function with the same gradients."""

import copy

import pytest
import torch

from medk2n.models import blocks, heads
from medk2n.models.blocks import channels_innermost, expand_targets
from medk2n.models.heads import mix_slots


def _loss(out) -> torch.Tensor:
    # Every output the training losses read, weighted so no term can cancel another.
    return (out.images.square().sum() + out.candidates.mean() * 3 + out.quality.log().mean()
            + out.scale.sqrt().sum() * 0.1)


@pytest.mark.parametrize("ablation", ["B0", "B5"])
def test_channels_last_training_matches_the_exported_formulation(make_model, make_inputs, monkeypatch, ablation):
    exported = make_model(ablation=ablation).train()  # channels-first, branches forced to export's
    trained = copy.deepcopy(exported).to(memory_format=torch.channels_last)
    x, src, tgt = make_inputs(b=2, k=2, n=3)
    outs = []
    for model, branches in ((exported, False), (trained, True)):
        with monkeypatch.context() as patch:
            if not branches:
                for module in (blocks, heads):
                    patch.setattr(module, "channels_innermost", lambda t, dim=1: False)
            torch.manual_seed(1)
            out = model.forward_detailed(x, src, tgt)
            _loss(out).backward()
        outs.append(out)
    a, b = outs
    # The branches really differ: the channels-last one keeps candidates with the head axis innermost.
    assert not channels_innermost(a.candidates, dim=2) and channels_innermost(b.candidates, dim=2)
    for name in ("images", "scale", "candidates", "quality"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-4, atol=1e-5)
    grads = dict(exported.named_parameters())
    for name, p in trained.named_parameters():
        ref = grads[name].grad
        if ref is None:
            assert p.grad is None, name
            continue
        # Summation order differs between layouts: compare each gradient relative to its own size, above a
        # floor for the ones that are zero up to rounding (a bias before a softmax, which cancels).
        assert float((p.grad - ref).norm()) <= 1e-4 * float(ref.norm()) + 1e-6, name


def test_layout_branches_are_off_while_exporting():
    cl = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(channels_innermost(cl))
            return x + 1

    assert channels_innermost(cl)
    torch.onnx.export(Probe(), (torch.randn(2, 3),), dynamo=True)
    assert seen and not any(seen)


def test_expand_targets_same_values_in_either_layout():
    t = torch.randn(3, 5, 4, 6)
    ref = expand_targets(t, 4)
    out = expand_targets(t.contiguous(memory_format=torch.channels_last), 4)
    assert channels_innermost(out) and not channels_innermost(ref)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(ref.unflatten(0, (3, 4))[:, 2], t, rtol=0, atol=0)


@pytest.mark.parametrize("spatial", [(1, 1), (4, 4), (8, 8)])
def test_mix_slots_same_values_in_either_layout(spatial):
    torch.manual_seed(0)
    slots = torch.randn(2, 3, 5, 8, 8)
    weights = torch.rand(2, 4, 3, *spatial)
    weights[:, :, 2] = 0  # an absent slot
    ref = mix_slots(slots, weights)
    cl = slots.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (2, 3))
    assert channels_innermost(cl, dim=2)
    out = mix_slots(cl, weights)
    assert channels_innermost(out)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # Only the present slots count: the result equals the mean weighted over slots 0 and 1.
    torch.testing.assert_close(mix_slots(slots[:, :2], weights[:, :, :2]), ref, rtol=1e-5, atol=1e-6)
