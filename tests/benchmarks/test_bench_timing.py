"""Latency statistics on fixed inputs, and the timed loop around a runner."""

from __future__ import annotations

import numpy as np
import pytest

from medk2n.benchmarks.timing import summarize, time_runner
from medk2n.runtime.runners import Runner


def test_summarize_ten_values_by_hand():
    # 1..10 ms; linear interpolation: rank = p/100 * (n-1) -> p50 at 4.5 -> 5.5, p95 at 8.55 -> 9.55, p99 -> 9.91.
    stats = summarize([i / 1000 for i in range(1, 11)], batch=4)
    assert stats["p50_ms"] == pytest.approx(5.5)
    assert stats["p95_ms"] == pytest.approx(9.55)
    assert stats["p99_ms"] == pytest.approx(9.91)
    assert stats["mean_ms"] == pytest.approx(5.5)
    assert (stats["min_ms"], stats["max_ms"]) == pytest.approx((1.0, 10.0))
    assert stats["slices_per_s"] == pytest.approx(4 / 0.0055)


def test_summarize_is_order_free_and_throughput_uses_the_mean():
    # 2, 2, 2, 10 ms: the median (2) would claim 1000 slices/s for batch 2; the mean (4 ms) gives 500.
    stats = summarize([0.010, 0.002, 0.002, 0.002], batch=2)
    assert stats["p50_ms"] == pytest.approx(2.0)
    assert stats["p95_ms"] == pytest.approx(2.0 + 0.85 * 8.0)  # rank 2.85 between 2 ms and 10 ms
    assert stats["slices_per_s"] == pytest.approx(500.0)


def test_summarize_single_value_and_bad_input():
    stats = summarize([0.003], batch=1)
    assert stats["p50_ms"] == stats["p99_ms"] == pytest.approx(3.0)
    with pytest.raises(ValueError):
        summarize([], batch=1)
    with pytest.raises(ValueError):
        summarize([0.1], batch=0)


class CountingRunner(Runner):
    def __init__(self) -> None:
        super().__init__("counting")
        self.calls = 0

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def _infer(self, feed):
        self.calls += 1
        return {"images": feed["x"] * 2}


def test_time_runner_discards_warmup_calls():
    runner = CountingRunner()
    with runner:
        times = time_runner(runner, {"x": np.ones((1, 2), np.float32)}, warmup=3, iters=5)
    assert runner.calls == 8
    assert len(times) == 5
    assert all(isinstance(t, float) and t >= 0 for t in times)
