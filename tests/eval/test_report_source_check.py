"""The eval report's sentence on the model's source check."""

from __future__ import annotations

from medk2n.eval.report import source_check_line


def test_line_gives_the_lowest_p_per_source_and_names_who_failed() -> None:
    line = source_check_line({"sub-1": {"flair": 0.97, "adc": 0.99}, "sub-2": {"flair": 0.12, "adc": 0.98}})
    assert "lowest per source flair 0.12, adc 0.98" in line
    assert line.endswith("below 0.5: sub-2 (flair 0.12).")
    assert source_check_line({"sub-1": {"flair": 0.9}}).endswith("below 0.5: none.")
