"""SourceCheckNet: what it decides in the fusion, and that training teaches it a mislabelled contrast.

Gating: a frame the check fails (probability ~0) must reach the synthesis exactly as little as an absent
frame, through the fused state and the decoder's fine-scale pixel paths alike; and with the fusion ordered
by quality, a base frame that fails the check gives way to one that passes it.

Learning: two synthetic contrasts, A (smooth blobs) and B (their negative inside a disc), named by
modality ids 0 and 1. A quarter of the training samples give slot 1 an A image under B's name, labelled
as not its named contrast, as the dataset's 'contrast' artefact does. The check must then score held-out mislabelled frames
below correctly named ones.
"""

import pytest
import torch

from medk2n.config import LossConfig, ModelConfig, preset
from medk2n.errors import ConfigError
from medk2n.losses import total_loss

from model_fixtures import seeded_model, smooth_blobs, tiny_config

SIZE, BATCH, STEPS = 32, 8, 120


def _checked_model(**overrides):
    model, g = seeded_model(tiny_config(image_size=SIZE, source_check=True, **overrides))
    return model.eval(), g


def _forced(model, logits: list[float]):
    """Make the check return fixed logits per slot (the rest of the model untouched)."""
    model.source_check.forward = lambda feats, c_modal: torch.tensor(logits).expand(feats.shape[0], -1)


@pytest.mark.parametrize("base_by_quality", [False, True])
def test_a_frame_that_fails_the_check_reaches_the_synthesis_like_an_absent_one(base_by_quality):
    model, g = _checked_model(base_by_quality=base_by_quality)
    x = torch.stack([smooth_blobs(3, SIZE, g), smooth_blobs(3, SIZE, g)], dim=1)
    src, tgt = torch.tensor([[0, 1]]).repeat(3, 1), torch.tensor([[2, 3]]).repeat(3, 1)
    with torch.no_grad():
        _forced(model, [30.0, -30.0])
        failed = model(x, src, tgt)[0]
        absent = model(x, src, tgt, torch.tensor([[1.0, 0.0]]).repeat(3, 1))[0]
        _forced(model, [30.0, 30.0])
        both = model(x, src, tgt)[0]
    torch.testing.assert_close(failed, absent, atol=1e-5, rtol=0)
    assert (both - absent).abs().max() > 1e-5  # the frame did matter when it passed (untrained: a little)


def test_ordered_fusion_makes_the_frame_that_passes_the_check_the_base():
    model, g = _checked_model(base_by_quality=True)
    x = torch.stack([smooth_blobs(3, SIZE, g), smooth_blobs(3, SIZE, g)], dim=1)
    src, tgt = torch.tensor([[0, 1]]).repeat(3, 1), torch.tensor([[2]]).repeat(3, 1)
    with torch.no_grad():
        _forced(model, [-30.0, 30.0])
        out = model.forward_detailed(x, src, tgt)
        only_second = model(x, src, tgt, torch.tensor([[0.0, 1.0]]).repeat(3, 1))[0]
    # order[m, i, k] = 1 if slot k is fused i-th: slot 1 first, for every sample and target.
    assert out.gates["accept"].max() < 1e-6
    torch.testing.assert_close(out.images, only_second, atol=1e-5, rtol=0)


def test_the_check_alone_gives_the_logits_of_the_full_forward():
    model, g = _checked_model(base_by_quality=True)
    x = torch.stack([smooth_blobs(3, SIZE, g), smooth_blobs(3, SIZE, g)], dim=1)
    src, tgt = torch.tensor([[0, 1]]).repeat(3, 1), torch.tensor([[2, 3]]).repeat(3, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.source_check_logits(x, src), model.forward_detailed(x, src, tgt).source_check)
    without, _ = seeded_model(tiny_config(image_size=SIZE, source_check=False))
    with pytest.raises(ConfigError, match="no source check"):
        without.source_check_logits(x, src)


def test_check_is_off_for_old_configs_on_in_presets_and_ignored_without_a_fusion():
    assert ModelConfig().source_check is False  # a checkpoint saved before the check builds without it
    assert preset("tiny").model.source_check and preset("default").model.source_check
    model, _ = seeded_model(tiny_config(image_size=SIZE, source_check=False))
    assert model.source_check is None
    b0, _ = seeded_model(tiny_config(image_size=SIZE, ablation="B0", source_check=True))
    assert b0.source_check is None


def _contrasts(n: int, g: torch.Generator, mislabelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [n,2,S,S] (slot 0: A, slot 1: B, or A again where mislabelled) and the target (B)."""
    a, b_src = smooth_blobs(n, SIZE, g), smooth_blobs(n, SIZE, g)
    axis = torch.linspace(-1, 1, SIZE)
    disc = ((axis[:, None] ** 2 + axis[None, :] ** 2) < 0.8).float()
    b = (1.0 - b_src) * disc
    shown = torch.where(mislabelled[:, None, None], smooth_blobs(n, SIZE, g), b)
    return torch.stack([a, shown], dim=1), (0.5 * a + 0.5 * b).unsqueeze(1)


def test_training_teaches_the_check_a_contrast_under_the_wrong_name():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, g = _checked_model(base_by_quality=True)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        src, tgt = torch.tensor([[0, 1]]).repeat(BATCH, 1), torch.tensor([[2]]).repeat(BATCH, 1)
        for _ in range(STEPS):
            wrong = torch.rand(BATCH, generator=g) < 0.25
            x, y = _contrasts(BATCH, g, wrong)
            named_right = torch.stack([torch.ones(BATCH), (~wrong).float()], dim=1)
            out = model.forward_detailed(x, src, tgt)
            loss, _ = total_loss(out, y, tgt, model, LossConfig(), named_right=named_right)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        held = torch.Generator().manual_seed(99)
        with torch.no_grad():
            wrong = torch.arange(32) % 2 == 0
            x, _ = _contrasts(32, held, wrong)
            p = torch.sigmoid(model.forward_detailed(x, src[:1].repeat(32, 1), tgt[:1].repeat(32, 1)).source_check)
    finally:
        torch.set_num_threads(threads)
    named_right, named_wrong = p[~wrong, 1].mean().item(), p[wrong, 1].mean().item()
    print(f"\np(named right) slot 1: correctly named {named_right:.3f}, mislabelled {named_wrong:.3f}")
    assert named_wrong < named_right - 0.5
