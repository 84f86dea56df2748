"""Is the per-voxel uncertainty useful? Scores and risk-coverage plots (numpy only).

A confidence map earns its place only if it ranks voxels by how wrong they
are. Three views of that:

* Spearman(uncertainty, |error|): rank agreement, scale-free.
* Sparsification (Ilg et al., ECCV 2018, "Uncertainty estimates and
  multi-hypotheses networks for optical flow"): drop the most uncertain voxels
  first and watch the mean |error| of the rest; compare with the oracle that
  drops the largest errors first. AUSE is the area between the two curves,
  normalised by the error at full retention (unitless, 0 = oracle ranking).
* Coverage: how often |error| falls inside a predicted half-width.

Ties in uncertainty are resolved by averaging: a voxel in a tie group that
is cut through contributes the mean error of its group, which is the exact
expectation over random tie-breaking. A constant map therefore scores as a
random ranking, never as the oracle, and no seed is involved.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from medk2n.errors import MedK2NError
from medk2n.eval.metrics import spearman
from medk2n.fsutil import write_atomic

RETAINED = np.linspace(1.0, 0.02, 50)
_UNITS = "normalised intensity"


def coverage(error: np.ndarray, halfwidth: np.ndarray) -> float:
    """Fraction of voxels whose interval [-halfwidth, halfwidth] holds the error; calibrated 90% intervals give ~0.9."""
    err, hw = _flat_pair(error, halfwidth)
    return float(np.mean(np.abs(err) <= hw))


def sparsification(
    error: np.ndarray, uncertainty: np.ndarray, fractions: np.ndarray = RETAINED
) -> dict[str, Any]:
    """Mean |error| left after keeping the f*n least uncertain (model) or least wrong (oracle) voxels."""
    err, unc = _flat_pair(error, uncertainty)
    err = np.abs(err)
    if not np.all(np.isfinite(unc)):
        raise ValueError("uncertainty has NaN or infinite values")
    fracs = np.asarray(fractions, dtype=np.float64).ravel()
    if fracs.size == 0 or np.any(fracs <= 0) or np.any(fracs > 1):
        raise ValueError("retained fractions must lie in (0, 1]")
    counts = _retained_counts(fracs, err.size)
    model = _tie_averaged_sums(err, unc, counts) / counts
    oracle_csum = np.concatenate([[0.0], np.cumsum(np.sort(err))])
    oracle = oracle_csum[counts] / counts
    return {"retained": fracs.tolist(), "model": model.tolist(), "oracle": oracle.tolist(),
            "random": float(err.mean())}


def ause(curves: dict[str, Any]) -> float:
    """Area between model and oracle curves over removed fraction, in units of the full-retention error."""
    full = float(curves["random"])
    if full == 0.0:
        return 0.0  # perfect prediction: every ranking is the oracle
    removed = 1.0 - np.asarray(curves["retained"], dtype=np.float64)
    gap = (np.asarray(curves["model"], dtype=np.float64) - np.asarray(curves["oracle"], dtype=np.float64)) / full
    order = np.argsort(removed, kind="stable")
    return _trapezoid(gap[order], removed[order])


def uncertainty_scores(
    error: np.ndarray, uncertainty: np.ndarray, halfwidth: np.ndarray | None = None
) -> dict[str, float]:
    """The numbers a report row needs; coverage only when the model predicts an interval."""
    err, unc = _flat_pair(error, uncertainty)
    scores = {"uncertainty_spearman": spearman(unc, np.abs(err)), "ause": ause(sparsification(err, unc))}
    if halfwidth is not None:
        scores["coverage"] = coverage(err, halfwidth)
    return scores


def save_risk_coverage(curves_by_target: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One risk-coverage panel per target, so a reader sees where the ranking departs from the oracle."""
    if not curves_by_target:
        raise ValueError("no curves to plot")
    plt = _pyplot()
    names = list(curves_by_target)
    cols = min(len(names), 3)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 4.0 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        _draw_panel(ax, name, curves_by_target[name])
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    path = Path(path)
    write_atomic(path, png.getvalue())
    return path


def _draw_panel(ax: Any, name: str, curves: dict[str, Any]) -> None:
    retained = np.asarray(curves["retained"], dtype=np.float64)
    ax.plot(retained, curves["model"], label="uncertainty (model)", color="tab:blue", lw=1.8)
    ax.plot(retained, curves["oracle"], label="oracle", color="tab:green", lw=1.8)
    ax.axhline(float(curves["random"]), label="random", color="tab:gray", ls="--", lw=1.4)
    ax.set_xlim(1.0, float(retained.min()))  # reads left to right as voxels are removed
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("fraction of brain voxels retained")
    ax.set_ylabel(f"mean |error| of retained voxels ({curves.get('units', _UNITS)})")
    ax.set_title(f"{name}  (AUSE {ause(curves):.3f})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _pyplot() -> Any:
    """Import pyplot on demand: matplotlib is optional and absent from the edge install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MedK2NError(
            f"risk-coverage plots need matplotlib: pip install 'medk2n[data]' (or 'medk2n[train]') ({exc})"
        ) from None
    return plt


def _flat_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"length mismatch: {x.size} vs {y.size} voxels")
    if x.size == 0:
        raise ValueError("no voxels to score")
    return x, y


def _retained_counts(fractions: np.ndarray, n: int) -> np.ndarray:
    """At least one voxel, so every point on the curve is a defined mean."""
    return np.clip(np.rint(fractions * n), 1, n).astype(np.int64)


def _tie_averaged_sums(err: np.ndarray, unc: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sum of |error| over the `k` least uncertain voxels, a cut tie group counted at its mean."""
    order = np.argsort(unc, kind="stable")
    e, u = err[order], unc[order]
    csum = np.concatenate([[0.0], np.cumsum(e)])
    starts = np.flatnonzero(np.concatenate([[True], u[1:] != u[:-1]]))
    ends = np.append(starts[1:], e.size)
    group = np.searchsorted(starts, counts - 1, side="right") - 1
    s, t = starts[group], ends[group]
    return csum[s] + (counts - s) * (csum[t] - csum[s]) / (t - s)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """np.trapz was renamed in numpy 2; this works on every supported numpy."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
