"""SliceInferer: batching, padding, skipping, ordering; any runner will do."""

from __future__ import annotations

import numpy as np
import pytest

from medk2n.errors import MedK2NError
from medk2n.runtime.inferer import SliceInferer, brain_slices
from medk2n.runtime.runners import Runner


class RecordingRunner(Runner):
    """images[b, n] = x[b, 0] + tgt[b, n]; scale[b, n] = avail[b].sum(); records batch sizes."""

    def __init__(self, nan: bool = False, check: bool = False) -> None:
        super().__init__("recording")
        self.batches: list[int] = []
        self.nan = nan
        self.check = check

    def _activate(self) -> None: ...

    def _deactivate(self) -> None: ...

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, tgt, avail = feed["x"], feed["tgt"], feed["avail"]
        self.batches.append(len(x))
        images = x[:, :1] + tgt[:, :, None, None].astype(np.float32)
        scale = np.broadcast_to(avail.sum(1)[:, None, None, None], images.shape).copy()
        if self.nan:
            images[0, 0, 0, 0] = np.nan
        out = {"images": images, "scale": scale}
        if self.check:  # per slot: the slice's first pixel of that slot, scaled (identifies the slice)
            out["source_check"] = x[:, :, 0, 0] / 100.0
        return out


def slices(n: int = 7) -> list[np.ndarray]:
    base = np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32)
    return [base, base * 10]


def test_batches_keep_slice_order_and_pad_to_the_minimum() -> None:
    runner = RecordingRunner()
    done = []
    with runner:
        images, conf, check = SliceInferer(runner, batch_size=3, min_batch=3)(
            slices(), np.array([1, 2]), np.array([3, 4]), np.array([1.0, 0.0]), progress=done.append)
    assert runner.batches == [3, 3, 3]  # 7 slices: 3 + 3 + (1 padded to 3)
    assert done == [3, 3, 1]
    assert images.shape == conf.shape == (2, 7, 4, 4)
    np.testing.assert_array_equal(images[0, :, 0, 0], np.arange(7) + 3)
    np.testing.assert_array_equal(images[1, :, 0, 0], np.arange(7) + 4)
    assert np.all(conf == 1.0)
    assert check is None  # a graph without a source check


def test_source_check_rows_follow_their_slices_and_skipped_ones_are_nan() -> None:
    keep = np.array([True, False, True, True, False, True, True])
    with RecordingRunner(check=True) as runner:
        _, _, check = SliceInferer(runner, batch_size=2, min_batch=2)(
            slices(), np.array([1, 2]), np.array([3]), np.ones(2, np.float32), keep=keep)
    assert check.shape == (7, 2) and check.dtype == np.float32
    assert np.isnan(check[~keep]).all()
    np.testing.assert_allclose(check[keep, 0], np.flatnonzero(keep) / 100.0)
    np.testing.assert_allclose(check[keep, 1], np.flatnonzero(keep) / 10.0)


def test_skipped_slices_stay_zero_and_are_not_sent() -> None:
    keep = np.array([False, True, True, False, False, True, False])
    runner = RecordingRunner()
    with runner:
        images, _, _ = SliceInferer(runner, batch_size=8)(slices(), np.array([1, 2]), np.array([3, 4]),
                                                      np.ones(2, np.float32), keep=keep)
    assert runner.batches == [3]
    assert np.all(images[:, ~keep] == 0)
    np.testing.assert_array_equal(images[0, keep, 0, 0], np.flatnonzero(keep) + 3)


def test_non_finite_model_output_is_an_error() -> None:
    with RecordingRunner(nan=True) as runner, pytest.raises(MedK2NError, match="NaN/Inf"):
        SliceInferer(runner, batch_size=4)(slices(), np.array([1, 2]), np.array([3, 4]), np.ones(2, np.float32))


def test_brain_slices() -> None:
    brain = np.zeros((3, 4, 4), bool)
    brain[1, 2, 2] = True
    np.testing.assert_array_equal(brain_slices(brain), [False, True, False])
