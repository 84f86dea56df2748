"""Fit the source check's decision line per source contrast on held-out subjects, at export.

The network's own boundary (p = 0.5) misses half the mislabelled series on the
phantom benchmark: a correctly named FLAIR scores 0.95-0.96 as a case median,
a wrong contrast under its name 0.2-0.86 (docs/experiments.md, 2026-12-03).
Where the line belongs depends on the model and the contrast, so it is
measured, like the conformal intervals, on subjects the model never saw,
through the staged bundle and the runtime's own pipeline (`Synthesizer`).

For each held-out subject and each trained source contrast present, the
contrast is put in slot 0 (with another present source in slot 1, as a
clinical request has) and the case median of its check probability is taken
as given, with heavy Rician noise, with motion ghosts (a noisy FLAIR is
still a FLAIR, and the check must not doubt it, since the fusion's quality
gates already weigh what is left in it), and beside a noisy or ghosted series
in slot 1. The last two matter: a degraded neighbour changes the case's head
mask and so the slices the median runs over, and a line fitted on clean and
self-degraded series alone (the first version, 2026-12-03) sat within 0.001 of
the correctly named ADC medians and left a clean ADC out of 1 to 2 of 6 test
cases when the FLAIR beside it was noisy. Those are the correctly named series;
the threshold is the lowest of them (runtime.source_check.fit_threshold), fitted
only from MIN_SERIES of them or more.
Once more with another contrast of the subject under the name, to report how
many of those the fitted line would have caught (`held_out_recall`): a
measurement for the manifest, not used to set the line.

The medians are taken over every SLICE_STRIDE-th brain slice (the runtime takes
all): the export runs six syntheses per subject and source contrast. One ONNX
precision is enough: the check agrees across FP32/FP16/INT8 to
0.004 (export.verify gates it).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from medk2n.data.artifacts import degrade_volume
from medk2n.data.cases import Case, load_case
from medk2n.runtime.bundle import Bundle
from medk2n.runtime.source_check import THRESHOLD, fit_threshold
from medk2n.runtime.synthesizer import Synthesizer

BESIDE = "beside "  # the series in the other slot degraded, this one clean
CORRECTLY_NAMED = ("clean", "noise", "ghosting", BESIDE + "noise", BESIDE + "ghosting")
WRONG = "contrast"
SEED = 0
# Every 3rd brain slice: a mislabelled series is wrong in all of them, and the median of a third of a
# case's slices differed from the whole case's by 0.001 on average, 0.017 at most (48 phantom medians),
# at half the time or less.
SLICE_STRIDE = 3
# A line is fitted only from at least this many correctly named series (three held-out subjects): the
# false-alarm bound 1/(n+1) is then 10 % at most. With fewer, the contrast keeps the network's 0.5.
MIN_SERIES = 9
RULE = ("lowest case median of the check over held-out series correctly named (clean, noisy, ghosted, or beside "
        "a noisy or ghosted series); "
        "a correctly named series exchangeable with them is doubted with probability <= 1/(n+1)")


def check_medians(synth: Synthesizer, cases: Sequence[Case], sources: Sequence[str], targets: Sequence[str],
                  progress: Callable[[str], None] = lambda _: None,
                  ) -> dict[str, dict[str, list[float]]]:
    """{contrast: {condition: [case median of p, per subject]}} for each of `sources` a subject has."""
    found: dict[str, dict[str, list[float]]] = {}
    rng = np.random.default_rng(SEED)
    for index, case in enumerate(cases):
        present = [m for m in sources if m in case.files]
        volumes = load_case(case, list(case.files)) if present else {}  # every series: any may be the wrong one
        for place, slot0 in enumerate(present):
            partners = [m for m in present if m != slot0][: synth.bundle.k - 1]
            target = next((t for t in targets if t in case.files and t not in (slot0, *partners)), None)
            others = [m for m in case.files if m not in (slot0, *partners)]
            if target is None:
                continue
            for condition in (*CORRECTLY_NAMED, WRONG):
                if (condition == WRONG and not others) or (condition.startswith(BESIDE) and not partners):
                    continue
                given = {m: volumes[m] for m in (slot0, *partners)}
                if condition == WRONG:  # the other series as filed, on its own grid, under slot0's name
                    given[slot0] = volumes[str(rng.choice(others))]
                elif condition != "clean":  # slot0 degraded, or (BESIDE) the series beside it
                    degraded = partners[0] if condition.startswith(BESIDE) else slot0
                    image, info = volumes[degraded]
                    given[degraded] = (degrade_volume(image, condition.removeprefix(BESIDE), np.random.default_rng(
                        [SEED, index, place, CORRECTLY_NAMED.index(condition)])), info)
                request = synth.request([slot0, *partners], [target], case.name)
                prepared = synth.prepare(given, request, None, case.name)
                checked = synth.check_sources(prepared, request, SLICE_STRIDE)
                if checked is not None:
                    found.setdefault(slot0, {}).setdefault(condition, []).append(float(checked[slot0]))
        progress(f"source check: {index + 1}/{len(cases)} held-out subjects")
    return found


def fit(medians: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """The manifest's `source_check` block from check_medians' output (empty when nothing was measured)."""
    thresholds, series, recall, too_few = {}, {}, {}, {}
    for contrast, conditions in sorted(medians.items()):
        named = [p for c in CORRECTLY_NAMED for p in conditions.get(c, [])]
        if len(named) < MIN_SERIES:
            if named:
                too_few[contrast] = len(named)
            continue
        thresholds[contrast] = round(fit_threshold(named), 4)
        series[contrast] = len(named)
        wrong = conditions.get(WRONG, [])
        if wrong:
            recall[contrast] = {"caught": int(sum(p < thresholds[contrast] for p in wrong)),
                                "of": len(wrong),
                                "caught_at_0.5": int(sum(p < THRESHOLD for p in wrong))}
    if not thresholds and not too_few:
        return {}
    return {"rule": RULE, "thresholds": thresholds, "series": series,
            **({"too_few_series": {"min": MIN_SERIES, **too_few}} if too_few else {}),
            "false_alarm_bound": {m: round(1.0 / (n + 1), 4) for m, n in series.items()},
            "held_out_recall": recall,
            "medians": {m: {c: [round(p, 4) for p in v] for c, v in conditions.items()}
                        for m, conditions in sorted(medians.items())}}


def fit_on(synth: Synthesizer, cases: Sequence[Case], origin: str, sources: Sequence[str], targets: Sequence[str],
           progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The manifest's `source_check` block fitted through `synth` on `cases` (`origin`: where they came from);
    empty when nothing could be measured."""
    block = fit(check_medians(synth, cases, sources, targets, progress)) if cases else {}
    return {**block, "subjects": sorted(c.name for c in cases), "subjects_from": origin} if block else {}


def calibrate_check(bundle: Bundle, cases: Sequence[Case], origin: str, roles: dict[str, list[str]],
                    progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Fit the bundle's per-contrast check thresholds on `cases` (empty without a check or cases)."""
    if not bundle.has_source_check or not cases:
        return {}
    precisions = bundle.precisions("onnx")
    precision = "fp32" if "fp32" in precisions else precisions[0]
    progress(f"fitting the source check's thresholds ({precision}) on {len(cases)} held-out subject(s)")
    with Synthesizer(bundle, backend="cpu", precision=precision) as synth:
        return fit_on(synth, cases, origin, roles.get("sources") or bundle.modalities,
                      roles.get("targets") or bundle.modalities, progress)
