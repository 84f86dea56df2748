"""runtime.source_check: one figure per source from per-slice probabilities, and the warning it raises."""

from __future__ import annotations

import numpy as np

import pytest

from medk2n.runtime.source_check import (THRESHOLD, case_probabilities, doubted, fit_threshold, mislabel_warnings,
                                         sources_to_exclude, threshold_for)


def test_case_figure_is_the_median_over_inferred_slices_per_source_slot() -> None:
    per_slice = np.array([[0.9, 0.1], [np.nan, np.nan], [0.8, 0.2], [0.1, 0.3]], np.float32)
    got = case_probabilities(per_slice, ["flair", "adc"])
    assert got == {"flair": 0.8, "adc": 0.2}  # one odd slice (0.1 for flair) does not flip the case


def test_fewer_sources_than_slots_reports_the_present_ones_only() -> None:
    per_slice = np.array([[0.9, 0.5], [0.7, 0.5]], np.float32)
    assert case_probabilities(per_slice, ["t1"]) == {"t1": 0.8}


def test_no_check_or_no_inferred_slice_gives_none() -> None:
    assert case_probabilities(None, ["flair"]) is None
    assert case_probabilities(np.full((3, 2), np.nan, np.float32), ["flair", "adc"]) is None


def test_warning_names_case_source_and_probability_only_below_threshold() -> None:
    lines = mislabel_warnings("sub-01", {"flair": 0.93, "adc": 0.12, "t2": THRESHOLD})
    assert len(lines) == 1
    assert lines[0].startswith("sub-01: source 'adc' does not look like ADC")
    assert "p = 0.12" in lines[0] and "\n" not in lines[0]
    assert mislabel_warnings("sub-01", None) == []


def test_exclusion_leaves_out_doubted_sources_but_never_all_of_them() -> None:
    assert sources_to_exclude({"flair": 0.1, "adc": 0.9, "t2": 0.3}) == ["flair", "t2"]
    assert sources_to_exclude({"flair": 0.1, "adc": 0.2}) == []  # nothing would be left to synthesise from
    assert sources_to_exclude({"flair": 0.9}) == []
    assert sources_to_exclude(None) == []


def test_warnings_say_what_exclusion_did() -> None:
    (left_out,) = mislabel_warnings("sub-01", {"flair": 0.1, "adc": 0.9}, excluded=["flair"])
    assert left_out.endswith("left out (--exclude-mislabelled); synthesised from adc only")
    kept = mislabel_warnings("sub-01", {"flair": 0.1, "adc": 0.2}, excluded=[])
    assert len(kept) == 2 and all("kept: the check doubts every source" in line for line in kept)


def test_a_fitted_threshold_replaces_the_networks_boundary_for_its_contrast_only() -> None:
    fitted = {"flair": 0.95, "adc": 0.3}
    assert threshold_for("flair", fitted) == 0.95 and threshold_for("t2", fitted) == THRESHOLD
    probabilities = {"flair": 0.9, "adc": 0.4, "t2": 0.45}
    assert doubted(probabilities, fitted) == ["flair", "t2"]
    assert doubted(probabilities) == ["adc", "t2"]
    assert sources_to_exclude(probabilities, fitted) == ["flair", "t2"]
    (line,) = mislabel_warnings("sub-01", {"flair": 0.9, "adc": 0.99}, thresholds=fitted)
    assert "p = 0.900 < 0.950" in line


def test_the_fitted_threshold_is_the_lowest_correctly_named_median() -> None:
    assert fit_threshold([0.96, 0.93, 0.95]) == 0.93
    with pytest.raises(ValueError):
        fit_threshold([])
    with pytest.raises(ValueError):
        fit_threshold([0.9, float("nan")])
