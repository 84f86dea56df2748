"""How well a trained model's source check (models.gates.SourceCheckNet) tells a mislabelled source.

The robustness benchmark's score says what a degraded source costs the synthesis; this says whether the
module meant to catch a wrong contrast does: per test condition (clean, and each corruption of one
source), the mean probability the check gives that source of holding its named contrast, over the brain
slices of the test subjects, and the AUC of telling each corruption from clean (0.5: chance, 1: every
degraded slice scored below every clean one). The check is trained on the wrong contrast only, so under
noise and ghosting a high probability (an AUC near 0.5) is what it should give: those frames are left
to the quality gates. The slices are prepared by the runtime's own preprocessing
(data.preprocess.prepare_case), so the check sees what it sees in deployment.

`flagged` is what a user sees: the fraction of test subjects whose median probability over their
slices is below the source's threshold, i.e. the cases `medk2n-run` warns about (a false alarm on
clean data, a detection under a wrong contrast). The threshold is the one an export fits on the
model's held-out subjects (export.check_threshold; `fitted_thresholds` fits it the same way on the
checkpoint's validation subjects), or the network's p = 0.5 when none is given; with a fitted one,
`flagged_at_0.5` keeps the network boundary's count beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from medk2n.data.cases import discover_dataset
from medk2n.data.nifti import read_volume
from medk2n.data.preprocess import prepare_case
from medk2n.models.medk2n import has_source_check
from medk2n.runtime.source_check import THRESHOLD, threshold_for
from medk2n.train.checkpoint import load_checkpoint

CLEAN = "clean"


def auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney U / n1 n2)."""
    positives, negatives = np.ravel(positives), np.sort(np.ravel(negatives))
    if not len(positives) or not len(negatives):
        return float("nan")
    below = np.searchsorted(negatives, positives, side="left")
    tied = np.searchsorted(negatives, positives, side="right") - below
    return float((below + 0.5 * tied).sum() / (len(positives) * len(negatives)))


def check_probabilities(model: torch.nn.Module, cfg, test_dir: Path, sources: Sequence[str]
                        ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """p(named right) the check gives every source: per slice [brain slices of every case under `test_dir`,
    K], per case [cases, K] (the median over its slices, as medk2n-run reports it), and the case names."""
    ids = torch.tensor([cfg.model.modality_id(m) for m in sources])
    values = []
    cases = discover_dataset(test_dir)
    for case in cases:
        prepared = prepare_case({m: read_volume(case.files[m]) for m in sources}, cfg.model.normalization,
                                cfg.model.image_size)
        keep = prepared.brain.reshape(len(prepared.brain), -1).any(axis=1)
        x = torch.from_numpy(np.stack([prepared.slices[m] for m in sources], axis=1)[keep])
        with torch.no_grad():
            values.append(torch.sigmoid(model.source_check_logits(x, ids.expand(len(x), -1))).numpy())
    if not values:
        return np.zeros((0, len(sources)), dtype=np.float32), np.zeros((0, len(sources)), dtype=np.float32), []
    return np.concatenate(values), np.stack([np.median(v, axis=0) for v in values]), [c.name for c in cases]


def fitted_thresholds(checkpoint: Path, calib_dir: Path, sources: Sequence[str], targets: Sequence[str],
                      device: str = "cpu") -> dict:
    """The manifest block an export would write (export.check_threshold), fitted on the cases of `calib_dir`
    the checkpoint did not train on (its validation subjects); {} without a check or such cases."""
    from medk2n.eval.predictor import checkpoint_synthesizer
    from medk2n.export.check_threshold import fit_on
    from medk2n.export.conformal import heldout_cases

    with checkpoint_synthesizer(checkpoint, len(sources), 1, device=device) as synth:
        if not synth.bundle.has_source_check:
            return {}
        cases, origin = heldout_cases(None, Path(calib_dir), synth.bundle.manifest.source.get("training", {}))
        return fit_on(synth, cases, origin, sources, targets)


def source_check_scores(checkpoint: Path, clean_dir: Path, corrupted: Mapping[str, Mapping[str, Path]],
                        sources: Sequence[str], thresholds: Mapping[str, float] | None = None
                        ) -> dict[str, dict] | None:
    """{source: {"p_named_right": {condition: mean}, "auc": {corruption: AUC vs clean}, "flagged": {condition:
    fraction of subjects}, "per_subject": {condition: {case: median p}}, "slices": n}} for each source of `corrupted` ({source: {corruption: test folder}});
    None for a model without a check.
    The checkpoint is loaded and the clean test set scored once for every source."""
    model, cfg, _ = load_checkpoint(checkpoint)
    if not has_source_check(model):
        return None
    model.eval()
    clean = check_probabilities(model, cfg, Path(clean_dir), sources)
    scores = {}
    for source, folders in corrupted.items():
        slot = list(sources).index(source)
        found = {CLEAN: clean, **{kind: check_probabilities(model, cfg, Path(folder), sources)
                                  for kind, folder in folders.items()}}
        probs = {kind: slices[:, slot] for kind, (slices, _, _) in found.items()}
        scores[source] = {
            "p_named_right": {kind: float(p.mean()) for kind, p in probs.items()},
            "auc": {kind: auc(probs[CLEAN], p) for kind, p in probs.items() if kind != CLEAN},
            "flagged": {kind: float(np.mean(cases[:, slot] < threshold_for(source, thresholds)))
                        for kind, (_, cases, _) in found.items()},
            **({"threshold": threshold_for(source, thresholds),
                "flagged_at_0.5": {kind: float(np.mean(cases[:, slot] < THRESHOLD))
                                   for kind, (_, cases, _) in found.items()}} if thresholds else {}),
            "per_subject": {kind: {name: round(float(p), 4) for name, p in zip(names, cases[:, slot])}
                            for kind, (_, cases, names) in found.items()},
            "slices": int(len(probs[CLEAN])),
        }
    return scores
