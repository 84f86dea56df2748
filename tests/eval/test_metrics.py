import numpy as np
import pytest

from medk2n.eval.metrics import mae, psnr, spearman, ssim, ssim_map
from medk2n.eval.protocol import affine_fitted_psnr, percentile_scale, score_volume, summarise


def test_psnr_and_mae_by_hand():
    truth = np.zeros((4, 4))
    pred = truth + 0.1
    assert psnr(pred, truth) == pytest.approx(20.0)
    assert mae(pred, truth) == pytest.approx(0.1)
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True
    pred2 = truth.copy()
    pred2[0, :2] = 0.5  # error only inside the mask
    assert psnr(pred2, truth, mask) == pytest.approx(10 * np.log10(1 / 0.25))
    assert mae(pred2, truth, mask) == pytest.approx(0.5)
    assert mae(pred2, truth) == pytest.approx(2 * 0.5 / 16)


def test_ssim_matches_scikit_image_reference():
    # Reference value from skimage.metrics.structural_similarity(x, y, data_range=1,
    # gaussian_weights=True, sigma=1.5, use_sample_covariance=False) on this exact input,
    # which averages the SSIM map after cropping 5 border pixels.
    rng = np.random.default_rng(0)
    x = rng.random((40, 50))
    y = np.clip(x + 0.2 * rng.standard_normal((40, 50)), 0, 1)
    assert ssim_map(x, y)[5:-5, 5:-5].mean() == pytest.approx(0.8213511430691874, abs=1e-12)
    assert ssim(x, y) == pytest.approx(0.8213511430691874, abs=1e-12)  # the whole-image score crops alike
    assert ssim(np.stack([x, x]), np.stack([y, y])) == pytest.approx(0.8213511430691874, abs=1e-12)  # per slice
    # In an image framed by air, as a head is, the border the reference leaves out is a perfect 1.
    framed_x, framed_y = np.pad(x, 8), np.pad(y, 8)
    assert ssim_map(framed_x, framed_y).mean() > ssim(framed_x, framed_y) + 0.02


def test_perfect_prediction_gives_ssim_one_and_zero_error():
    rng = np.random.default_rng(1)
    vol = rng.random((12, 10, 6)).astype(np.float32) * 500
    mask = np.zeros(vol.shape, bool)
    mask[2:10, 2:8, :] = True
    scores = score_volume(vol, vol, mask, physical=True)
    assert scores["ssim"] == pytest.approx(1.0)
    assert scores["masked_ssim"] == pytest.approx(1.0)
    assert scores["mae"] == 0.0 and scores["masked_mae"] == 0.0
    assert scores["masked_mae_physical"] == 0.0
    assert scores["psnr"] == 100.0  # capped inf


def test_worse_prediction_scores_lower():
    rng = np.random.default_rng(2)
    truth = rng.random((16, 16, 4))
    mask = np.ones_like(truth, bool)
    good = score_volume(truth + 0.01 * rng.standard_normal(truth.shape), truth, mask)
    bad = score_volume(truth + 0.2 * rng.standard_normal(truth.shape), truth, mask)
    assert good["masked_psnr"] > bad["masked_psnr"]
    assert good["masked_ssim"] > bad["masked_ssim"]
    assert good["masked_mae"] < bad["masked_mae"]


def test_spearman_with_ties_and_confidence_ranking():
    a = np.array([1, 2, 2, 3, 4], dtype=float)
    b = np.array([10, 20, 20, 30, 40], dtype=float)
    assert spearman(a, b) == pytest.approx(1.0)
    assert spearman(a, -b) == pytest.approx(-1.0)
    # hand value: ranks of [3,1,2] vs [1,2,3] -> rho = 1 - 6*sum(d^2)/(n(n^2-1)) = 1 - 6*6/24 = -0.5
    assert spearman(np.array([3.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(-0.5)


def test_percentile_scale_and_summary():
    vol = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    scaled = percentile_scale(vol, np.ones_like(vol, bool))
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    summary = summarise([{"psnr": 20.0}, {"psnr": 30.0}])
    assert summary["psnr"]["mean"] == 25.0
    assert summary["psnr"]["sd"] == pytest.approx(np.std([20, 30], ddof=1))


def test_mask_selecting_nothing_is_an_error():
    with pytest.raises(ValueError):
        psnr(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2), bool))


def test_lesion_metrics_by_hand():
    # Tissue 0..0.8 ramp with a lesion at 1, above it; the prediction paints the lesion
    # at mid-grey. Both volumes are percentile-scaled first, so compute what the protocol sees.
    truth = np.tile(np.linspace(0.0, 0.8, 10, dtype=np.float32), (10, 10, 1)).transpose(0, 2, 1).copy()
    mask = np.ones(truth.shape, bool)
    lesion = np.zeros(truth.shape, bool)
    lesion[4:6, 4:6, 4:6] = True
    truth[lesion] = 1.0
    pred = truth.copy()
    pred[lesion] = 0.4
    scores = score_volume(pred, truth, mask, lesion=lesion)
    p, t = percentile_scale(pred, mask), percentile_scale(truth, mask)
    assert scores["lesion_mae"] == pytest.approx(float(np.abs(p - t)[lesion].mean()))
    assert scores["lesion_bias"] == pytest.approx(float((p - t)[lesion].mean()))
    assert scores["lesion_bias"] < -0.3  # too dark, and the sign says so
    perfect = score_volume(truth, truth, mask, lesion=lesion)
    assert perfect["lesion_mae"] == 0.0 and perfect["lesion_bias"] == 0.0
    # no lesion voxel inside the brain mask: no lesion metrics rather than a NaN
    assert "lesion_mae" not in score_volume(pred, truth, mask, lesion=np.zeros_like(lesion))


def test_affine_fitted_psnr_forgives_the_intensity_layout_and_nothing_else():
    """A synthesis with the right anatomy on another intensity layout scores as the right one; one with the
    anatomy wrong does not, however it is scaled; and the score is never below plain masked PSNR."""
    rng = np.random.default_rng(3)
    truth = rng.uniform(0.0, 1.0, (12, 12, 6))
    mask = np.zeros(truth.shape, bool)
    mask[2:10, 2:10] = True
    noisy = truth + 0.05 * rng.standard_normal(truth.shape)
    relaid = 0.4 * noisy + 0.3
    assert affine_fitted_psnr(relaid, truth, mask) == pytest.approx(affine_fitted_psnr(noisy, truth, mask))
    assert affine_fitted_psnr(relaid, truth, mask) > psnr(relaid, truth, mask) + 5.0
    shuffled = rng.permutation(noisy.ravel()).reshape(noisy.shape)
    assert affine_fitted_psnr(shuffled, truth, mask) < affine_fitted_psnr(noisy, truth, mask) - 10.0
    inverted = 1.0 - noisy  # the contrast reversed: not a layout, so not forgiven
    constant = psnr(np.full(truth[mask].shape, truth[mask].mean()), truth[mask])
    assert affine_fitted_psnr(inverted, truth, mask) == pytest.approx(constant)
    for pred in (noisy, relaid, shuffled, inverted):
        assert affine_fitted_psnr(pred, truth, mask) >= psnr(pred, truth, mask) - 1e-9
    scores = score_volume(relaid, truth, mask)
    assert scores["masked_psnr_affine"] >= scores["masked_psnr"]
