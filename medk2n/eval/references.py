"""Simple references a learned model must beat to be worth deploying.

- copy: each source volume, rescaled, offered as the prediction (the best
  source per target is what a radiographer would use as a stand-in);
- mean: the mean training image of the target contrast in model space (slice
  position resampled to a common length), restored onto each subject's grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from medk2n.config import NormSpec
from medk2n.data.cases import discover_dataset, load_case
from medk2n.data.preprocess import PreparedCase, prepare_case, restore_volume

TEMPLATE_SLICES = 64


def _resample_slices(stack: np.ndarray, count: int) -> np.ndarray:
    """Linear interpolation along the slice axis (relative position) to `count` slices."""
    src = np.linspace(0.0, 1.0, stack.shape[0])
    dst = np.linspace(0.0, 1.0, count)
    idx = np.clip(np.searchsorted(src, dst) - 1, 0, max(0, stack.shape[0] - 2))
    if stack.shape[0] == 1:
        return np.repeat(stack, count, axis=0)
    w = ((dst - src[idx]) / (src[idx + 1] - src[idx]))[:, None, None]
    return (1 - w) * stack[idx] + w * stack[idx + 1]


def mean_templates(train_dir: str | Path, targets: Sequence[str], norms: dict[str, NormSpec],
                   size: int) -> dict[str, np.ndarray]:
    """target -> mean normalised model-space volume [TEMPLATE_SLICES, size, size] over training cases."""
    sums = {t: np.zeros((TEMPLATE_SLICES, size, size), np.float64) for t in targets}
    counts = dict.fromkeys(targets, 0)
    for case in discover_dataset(Path(train_dir)):
        present = [t for t in targets if t in case.files]
        if not present:
            continue
        prepared = prepare_case(load_case(case, present), {t: norms[t] for t in present}, size)
        for t in present:
            sums[t] += _resample_slices(prepared.slices[t], TEMPLATE_SLICES)
            counts[t] += 1
    return {t: (sums[t] / counts[t]).astype(np.float32) for t in targets if counts[t]}


def mean_prediction(template: np.ndarray, prepared: PreparedCase, norm: NormSpec) -> np.ndarray:
    slices = _resample_slices(template, next(iter(prepared.slices.values())).shape[0]).astype(np.float32)
    return restore_volume(slices, prepared, norm)
