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
    params = norm_params(array, spec, mask, source)
    return apply_norm(array, params), params


def norm_params(
    array: np.ndarray,
    spec: NormSpec | dict,
    mask: np.ndarray | None = None,
    source: str | Path = "volume",
) -> NormParams:
    """The interval `normalize` maps to [0, 1], without scaling anything: a large volume can then be
    scaled slab by slab (`apply_norm`) instead of as one more whole-volume copy."""
    spec = as_norm_spec(spec)
    if spec.kind == "range":
        return NormParams(kind=spec.kind, lo=float(spec.low), hi=float(spec.high))
    lo, hi = _percentiles(np.asarray(array), spec, mask, source)
    return NormParams(kind=spec.kind, lo=lo, hi=hi)


def apply_norm(array: np.ndarray, params: NormParams) -> np.ndarray:
    """`array` scaled by `params` to [0, 1] (clipped), as a new float32 array; elementwise, so a slab
    of a volume comes out exactly as the same voxels of the whole volume would."""
    scaled = (np.asarray(array, dtype=np.float32) - np.float32(params.lo)) / np.float32(params.hi - params.lo)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def _percentiles(array: np.ndarray, spec: NormSpec, mask: np.ndarray | None, source: str | Path) -> tuple[float, float]:
    values = array[np.asarray(mask, dtype=bool)] if mask is not None else array[array > 0]
    if values.size == 0:
        values = array.ravel().copy()
    # `values` is this function's own copy: partitioning it in place spares numpy a second one.
    lo, hi = (float(v) for v in np.percentile(values, [spec.low, spec.high], overwrite_input=True))
    if hi <= lo:  # very peaked histograms: fall back to the full range of the selection
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        raise DataError(f"{source}: cannot normalise, intensities are constant ({lo:g}) in the tissue region")
    return lo, hi


def denormalize(array01: np.ndarray, params: NormParams, out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of `normalize` on [0, 1]: lo + x * (hi - lo), float32 (into `out`, which may be `array01`)."""
    x = np.asarray(array01, dtype=np.float32)
    scaled = np.multiply(x, np.float32(params.hi - params.lo), out=out)
    return np.add(scaled, np.float32(params.lo), out=scaled)
