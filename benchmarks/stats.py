"""Statistics for the quality benchmark: mean ± sd over subjects and the paired Wilcoxon test.

The signed-rank p-value is exact for every n: the null distribution of the
positive-rank sum is built by convolution over the (mid)ranks, so small
samples and tied |differences| need no normal approximation. Zero
differences are dropped (Wilcoxon's original treatment); with none left
there is no test, and the result says so instead of inventing a p-value.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def mean_sd(values: Iterable[float]) -> dict:
    """{"mean", "sd" (sample, ddof=1; None below 2 values), "n"} over the finite values.

    Non-finite values are left out and counted under "dropped_nonfinite".
    """
    array = np.asarray(list(values), dtype=np.float64)
    finite = array[np.isfinite(array)]
    out = {
        "mean": float(finite.mean()) if finite.size else None,
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
        "n": int(finite.size),
    }
    if finite.size < array.size:
        out["dropped_nonfinite"] = int(array.size - finite.size)
    return out


def format_mean_sd(stats: dict | None, digits: int = 2) -> str:
    """"12.34 ± 0.56", "12.34 (n=1)" without a spread, or "–" when there is nothing to report."""
    if not stats or stats.get("mean") is None:
        return "–"
    if stats.get("sd") is None:
        return f"{stats['mean']:.{digits}f} (n={stats['n']})"
    return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"


def format_p(result: dict | None) -> str:
    """A p-value for a table: 3 significant digits or "<0.001", "n/a (reason)" without a test.

    When n is too small for any p to reach 0.05 the table says so, so a
    large p is not read as evidence of no difference.
    """
    if not result:
        return "–"
    if result.get("p") is None:
        return f"n/a ({result.get('reason', 'no test')})"
    p = result["p"]
    text = "<0.001" if p < 1e-3 else f"{p:.3g}"
    if result.get("min_p", 0.0) > 0.05:
        text += f" (n={result['n']}, min p {result['min_p']:.3g})"
    return text


def _midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = 0.5 * (start + 1 + end)
            start = end
    return ranks


def _exact_two_sided(doubled_ranks: np.ndarray, observed: int) -> float:
    """P(|T - E T| >= |t - E T|) for T = sum of doubled ranks with random signs (null of no shift)."""
    total = int(doubled_ranks.sum())
    dist = np.zeros(total + 1, dtype=np.float64)
    dist[0] = 1.0
    for r in doubled_ranks.astype(int):
        shifted = np.zeros_like(dist)
        shifted[r:] = dist[: total + 1 - r]
        dist = 0.5 * dist + 0.5 * shifted
    centre = total / 2.0
    extreme = np.abs(np.arange(total + 1) - centre) >= abs(observed - centre) - 1e-9
    return float(min(1.0, dist[extreme].sum()))


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided exact Wilcoxon signed-rank test of paired samples a vs b.

    Returns {"p", "n" (non-zero pairs), "n_zero", "statistic" (W+, rank sum of
    a > b), "median_diff" (a - b), "method"}; `p` is None with a "reason"
    when no pair is usable or every difference is zero. `min_p` is the
    smallest p this n can reach (2 / 2**n without ties), so a table can
    show when a non-significant p was unavoidable.
    """
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired samples need equal lengths, got {a_arr.size} and {b_arr.size}")
    diff = (a_arr - b_arr)[np.isfinite(a_arr) & np.isfinite(b_arr)]
    nonzero = diff[diff != 0]
    out = {"n": int(nonzero.size), "n_zero": int(diff.size - nonzero.size), "method": "exact"}
    if diff.size == 0:
        return {**out, "p": None, "reason": "no paired values"}
    out["median_diff"] = float(np.median(diff))
    if nonzero.size == 0:
        return {**out, "p": None, "reason": "all differences are zero"}
    doubled = np.rint(2 * _midranks(np.abs(nonzero))).astype(int)
    w_plus = int(doubled[nonzero > 0].sum())
    out["statistic"] = w_plus / 2.0
    out["p"] = _exact_two_sided(doubled, w_plus)
    out["min_p"] = min(1.0, 2.0 / 2 ** nonzero.size) if nonzero.size < 1075 else 0.0
    return out


def paired(rows_a: dict[str, float], rows_b: dict[str, float]) -> tuple[list[float], list[float]]:
    """Values of two {subject: value} maps on the subjects they share, in a stable order."""
    common = sorted(set(rows_a) & set(rows_b))
    return [rows_a[k] for k in common], [rows_b[k] for k in common]


def per_subject(rows: Sequence[dict], metric: str, targets: Sequence[str]) -> dict[str, float]:
    """{case: value} of `metric`; with several `targets`, each subject's mean over them (a task-level score).

    A subject missing any of the targets, or the metric for one, is left out
    rather than averaged over fewer targets.
    """
    values: dict[str, dict[str, float]] = {}
    for row in rows:
        if metric in row and row["target"] in targets:
            values.setdefault(row["case"], {})[row["target"]] = float(row[metric])
    return {case: float(np.mean([v[t] for t in targets])) for case, v in values.items() if set(targets) <= set(v)}
