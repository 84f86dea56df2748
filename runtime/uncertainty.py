"""From the model's Laplace scale to an interval a reader can use (split conformal, torch-free).

The graph outputs b, the per-voxel Laplace scale: the expected absolute error
the network believes it makes, learnt on training residuals. Training
residuals are smaller than the errors on new subjects, so b ranks the error
but is not calibrated. Export therefore fits, on held-out subjects the model
never trained on, the distribution of the conformity score s = |y - y_hat| / b
over their brain voxels (Angelopoulos & Bates 2022, split conformal
regression with a scaled residual). For a coverage 1 - alpha the interval is
y_hat +- q(1 - alpha) * b, and its half-width is what `<target>_uncertainty`
holds, in the synthesis' own units (physical units for ADC).

Two tables: `quantiles` per target, marginal over random K->N requests on
the calibration subjects, and `task_quantiles` per (source set, target) for
the requests named at export (`--calib-task`), a Mondrian split (Vovk et al.
2005): a scale that is too wide for one task and too narrow for another
averages out in the marginal table, so a site that always asks the same
question gets an interval calibrated on that question. The runtime uses the
task table when it has the request's, the marginal one otherwise.

The guarantee is marginal over voxels of subjects exchangeable with the
calibration ones; voxels of one subject are not independent, so it is
approximate, and it says nothing about a scanner or a population the
calibration subjects did not come from. `medk2n-eval` measures the coverage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medk2n.errors import BundleError, DataError

DEFAULT_COVERAGE = 0.9
# Coverage levels at which export stores the score quantiles; the runtime interpolates between them.
LEVELS = tuple(round(v, 3) for v in np.arange(0.01, 0.99 + 1e-9, 0.01)) + (0.995, 0.999)
METHOD = "split-conformal, scaled residual |y - y_hat| / b over brain voxels of held-out subjects"
MEANING = ("<target>_uncertainty.nii.gz = half-width h of the per-voxel interval synthesis +- h that holds the "
           "true intensity with the stated coverage (marginal over brain voxels of subjects like the calibration "
           "ones), in the synthesis' units: physical units for range-normalised targets (ADC), the [0, 1] scale "
           "of a percentile-normalised acquisition otherwise. 0 outside the synthesis support.")


def fit_quantiles(scores: np.ndarray, levels: tuple[float, ...] = LEVELS) -> list[float]:
    """Conformal quantiles of the scores at each level, with the finite-sample (n + 1) correction."""
    scores = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    scores = scores[np.isfinite(scores)]
    n = len(scores)
    if n == 0:
        raise ValueError("no finite conformity scores to calibrate on")
    ranks = np.minimum(np.ceil((n + 1) * np.asarray(levels)).astype(int), n) - 1
    return [float(f"{scores[r]:.6g}") for r in ranks]


def check_coverage(coverage: float) -> float:
    """A coverage must be a probability strictly inside (0, 1), and inside the calibrated levels."""
    if not 0.0 < coverage < 1.0:
        raise DataError(f"--coverage {coverage:g}: must be strictly between 0 and 1 (e.g. 0.9 for 90 %)")
    if not LEVELS[0] <= coverage <= LEVELS[-1]:
        raise DataError(f"--coverage {coverage:g}: calibrated only from {LEVELS[0]:g} to {LEVELS[-1]:g}")
    return float(coverage)


def task_key(sources: Sequence[str], target: str) -> str:
    """The task table's key: the source set (order-free: slots are symmetric but for slot 0) and the target."""
    return f"{','.join(sorted(sources))}>{target}"


def check_calibration(doc: Mapping[str, Any], modalities: list[str], where: str | Path) -> None:
    """Refuse a calibration block the runtime could misread: levels increasing, one quantile per level."""
    try:
        levels = [float(v) for v in doc["levels"]]
        if not levels or any(b <= a for a, b in zip(levels, levels[1:])) or not 0 < levels[0] < levels[-1] < 1:
            raise ValueError("levels must increase strictly inside (0, 1)")
        for tables in (doc["quantiles"], doc.get("task_quantiles", {})):
            _check_tables(tables, levels, modalities)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{where}: bad uncertainty calibration: {exc}") from None


def _check_tables(tables: Mapping[str, Any], levels: list[float], modalities: list[str]) -> None:
    for precision, per_key in tables.items():
        for key, values in per_key.items():
            sources, _, target = key.rpartition(">")
            names = [target, *(sources.split(",") if sources else [])]
            unknown = [m for m in names if m not in modalities]
            if unknown:
                raise ValueError(f"unknown modality {unknown[0]!r} in {key!r}")
            values = [float(v) for v in values]
            if len(values) != len(levels) or any(not np.isfinite(v) or v < 0 for v in values):
                raise ValueError(f"{precision}/{key}: need {len(levels)} finite quantiles >= 0")
            if any(b < a for a, b in zip(values, values[1:])):
                raise ValueError(f"{precision}/{key}: quantiles must not decrease")


def interval_factor(doc: Mapping[str, Any], target: str, coverage: float, precision: str,
                    sources: Sequence[str] | None = None) -> float | None:
    """q(coverage) for `target` (the request's own task table when calibrated, else the marginal one)
    as calibrated for `precision` (else FP32's); None when not calibrated."""
    if not doc:
        return None
    candidates = []
    if sources is not None:
        candidates.append((doc.get("task_quantiles", {}), task_key(sources, target)))
    candidates.append((doc.get("quantiles", {}), target))
    for tables, key in candidates:
        table = tables.get(precision, tables.get("fp32", {})).get(key)
        if table is not None:
            return float(np.interp(coverage, doc["levels"], table))
    return None
