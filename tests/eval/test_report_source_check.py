"""The eval report's sentence on the source check names the lowest p per source against its threshold."""

from __future__ import annotations

from medk2n.eval.report import source_check_line


def test_source_check_line_names_the_lowest_p_and_the_failures() -> None:
    line = source_check_line({"sub-1": {"flair": 0.97, "adc": 0.99}, "sub-2": {"flair": 0.12, "adc": 0.98}})
    assert "lowest per source flair 0.120 (threshold 0.500), adc 0.980 (threshold 0.500)" in line
    assert line.endswith("below threshold: sub-2 (flair 0.120).")
    assert source_check_line({"sub-1": {"flair": 0.9}}).endswith("below threshold: none.")


def test_a_fitted_threshold_decides_per_contrast() -> None:
    checks = {"sub-1": {"flair": 0.97, "adc": 0.99}, "sub-2": {"flair": 0.80, "adc": 0.90}}
    line = source_check_line(checks, {"flair": 0.95})
    assert "flair 0.800 (threshold 0.950)" in line and "adc 0.900 (threshold 0.500)" in line
    assert line.endswith("below threshold: sub-2 (flair 0.800).")
