"""Training samples for K->N synthesis: random sources and targets per axial slice.

Each case goes once through `prepare_case` (the same pipeline the runtime
uses) and its slices stay in memory, quantised to uint16 (1/65535 steps, half
the memory of float32 with no visible loss). A sample draws K sources and N
targets, disjoint, among the modalities the case has; the ranges of K and N
follow the curriculum stage of the Med-K2N training schedule (1->1, k->1,
1->n, k->n). Items are numpy arrays padded to fixed Kmax/Nmax so a torch
DataLoader collates them without this module importing torch.

Randomness is a function of (seed, epoch, index) only, so two datasets with
the same seed yield identical items, whatever worker loads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np

from medk2n.config import NormSpec
from medk2n.data.artifacts import ARTIFACTS, degrade
from medk2n.data.cases import Case, load_case, normalise_modality_name, scan_generic_case
from medk2n.data.normalize import as_norm_spec
from medk2n.data.nifti import read_volume
from medk2n.data.preprocess import mask_to_slices, prepare_case
from medk2n.errors import DataError

# stage -> (several sources allowed, several targets allowed)
STAGES: dict[str, tuple[bool, bool]] = {
    "1to1": (False, False),
    "kto1": (True, False),
    "1ton": (False, True),
    "kton": (True, True),
}
_QUANT = 65535.0
# Light intensity augmentation: gamma drawn log-uniformly in [1/1.1, 1.1].
_LOG_GAMMA = float(np.log(1.1))


@dataclass
class _CaseSlices:
    name: str
    ids: np.ndarray  # int64 [A] vocabulary ids of the modalities present
    images: np.ndarray  # uint16 [A, S, H, W]
    brain: np.ndarray  # bool [S, H, W]
    lesion: np.ndarray | None  # uint16 [S, H, W] lesion fraction per pixel, None when none is shipped


class SliceDataset:
    """Axial-slice samples of a list of cases (numpy only; a valid torch Dataset by duck typing).

    Item keys: x [Kmax,H,W], src [Kmax], avail [Kmax], target [Nmax,H,W],
    tgt [Nmax], tgt_valid [Nmax], mask [H,W], lesion [H,W]. Padding entries
    have avail/tgt_valid = 0, id 0 and zero images. `lesion` is the shipped
    lesion mask's cover of each pixel (zeros where the case ships none): the
    trainer weights a lesion loss by it and oversamples `lesion_indices`,
    because lesions are a fraction of a percent of the voxels a plain L1
    averages over, yet decide a volume's top intensity percentile.
    Cases with fewer than two vocabulary modalities cannot form a pair and
    are listed in `skipped`.
    """

    def __init__(
        self,
        cases: Sequence[Case | Path],
        modalities: Sequence[str],
        norms: dict[str, NormSpec | dict],
        size: int,
        *,
        max_sources: int = 2,
        max_targets: int = 4,
        stage: str = "kton",
        seed: int = 0,
        augment: bool = True,
        min_brain_fraction: float = 0.05,
        slices_per_volume: int = 0,
        reference: str | None = None,
        sources: Sequence[str] | None = None,
        targets: Sequence[str] | None = None,
        source_artifacts: float = 0.0,
        degrade_any_source: bool = False,
    ) -> None:
        if max_sources < 1 or max_targets < 1:
            raise DataError(f"max_sources and max_targets must be >= 1, got {max_sources}, {max_targets}")
        self.modalities = [normalise_modality_name(m) for m in modalities]
        # Which modalities may be drawn in each role (None or empty = all of the vocabulary).
        self._source_ok, self._target_ok = (self._role_mask(pool) for pool in (sources, targets))
        self._pooled = bool(sources) or bool(targets)
        self.max_sources, self.max_targets = int(max_sources), int(max_targets)
        self.seed, self.epoch, self.augment = int(seed), 0, bool(augment)
        if not 0.0 <= source_artifacts <= 1.0:
            raise DataError(f"source_artifacts is a probability, got {source_artifacts}")
        self.source_artifacts = float(source_artifacts)
        self.degrade_any_source = bool(degrade_any_source)
        self.set_stage(stage)
        self._gamma_ok = np.array([as_norm_spec(norms[m]).kind == "percentile" for m in self.modalities])
        self.skipped: list[tuple[str, str]] = []
        self._cases: list[_CaseSlices] = []
        for case in cases:
            prepared = self._prepare(case, norms, size, min_brain_fraction, slices_per_volume, reference)
            if prepared is not None:
                self._cases.append(prepared)
        self._index = np.array(
            [(c, s) for c, item in enumerate(self._cases) for s in range(item.images.shape[1])], dtype=np.int64
        ).reshape(-1, 2)
        if len(self._index) == 0:
            raise DataError(f"no usable slices in {len(cases)} case(s) (skipped: {self.skipped or 'none'})")

    def _role_mask(self, pool: Sequence[str] | None) -> np.ndarray:
        if not pool:
            return np.ones(len(self.modalities), dtype=bool)
        names = {normalise_modality_name(m) for m in pool}
        unknown = sorted(names - set(self.modalities))
        if unknown:
            raise DataError(f"modalities {unknown} are not in the vocabulary {self.modalities}")
        return np.array([m in names for m in self.modalities])

    def _open_targets(self, ids: np.ndarray) -> list[int]:
        """Positions in `ids` that can be a target with some other position as a source.

        Empty: the case has no pair in the role pools. Drawing reserves one of these first.
        """
        return [t for t in range(len(ids))
                if self._target_ok[ids[t]] and any(self._source_ok[ids[s]] for s in range(len(ids)) if s != t)]

    def _prepare(
        self,
        case: Case | Path,
        norms: dict[str, NormSpec | dict],
        size: int,
        min_brain_fraction: float,
        slices_per_volume: int,
        reference: str | None,
    ) -> _CaseSlices | None:
        if not isinstance(case, Case):
            case = scan_generic_case(Path(case), self.modalities)
        present = [m for m in self.modalities if m in case.files]
        if len(present) < 2:
            self.skipped.append((case.name, f"needs >= 2 of {self.modalities}, has {present}"))
            return None
        if not self._open_targets(np.array([self.modalities.index(m) for m in present])):
            self.skipped.append((case.name, f"has no source and target of the training roles among {present}"))
            return None
        prepared = prepare_case(load_case(case, present), {m: norms[m] for m in present}, size, reference)
        keep = np.flatnonzero(prepared.brain.mean(axis=(1, 2)) >= min_brain_fraction)
        if slices_per_volume > 0 and len(keep) > slices_per_volume:
            keep = keep[np.linspace(0, len(keep) - 1, slices_per_volume).round().astype(int)]
        if len(keep) == 0:
            self.skipped.append((case.name, "no slice with enough brain"))
            return None
        images = np.stack([prepared.slices[m][keep] for m in present])
        lesion = None
        if "lesion" in case.masks:
            label, info = read_volume(case.masks["lesion"], check_values=False)
            lesion = np.round(mask_to_slices(label, info, prepared)[keep] * _QUANT).astype(np.uint16)
        return _CaseSlices(
            name=case.name,
            ids=np.array([self.modalities.index(m) for m in present], dtype=np.int64),
            images=np.round(images * _QUANT).astype(np.uint16),
            brain=prepared.brain[keep],
            lesion=lesion,
        )

    @property
    def case_names(self) -> list[str]:
        return [c.name for c in self._cases]

    @property
    def lesion_indices(self) -> np.ndarray:
        """Item indices of slices that a shipped lesion mask covers by at least one model pixel."""
        hit = [
            case.lesion is not None and case.lesion[slice_i].sum() >= _QUANT
            for case, slice_i in ((self._cases[c], s) for c, s in self._index)
        ]
        return np.flatnonzero(np.array(hit, dtype=bool))

    def set_stage(self, stage: str) -> None:
        """Curriculum stage: "1to1", "kto1", "1ton" or "kton"."""
        if stage not in STAGES:
            raise DataError(f"unknown curriculum stage {stage!r}; choose one of {', '.join(STAGES)}")
        self.stage = stage

    def set_epoch(self, epoch: int) -> None:
        """New draws per epoch; DataLoader workers copy this value when they start."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.sample(index, self.stage, np.random.default_rng((self.seed, self.epoch, int(index))))

    def sample(self, index: int, stage: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Item `index` with sources/targets drawn for `stage` from `rng`.

        The trainer calls this with an rng seeded by (seed, step, index), so a
        resumed run replays exactly the draws of an uninterrupted one.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} slices")
        if stage not in STAGES:
            raise DataError(f"unknown curriculum stage {stage!r}; choose one of {', '.join(STAGES)}")
        case_i, slice_i = self._index[index]
        case = self._cases[case_i]
        if self._pooled:
            src, tgt = self._draw_roles(rng, case.ids, stage)
        else:
            k, n = self._draw_counts(rng, len(case.ids), stage)
            order = rng.permutation(len(case.ids))
            src, tgt = order[:k], order[k : k + n]
        images = case.images[:, slice_i].astype(np.float32) / np.float32(_QUANT)
        mask = case.brain[slice_i].astype(np.float32)
        lesion = np.zeros_like(mask)
        if case.lesion is not None:
            lesion = case.lesion[slice_i].astype(np.float32) / np.float32(_QUANT)
        flip, gamma = rng.random() < 0.5, float(np.exp(rng.uniform(-_LOG_GAMMA, _LOG_GAMMA)))
        if self.augment:
            images, mask, lesion = self._augment(images, mask, lesion, case.ids, flip, gamma)
        sources = images[src]
        # Per slot: 1 if it holds the contrast it is named as, 0 where the 'contrast' artefact put another
        # one there (the label models.gates.SourceCheckNet learns; padding slots are ignored).
        named_right = np.ones(self.max_sources, dtype=np.float32)
        first_slot = 0 if self.degrade_any_source else 1
        if self.source_artifacts and len(src) > first_slot and rng.random() < self.source_artifacts:
            sources, slot, kind = self._degrade_one(sources, images, src, tgt, first_slot, rng)
            if kind == "contrast":
                named_right[slot] = 0.0
        x, src_ids, avail = _pad(sources, case.ids[src], self.max_sources)
        target, tgt_ids, tgt_valid = _pad(images[tgt], case.ids[tgt], self.max_targets)
        return {
            "x": x,
            "src": src_ids,
            "avail": avail,
            "named_right": named_right,
            "target": target,
            "tgt": tgt_ids,
            "tgt_valid": tgt_valid,
            "mask": mask,
            "lesion": lesion,
        }

    def _degrade_one(self, sources: np.ndarray, images: np.ndarray, src: np.ndarray, tgt: np.ndarray,
                     first_slot: int, rng: np.random.Generator) -> tuple[np.ndarray, int, str]:
        """One source (slot >= first_slot) degraded by a random artefact (data.artifacts); targets untouched.
        Returns the sources, the degraded slot and the artefact's kind.

        first_slot 0 also degrades the base slot and a lone source: a fusion that picks its base by
        predicted quality (model.base_by_quality) learns what a degraded frame alone costs only from
        one-source samples whose source is degraded.

        The wrong contrast is never one of the sample's targets: a target under a source's name is the
        answer itself, which teaches the network to trust a mislabelled frame instead of refusing it
        (with four targets out of five other contrasts, most wrong-contrast draws used to leak one).
        Where every other contrast is a target, the slot gets another artefact instead."""
        slot = int(rng.integers(first_slot, len(src)))
        kind = ARTIFACTS[int(rng.integers(0, len(ARTIFACTS)))]
        excluded = {int(src[slot]), *tgt.tolist()}
        others = [i for i in range(len(images)) if i not in excluded]
        pick = int(rng.integers(0, max(len(others), 1)))  # drawn even when unused: the same draws either way
        if kind == "contrast" and not others:
            kind = next(a for a in ARTIFACTS if a != "contrast")
        sources = sources.copy()
        sources[slot] = degrade(sources[slot], kind, rng, images[others[pick]] if others else None)
        return sources, slot, kind

    def _draw_counts(self, rng: np.random.Generator, available: int, stage: str) -> tuple[int, int]:
        many_sources, many_targets = STAGES[stage]
        k_hi = min(self.max_sources if many_sources else 1, available - 1)
        k = int(rng.integers(1, k_hi + 1))
        n_hi = min(self.max_targets if many_targets else 1, available - k)
        return k, int(rng.integers(1, n_hi + 1))

    def _draw_roles(self, rng: np.random.Generator, ids: np.ndarray, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """Disjoint source and target positions within the role pools, sizes per the stage.

        One target is reserved first, among those that leave a source to draw,
        so a modality in both pools can never take the last target as a source.
        """
        many_sources, many_targets = STAGES[stage]
        positions = np.arange(len(ids))
        first = rng.choice(self._open_targets(ids))
        sources = rng.permutation([s for s in positions if s != first and self._source_ok[ids[s]]])
        k = int(rng.integers(1, min(self.max_sources if many_sources else 1, len(sources)) + 1))
        rest = rng.permutation([t for t in positions if t != first and t not in sources[:k] and self._target_ok[ids[t]]])
        n = int(rng.integers(1, min(self.max_targets if many_targets else 1, len(rest) + 1) + 1))
        targets = rng.permutation(np.concatenate([[first], rest[: n - 1]]).astype(np.int64))
        return sources[:k].astype(np.int64), targets

    def _augment(
        self, images: np.ndarray, mask: np.ndarray, lesion: np.ndarray, ids: np.ndarray, flip: bool, gamma: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Left-right flip and gamma, the same for every channel of the sample.

        Gamma only touches percentile-normalised (weighted) images: a
        quantitative map such as ADC must keep its physical scale.
        """
        if flip:
            images, mask, lesion = images[..., ::-1], mask[..., ::-1], lesion[..., ::-1]
        weighted = self._gamma_ok[ids]
        images = images.copy()
        images[weighted] = images[weighted] ** np.float32(gamma)
        return images, np.ascontiguousarray(mask), np.ascontiguousarray(lesion)


def _pad(images: np.ndarray, ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images [m,H,W] and ids [m] padded to `length` with zeros, id 0 and a validity flag."""
    m = len(ids)
    out = np.zeros((length, *images.shape[1:]), dtype=np.float32)
    out[:m] = images
    padded_ids = np.zeros(length, dtype=np.int64)
    padded_ids[:m] = ids
    valid = np.zeros(length, dtype=np.float32)
    valid[:m] = 1.0
    return out, padded_ids, valid


CaseLike = TypeVar("CaseLike", Case, Path)


def split_cases(cases: Sequence[CaseLike], val_fraction: float, seed: int) -> tuple[list[CaseLike], list[CaseLike]]:
    """Deterministic train/validation split by case (never by slice: no subject leaks across).

    Independent of the input order; at least one training case is kept, and at
    least one validation case when val_fraction > 0 and there are two or more.
    """
    ordered = sorted(cases, key=lambda c: c.name)
    n_val = 0
    if val_fraction > 0 and len(ordered) >= 2:
        n_val = min(len(ordered) - 1, max(1, int(round(val_fraction * len(ordered)))))
    val_idx = set(np.random.default_rng(seed).permutation(len(ordered))[:n_val].tolist())
    train = [c for i, c in enumerate(ordered) if i not in val_idx]
    val = [c for i, c in enumerate(ordered) if i in val_idx]
    return train, val
