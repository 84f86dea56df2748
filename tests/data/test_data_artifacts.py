import numpy as np
import pytest

from medk2n.data.artifacts import ARTIFACTS, degrade, degrade_volume
from medk2n.errors import ConfigError


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


# Whole-volume degradations at test time (degrade_volume: the robustness benchmark and the export's check fit).
def _head(shape=(24, 24, 8)) -> np.ndarray:
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    disc = (x**2 + y**2 < 0.6).astype(np.float32)
    return np.repeat((disc * (300 + 200 * x))[..., None], shape[2], axis=2).astype(np.float32)


def test_noise_and_ghosting_degrade_without_changing_the_grid():
    head = _head()
    noisy = degrade_volume(head, "noise", np.random.default_rng(0))
    ghosted = degrade_volume(head, "ghosting", np.random.default_rng(0))
    for degraded in (noisy, ghosted):
        assert degraded.shape == head.shape and degraded.dtype == np.float32 and np.isfinite(degraded).all()
    inside = head > 0
    assert np.std(noisy[inside] - head[inside]) > 0.1 * np.percentile(head[inside], 99)
    outside = ~inside
    assert ghosted[outside].mean() > 5 * max(head[outside].mean(), 1e-3)  # ghosts spill into the air
    assert abs(ghosted.sum() - head.sum()) < 0.5 * head.sum()  # the same object, displaced copies


def test_wrong_contrast_is_the_other_volume_and_needs_one():
    head, other = _head(), _head()[::-1].copy()
    np.testing.assert_array_equal(degrade_volume(head, "contrast", np.random.default_rng(0), other), other)
    with pytest.raises(Exception, match="another modality"):
        degrade_volume(head, "contrast", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="choose one of"):
        degrade_volume(head, "blur", np.random.default_rng(0))
