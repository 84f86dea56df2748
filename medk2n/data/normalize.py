"""Per-modality intensity scaling to [0, 1] and back.

Weighted images (T1, T2, FLAIR, ...) have no absolute scale, so each volume
is scaled by its own 0.5-99.5 percentiles; quantitative maps (ADC) use a
fixed physical range so a synthesised map is written back in the input's
units (DESIGN.md, "Data contract"). `normalize` returns the values it used,
which is all `denormalize` needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medk2n.config import NormSpec
from medk2n.errors import DataError


@dataclass
class NormParams:
    """The interval actually mapped to 0..1 for one volume."""

    kind: str
    lo: float
    hi: float


def as_norm_spec(spec: NormSpec | dict) -> NormSpec:
    """Manifests and checkpoints carry NormSpec dicts; accept both forms."""
    return spec if isinstance(spec, NormSpec) else NormSpec(**spec)


def normalize(
    array: np.ndarray,
    spec: NormSpec | dict,
    mask: np.ndarray | None = None,
    source: str | Path = "volume",
) -> tuple[np.ndarray, NormParams]:
    """Scale `array` to [0, 1] (clipped) per `spec`; `source` names the volume in errors.

    percentile: lo/hi are the spec.low/high percentiles of the voxels in `mask`
    (default: voxels > 0, i.e. tissue in skull-stripped or zero-background data).
    range: lo/hi are spec.low/high in physical units.
    """
    spec = as_norm_spec(spec)
    if spec.kind == "range":
        lo, hi = float(spec.low), float(spec.high)
    else:
        lo, hi = _percentiles(np.asarray(array), spec, mask, source)
    scaled = (np.asarray(array, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(scaled, 0.0, 1.0), NormParams(kind=spec.kind, lo=lo, hi=hi)


def _percentiles(array: np.ndarray, spec: NormSpec, mask: np.ndarray | None, source: str | Path) -> tuple[float, float]:
    values = array[mask.astype(bool)] if mask is not None else array[array > 0]
    if values.size == 0:
        values = array.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [spec.low, spec.high]))
    if hi <= lo:  # very peaked histograms: fall back to the full range of the selection
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        raise DataError(f"{source}: cannot normalise, intensities are constant ({lo:g}) in the tissue region")
    return lo, hi


def denormalize(array01: np.ndarray, params: NormParams) -> np.ndarray:
    """Inverse of `normalize` on [0, 1]: lo + x * (hi - lo), float32."""
    x = np.asarray(array01, dtype=np.float32)
    return (np.float32(params.lo) + x * np.float32(params.hi - params.lo)).astype(np.float32)
