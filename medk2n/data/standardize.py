"""Histogram standardisation of synthesised volumes (Nyul & Udupa, MRM 42:1072, 1999).

Why: a synthesis is a conditional mean, smoother than any acquisition. The
acquired image's 0.5/99.5 percentiles sit in noise and partial-volume tails
that the synthesis lacks, so when both are scaled by their own percentiles
(as radiologists' viewers and the evaluation protocol do) every tissue of the
synthesis lands at a different place in [0, 1] than in a real scan. Mapping
the synthesis's own landmarks onto the cohort's standard scale, piecewise
linearly, restores the intensity layout real acquisitions of that contrast
have, without touching the image's order of intensities (the map is monotone).
Numpy only: the runtime applies it.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from medk2n.config import STANDARD_PERCENTILES
from medk2n.data.slabs import slabs, slice_voxels


def _percentile_marks(volume: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """STANDARD_PERCENTILES of `volume` inside `mask`, in its own units; None for an empty mask.

    Percentiles in float64 as before, but the float64 copy of the masked voxels is filled slab by
    slab and partitioned in place: no float32 copy beside it and no second float64 copy inside
    numpy (order does not matter to a percentile, so the result is the same).
    """
    volume, mask = np.asarray(volume), np.asarray(mask, dtype=bool)
    count = int(np.count_nonzero(mask))
    if count == 0:
        return None
    values = np.empty(count, dtype=np.float64)
    filled = 0
    for part in slabs(volume.shape[0], slice_voxels(volume.shape, 0)) if volume.ndim else [()]:
        chunk = volume[part][mask[part]]
        values[filled:filled + chunk.size] = chunk
        filled += chunk.size
    return np.percentile(values, STANDARD_PERCENTILES, overwrite_input=True)


def landmarks(volume: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """STANDARD_PERCENTILES of `volume` inside `mask`, scaled so the first is 0 and the last 1.

    None when the mask is empty or the volume is constant inside it.
    """
    marks = _percentile_marks(volume, mask)
    if marks is None:
        return None
    span = marks[-1] - marks[0]
    if not span > 0:
        return None
    return (marks - marks[0]) / span


def fit_standard(volumes: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[float] | None:
    """The standard scale of a cohort: the mean of its (volume, mask) pairs' scaled landmarks."""
    marks = [m for m in (landmarks(v, mask) for v, mask in volumes) if m is not None]
    if not marks:
        return None
    mean = np.mean(marks, axis=0)
    mean[0], mean[-1] = 0.0, 1.0  # exact ends, as NormSpec requires
    return [float(v) for v in np.maximum.accumulate(mean)]


def standardize(volume: np.ndarray, mask: np.ndarray, standard: list[float]) -> np.ndarray:
    """Map `volume`'s own landmarks inside `mask` onto `standard` (float32 in [0, 1]).

    Values below the 0.5th / above the 99.5th percentile map to 0 / 1. A volume
    whose landmarks do not strictly increase (a flat region, an empty mask)
    comes back unchanged: there is no histogram to standardise.
    """
    return standardize_with_slope(volume, mask, standard)[0]


def standardize_with_slope(volume: np.ndarray, mask: np.ndarray, standard: list[float]) -> tuple[np.ndarray, float]:
    """`standardize`, and the map's mean slope: 1 over the span of the volume's own 0.5-99.5 landmarks.

    The map is piecewise linear and monotone; a per-voxel interval carried through it is scaled by
    its slope. The mean slope keeps the interval's voxel ranking and leaves the residual shape of
    the map to the conformal calibration, which is fitted on standardised outputs. Slope 1.0 where
    the volume comes back unchanged. One pass over the landmarks serves both.
    """
    volume = np.asarray(volume, dtype=np.float32)
    own = _percentile_marks(volume, mask)
    if own is None or np.any(np.diff(own) <= 0):
        return volume, 1.0
    mapped = np.empty(volume.shape, dtype=np.float32)
    standard = np.asarray(standard, dtype=np.float64)
    for part in slabs(volume.shape[0], slice_voxels(volume.shape, 0)) if volume.ndim else [()]:
        mapped[part] = np.interp(volume[part], own, standard)  # float64 slab, rounded to float32 as before
    return mapped, float(1.0 / (own[-1] - own[0]))
