"""Synthesize missing contrasts from the ones a session has: the library API.

`Synthesizer` owns one verified bundle and one started runner. `run` works
on arrays (no files), `run_case` on a case folder. Both go through the same
stages: check the request against the bundle, `prepare_case` (the one
preprocessing shared with training), slice-wise inference, `restore_volume`
back onto the input grid. A "range"-normalised target (ADC) comes back in
physical units, and so does its Laplace scale (the expected absolute error):
the scale follows every linear step of the image's restoration. When the
bundle carries a conformal calibration, `halfwidth` turns a scale into the
half-width of an interval at the requested coverage (runtime.uncertainty).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence, Union

import nibabel as nib
import numpy as np

from medk2n.data.cases import normalise_modality_name
from medk2n.data.mask import grow_2d
from medk2n.data.nifti import MAX_VOXELS, VolumeInfo, check_volume_values
from medk2n.data.preprocess import PreparedCase, prepare_case, restore_volume
from medk2n.data.standardize import standardize_with_slope
from medk2n.errors import BundleError, DataError
from medk2n.manifest import training_cut_short
from medk2n.runtime.backends import BackendChoice, backend_chain, open_runner
from medk2n.runtime.bundle import Bundle, load_bundle
from medk2n.runtime.inferer import SliceInferer, brain_slices
from medk2n.runtime.pipeline import CaseReport, load_stage, finish_stage
from medk2n.runtime.runners import Runner
from medk2n.runtime.source_check import case_probabilities, sources_to_exclude
from medk2n.runtime.triton import TritonServer
from medk2n.runtime.uncertainty import DEFAULT_COVERAGE, check_coverage, interval_factor

Volumes = Mapping[str, Union[np.ndarray, tuple[np.ndarray, VolumeInfo]]]
Outputs = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Request:
    """A K->N request mapped onto the bundle's fixed slots.

    Slot 0 is always a present source. Missing source slots get avail 0 (the
    model ignores them) and repeat the first source's id, since any valid id
    will do; unused target slots repeat the last target and are dropped.
    """

    sources: list[str]
    targets: list[str]
    src: np.ndarray  # int64 [K]
    tgt: np.ndarray  # int64 [N]
    avail: np.ndarray  # float32 [K]


class Inference(NamedTuple):
    """One case's model-space outputs (`Synthesizer.infer_detailed`)."""

    images: np.ndarray  # [n_targets, S, H, W]
    scale: np.ndarray  # [n_targets, S, H, W]
    source_check: dict[str, float] | None  # source -> p(it is the contrast it is named as); None without a check
    request: Request  # the request the outputs answer: the one asked, or it without the excluded sources
    excluded: list[str] | None = None  # sources left out by exclude_mislabelled; None when not asked


class Synthesizer:
    """K->N synthesis with one bundle on one backend; use as a context manager.

    `backend="triton"` with `server=TritonServer("host:8001")` runs the model on a Triton server;
    everything else (checks, pre/post-processing, files) stays in this process."""

    def __init__(self, bundle: str | Path | Bundle, backend: str = "auto", precision: str | None = None,
                 threads: int | None = None, batch_size: int | None = None,
                 coverage: float = DEFAULT_COVERAGE, max_voxels: int = MAX_VOXELS,
                 server: TritonServer | None = None) -> None:
        self.coverage = check_coverage(coverage)
        self.max_voxels = int(max_voxels)
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.batch_size = _batch_size(self.bundle, batch_size)
        self.runner, self.choice = open_runner(backend_chain(backend, self.bundle, precision, server),
                                               self.bundle, threads)
        self.inferer = SliceInferer(self.runner, self.batch_size * self.runner.requests_per_call,
                                    self.bundle.batch["min"])

    @classmethod
    def from_runner(cls, bundle: Bundle, runner: Runner, choice: BackendChoice,
                    batch_size: int | None = None) -> "Synthesizer":
        """Drive any runner (e.g. a PyTorch model for `medk2n-eval CHECKPOINT`) through the same pipeline."""
        self = cls.__new__(cls)
        self.coverage = DEFAULT_COVERAGE
        self.max_voxels = MAX_VOXELS
        self.bundle = bundle
        self.batch_size = _batch_size(bundle, batch_size)
        self.runner, self.choice = runner, choice
        runner.activate()
        self.inferer = SliceInferer(runner, self.batch_size, bundle.batch["min"])
        return self

    def __enter__(self) -> "Synthesizer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.runner.deactivate()

    @property
    def training_note(self) -> str | None:
        """A warning when the bundle's weights come from a training run cut short of its schedule."""
        cut = training_cut_short((self.bundle.manifest.source or {}).get("training"))
        if cut is None:
            return None
        return f"this bundle's model stopped training at {cut[0]} ({cut[1]}), before the end of its schedule"

    @property
    def uncertainty_note(self) -> str | None:
        """Why this bundle writes no uncertainty map (None when it does)."""
        if not self.bundle.has_scale:
            return ("this bundle predates the calibrated uncertainty output (its 'confidence' map did not rank "
                    "errors): writing syntheses only; re-export it to get <target>_uncertainty maps")
        if not self.bundle.manifest.uncertainty:
            return ("this bundle has no conformal calibration (exported without held-out subjects): writing "
                    "syntheses only; re-export with --heldout or --calib to get <target>_uncertainty maps")
        return None

    def uncalibrated(self, sources: Sequence[str], targets: Sequence[str]) -> list[str]:
        """Targets of a request that will get no uncertainty map from this (calibrated) bundle."""
        doc = self.bundle.manifest.uncertainty
        if not doc or not self.bundle.has_scale:
            return []
        sources = [normalise_modality_name(s) for s in sources]
        return [t for t in (normalise_modality_name(t) for t in targets)
                if interval_factor(doc, t, self.coverage, self.choice.model.precision, sources) is None]

    def halfwidth(self, target: str, scale: np.ndarray, sources: Sequence[str] | None = None) -> np.ndarray | None:
        """Half-width of the interval at `self.coverage` from a restored scale, calibrated for the request
        `sources` -> `target` when the bundle has that task's table; None when not calibrated."""
        if not self.bundle.has_scale:
            return None
        factor = interval_factor(self.bundle.manifest.uncertainty, normalise_modality_name(target),
                                 self.coverage, self.choice.model.precision,
                                 None if sources is None else [normalise_modality_name(s) for s in sources])
        return None if factor is None else np.multiply(scale, np.float32(factor), dtype=np.float32)

    def request(self, sources: Sequence[str], targets: Sequence[str], name: str = "input") -> Request:
        """Check sources/targets against the bundle and build the id rows; errors name `name`."""
        b = self.bundle
        sources = [normalise_modality_name(m) for m in sources]
        targets = [normalise_modality_name(m) for m in targets]
        if not sources or not targets:
            raise DataError(f"{name}: need at least one source and one target")
        unknown = [m for m in sources + targets if m not in b.modalities]
        if unknown:
            raise BundleError(f"{name}: unknown modality {unknown[0]!r} (bundle knows: {', '.join(b.modalities)})")
        for role, names in (("source", sources), ("target", targets)):
            if len(set(names)) != len(names):
                raise DataError(f"{name}: {role}s listed twice: {', '.join(names)}")
        for role, names in (("sources", sources), ("targets", targets)):
            trained = b.manifest.roles.get(role)
            outside = [m for m in names if trained and m not in trained]
            if outside:
                raise BundleError(f"{name}: {outside[0]!r} cannot be one of the {role}: this model was trained "
                                  f"with {role} {', '.join(trained)} only (train.{role})")
        both = [m for m in targets if m in sources]
        if both:
            raise DataError(f"{name}: {both[0]!r} is both a source and a target")
        if len(sources) > b.k:
            raise BundleError(f"{name}: {len(sources)} sources ({', '.join(sources)}) but the bundle takes at most K={b.k}")
        if len(targets) > b.n:
            raise BundleError(f"{name}: {len(targets)} targets ({', '.join(targets)}) but the bundle makes at most N={b.n}")
        src = [b.modality_id(m) for m in sources]
        tgt = [b.modality_id(m) for m in targets]
        return Request(
            sources=sources,
            targets=targets,
            src=np.array(src + [src[0]] * (b.k - len(src)), dtype=np.int64),
            # A graph with a target axis computes only what is asked; an older fixed-N graph always
            # computes N, so the request is padded with its last target (outputs dropped after).
            tgt=np.array(tgt if b.dynamic_targets else tgt + [tgt[-1]] * (b.n - len(tgt)), dtype=np.int64),
            avail=np.array([1.0] * len(src) + [0.0] * (b.k - len(src)), dtype=np.float32),
        )

    def prepare(self, volumes: Mapping[str, tuple[np.ndarray, VolumeInfo]], request: Request,
                reference: str | None = None, name: str = "input") -> PreparedCase:
        """Model-space slices of the sources (geometry check or resampling onto `reference`)."""
        missing = [m for m in request.sources if m not in volumes]
        if missing:
            raise DataError(f"{name}: missing modality {missing[0]!r} (given: {', '.join(volumes) or 'none'})")
        if reference is not None:
            reference = normalise_modality_name(reference)
            if reference not in request.sources:
                raise DataError(f"{name}: reference {reference!r} is not one of the sources ({', '.join(request.sources)})")
        return prepare_case({m: volumes[m] for m in request.sources},
                            {m: self.bundle.norms[m] for m in request.sources},
                            self.bundle.image_size, reference)

    def infer(self, prepared: PreparedCase, request: Request,
              progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Images and Laplace scale [n_targets, S, H, W] in model space; both are zero outside the synthesis
        support (the head and any source signal)."""
        return self.infer_detailed(prepared, request, progress)[:2]

    def infer_detailed(self, prepared: PreparedCase, request: Request,
                       progress: Callable[[int], None] | None = None,
                       exclude_mislabelled: bool = False) -> Inference:
        """`infer`, plus the model's source check when the bundle has one: per source, the median
        over the inferred slices of p(the source holds the contrast it is named as)
        (runtime.source_check).

        With `exclude_mislabelled`, a source the check doubts is left out and the case inferred again
        from the others (never all of them: runtime.source_check.sources_to_exclude); the result's
        `request` is then the reduced one, and `source_check` still the first pass's, over every source."""
        first = self._infer(prepared, request, progress)
        if not exclude_mislabelled or first.source_check is None:
            return first
        excluded = sources_to_exclude(first.source_check, self.bundle.check_thresholds)
        if not excluded:
            return first._replace(excluded=[])
        kept = self.request([m for m in request.sources if m not in excluded], request.targets)
        checked = first.source_check
        del first  # its images and scales are not kept: peak memory stays one inference's
        return self._infer(prepared, kept, progress)._replace(source_check=checked, excluded=excluded)

    def check_sources(self, prepared: PreparedCase, request: Request, stride: int = 1) -> dict[str, float] | None:
        """The source check's case medians over every `stride`-th brain slice (None without a check): what
        infer_detailed reports, thinned for callers that need only the check (export.check_threshold)."""
        keep = brain_slices(prepared.brain)
        thinned = np.zeros_like(keep)
        thinned[np.flatnonzero(keep)[::max(1, int(stride))]] = True
        return case_probabilities(self._run_slots(prepared, request, thinned, None)[2], request.sources)

    def _run_slots(self, prepared: PreparedCase, request: Request, keep: np.ndarray,
                   progress: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        sources = [prepared.slices[m] for m in request.sources]
        slots = sources + [np.zeros_like(sources[0])] * (self.bundle.k - len(sources))
        return self.inferer(slots, request.src, request.tgt, request.avail, keep=keep, progress=progress)

    def _infer(self, prepared: PreparedCase, request: Request,
               progress: Callable[[int], None] | None) -> Inference:
        sources = [prepared.slices[m] for m in request.sources]
        images, scale, check = self._run_slots(prepared, request, brain_slices(prepared.brain), progress)
        n = len(request.targets)
        # FP16/INT8 rounding can step just outside [0, 1]; denormalisation must not amplify it.
        # Outside the head mask the model was never trained (the loss is masked to it), so what
        # it paints there is haze, not a synthesis: the background is written as 0.
        support = synthesis_support(prepared.brain, sources)
        return Inference(np.clip(images[:n], 0.0, 1.0) * support[None], np.maximum(scale[:n], 0.0) * support[None],
                         case_probabilities(check, request.sources), request)

    def restore(self, images: np.ndarray, scale: np.ndarray, prepared: PreparedCase,
                request: Request) -> Outputs:
        """Model-space outputs -> (image, scale) on the reference grid, both in the target's output units.

        Every target at once, for callers that want them all in memory; `finish_stage` restores and
        writes one target at a time with `restore_target` instead.
        """
        head = self.head_for(prepared, request)
        return {target: self.restore_target(target, images[i], scale[i], prepared, head)
                for i, target in enumerate(request.targets)}

    def head_for(self, prepared: PreparedCase, request: Request) -> np.ndarray | None:
        """The restored head mask when a target of the request is histogram-standardised, else None."""
        if any(self.bundle.norms[t].standard is not None for t in request.targets):
            return restored_head(prepared)
        return None

    def restore_target(self, target: str, image: np.ndarray, scale: np.ndarray, prepared: PreparedCase,
                       head: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """One target's model-space (image, scale) -> both on the reference grid, in its output units.

        A range-normalised target (ADC) is denormalised to physical units and its
        scale multiplied by the range. A target whose normalisation carries a
        standard scale (fitted by training when the config asks for it) is
        histogram-standardised inside `head` (`head_for`), its scale by the map's
        mean slope. The scale is scaled in place: each step makes no second volume.
        """
        norm = self.bundle.norms[target]
        image = restore_volume(image, prepared, norm)
        slope = 1.0
        if norm.standard is not None:
            image, slope = standardize_with_slope(image, head, norm.standard)
        spread = restore_volume(scale, prepared, None)
        if norm.kind == "range":
            spread *= np.float32(norm.high - norm.low)
        if norm.standard is not None:
            spread *= np.float32(slope)
        return image, np.maximum(spread, 0.0, out=spread)

    def run(self, volumes: Volumes, sources: Sequence[str] | None, targets: Sequence[str],
            reference: str | None = None, *, affine: np.ndarray | None = None, name: str = "input",
            exclude_mislabelled: bool = False) -> Outputs:
        """target -> (image, scale) on the input grid, without touching files (`halfwidth` makes an interval).

        `volumes` maps modality -> (array, VolumeInfo) as `read_volume` gives,
        or modality -> 3-D array with one shared `affine` (identity if None).
        `sources` defaults to the volumes' order; the first one is slot 0.
        `exclude_mislabelled`: see `infer_detailed` (which also says what the check found).
        """
        volumes = as_volumes(volumes, affine, name)
        request = self.request(list(volumes) if sources is None else sources, targets, name)
        prepared = self.prepare(volumes, request, reference, name)
        found = self.infer_detailed(prepared, request, exclude_mislabelled=exclude_mislabelled)
        return self.restore(found.images, found.scale, prepared, found.request)

    def run_case(self, case_dir: str | Path, sources: Sequence[str], targets: Sequence[str], out_dir: str | Path,
                 reference: str | None = None, overwrite: bool = False, png: bool = False,
                 exclude_mislabelled: bool = False) -> CaseReport:
        """Read a case folder, synthesise, write OUT/<case>/; raises on any failure (nothing written)."""
        loaded = load_stage(self, Path(case_dir), sources, targets, Path(out_dir), reference, overwrite)
        return finish_stage(self, loaded, Path(out_dir), overwrite, png, exclude_mislabelled=exclude_mislabelled)


# Normalised source intensity below which a pixel outside the head mask counts as air.
AIR_LEVEL = 0.05


def restored_head(prepared: PreparedCase) -> np.ndarray:
    """The model-space head mask on the reference grid: where restored outputs carry synthesis."""
    return restore_volume(prepared.brain.astype(np.float32), prepared, None) > 0.5


def synthesis_support(brain: np.ndarray, sources: Sequence[np.ndarray]) -> np.ndarray:
    """Model-space pixels whose synthesis is kept: the head, one pixel around it, and any source signal.

    The loss is masked to the head, so outside it the model paints untrained
    haze over the air. The one-pixel margin is the support of the bilinear
    resampling back to the scanner grid: without it, edge voxels of the head
    would be blended with the zeroed background and come out too dark. A pixel
    where any source has signal (above AIR_LEVEL of its normalised range) is
    kept even outside the mask, so a tight field of view whose darkest tissue
    touches the border is never blanked.
    """
    signal = np.maximum.reduce(list(sources)) > AIR_LEVEL  # no [K, S, H, W] stacked copy
    return grow_2d(brain, 1) | signal


def as_volumes(volumes: Volumes, affine: np.ndarray | None, name: str) -> dict[str, tuple[np.ndarray, VolumeInfo]]:
    """Normalise keys to modality names; wrap bare arrays with a VolumeInfo built from `affine`."""
    out = {}
    for key, value in volumes.items():
        if isinstance(value, tuple):
            out[normalise_modality_name(key)] = value
            continue
        array = np.asarray(value, dtype=np.float32)
        label = f"{name}/{key}"
        if array.ndim != 3:
            raise DataError(f"{label}: expected a 3-D array, got shape {array.shape}")
        check_volume_values(array, label)
        out[normalise_modality_name(key)] = (array, volume_info(array.shape, affine, label))
    return out


def volume_info(shape: tuple[int, ...], affine: np.ndarray | None, label: str) -> VolumeInfo:
    """A VolumeInfo for an in-memory array: the header carries the affine's zooms."""
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_zooms(tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)))
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    return VolumeInfo(path=Path(label), affine=affine, header=header, shape=tuple(shape))


def _batch_size(bundle: Bundle, requested: int | None) -> int:
    lo, hi = bundle.batch["min"], bundle.batch["max"]
    if requested is None:
        return bundle.batch["opt"]
    if not lo <= requested <= hi:
        raise BundleError(f"{bundle.path}: batch size {requested} is outside the bundle's range {lo}..{hi}"
                          + (" (fixed batch)" if lo == hi else ""))
    return requested
