"""Wilcoxon signed-rank and mean ± sd helpers of the quality benchmark, on hand-checked inputs."""

import itertools

import numpy as np
import pytest
import scipy.stats

from medk2n.benchmarks.stats import format_mean_sd, format_p, mean_sd, paired, per_subject, wilcoxon_signed_rank


def test_six_positive_differences_give_the_exact_two_sided_p():
    # Only all-plus and all-minus sign patterns reach |W+ - 10.5| = 10.5: p = 2 / 2**6.
    result = wilcoxon_signed_rank([11, 12, 13, 14, 15, 16], [10, 10, 10, 10, 10, 10])
    assert result["p"] == pytest.approx(2 / 64) == pytest.approx(0.03125)
    assert result["statistic"] == 21.0 and result["n"] == 6 and result["min_p"] == pytest.approx(0.03125)


def test_direction_does_not_change_the_two_sided_p_but_flips_the_statistic():
    a, b = [3.1, 2.0, 5.5, 4.2, 0.3], [1.0, 2.5, 1.5, 1.2, 0.1]
    forward, backward = wilcoxon_signed_rank(a, b), wilcoxon_signed_rank(b, a)
    assert forward["p"] == pytest.approx(backward["p"])
    assert forward["statistic"] + backward["statistic"] == 15.0  # n(n+1)/2
    assert forward["median_diff"] == pytest.approx(-backward["median_diff"])


@pytest.mark.parametrize("n", [5, 9, 17])
def test_matches_scipy_exact_without_ties(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=n), rng.normal(size=n) + 0.4
    ours = wilcoxon_signed_rank(a, b)["p"]
    assert ours == pytest.approx(scipy.stats.wilcoxon(a, b, method="exact").pvalue, rel=1e-9)


def test_tied_differences_match_a_brute_force_sign_flip_enumeration():
    diffs = np.array([1.0, 1.0, -2.0, 3.0, 3.0, 3.0, -1.0])
    ranks = scipy.stats.rankdata(np.abs(diffs))
    observed = ranks[diffs > 0].sum()
    centre = ranks.sum() / 2
    extreme = sum(
        abs(sum(r for r, s in zip(ranks, signs) if s) - centre) >= abs(observed - centre) - 1e-9
        for signs in itertools.product([0, 1], repeat=len(diffs))
    )
    assert wilcoxon_signed_rank(diffs, np.zeros_like(diffs))["p"] == pytest.approx(extreme / 2 ** len(diffs))


def test_zero_differences_are_dropped_and_all_zero_gives_no_p():
    with_zeros = wilcoxon_signed_rank([1, 2, 3, 4, 5, 6, 7, 7], [0, 0, 0, 0, 0, 0, 7, 7])
    assert with_zeros["n"] == 6 and with_zeros["n_zero"] == 2 and with_zeros["p"] == pytest.approx(0.03125)
    none = wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0])
    assert none["p"] is None and "zero" in none["reason"]
    empty = wilcoxon_signed_rank([np.nan], [1.0])
    assert empty["p"] is None and empty["n"] == 0


def test_small_samples_report_their_smallest_attainable_p():
    result = wilcoxon_signed_rank([2, 3, 4], [1, 1, 1])
    assert result["p"] == pytest.approx(0.25) and result["min_p"] == pytest.approx(0.25)
    assert format_p(result) == "0.25 (n=3, min p 0.25)"


def test_unpaired_lengths_are_refused():
    with pytest.raises(ValueError, match="equal lengths"):
        wilcoxon_signed_rank([1, 2, 3], [1, 2])


def test_mean_sd_uses_the_sample_sd_and_drops_non_finite_values():
    stats = mean_sd([1.0, 2.0, 3.0, 4.0, np.inf, np.nan])
    assert stats["mean"] == pytest.approx(2.5) and stats["sd"] == pytest.approx(np.sqrt(5 / 3))
    assert stats["n"] == 4 and stats["dropped_nonfinite"] == 2
    assert mean_sd([7.0]) == {"mean": 7.0, "sd": None, "n": 1}
    assert mean_sd([])["mean"] is None


def test_formatting():
    assert format_mean_sd({"mean": 12.345, "sd": 0.5, "n": 4}) == "12.35 ± 0.50"
    assert format_mean_sd({"mean": 0.91234, "sd": None, "n": 1}, 3) == "0.912 (n=1)"
    assert format_mean_sd(None) == "–"
    assert format_p({"p": 0.0004, "n": 20, "min_p": 2e-6}) == "<0.001"
    assert format_p({"p": None, "reason": "all differences are zero"}) == "n/a (all differences are zero)"


def test_per_subject_task_means_need_every_target():
    rows = [
        {"case": "a", "target": "dwi", "m": 10.0}, {"case": "a", "target": "t2", "m": 20.0},
        {"case": "b", "target": "dwi", "m": 30.0},  # no t2: left out of the task mean
    ]
    assert per_subject(rows, "m", ["dwi", "t2"]) == {"a": 15.0}
    assert per_subject(rows, "m", ["dwi"]) == {"a": 10.0, "b": 30.0}
    assert paired({"a": 1.0, "b": 2.0, "c": 3.0}, {"c": 30.0, "a": 10.0}) == ([1.0, 3.0], [10.0, 30.0])
