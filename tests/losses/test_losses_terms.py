import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medk2n.config import DEFAULT_MODALITIES
from medk2n.losses.cmim import contrastive_loss, triplet_loss
from medk2n.losses.image import gradient_l1, histogram_l1, masked_l1, ssim
from medk2n.losses.quality import STATE_ERROR_FLOOR, laplace_nll, quality_loss
from medk2n.models.output import K2NOutput


def _smooth(seed: int, shape=(1, 2, 32, 32)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(shape[0] * shape[1], 1, 40, 40, generator=g), 9, 1).reshape(shape)


def test_masked_l1_ignores_zero_weight_pixels():
    pred = torch.zeros(1, 1, 4, 4)
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :] = 1.0
    weight = torch.zeros(1, 1, 4, 4)
    weight[..., 2:, :] = 1.0
    assert masked_l1(pred, target, weight) == 0
    assert masked_l1(pred, target, torch.ones_like(weight)) == pytest.approx(0.5)


def test_histogram_l1_compares_sorted_intensities_inside_the_mask():
    target = _smooth(1)
    weight = torch.ones_like(target)
    weight[..., :8, :] = 0.0
    # Any rearrangement of the same intensities has the same histogram ...
    flipped = target.flip(-1)
    assert histogram_l1(flipped, target, torch.ones_like(target)).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_l1(flipped, target, weight) > 0.01
    # ... what lies outside the mask does not count, whatever it is ...
    outside = torch.where(weight > 0, target, torch.full_like(target, 7.0))
    assert histogram_l1(outside, target, weight).item() == pytest.approx(0.0, abs=1e-6)
    # ... and a compressed bright tail costs exactly its mean shortfall (sorting keeps the pairing).
    dimmed = torch.where(target > 0.5, 0.5 + 0.5 * (target - 0.5), target)
    inside = weight > 0
    expected = ((target - dimmed).abs()[inside]).mean()
    assert histogram_l1(dimmed, target, weight).item() == pytest.approx(expected.item(), rel=1e-5)


def test_histogram_l1_gradient_lifts_a_dimmed_tail():
    target = _smooth(2)
    pred = (0.8 * target).requires_grad_()
    histogram_l1(pred, target, torch.ones_like(target)).backward()
    assert (pred.grad < 0).all()  # raising every pixel toward its quantile lowers the loss


def test_gradient_l1_sees_edges_not_offsets():
    target = torch.zeros(1, 1, 6, 6)
    target[..., 3:] = 1.0  # one vertical edge between columns 2 and 3
    ones = torch.ones_like(target)
    # A constant offset has the same edges: free, where plain L1 pays for it.
    assert gradient_l1(target + 0.3, target, ones).item() == pytest.approx(0.0, abs=1e-6)
    # The edge spread over two steps: rows of 5 column differences [0, 0, 0.5, 0.5, 0] vs [0, 0, 1, 0, 0].
    blurred = target.clone()
    blurred[..., 3] = 0.5
    expected = 6 * (0.5 + 0.5) / (2 * 6 * 5)  # 6 rows of |diff| sum 1, over 60 differences (30 per axis)
    assert gradient_l1(blurred, target, ones).item() == pytest.approx(expected, rel=1e-6)
    # A difference counts only where both of its pixels are weighted.
    left = torch.zeros_like(target)
    left[..., :3] = 1.0
    assert gradient_l1(blurred, target, left).item() == pytest.approx(0.0, abs=1e-6)
    pred = blurred.clone().requires_grad_()
    gradient_l1(pred, target, ones).backward()
    assert pred.grad[..., 3].mean() < 0  # descent raises the blurred column back to the edge's top


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    image = _smooth(0)
    weight = torch.ones_like(image)
    assert ssim(image, image, weight).item() == pytest.approx(1.0, abs=1e-5)
    noisy = (image + 0.2 * torch.randn_like(image)).clamp(0, 1)
    assert ssim(noisy, image, weight) < 0.7
    pred = noisy.clone().requires_grad_(True)
    (1 - ssim(pred, image, weight)).backward()
    assert pred.grad.abs().sum() > 0


def test_training_ssim_map_is_the_evaluation_ssim():
    """The loss's separable, grouped blur computes the protocol's SSIM (float64 NumPy reference)."""
    from medk2n.eval.metrics import ssim_map as reference_map
    from medk2n.losses.image import ssim_map

    pred, truth = _smooth(1, (2, 3, 32, 32)), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = reference_map(pred.numpy(), truth.numpy())
    assert np.abs(ssim_map(pred, truth).double().numpy() - expected).max() < 1e-5


def _output(candidates, quality, images=None, state_log_error=None) -> K2NOutput:
    b, n = candidates.shape[:2]
    return K2NOutput(
        images=candidates[:, :, 0] if images is None else images, scale=torch.ones_like(candidates[:, :, 0]),
        candidates=candidates, quality=quality, src=torch.zeros(b, 1, dtype=torch.long),
        tgt=torch.zeros(b, n, dtype=torch.long), avail=torch.ones(b, 1), state_log_error=state_log_error,
    )


def test_laplace_likelihood_is_minimised_by_the_expected_absolute_error():
    """|r|/b + log b over many residuals is smallest at b = mean |r|, the L1-matched scale."""
    residual = torch.randn(20000, generator=torch.Generator().manual_seed(0)) * 0.1
    weight = torch.ones_like(residual)
    best = residual.abs().mean()
    at_best = laplace_nll(best.expand_as(residual), residual, weight)
    for factor in (0.5, 0.8, 1.25, 2.0):
        assert laplace_nll((best * factor).expand_as(residual), residual, weight) > at_best


def test_quality_loss_fits_the_scale_to_the_detached_real_error():
    target = _smooth(1)
    candidates = torch.stack([_smooth(2), _smooth(3)], dim=2).requires_grad_(True)
    real = (candidates - target.unsqueeze(2)).abs().detach().clamp_min(1e-4)
    valid = torch.ones(1, 2)
    exact = quality_loss(_output(candidates, real.clone()), target, valid)
    assert exact.item() == pytest.approx((1 + torch.log(real)).mean().item(), rel=1e-4)
    quality = torch.full_like(real, 0.05, requires_grad=True)
    constant = quality_loss(_output(candidates, quality), target, valid)
    assert constant.item() > exact.item()  # a flat scale fits worse than the true per-pixel error
    constant.backward()
    assert quality.grad.abs().sum() > 0 and candidates.grad is None  # observes, never steers


def test_quality_loss_ignores_pixels_outside_the_mask():
    """Over the air the synthesis is blanked: the scale must not spend itself fitting what it paints there."""
    target = _smooth(1)
    candidates = torch.stack([_smooth(2), _smooth(3)], dim=2)
    real = (candidates - target.unsqueeze(2)).abs().clamp_min(1e-4)
    mask = torch.zeros_like(target)
    mask[..., :16, :] = 1.0
    quality = real.clone().requires_grad_(True)
    outside = quality.detach().clone()
    outside[..., 16:, :] = 123.0  # absurd outside the mask
    inside_only = quality_loss(_output(candidates, outside), target, torch.ones(1, 2), mask)
    everywhere = quality_loss(_output(candidates, quality), target, torch.ones(1, 2), mask)
    assert inside_only.item() == pytest.approx(everywhere.item(), rel=1e-6)


def test_quality_loss_covers_the_fusion_estimate_on_its_grid():
    target = _smooth(1)
    images = _smooth(2)
    pooled = F.avg_pool2d((images - target).abs(), 8)
    candidates = images.unsqueeze(2)
    real = (candidates - target.unsqueeze(2)).abs().clamp_min(1e-4)
    log_pooled = torch.log(pooled + STATE_ERROR_FLOOR)
    exact = quality_loss(_output(candidates, real, images, state_log_error=log_pooled), target, torch.ones(1, 2))
    off = quality_loss(_output(candidates, real, images, state_log_error=log_pooled + 0.1), target, torch.ones(1, 2))
    assert off.item() - exact.item() == pytest.approx(0.1, abs=1e-5)  # fitted in log space: a factor e^0.1 off


def test_cmim_contrastive_prefers_the_correct_modality_text():
    from medk2n.models.text import modality_text_embeddings

    text = modality_text_embeddings(list(DEFAULT_MODALITIES))
    t2, flair = DEFAULT_MODALITIES.index("t2"), DEFAULT_MODALITIES.index("flair")
    g = torch.Generator().manual_seed(0)
    embed = F.normalize(text[t2] + 0.3 * torch.randn(384, generator=g) / 384**0.5, dim=0).view(1, 1, 384)
    valid = torch.ones(1, 1)
    correct = contrastive_loss(embed, text, torch.tensor([[t2]]), valid, temperature=0.07)
    wrong = contrastive_loss(embed, text, torch.tensor([[flair]]), valid, temperature=0.07)
    assert correct < wrong


def test_triplet_uses_other_modalities_as_negatives_only():
    a = F.normalize(torch.tensor([1.0, 0.0, 0.0]), dim=0)
    far = F.normalize(torch.tensor([0.0, 1.0, 0.0]), dim=0)
    anchor = a.view(1, 1, 3)
    positive = a.view(1, 1, 3)
    tgt = torch.tensor([[2]])
    valid = torch.ones(1, 1)
    # Source of another modality far away: margin satisfied, no loss.
    loss = triplet_loss(anchor, positive, tgt, valid, far.view(1, 1, 3), torch.tensor([[0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.0)
    # The same image as a source of the *same* modality is not a negative; absent sources neither.
    same = triplet_loss(anchor, positive, tgt, valid, a.view(1, 1, 3), torch.tensor([[2]]), torch.ones(1, 1), 0.2)
    absent = triplet_loss(anchor, positive, tgt, valid, a.view(1, 1, 3), torch.tensor([[0]]), torch.zeros(1, 1), 0.2)
    assert same.item() == 0.0 and absent.item() == 0.0
    # A negative as close as the positive costs exactly the margin.
    close = triplet_loss(anchor, positive, tgt, valid, a.view(1, 1, 3), torch.tensor([[0]]), torch.ones(1, 1), 0.2)
    assert close.item() == pytest.approx(0.2)
