"""Real slices for export checks: INT8 calibration, parity and held-out accuracy.

Slices come from a dataset folder (`--calib`) or, when none is given, from
phantom subjects generated on the fly; either way through
`medk2n.data.preprocess.prepare_case` with the checkpoint's normalisation, so
the numbers describe what the runtime will feed the model. Cases are split
into calibration and held-out sets by subject (by alternate slices only when
the dataset has a single case), so the INT8 quality drop is measured on
anatomy the quantiser has not seen.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from medk2n.config import ModelConfig
from medk2n.data.cases import discover_dataset, load_case
from medk2n.data.preprocess import prepare_case
from medk2n.errors import ExportError
from medk2n.export.spec import BatchSpec, GraphSpec

EVAL_SLICES = 16  # held-out slices for parity and INT8 accuracy
MIN_BRAIN_FRACTION = 0.05  # slices with less brain say nothing about quality
PHANTOM_SUBJECTS = 3  # two calibrate, one is held out
PHANTOM_SEED = 0


@dataclass
class SlicePool:
    """Normalised slices of several cases, all modalities of the vocabulary stacked."""

    images: np.ndarray  # float32 [S, V, H, W]; zeros where a modality is absent
    present: np.ndarray  # bool [S, V]
    brain: np.ndarray  # bool [S, H, W]
    cases: list[str]  # case name per slice

    def __len__(self) -> int:
        return len(self.cases)


@dataclass
class SampleSet:
    """Model inputs for fixed K, N with the ground truth of every target."""

    feeds: dict[str, np.ndarray]  # x [S,K,H,W] float32, src/tgt int64, avail [S,K] float32
    target: np.ndarray  # float32 [S, N, H, W]
    brain: np.ndarray  # bool [S, H, W]

    def __len__(self) -> int:
        return len(self.target)


def load_pools(model_cfg: ModelConfig, size: int, calib: Path | None, calib_slices: int) -> tuple[SlicePool, SlicePool]:
    """(calibration pool, held-out pool) from `calib` or from fresh phantom subjects."""
    if calib is not None:
        return _pools_from(Path(calib), model_cfg, size, calib_slices)
    from medk2n.data.phantom import generate_dataset

    with tempfile.TemporaryDirectory(prefix="medk2n-phantom-") as tmp:
        generate_dataset(Path(tmp), subjects=PHANTOM_SUBJECTS, seed=PHANTOM_SEED, spacing=phantom_spacing(size))
        return _pools_from(Path(tmp), model_cfg, size, calib_slices)


def phantom_spacing(size: int) -> float:
    """Voxel size (mm) whose ~200 mm brain field of view is about `size` voxels: no wasted detail."""
    return max(1.0, round(200.0 / size, 1))


def _pools_from(root: Path, model_cfg: ModelConfig, size: int, calib_slices: int) -> tuple[SlicePool, SlicePool]:
    cases = discover_dataset(root, model_cfg.modalities)
    usable = [c for c in cases if len(set(c.files) & set(model_cfg.modalities)) >= 2]
    if not usable:
        raise ExportError(f"{root}: no case has two or more modalities of the vocabulary {model_cfg.modalities}")
    if len(usable) == 1:
        pool = _slice_pool(usable, model_cfg, size, calib_slices + EVAL_SLICES)
        return _take(pool, slice(0, None, 2)), _take(pool, slice(1, None, 2))
    held = max(1, len(usable) // 4)
    return (
        _slice_pool(usable[:-held], model_cfg, size, calib_slices),
        _slice_pool(usable[-held:], model_cfg, size, EVAL_SLICES),
    )


def _slice_pool(cases, model_cfg: ModelConfig, size: int, count: int) -> SlicePool:
    """`count` slices spread evenly over the brain-containing slices of `cases`."""
    vocab = model_cfg.modalities
    per_case = math.ceil(count / len(cases))
    images, present, brain, names = [], [], [], []
    for case in cases:
        modalities = [m for m in vocab if m in case.files]
        prepared = prepare_case(load_case(case, modalities), model_cfg.normalization, size)
        fraction = prepared.brain.mean(axis=(1, 2))
        candidates = np.flatnonzero(fraction >= MIN_BRAIN_FRACTION)
        if candidates.size == 0:
            raise ExportError(f"{case.name}: no slice has at least {MIN_BRAIN_FRACTION:.0%} brain tissue")
        picks = candidates[np.linspace(0, candidates.size - 1, min(per_case, candidates.size)).round().astype(int)]
        for index in np.unique(picks):
            stack = np.zeros((len(vocab), size, size), np.float32)
            for m in modalities:
                stack[vocab.index(m)] = prepared.slices[m][index]
            images.append(stack)
            present.append([m in modalities for m in vocab])
            brain.append(prepared.brain[index])
            names.append(case.name)
    pool = SlicePool(np.stack(images), np.array(present, bool), np.stack(brain), names)
    return _take(pool, slice(0, count))


def _take(pool: SlicePool, index: slice) -> SlicePool:
    return SlicePool(pool.images[index], pool.present[index], pool.brain[index], pool.cases[index])


def draw_samples(pool: SlicePool, spec: GraphSpec, seed: int, roles: dict[str, list[str]] | None = None,
                 modalities: list[str] | None = None) -> SampleSet:
    """One random valid K->N task per slice, with ground truth for every target.

    The base source rotates through each slice's modalities so every source
    modality in the data is seen (INT8 ranges must cover all of them); a
    quarter of the samples drop the other sources through `avail` (1->N), the
    path a K-source graph takes when a case has fewer sources. Targets are
    distinct when the slice has enough other modalities, repeated otherwise.
    `roles` (the manifest's, over the vocabulary `modalities`) keeps the tasks
    to the sources and targets the model was trained for: a role-restricted
    model is calibrated and scored on the tasks it will be asked to do.
    """
    vocab = pool.images.shape[1]
    source_ok, target_ok = (_role_mask(roles, role, modalities, vocab) for role in ("sources", "targets"))
    bases = [_bases(present, source_ok, target_ok) for present in pool.present]
    rows = [i for i, b in enumerate(bases) if b.size]
    if not rows:
        raise ExportError(f"no calibration slice has a source and a target of the trained roles {roles}")
    rng = np.random.default_rng(seed)
    k, n = spec.k, spec.n
    count = len(rows)
    x = np.zeros((count, k) + pool.images.shape[2:], np.float32)
    src = np.zeros((count, k), np.int64)
    tgt = np.zeros((count, n), np.int64)
    avail = np.zeros((count, k), np.float32)
    for i, row in enumerate(rows):
        have = np.flatnonzero(pool.present[row])
        base = bases[row][i % bases[row].size]
        others = rng.permutation(have[(have != base) & source_ok[have]])
        n_src = min(k, others.size + 1)
        if k > 1 and rng.random() < 0.25:
            n_src = 1
        targets = have[target_ok[have]]
        while np.setdiff1d(targets, np.concatenate([[base], others[: n_src - 1]])).size == 0:
            n_src -= 1  # keep at least one target: drop sources the targets need
        sources = np.concatenate([[base], others[: n_src - 1]]).astype(np.int64)
        rest = rng.permutation(np.setdiff1d(targets, sources))
        src[i, :n_src] = sources
        src[i, n_src:] = sources[0]
        avail[i, :n_src] = 1.0
        x[i, :n_src] = pool.images[row, sources]
        tgt[i] = rest[np.arange(n) % rest.size]
    images = pool.images[rows]
    target = np.take_along_axis(images, tgt[:, :, None, None], axis=1)
    return SampleSet({"x": x, "src": src, "tgt": tgt, "avail": avail}, target, pool.brain[rows])


def _role_mask(roles: dict[str, list[str]] | None, role: str, modalities: list[str] | None, vocab: int) -> np.ndarray:
    names = (roles or {}).get(role)
    if not names:
        return np.ones(vocab, dtype=bool)
    if modalities is None:
        raise ValueError("roles need the modality vocabulary")
    return np.array([m in names for m in modalities])


def _bases(present: np.ndarray, source_ok: np.ndarray, target_ok: np.ndarray) -> np.ndarray:
    """Sources that leave at least one other present target: the possible first source of a task."""
    have = np.flatnonzero(present)
    targets = have[target_ok[have]]
    return np.array([s for s in have[source_ok[have]] if np.setdiff1d(targets, [s]).size], dtype=np.int64)


def source_coverage(samples: SampleSet, modalities: list[str]) -> list[str]:
    """Modalities that appear as an available source somewhere in `samples`."""
    used = samples.feeds["src"][samples.feeds["avail"] > 0]
    return [m for i, m in enumerate(modalities) if np.any(used == i)]


def batch_size(batch: BatchSpec) -> int:
    """Batch used to run checks: the fixed batch, or the profile's opt."""
    return batch.min if batch.fixed else batch.opt


def iter_batches(feeds: dict[str, np.ndarray], size: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Consecutive batches of exactly `size` (a fixed-batch graph accepts nothing else).

    The last batch is topped up by wrapping around to the first samples; the
    second item says how many leading rows are real.
    """
    total = len(next(iter(feeds.values())))
    for start in range(0, total, size):
        index = np.arange(start, start + size) % total
        yield {name: array[index] for name, array in feeds.items()}, min(size, total - start)


class FeedReader(CalibrationDataReader):
    """ONNX Runtime calibration reader over a SampleSet's feeds, one batch per call."""

    def __init__(self, feeds: dict[str, np.ndarray], size: int) -> None:
        self._batches = iter([batch for batch, _ in iter_batches(feeds, size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)
