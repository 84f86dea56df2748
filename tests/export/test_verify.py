import math

import numpy as np
import pytest

from medk2n.errors import ExportError
from medk2n.export import verify
from medk2n.export.calibration import SampleSet


def _outputs(images, scale=None):
    return {"images": images, "scale": images if scale is None else scale}


def test_psnr_known_value_and_cap():
    a = np.zeros((4, 4), np.float32)
    b = np.full((4, 4), 0.1, np.float32)
    assert verify.psnr(a, b) == pytest.approx(20.0)
    assert verify.psnr(a, a) == verify.PSNR_CAP_DB
    assert math.isfinite(verify.psnr(a, a))


def test_psnr_mask_only_counts_masked_voxels():
    a = np.zeros((2, 4, 4), np.float32)
    b = a.copy()
    b[:, 0, 0] = 1.0  # error outside the mask
    b[:, 1:, :] = 0.1
    mask = np.zeros((4, 4), bool)
    mask[1:, :] = True
    assert verify.psnr(a, b, mask) == pytest.approx(20.0)
    assert verify.psnr(a, b) < 20.0


def test_fp32_parity_tolerates_isolated_selection_flips_only():
    rng = np.random.default_rng(0)
    ref = rng.random((2, 4, 32, 32)).astype(np.float32)
    flipped = ref.copy()
    flipped[0, 0, 0, 0] += 0.2  # one voxel where the argmin picked another candidate
    assert verify.fp32_parity(_outputs(ref), _outputs(flipped))["passed"]
    shifted = ref + 2e-3  # every voxel off: an export bug
    result = verify.fp32_parity(_outputs(ref), _outputs(shifted))
    assert not result["passed"]
    assert result["images"]["outliers"] == 1.0
    assert result["images"]["max_abs"] == pytest.approx(2e-3, rel=1e-3)


def _samples(shape=(1, 8, 8)) -> SampleSet:
    return SampleSet(feeds={}, target=np.zeros((shape[0], 1, *shape[1:]), np.float32), brain=np.ones(shape, bool))


def test_fp16_parity_gates_on_psnr():
    ref = np.linspace(0.2, 0.8, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    assert verify.fp16_parity(_outputs(ref), _outputs(ref + 1e-3), _samples())["passed"]  # 60 dB
    assert not verify.fp16_parity(_outputs(ref), _outputs(ref + 0.05), _samples())["passed"]  # 26 dB


def test_fp16_and_int8_gates_cover_the_scale_ranking():
    """A precision that scrambles which voxels the scale marks as least reliable fails its gate."""
    ref = np.linspace(0.2, 0.8, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    scrambled = np.random.default_rng(0).permutation(ref.ravel()).reshape(ref.shape)
    kept = verify.fp16_parity(_outputs(ref), _outputs(ref, ref * 1.3), _samples())  # rescaled: same ranking
    assert kept["passed"] and kept["scale_agreement"]["spearman"] == pytest.approx(1.0)
    lost = verify.fp16_parity(_outputs(ref), _outputs(ref, scrambled), _samples())
    assert not lost["passed"] and lost["scale_agreement"]["spearman"] < verify.SCALE_MIN_SPEARMAN
    scale = verify.scale_agreement(_outputs(ref), _outputs(ref, scrambled), _samples())
    assert not verify.int8_drop(30.0, 29.9, scale)["passed"]


def test_a_nearly_flat_scale_passes_on_its_values_not_its_ranks():
    """An untrained scale is flat to 1e-4: rounding reorders its ties, which says nothing."""
    flat = 0.05 + 1e-6 * np.random.default_rng(1).random((1, 1, 8, 8)).astype(np.float32)
    jittered = flat + 1e-6 * np.random.default_rng(2).random(flat.shape).astype(np.float32)
    result = verify.scale_agreement(_outputs(flat), _outputs(flat, jittered), _samples())
    assert result["spearman"] < verify.SCALE_MIN_SPEARMAN and result["passed"]


def test_int8_drop():
    assert verify.int8_drop(30.0, 29.5)["passed"]
    result = verify.int8_drop(30.0, 28.0)
    assert not result["passed"] and result["drop_db"] == 2.0


def test_gate_refuses_unless_forced():
    result = verify.int8_drop(30.0, 20.0)
    with pytest.raises(ExportError, match="outside tolerance.*--force"):
        verify.gate(result, "INT8", force=False)
    verify.gate(result, "INT8", force=True)
    assert result["forced"] is True and result["passed"] is False


def test_check_finite_names_output():
    with pytest.raises(ExportError, match="'scale' has 1 NaN/Inf"):
        verify.check_finite({"images": np.zeros(3), "scale": np.array([0.0, np.inf])}, "model.fp16.onnx")


def test_figure_rounds_to_six_significant_digits():
    assert verify.figure(1.234567891) == 1.23457
    assert verify.figure(1.23456789e-7) == 1.23457e-7


def _checked(images, check) -> dict:
    return {"images": images, "scale": np.full_like(images, 0.1), "source_check": np.asarray(check, np.float32)}


def test_the_source_check_has_its_own_gates():
    """FP32 must match PyTorch to 1e-3; a reduced precision may move a probability by 0.05, and only the
    present source slots count (an absent slot's value is never read)."""
    images = np.linspace(0.2, 0.8, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    ref = [[0.9, 0.3]]
    assert verify.fp32_parity(_checked(images, ref), _checked(images, [[0.9, 0.3005]]))["passed"]
    assert not verify.fp32_parity(_checked(images, ref), _checked(images, [[0.9, 0.302]]))["passed"]
    samples = SampleSet(feeds={"avail": np.array([[1.0, 0.0]], np.float32)}, target=np.zeros((1, 1, 8, 8), np.float32),
                        brain=np.ones((1, 8, 8), bool))
    absent_moved = verify.fp16_parity(_checked(images, ref), _checked(images, [[0.88, 0.9]]), samples)
    assert absent_moved["passed"] and absent_moved["source_check_agreement"] == {
        "max_abs": 0.02, "flipped": 0.0, "frames": 1, "passed": True}
    present_moved = verify.fp16_parity(_checked(images, ref), _checked(images, [[0.45, 0.3]]), samples)
    assert not present_moved["passed"] and present_moved["source_check_agreement"]["flipped"] == 1.0
    check = verify.check_agreement(_checked(images, ref), _checked(images, [[0.45, 0.3]]), samples)
    assert not verify.int8_drop(30.0, 29.9, None, check)["passed"]
    assert verify.check_agreement(_outputs(images), _outputs(images), samples) is None  # no check, no entry
