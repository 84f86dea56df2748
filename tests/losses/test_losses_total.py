import warnings

import pytest
import torch

from medk2n.config import LossConfig, preset
from medk2n.losses import head_weights, total_loss
from medk2n.models import build_model


def _model(ablation: str):
    cfg = preset("tiny").model
    cfg.ablation = ablation
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(cfg, text_embeddings=torch.nn.functional.normalize(torch.randn(7, 384), dim=1))


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 64, 64, generator=g)
    src = torch.tensor([[0, 1], [3, 4]])
    tgt = torch.tensor([[2, 5], [6, 0]])
    target = torch.rand(2, 2, 64, 64, generator=g)
    return x, src, tgt, target


def test_parts_and_weights():
    model = _model("B5")
    x, src, tgt, target = _batch()
    out = model.forward_detailed(x, src, tgt)
    loss, parts = total_loss(out, target, tgt, model, LossConfig())
    assert set(parts) == {"l1", "ssim", "lesion", "histogram", "gradient", "cmim", "metric", "quality", "source_check"}
    assert all(isinstance(v, float) for v in parts.values()) and parts["cmim"] > 0
    cfg = LossConfig(l1=2.0, ssim=0.0, cmim=0.0, metric=0.0, quality=0.0, histogram=0.0)
    only_l1, _ = total_loss(out, target, tgt, model, cfg)
    assert only_l1.item() == pytest.approx(2.0 * parts["l1"], rel=1e-5)
    assert parts["gradient"] > 0 and LossConfig().gradient == 0.0  # reported, off unless configured
    cfg = LossConfig(l1=0.0, ssim=0.0, cmim=0.0, metric=0.0, quality=0.0, histogram=0.0, lesion=0.0, gradient=3.0)
    only_gradient, _ = total_loss(out, target, tgt, model, cfg)
    assert only_gradient.item() == pytest.approx(3.0 * parts["gradient"], rel=1e-5)
    loss.backward()
    assert model.embedder.head.weight.grad.abs().sum() > 0


def test_padded_targets_do_not_count():
    model = _model("B5").eval()
    x, src, tgt, target = _batch()
    valid = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    with torch.no_grad():
        out = model.forward_detailed(x, src, tgt)
        changed = target.clone()
        changed[0, 1] = 1.0 - changed[0, 1]
        a, _ = total_loss(out, target, tgt, model, LossConfig(), tgt_valid=valid)
        b, _ = total_loss(out, changed, tgt, model, LossConfig(), tgt_valid=valid)
        c, _ = total_loss(out, changed, tgt, model, LossConfig())
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert c.item() != pytest.approx(a.item(), rel=1e-3)


def test_mask_limits_pixel_terms():
    model = _model("B3").eval()
    x, src, tgt, target = _batch()
    mask = torch.zeros_like(target)
    mask[..., 16:48, 16:48] = 1.0
    with torch.no_grad():
        out = model.forward_detailed(x, src, tgt)
        outside = target.clone()
        outside[..., :8, :] = 0.0
        _, a = total_loss(out, target, tgt, model, LossConfig(), mask=mask)
        _, b = total_loss(out, outside, tgt, model, LossConfig(), mask=mask)
    assert a["l1"] == pytest.approx(b["l1"], rel=1e-6)


def test_cmim_terms_are_zero_when_the_ablation_has_no_cmim():
    model = _model("B3")
    x, src, tgt, target = _batch()
    out = model.forward_detailed(x, src, tgt)
    assert out.image_embed is None
    _, parts = total_loss(out, target, tgt, model, LossConfig())
    assert parts["cmim"] == 0.0 and parts["metric"] == 0.0


def test_lesion_term_is_the_l1_inside_the_lesion_cover():
    model = _model("B5").eval()
    x, src, tgt, target = _batch()
    with torch.no_grad():
        out = model.forward_detailed(x, src, tgt)
        lesion = torch.zeros(2, 64, 64)
        lesion[0, 10:14, 20:30] = 1.0
        lesion[1, 40:42, 5:9] = 0.5
        valid = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # sample 1's second target is padding
        loss, parts = total_loss(out, target, tgt, model, LossConfig(), tgt_valid=valid, lesion=lesion)
        without, none = total_loss(out, target, tgt, model, LossConfig(), tgt_valid=valid)

        def by_hand(images: torch.Tensor, share=lambda b, n: 1.0) -> float:  # images [B,N,H,W]
            total = weight = 0.0
            for b in range(2):
                for n in range(2):
                    w = lesion[b] * valid[b, n]
                    total += share(b, n) * float(((images[b, n] - target[b, n]).abs() * w).sum())
                    weight += float(w.sum())
            return total / weight

        # Across heads the term is weighted by the relaxed winner-takes-all shares (best head on the image).
        shares = head_weights(out.candidates, target, valid[:, :, None, None].expand_as(target))[..., 0, 0]
        assert torch.allclose(shares.sum(dim=2), torch.ones(2, 2))
        heads = out.candidates.shape[2]
        expected = by_hand(out.images) + sum(by_hand(out.candidates[:, :, h], lambda b, n, h=h: float(shares[b, n, h]))
                                             for h in range(heads))
    assert parts["lesion"] == pytest.approx(expected, rel=1e-5)
    assert none["lesion"] == 0.0
    assert (loss - without).item() == pytest.approx(LossConfig().lesion * parts["lesion"], rel=1e-4)


def test_histogram_term_covers_the_image_and_the_mean_over_heads():
    from medk2n.losses.image import histogram_l1

    model = _model("B5").eval()
    x, src, tgt, target = _batch()
    with torch.no_grad():
        out = model.forward_detailed(x, src, tgt)
        valid = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
        _, parts = total_loss(out, target, tgt, model, LossConfig(), tgt_valid=valid)
        ones = valid[:, :, None, None].expand_as(target)
        heads = out.candidates.shape[2]
        expected = float(histogram_l1(out.images, target, ones)) + sum(
            float(histogram_l1(out.candidates[:, :, h], target, ones)) for h in range(heads)) / heads
        off, _ = total_loss(out, target, tgt, model, LossConfig(histogram=0.0), tgt_valid=valid)
        on, _ = total_loss(out, target, tgt, model, LossConfig(), tgt_valid=valid)
    assert parts["histogram"] == pytest.approx(expected, rel=1e-5)
    assert (on - off).item() == pytest.approx(LossConfig().histogram * parts["histogram"], rel=1e-4)
