"""Latency statistics and the timed loop every backend goes through.

Times come from the runner interface itself (`Runner.last_inference_time`,
polygraphy style), so torch eager, ONNX Runtime and TensorRT are measured by
the same clock around the same call. Percentiles use linear interpolation
between order statistics (numpy's default), so p50 of an even count is the
mean of the two middle values.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medk2n.runtime.runners import Runner

PERCENTILES = (50, 95, 99)


def summarize(seconds: Sequence[float], batch: int) -> dict[str, float]:
    """p50/p95/p99/mean/min/max latency per batch in ms and slices/s (batch / mean latency)."""
    if len(seconds) == 0:
        raise ValueError("no timings to summarise")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    stats = {f"p{p}_ms": float(np.percentile(ms, p)) for p in PERCENTILES}
    stats.update(mean_ms=float(ms.mean()), min_ms=float(ms.min()), max_ms=float(ms.max()))
    # Throughput is total slices over total time, i.e. batch over the mean, not over the median.
    stats["slices_per_s"] = batch / (stats["mean_ms"] / 1e3)
    return stats


def time_runner(runner: Runner, feed: dict[str, np.ndarray], warmup: int, iters: int) -> list[float]:
    """Seconds per `infer` call for `iters` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        runner.infer(feed)
    times = []
    for _ in range(iters):
        runner.infer(feed)
        times.append(runner.last_inference_time())
    return times
