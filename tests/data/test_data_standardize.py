"""Histogram standardisation: landmarks land on the standard scale, monotone, and only where it can."""

from __future__ import annotations

import numpy as np
import pytest

from medk2n.config import STANDARD_PERCENTILES, NormSpec
from medk2n.data.standardize import fit_standard, landmarks, standardize
from medk2n.errors import ConfigError

SKEWED = [0.0, 0.3, 0.45, 0.55, 0.62, 0.68, 0.74, 0.8, 0.86, 0.92, 1.0]


def volume(seed: int = 0, shape: tuple[int, int, int] = (20, 18, 9)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=bool)
    mask[3:-3, 3:-3, 1:-1] = True
    image = np.where(mask, rng.gamma(4.0, 50.0, shape), 0.0).astype(np.float32)
    return image, mask


def test_landmarks_are_the_scaled_percentiles_inside_the_mask() -> None:
    image, mask = volume()
    marks = landmarks(image, mask)
    raw = np.percentile(image[mask], STANDARD_PERCENTILES)
    np.testing.assert_allclose(marks, (raw - raw[0]) / (raw[-1] - raw[0]), atol=1e-12)
    assert marks[0] == 0.0 and marks[-1] == 1.0
    assert landmarks(np.full((4, 4, 4), 7.0), np.ones((4, 4, 4), bool)) is None
    assert landmarks(image, np.zeros_like(mask)) is None


def test_standardised_volume_has_the_standard_landmarks() -> None:
    image, mask = volume()
    out = standardize(image, mask, SKEWED)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_allclose(np.percentile(out[mask], STANDARD_PERCENTILES), SKEWED, atol=0.02)
    # Monotone: the order of intensities, i.e. the anatomy, is kept.
    order = np.argsort(image[mask], kind="stable")
    assert np.all(np.diff(out[mask][order]) >= 0)


def test_a_volume_already_on_the_scale_only_gets_percentile_scaled() -> None:
    image, mask = volume()
    own = landmarks(image, mask).tolist()
    raw = np.percentile(image[mask], [0.5, 99.5])
    expected = np.clip((image - raw[0]) / (raw[1] - raw[0]), 0, 1)
    np.testing.assert_allclose(standardize(image, mask, own), expected, atol=1e-5)


def test_flat_or_empty_volumes_come_back_unchanged() -> None:
    flat = np.zeros((6, 6, 6), np.float32)
    flat[2:4, 2:4, 2:4] = 0.5
    mask = flat > 0
    np.testing.assert_array_equal(standardize(flat, mask, SKEWED), flat)
    np.testing.assert_array_equal(standardize(flat, np.zeros_like(mask), SKEWED), flat)


def test_cohort_standard_is_the_mean_of_the_subjects_landmarks() -> None:
    pairs = [volume(seed) for seed in range(3)]
    standard = fit_standard(pairs)
    np.testing.assert_allclose(standard, np.mean([landmarks(v, m) for v, m in pairs], axis=0), atol=1e-12)
    assert standard[0] == 0.0 and standard[-1] == 1.0
    assert fit_standard([]) is None
    NormSpec(standard=standard)  # a fitted scale is always a valid config value


@pytest.mark.parametrize("spec", [
    dict(standard=[0.0, 0.5, 1.0]),  # wrong length
    dict(standard=[0.0, 0.3, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 1.0]),  # decreasing
    dict(standard=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 1.0]),  # does not start at 0
    dict(kind="range", low=0.0, high=4000.0, standard=SKEWED),  # physical units are never remapped
])
def test_bad_standard_scales_are_config_errors(spec: dict) -> None:
    with pytest.raises(ConfigError, match="standard scale"):
        NormSpec(**spec)
