import numpy as np
import pytest

from medk2n.data.artifacts import ARTIFACTS, degrade


def _slice() -> np.ndarray:
    y, x = np.mgrid[-1:1:32j, -1:1:32j]
    return np.clip(1.0 - (x**2 + y**2), 0.0, 1.0).astype(np.float32) * 0.8


@pytest.mark.parametrize("kind", ARTIFACTS)
def test_each_artefact_changes_the_slice_and_stays_in_range(kind):
    image = _slice()
    other = (0.8 - image).astype(np.float32)
    out = degrade(image, kind, np.random.default_rng(0), other)
    assert out.shape == image.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert np.abs(out - image).mean() > 0.01
    if kind == "contrast":
        np.testing.assert_array_equal(out, other)


def test_noise_is_rician_so_the_background_brightens():
    image = _slice()
    out = degrade(image, "noise", np.random.default_rng(1))
    assert out[image == 0].mean() > 0.005  # magnitude noise has a positive floor


def test_ghosting_moves_signal_outside_the_object_and_keeps_its_energy_order():
    image = _slice()
    out = degrade(image, "ghosting", np.random.default_rng(2))
    assert out[image == 0].max() > 0.02
    assert abs(float(out.sum()) / float(image.sum()) - 1.0) < 0.5


def test_unknown_artefact_and_missing_other_contrast_are_refused():
    with pytest.raises(ValueError, match="choose one of"):
        degrade(_slice(), "blur", np.random.default_rng(0))
    with pytest.raises(ValueError, match="another contrast"):
        degrade(_slice(), "contrast", np.random.default_rng(0))
