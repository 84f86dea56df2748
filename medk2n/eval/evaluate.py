"""Score a predictor (checkpoint or bundle) on a dataset with the paper protocol.

For every subject: synthesise the targets from the sources through the same
pipeline the runtime uses, then score each target against the real volume
(`protocol.score_volume`), alongside the simple references (copy of each
source; mean training image when a training set is given).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from medk2n.data.cases import Case, discover_dataset, load_case
from medk2n.data.mask import brain_mask
from medk2n.data.geometry import geometry_mismatch
from medk2n.data.nifti import VolumeInfo, read_volume
from medk2n.errors import DataError
from medk2n.eval.protocol import interval_space, score_volume, summarise
from medk2n.eval.uncertainty import uncertainty_scores
from medk2n.eval.references import mean_prediction, mean_templates
from medk2n.runtime.synthesizer import Synthesizer
from medk2n.manifest import training_cut_short

MODEL = "model"
# Brain voxels per subject and target kept for the pooled risk-coverage curve (a strided sample).
CURVE_VOXELS = 200_000


@dataclass
class EvalResult:
    sources: list[str]
    targets: list[str]
    rows: list[dict] = field(default_factory=list)  # one per (method, case, target)
    examples: list[dict] = field(default_factory=list)  # middle-slice images for the montage
    # target -> [(|error|, scale)] per subject, brain voxels in the protocol's space: the risk-coverage curve
    errors: dict[str, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    coverage: float | None = None  # of the intervals scored, when the predictor is calibrated
    model: dict = field(default_factory=dict)  # provenance of the weights scored (model_provenance)
    # case -> source -> the model's p(the source holds the contrast it is named as); models with a check only
    source_check: dict[str, dict[str, float]] = field(default_factory=dict)
    check_thresholds: dict[str, float] = field(default_factory=dict)  # the bundle's fitted lines; empty: p = 0.5
    # case -> sources left out by exclude_mislabelled (empty: none); only when it was asked
    excluded: dict[str, list[str]] = field(default_factory=dict)

    @property
    def training_warning(self) -> str | None:
        """One sentence when the weights come from a run cut short of its schedule, else None."""
        cut = training_cut_short(self.model.get("training"))
        if cut is None:
            return None
        return (f"WARNING: this model's training stopped at {cut[0]}, by {cut[1]}, "
                "before the end of its schedule: it is not the model its recipe makes.")

    def summary(self) -> dict[str, dict[str, dict]]:
        """method -> target -> metric -> {mean, sd, n}."""
        out: dict[str, dict[str, dict]] = {}
        for method in dict.fromkeys(r["method"] for r in self.rows):
            out[method] = {}
            for target in self.targets:
                rows = [r for r in self.rows if r["method"] == method and r["target"] == target]
                if rows:
                    out[method][target] = summarise([{k: v for k, v in r.items() if isinstance(v, float)} for r in rows])
        return out


def shipped_mask(case: Case, role: str, grid: VolumeInfo) -> np.ndarray | None:
    """The dataset's `role` mask ("brain", "lesion") as bool, or None when the case ships none.

    Scores compare voxels of the volumes as stored, so a mask on another grid
    is an error naming the file, not a resampling guess or a numpy traceback.
    """
    if role not in case.masks:
        return None
    array, info = read_volume(case.masks[role], check_values=False)
    why = geometry_mismatch(grid, info)
    if why is not None:
        raise DataError(f"{info.path}: {role} mask is not on the grid of {Path(grid.path).name} ({why})")
    return array > 0.5


def subject_mask(case: Case, fallback: tuple[np.ndarray, VolumeInfo]) -> np.ndarray:
    """The dataset's brain mask when it ships one, else one computed from a source."""
    shipped = shipped_mask(case, "brain", fallback[1])
    return brain_mask(fallback[0]) if shipped is None else shipped


def model_provenance(source: dict) -> dict:
    """What the report keeps of a bundle's (or checkpoint's) source record: the weights' hash and how far
    their training got."""
    keys = ("step", "max_steps", "schedule", "schedule_complete", "stopped_by")
    training = source.get("training", {}) or {}
    return {"weights_sha256": source.get("weights_sha256"),
            "training": {k: training[k] for k in keys if k in training}}


def evaluate(predictor: Synthesizer, dataset: str | Path, sources: Sequence[str], targets: Sequence[str],
             train_dir: str | Path | None = None, reference: str | None = None, examples: int = 3,
             exclude_mislabelled: bool = False) -> EvalResult:
    """Score `predictor` on every case of `dataset` that has the sources and targets.

    `exclude_mislabelled` scores what `medk2n-run --exclude-mislabelled` writes: a source the model's check
    doubts is left out of that case's synthesis (Synthesizer.infer_detailed); the copy references still
    copy every source."""
    cases = [c for c in discover_dataset(Path(dataset)) if all(m in c.files for m in [*sources, *targets])]
    if not cases:
        raise DataError(f"{dataset}: no case has all of {', '.join([*sources, *targets])}")
    norms = predictor.bundle.norms
    templates = mean_templates(train_dir, targets, norms, predictor.bundle.image_size) if train_dir else {}
    result = EvalResult(list(sources), list(targets), model=model_provenance(predictor.bundle.manifest.source),
                        check_thresholds=predictor.bundle.check_thresholds)
    if predictor.uncertainty_note is None:
        result.coverage = predictor.coverage
    for case in cases:
        volumes = load_case(case, [*sources, *targets])
        request = predictor.request(sources, targets, case.name)
        prepared = predictor.prepare(volumes, request, reference, case.name)
        found = predictor.infer_detailed(prepared, request, exclude_mislabelled=exclude_mislabelled)
        outputs = predictor.restore(found.images, found.scale, prepared, found.request)
        if found.source_check is not None:
            result.source_check[case.name] = found.source_check
        if found.excluded is not None:
            result.excluded[case.name] = found.excluded
        mask = subject_mask(case, volumes[sources[0]])
        lesion = shipped_mask(case, "lesion", volumes[sources[0]][1])  # for the lesion-only metrics
        for target in targets:
            truth = volumes[target][0]
            physical = norms[target].kind == "range"
            pred, scale = outputs[target]
            scale = scale if predictor.bundle.has_scale else None
            halfwidth = None if scale is None else predictor.halfwidth(target, scale, found.request.sources)
            row = score_volume(pred, truth, mask, physical, lesion)
            if scale is not None and mask.any():
                error, spreads = interval_space(pred, truth, mask, [scale] if halfwidth is None else [scale, halfwidth],
                                                physical)
                row.update(uncertainty_scores(error, spreads[0], None if halfwidth is None else spreads[1]))
                step = max(1, len(error) // CURVE_VOXELS)
                result.errors.setdefault(target, []).append((error[::step], spreads[0][::step]))
            result.rows.append({"method": MODEL, "case": case.name, "target": target, **row})
            for source in sources:
                result.rows.append({"method": f"copy:{source}", "case": case.name, "target": target,
                                    **score_volume(volumes[source][0], truth, mask, lesion=lesion)})
            if target in templates:
                guess = mean_prediction(templates[target], prepared, norms[target])
                result.rows.append({"method": "mean-train", "case": case.name, "target": target,
                                    **score_volume(guess, truth, mask, physical, lesion)})
            if len(result.examples) < examples * len(targets):
                result.examples.append(_example(case.name, target, volumes, sources, pred, truth,
                                                halfwidth if halfwidth is not None else scale, mask))
    return result


def _example(name, target, volumes, sources, pred, truth, spread, mask) -> dict:
    """Middle brain slice along the last axis of each volume, for the montage."""
    z = int(np.median(np.flatnonzero(mask.any(axis=(0, 1))))) if mask.any() else pred.shape[-1] // 2
    return {"case": name, "target": target, "sources": {s: volumes[s][0][..., z] for s in sources},
            "pred": pred[..., z], "truth": truth[..., z], "mask": mask[..., z],
            "spread": None if spread is None else spread[..., z]}
