"""Slice-wise volume inferer, kept apart from the network (MONAI `inferers`).

It takes any runner plus model-space slices and does only the batching: it
stacks the K source slices of each axial position into `x [B,K,H,W]`,
repeats the case's `src`/`tgt`/`avail` rows, pads a short last batch up to
the bundle's minimum (a fixed-batch engine only accepts exactly that size)
and drops the padding again. Slices without brain are not sent to the model
at all; their outputs stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from medk2n.errors import MedK2NError
from medk2n.runtime.bundle import SOURCE_CHECK
from medk2n.runtime.runners import Runner


def brain_slices(brain: np.ndarray) -> np.ndarray:
    """bool [S] from a model-space brain mask [S,H,W]: slices worth a model call."""
    return brain.any(axis=(1, 2))


class SliceOutputs(NamedTuple):
    images: np.ndarray  # [N,S,H,W]
    scale: np.ndarray  # [N,S,H,W]
    source_check: np.ndarray | None  # [S,K] p(slot holds its named contrast), NaN where not inferred; None without a check


@dataclass
class SliceInferer:
    runner: Runner
    batch_size: int
    min_batch: int = 1  # short batches are padded up to this many rows

    def __call__(
        self,
        sources: Sequence[np.ndarray],
        src: np.ndarray,
        tgt: np.ndarray,
        avail: np.ndarray,
        keep: np.ndarray | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> SliceOutputs:
        """K arrays [S,H,W] (one per source slot) -> images, scale [N,S,H,W] and the source check [S,K].

        A legacy bundle's graph has no "scale" output: its scale comes back as zeros; a graph
        without a "source_check" output gives None for it.

        `keep` (bool [S]) marks the slices worth running; `progress` is told
        how many slices each batch covered.
        """
        n_slices, height, width = sources[0].shape
        n_targets = len(tgt)
        images = np.zeros((n_targets, n_slices, height, width), dtype=np.float32)
        scale = np.zeros_like(images)
        check: np.ndarray | None = None
        todo = np.arange(n_slices) if keep is None else np.flatnonzero(keep)
        rows = {"src": np.asarray(src, np.int64), "tgt": np.asarray(tgt, np.int64),
                "avail": np.asarray(avail, np.float32)}
        for start in range(0, len(todo), self.batch_size):
            index = todo[start:start + self.batch_size]
            size = max(len(index), self.min_batch)
            x = np.zeros((size, len(sources), height, width), dtype=np.float32)
            x[:len(index)] = np.stack([s[index] for s in sources], axis=1)
            feed = {"x": x, **{name: np.repeat(row[None], size, axis=0) for name, row in rows.items()}}
            out = self.runner.infer(feed)
            batch_images = out["images"][:len(index)]
            batch_scale = out["scale"][:len(index)] if "scale" in out else np.zeros_like(batch_images)
            batch_check = out[SOURCE_CHECK][:len(index)] if SOURCE_CHECK in out else None
            if not (np.isfinite(batch_images).all() and np.isfinite(batch_scale).all()
                    and (batch_check is None or np.isfinite(batch_check).all())):
                raise MedK2NError(f"{self.runner.name}: the model produced NaN/Inf "
                                  "(FP16 overflow? try --precision fp32)")
            images[:, index] = batch_images.transpose(1, 0, 2, 3)
            scale[:, index] = batch_scale.transpose(1, 0, 2, 3)
            if batch_check is not None:
                if check is None:
                    check = np.full((n_slices, len(sources)), np.nan, dtype=np.float32)
                check[index] = batch_check
            if progress is not None:
                progress(len(index))
        return SliceOutputs(images, scale, check)
