"""Slabs: a volume processed a few slices at a time so its temporaries stay small.

Issue 22: a 512^3 case held every whole-volume temporary at once (K sources,
their normalised copies, N restored targets and N uncertainty maps, float64
percentile copies), 4.3 GB of peak memory. Steps that work voxel by voxel or
slice by slice (scaling, the separable resampling to and from model slices,
the histogram map) give the same numbers on a slab as on the whole volume, so
they loop over slabs of about `SLAB_VOXELS` voxels instead; only the steps
that need the whole volume at once (the 3-D brain mask, the percentiles) see it.
"""

from __future__ import annotations

import math

# 4 Mi voxels per slab: 16 MiB as float32, a few slices of a 512^2 matrix; large enough that the
# per-slab overhead of numpy and BLAS calls is noise next to the work.
SLAB_VOXELS = 1 << 22


def slabs(length: int, item_voxels: int) -> list[slice]:
    """Consecutive slices covering range(length), each about SLAB_VOXELS / `item_voxels` items long
    (read at call time, so a test can make every slab one slice)."""
    step = max(1, SLAB_VOXELS // max(1, int(item_voxels)))
    return [slice(start, min(start + step, length)) for start in range(0, length, step)]


def slice_voxels(shape: tuple[int, ...], axis: int) -> int:
    """Voxels in one index of `axis` of an array of `shape`."""
    return math.prod(n for i, n in enumerate(shape) if i != axis % len(shape))
