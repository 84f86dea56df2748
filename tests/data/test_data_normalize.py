import numpy as np
import pytest

from medk2n.config import NormSpec
from medk2n.data.normalize import NormParams, denormalize, normalize
from medk2n.errors import DataError


def test_percentile_normalisation_inverts_inside_the_percentile_range():
    rng = np.random.default_rng(0)
    array = np.zeros((10, 10, 10), np.float32)
    array[2:8, 2:8, 2:8] = rng.uniform(100, 900, (6, 6, 6))
    out, params = normalize(array, NormSpec("percentile", 0.5, 99.5))
    tissue = array[array > 0]
    assert params.kind == "percentile"
    assert params.lo == pytest.approx(np.percentile(tissue, 0.5))
    assert params.hi == pytest.approx(np.percentile(tissue, 99.5))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    back = denormalize(out, params)
    inside = (array >= params.lo) & (array <= params.hi)
    np.testing.assert_allclose(back[inside], array[inside], rtol=1e-5)
    np.testing.assert_allclose(back[~inside], np.clip(array[~inside], params.lo, params.hi), rtol=1e-5)


def test_percentile_uses_the_mask_when_given():
    array = np.arange(1, 101, dtype=np.float32).reshape(10, 10)
    mask = array > 50
    _, params = normalize(array, {"kind": "percentile", "low": 0.0, "high": 100.0}, mask=mask)
    assert (params.lo, params.hi) == (51.0, 100.0)


def test_range_normalisation_is_fixed_and_inverts_to_physical_units():
    adc = np.array([0.0, 800.0, 2000.0, 3000.0, 5000.0], np.float32)
    out, params = normalize(adc, {"kind": "range", "low": 0.0, "high": 4000.0})
    assert params == NormParams("range", 0.0, 4000.0)
    np.testing.assert_allclose(out, [0.0, 0.2, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(denormalize(out, params), [0.0, 800.0, 2000.0, 3000.0, 4000.0])


def test_constant_tissue_raises_with_the_source_name():
    array = np.zeros((4, 4, 4), np.float32)
    array[1:3, 1:3, 1:3] = 7.0
    with pytest.raises(DataError, match="t2.nii.gz"):
        normalize(array, NormSpec(), source="case1/t2.nii.gz")
