"""Split-conformal calibration of the uncertainty output, fitted at export on held-out subjects.

The scale the network predicts was learnt on training residuals, which are
smaller than the errors it makes on a new subject; its level must be fitted on
subjects it never saw (runtime.uncertainty explains the interval). This step
runs the staged bundle through the runtime's own pipeline (the `Synthesizer`:
same preprocessing, backend, restoration and histogram standardisation a user
gets), on whole volumes, for each ONNX precision in the bundle, and stores the
quantiles of |error| / scale over the brain voxels of every target: over
random K->N requests (the marginal table) and, for each request named with
`--calib-task SOURCES:TARGETS`, over that request alone (its task table,
which the runtime prefers when a user asks exactly that). The errors
are taken in the space `medk2n-eval` scores them in (`interval_space`), so the
coverage it reports is the coverage this step fitted.

Held-out subjects are `--heldout`, or the cases of `--calib` that the
checkpoint records as not trained on (its validation subjects when `--calib`
is the training folder). Without either, no calibration is stored and the
runtime writes no uncertainty map rather than an uncalibrated one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from medk2n.data.cases import Case, case_fingerprint, discover_dataset, load_case
from medk2n.errors import ExportError
from medk2n.eval.evaluate import subject_mask
from medk2n.eval.protocol import interval_space
from medk2n.runtime.bundle import Bundle
from medk2n.runtime.synthesizer import Synthesizer
from medk2n.runtime.uncertainty import LEVELS, MEANING, METHOD, fit_quantiles, task_key

TASKS_PER_CASE = 3  # random K->N requests per held-out subject: the calibration is marginal over tasks
SCALE_FLOOR = 1e-6  # a zero scale inside the brain (outside the synthesis support) scores as a huge error
SEED = 0


@dataclass(frozen=True)
class Task:
    case: Case
    sources: list[str]
    targets: list[str]
    named: bool = False  # a --calib-task request (task table), not a random draw (marginal table)


def parse_task(text: str, modalities: list[str], k: int, n: int, roles: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """`"flair,adc:dwi,t2"` -> (sources, targets), checked against the vocabulary, K, N and trained roles."""
    sources_text, sep, targets_text = str(text).partition(":")
    sources = [m.strip().lower() for m in sources_text.split(",") if m.strip()]
    targets = [m.strip().lower() for m in targets_text.split(",") if m.strip()]
    where = f"--calib-task {text!r}"
    if not sep or not sources or not targets:
        raise ExportError(f"{where}: expected SOURCES:TARGETS, e.g. flair,adc:dwi,t2")
    unknown = [m for m in sources + targets if m not in modalities]
    if unknown:
        raise ExportError(f"{where}: unknown modality {unknown[0]!r} (vocabulary: {', '.join(modalities)})")
    if len(sources) > k or len(targets) > n:
        raise ExportError(f"{where}: {len(sources)} sources and {len(targets)} targets, the graph takes K={k}, N={n}")
    if set(sources) & set(targets) or len(set(sources)) < len(sources) or len(set(targets)) < len(targets):
        raise ExportError(f"{where}: every modality may appear once")
    for role, names in (("sources", sources), ("targets", targets)):
        outside = [m for m in names if roles.get(role) and m not in roles[role]]
        if outside:
            raise ExportError(f"{where}: {outside[0]!r} is not one of the trained {role} ({', '.join(roles[role])})")
    return sources, targets


def heldout_cases(heldout: Path | None, calib: Path | None, training: dict[str, Any]) -> tuple[list[Case], str]:
    """(cases never trained on, where they came from); no cases when none can be told apart.

    Training subjects are recognised by content (`case_fingerprint`), not by name: names repeat
    across datasets (every phantom seed has a sub-000).
    """
    trained = set(training.get("subjects", {}).get("train_fingerprints", []))
    if heldout is not None:
        cases = discover_dataset(Path(heldout))
        leaked = sorted(c.name for c in cases if case_fingerprint(c) in trained)
        if leaked:
            raise ExportError(f"{heldout}: case {leaked[0]!r} was used to train this checkpoint; "
                              "--heldout must hold subjects the model never saw")
        return cases, f"--heldout {Path(heldout).name}"
    if calib is None:
        return [], "no --heldout or --calib data"
    if not trained:
        return [], "the checkpoint does not record its training subjects (trained before this was recorded)"
    cases = [c for c in discover_dataset(Path(calib)) if case_fingerprint(c) not in trained]
    return cases, f"cases of --calib {Path(calib).name} not trained on"


def draw_tasks(cases: Sequence[Case], k: int, n: int, modalities: list[str], roles: dict[str, list[str]],
               seed: int = SEED) -> list[Task]:
    """TASKS_PER_CASE random requests per case (up to K present sources, up to N other present targets),
    then, for any target the draws missed, one request per case that has it with that target first:
    every target a case can offer gets a marginal table."""
    rng = np.random.default_rng(seed)
    allowed_src = roles.get("sources") or modalities
    allowed_tgt = roles.get("targets") or modalities

    def draw(case: Case, first: str | None = None) -> Task | None:
        sources = [str(m) for m in rng.permutation(allowed_src) if m in case.files and m != first][:k]
        rest = [str(m) for m in rng.permutation(allowed_tgt) if m in case.files and m not in sources and m != first]
        targets = ([first] if first else []) + rest[:n - (1 if first else 0)]
        return Task(case, sources, targets) if sources and targets else None

    tasks = [t for case in cases for t in (draw(case) for _ in range(TASKS_PER_CASE)) if t is not None]
    drawn = {m for t in tasks for m in t.targets}
    for target in (str(m) for m in allowed_tgt if m not in drawn):
        tasks += [t for case in cases if target in case.files for t in [draw(case, target)] if t is not None]
    return tasks


def named_tasks(cases: Sequence[Case], requests: Sequence[tuple[list[str], list[str]]]) -> list[Task]:
    """Each named request on every held-out case that has its modalities."""
    return [Task(case, list(sources), list(targets), named=True)
            for sources, targets in requests for case in cases
            if all(m in case.files for m in [*sources, *targets])]


def conformity_scores(synth: Synthesizer, tasks: Sequence[Task]) -> dict[str, list[np.ndarray]]:
    """Table key -> [|error| / scale over the brain voxels of each task that asked for it]; the key is
    the target for random tasks (marginal table) and `task_key` for named ones."""
    scores: dict[str, list[np.ndarray]] = {}
    for task in tasks:
        volumes = load_case(task.case, [*task.sources, *task.targets])
        outputs = synth.run({m: volumes[m] for m in task.sources}, task.sources, task.targets,
                            name=task.case.name)
        mask = subject_mask(task.case, volumes[task.sources[0]])
        for target in task.targets:
            image, scale = outputs[target]
            physical = synth.bundle.norms[target].kind == "range"
            error, (spread,) = interval_space(image, volumes[target][0], mask, [scale], physical)
            key = task_key(task.sources, target) if task.named else target
            scores.setdefault(key, []).append(error / np.maximum(spread, SCALE_FLOOR))
    return scores


def calibrate(bundle: Bundle, cases: Sequence[Case], origin: str, roles: dict[str, list[str]],
              requests: Sequence[tuple[list[str], list[str]]] = (),
              progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The manifest's `uncertainty` block for every ONNX precision of `bundle` (empty without cases)."""
    tasks = draw_tasks(cases, bundle.k, bundle.n, bundle.modalities, roles) + named_tasks(cases, requests)
    if not tasks:
        return {}
    tables: dict[str, dict[str, list[float]]] = {}
    task_tables: dict[str, dict[str, list[float]]] = {}
    voxels: dict[str, int] = {}
    for precision in bundle.precisions("onnx"):
        progress(f"calibrating uncertainty ({precision}) on {len(cases)} held-out subject(s)")
        with Synthesizer(bundle, backend="cpu", precision=precision) as synth:
            scores = conformity_scores(synth, tasks)
        fitted = {key: fit_quantiles(np.concatenate(s)) for key, s in sorted(scores.items())}
        tables[precision] = {key: q for key, q in fitted.items() if ">" not in key}
        task_tables[precision] = {key: q for key, q in fitted.items() if ">" in key}
        voxels = {key: int(sum(len(a) for a in s)) for key, s in sorted(scores.items())}
    return {
        "method": METHOD,
        "meaning": MEANING,
        "levels": list(LEVELS),
        "quantiles": tables,
        "task_quantiles": task_tables,
        "subjects": sorted({t.case.name for t in tasks}),
        "subjects_from": origin,
        "tasks": [f"{t.case.name}: {','.join(t.sources)} -> {','.join(t.targets)}" + (" (named)" if t.named else "")
                  for t in tasks],
        "voxels": voxels,
    }
