"""Split-conformal quantiles and their lookup: the interval holds its coverage on new data."""

from __future__ import annotations

import numpy as np
import pytest

from medk2n.errors import DataError
from medk2n.runtime.uncertainty import LEVELS, check_coverage, fit_quantiles, interval_factor


def _heteroscedastic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """|error| and a scale that ranks it: Laplace residuals whose scale varies 20-fold over voxels."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.uniform(np.log(0.01), np.log(0.2), n))
    return np.abs(rng.laplace(0.0, scale)), scale


@pytest.mark.parametrize("coverage", [0.5, 0.8, 0.9, 0.95])
def test_intervals_fitted_on_one_split_cover_another(coverage: float) -> None:
    error, scale = _heteroscedastic(40000, seed=1)
    doc = {"levels": list(LEVELS), "quantiles": {"fp32": {"t2": fit_quantiles(error / scale)}}}
    q = interval_factor(doc, "t2", coverage, "fp32")
    new_error, new_scale = _heteroscedastic(40000, seed=2)
    assert np.mean(new_error <= q * new_scale) == pytest.approx(coverage, abs=0.01)
    # a Laplace score |r|/b has quantile -log(1 - c): the scaled residual is what gets calibrated
    assert q == pytest.approx(-np.log(1 - coverage), rel=0.05)


def test_a_miscalibrated_scale_is_rescaled_by_the_fit() -> None:
    """Training residuals are smaller than test errors: a scale 3x too small still gets 90 % coverage."""
    error, scale = _heteroscedastic(20000, seed=3)
    doc = {"levels": list(LEVELS), "quantiles": {"fp32": {"t2": fit_quantiles(error / (scale / 3))}}}
    new_error, new_scale = _heteroscedastic(20000, seed=4)
    q = interval_factor(doc, "t2", 0.9, "fp32")
    assert np.mean(new_error <= q * new_scale / 3) == pytest.approx(0.9, abs=0.01)


def test_finite_sample_correction_and_bad_scores() -> None:
    scores = np.arange(1, 10, dtype=float)  # n = 9: level 0.9 -> rank ceil(10 * 0.9) = 9 -> the maximum
    assert fit_quantiles(scores, (0.5, 0.9)) == [5.0, 9.0]
    assert fit_quantiles(np.array([1.0, np.nan, 2.0]), (0.5,)) == [2.0]
    with pytest.raises(ValueError, match="no finite conformity scores"):
        fit_quantiles(np.array([np.nan]))


def test_lookup_falls_back_to_fp32_and_to_nothing() -> None:
    doc = {"levels": [0.5, 0.9], "quantiles": {"fp32": {"t2": [1.0, 3.0]}, "int8": {"t2": [2.0, 4.0]}}}
    assert interval_factor(doc, "t2", 0.7, "int8") == pytest.approx(3.0)
    assert interval_factor(doc, "t2", 0.7, "fp16") == pytest.approx(2.0)  # no fp16 table: FP32's
    assert interval_factor(doc, "pd", 0.9, "fp32") is None
    assert interval_factor({}, "t2", 0.9, "fp32") is None


@pytest.mark.parametrize("bad", [0.0, 1.0, -1.0, 2.0, 0.9999])
def test_coverage_must_be_a_calibrated_probability(bad: float) -> None:
    with pytest.raises(DataError, match="--coverage"):
        check_coverage(bad)
    assert check_coverage(0.9) == 0.9
