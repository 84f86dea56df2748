"""Latency and quality benchmarks; committed results live in `results/`."""
