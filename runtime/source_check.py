"""Does each source look like the contrast it is named as? The model's answer, per case (torch-free).

Hospitals have mislabelled series: a T2 filed as FLAIR, an ADC map exported
under the DWI's name, the same series loaded twice. A synthesis from a
mislabelled source is wrong in a way no per-voxel uncertainty shows. A
Med-K2N model built with `model.source_check` learnt, per frame, the
probability that the frame holds the contrast its slot is named as (trained
against frames of another contrast put under a source's name; see
models.gates.SourceCheckNet), and the fusion already turns such a frame
down. Its bundle exports that probability as a third graph output,
`source_check [B,K]`, and this module turns the per-slice values into one
figure per source and a warning the user sees.

A series is mislabelled as a whole, so the case's figure is the median over
the slices the model ran (slices without brain are not run): one odd slice at
the edge of the head does not flip it.

Where to draw the line is fitted at export, per source contrast, when held-out
subjects are given (export.check_threshold): the check's p on correctly named
series is tight and high (0.95-0.99 on the phantom) and a wrong contrast often
lands between that and 0.5, where the network's own boundary misses it (half
the mislabelled FLAIRs of the 2026-12-03 benchmark). The fitted threshold is
the lowest case median among the held-out subjects' correctly named series,
clean, noisy, ghosted, or beside a noisy or ghosted series (a noisy FLAIR is
still a FLAIR; a degraded neighbour shifts the slices a median runs over): a conformal
outlier test, so a correctly named series exchangeable with those is doubted
with probability at most 1/(n+1) for n calibration series (fitted from n >= 9). Bundles without a
fitted threshold (exported before it, or without held-out subjects) use the
network's boundary, p = 0.5.

What it is not: a detector of noise or motion (a noisy FLAIR is still a
FLAIR, and the fusion's quality gates weigh what is left in it), nor a
guarantee. On the phantom benchmark (docs/experiments.md, 2026-12-02
evening) a wrong contrast under FLAIR's name was told from clean FLAIR with
AUC 0.94-0.99, FLAIR under ADC's name with AUC 0.77-0.81.

Warning is the default: the user asked for these sources and decides. With
`exclude` (`medk2n-run --exclude-mislabelled`) a doubted source is left out
and the case synthesised again from the others, as if it had not been given,
which is what a reader would do with a series they believe mislabelled: a
synthesis from a wrong contrast is worse than one from fewer right ones
(docs/experiments.md measures both). The slices of the kept sources are the
ones already prepared (each source is normalised on its own); the case's
head mask stays the one of all given sources, since a mislabelled series is
still an image of this head on this grid. When the check doubts every
source, nothing is left to synthesise from: nothing is excluded and the
warnings say so.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

THRESHOLD = 0.5  # the network's own boundary: the threshold of a contrast the bundle fitted none for


def threshold_for(name: str, thresholds: Mapping[str, float] | None = None) -> float:
    """The line below which source `name` is doubted: the bundle's fitted one, else THRESHOLD."""
    return float((thresholds or {}).get(name, THRESHOLD))


def fit_threshold(correctly_named: Sequence[float]) -> float:
    """The threshold for one contrast from the case medians of correctly named held-out series: the lowest
    of them (conformal outlier test; see the module docstring). A value no correctly named series went
    below; NaN-free input of at least one value."""
    values = np.asarray(list(correctly_named), dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError("a check threshold needs at least one finite median of a correctly named series")
    return float(values.min())


def case_probabilities(per_slice: np.ndarray | None, sources: Sequence[str]) -> dict[str, float] | None:
    """{source: median probability over the inferred slices} for the request's sources (slot order),
    or None when the bundle has no check or no slice was inferred."""
    if per_slice is None:
        return None
    ran = np.isfinite(per_slice[:, 0])
    if not ran.any():
        return None
    return {name: round(float(np.median(per_slice[ran, slot])), 4) for slot, name in enumerate(sources)}


def doubted(probabilities: dict[str, float] | None, thresholds: Mapping[str, float] | None = None) -> list[str]:
    """The sources whose case probability is below their threshold (threshold_for), in slot order."""
    return [name for name, p in (probabilities or {}).items() if p < threshold_for(name, thresholds)]


def sources_to_exclude(probabilities: dict[str, float] | None,
                       thresholds: Mapping[str, float] | None = None) -> list[str]:
    """What `exclude` leaves out: the doubted sources, or none when every source is doubted."""
    names = doubted(probabilities, thresholds)
    return [] if len(names) == len(probabilities or {}) else names


def mislabel_warnings(case: str, probabilities: dict[str, float] | None,
                      excluded: Sequence[str] | None = None,
                      thresholds: Mapping[str, float] | None = None) -> list[str]:
    """One line per source the check doubts, naming the case, the source, the probability and what was
    done: warned only (`excluded` None), left out of the synthesis, or kept because every source was doubted
    (`excluded` empty)."""
    lines = []
    for name in doubted(probabilities, thresholds):
        head = (f"{case}: source {name!r} does not look like {name.upper()} to the model (source check "
                f"p = {probabilities[name]:.3f} < {threshold_for(name, thresholds):.3f}): ")
        if excluded is None:
            lines.append(head + "check that series' label; a synthesis from another contrast is wrong")
        elif name in excluded:
            kept = [m for m in probabilities if m not in excluded]
            lines.append(head + f"left out (--exclude-mislabelled); synthesised from {', '.join(kept)} only")
        else:
            lines.append(head + "kept: the check doubts every source, so none was left out; check the labels")
    return lines
