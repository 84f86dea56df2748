"""`medk2n-bench robustness`: how much each method loses when one source is degraded at test time.

The paper's second question: quality-driven fusion is meant to accept an
auxiliary source only as far as it helps, so a degraded source should cost
it less than it costs a network that trusts every input. Every method trains
exactly as in `medk2n-bench quality` (same split, seed and wall-clock budget,
clean data); at test time one source of the task is replaced, in every test
subject, by

- `noise`: heavy Rician noise (sigma = 20 % of the brain's 99th percentile);
- `ghosting`: motion ghosts, random phase errors on every fourth phase-encode
  line of k-space (one axis of each slice);
- `contrast`: another modality's volume under the source's name (the other
  source of the task: a mislabelled series, and no target leaks in).

Each method's drop is its clean masked PSNR minus its degraded one, per
subject (mean over the task's targets), and the drops of two methods are
compared paired over subjects (exact Wilcoxon signed-rank).

A method whose model has a source check also gets a row `<method>+exclude`:
the same model scored, clean and degraded, as `medk2n-run
--exclude-mislabelled` runs it (a source the check doubts is left out of that
subject's synthesis). Its clean score carries the cost of false alarms, its
degraded scores the gain of detections; without the source (`absent`) there
is nothing to exclude, so that column is the method's own.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from medk2n.benchmarks.quality import (Task, evaluate_checkpoint, kept_runs, method_config, parse_step_budget,
                                       parse_task, split_dataset, train_within_budget)
from medk2n.benchmarks.stats import format_mean_sd, format_p, mean_sd, paired, per_subject, wilcoxon_signed_rank
from medk2n.benchmarks.latency_report import result_stem
from medk2n.benchmarks.machine import machine_stamp
from medk2n.benchmarks.source_check import CLEAN, fitted_thresholds, source_check_scores
from medk2n.data.artifacts import VOLUME_GHOST_EVERY, VOLUME_NOISE_FRACTION, degrade_volume
from medk2n.data.cases import discover_dataset
from medk2n.data.nifti import read_volume, write_volume
from medk2n.errors import ConfigError
from medk2n.fsutil import write_atomic

CORRUPTIONS = ("noise", "ghosting", "contrast")
ABSENT = "absent"  # the source left out: the floor of a method that detects and drops it
EXCLUDING = "+exclude"  # suffix of the row scoring a checked model as `medk2n-run --exclude-mislabelled` runs it
KINDS = (*CORRUPTIONS, ABSENT)
DEFAULT_METHODS = ("B0", "B5", "unet")
DEFAULT_TASK = "flair,adc->dwi,t2,t1,pd"


def corrupted_test_set(test_dir: Path, root: Path, task: Task, source: str, kind: str, seed: int) -> Path:
    """root/<kind>/<case>/: the test cases with `source` degraded, every other file a symlink."""
    out = root / kind
    others = [s for s in task.sources if s != source]
    for i, case in enumerate(discover_dataset(test_dir)):
        folder = out / case.name
        folder.mkdir(parents=True, exist_ok=True)
        for name, path in [*case.files.items(), *((f"{r}_mask", p) for r, p in case.masks.items())]:
            if name != source:
                suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
                os.symlink(Path(path).resolve(), folder / f"{name}{suffix}")
        volume, info = read_volume(case.files[source])
        other = read_volume(case.files[others[0]])[0] if kind == "contrast" and others else None
        degraded = degrade_volume(volume, kind, np.random.default_rng([seed, i]), other)
        write_volume(degraded, folder / f"{source}.nii.gz", info)
    return out


def drops(clean: Sequence[dict], degraded: Sequence[dict], targets: Sequence[str]) -> dict[str, float]:
    """{subject: clean minus degraded masked PSNR}, each the mean over `targets`."""
    a, b = per_subject(clean, "masked_psnr", targets), per_subject(degraded, "masked_psnr", targets)
    return {case: a[case] - b[case] for case in sorted(set(a) & set(b))}


def run_robustness(data: Path, out: Path, task_text: str = DEFAULT_TASK,
                   source: str | Sequence[str] | None = None,
                   methods: Sequence[str] = DEFAULT_METHODS, budget_minutes: float = 5.0, preset: str = "tiny",
                   seed: int = 0, test_fraction: float = 0.3, device: str = "cpu",
                   progress: Callable[[str], None] = lambda _: None, tag: str | None = None,
                   steps: str | None = None, overrides: dict | None = None, trained: Path | None = None) -> dict:
    """Train each method, score it clean and with each of `source` degraded; write robustness[-tag].{json,md}.

    `source` may name several of the task's sources: the methods train once and each source gets
    its own result files, robustness[-tag]-<source>.* (one source keeps robustness[-tag].*). Returns
    {source: results}.
    `steps` ("N" or "METHOD=N,...") trains fixed step counts instead of `budget_minutes` of wall clock;
    `overrides` apply to every method's config (e.g. a smaller image for tests).
    `trained`: the --work folder of a `medk2n-bench quality` run; its checkpoints are scored on its own test
    subjects instead of training anew (so the models of a quality table are the ones scored here), and the
    run's seed and steps replace `seed`, `steps` and `budget_minutes` (`data` and `preset` are not used)."""
    stem = result_stem(tag, "robustness")  # a bad tag fails before minutes of training
    task = parse_task(task_text)
    sources = _corrupted_sources(source, task)
    if trained is not None:
        if steps or overrides:
            raise ConfigError("--trained scores a kept run's checkpoints: --steps and overrides do not apply")
        split, kept, seed = kept_runs(trained, methods)
        preset = f"kept run {Path(trained).name}"
        step_budget = {method: run["steps"] for method, run in kept.items()}
    else:
        step_budget = parse_step_budget(steps, methods)
    with tempfile.TemporaryDirectory(prefix="medk2n-robustness-") as tmp:
        work = Path(tmp)
        if trained is None:
            split = split_dataset(Path(data), work / "split", [task], test_fraction, seed)
        progress(f"split: {len(split['train'])} training subjects, {len(split['test'])} test subjects")
        test_sets = {(name, kind): corrupted_test_set(split["test_dir"], work / "corrupt" / name, task, name, kind,
                                                      seed)
                     for name in sources for kind in CORRUPTIONS}
        rows: dict[str, dict[str, dict[str, list[dict]]]] = {name: {} for name in sources}
        checks: dict[str, dict[str, dict]] = {name: {} for name in sources}
        runs, fits = {}, {}  # fits: method -> the check thresholds an export would fit (its validation subjects)
        for method in methods:
            if trained is not None:
                runs[method] = kept[method]
            else:
                cfg = method_config(preset, method, seed, overrides)
                runs[method] = train_within_budget(cfg, split["train_dir"], work / "runs" / method,
                                                   60.0 * budget_minutes, device, steps=(step_budget or {}).get(method),
                                                   progress=lambda text: progress(f"{method}: {text}"))
            progress(f"{method}: {runs[method]['steps']} steps; evaluating clean, degraded and without "
                     + ", ".join(sources))
            clean, _ = evaluate_checkpoint(runs[method]["checkpoint"], [task], split, device, references=False)
            fitted = fitted_thresholds(runs[method]["checkpoint"], split["train_dir"], task.sources, task.targets,
                                       device)
            thresholds = fitted.get("thresholds")
            scores = source_check_scores(runs[method]["checkpoint"], split["test_dir"],
                                         {name: {k: test_sets[name, k] for k in CORRUPTIONS} for name in sources},
                                         task.sources, thresholds)
            if scores is not None:
                runs[method + EXCLUDING] = runs[method]
                fits[method] = fitted
                clean_excluding, _ = evaluate_checkpoint(runs[method]["checkpoint"], [task], split, device,
                                                         references=False, exclude_mislabelled=True,
                                                         check_thresholds=thresholds)
            for name in sources:
                rows[name][method] = {"clean": clean}  # one clean score serves every corrupted source
                conditions = [*((kind, task, test_sets[name, kind]) for kind in CORRUPTIONS),
                              (ABSENT, without_source(task, name), split["test_dir"])]
                for kind, asked, test_dir in conditions:
                    rows[name][method][kind], _ = evaluate_checkpoint(
                        runs[method]["checkpoint"], [asked], {**split, "test_dir": test_dir}, device, references=False)
                if scores is None:
                    continue
                checks[name][method] = scores[name]
                excluding = rows[name][method + EXCLUDING] = {"clean": clean_excluding,
                                                              ABSENT: rows[name][method][ABSENT]}
                for kind in CORRUPTIONS:
                    excluding[kind], _ = evaluate_checkpoint(
                        runs[method]["checkpoint"], [task], {**split, "test_dir": test_sets[name, kind]}, device,
                        references=False, exclude_mislabelled=True, check_thresholds=thresholds)
    every = {}
    for name in sources:
        results = summarise(rows[name], task, name, runs)
        results["source_check"] = checks[name]
        results["check_thresholds"] = fits
        results.update(settings={"task": task.key, "corrupted_source": name, "methods": list(methods),
                                 "budget_minutes": None if step_budget else budget_minutes, "steps": step_budget,
                                 "preset": preset, "seed": seed, "trained": None if trained is None else str(trained),
                                 "noise_fraction": VOLUME_NOISE_FRACTION, "ghost_every": VOLUME_GHOST_EVERY},
                       split={k: v for k, v in split.items() if k in ("train", "test")}, machine=machine_stamp())
        write_outputs(results, Path(out), stem if len(sources) == 1 else f"{stem}-{name}")
        every[name] = results
    return every


def _corrupted_sources(source: str | Sequence[str] | None, task: Task) -> list[str]:
    names = [task.sources[-1]] if not source else (
        [s.strip() for s in source.split(",") if s.strip()] if isinstance(source, str) else list(source))
    bad = [name for name in names if name not in task.sources]
    if bad or not names or len(task.sources) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"--corrupt {','.join(names)!r}: name each of the task's sources at most once "
                          f"({', '.join(task.sources)}), and the task needs two")
    return names


def without_source(task: Task, name: str) -> Task:
    """The task with one source left out, same targets."""
    return parse_task(",".join(s for s in task.sources if s != name) + "->" + ",".join(task.targets))


def summarise(rows: dict[str, dict[str, list[dict]]], task: Task, source: str, runs: dict) -> dict:
    """Per method and corruption: clean and degraded scores, per-subject drops, and paired tests of the drops."""
    targets = list(task.targets)
    methods = list(rows)
    table: dict = {}
    for method in methods:
        clean = per_subject(rows[method]["clean"], "masked_psnr", targets)
        table[method] = {"clean": mean_sd(clean.values()), "steps": runs.get(method, {}).get("steps")}
        for kind in _kinds(rows[method]):
            d = drops(rows[method]["clean"], rows[method][kind], targets)
            table[method][kind] = {"drop": mean_sd(d.values()), "per_subject_drop": d}
    comparisons = {}
    for a in methods:
        for b in methods:
            if a < b:
                for kind in _kinds(rows[a]):
                    x, y = paired(table[a][kind]["per_subject_drop"], table[b][kind]["per_subject_drop"])
                    comparisons[f"{a} vs {b} ({kind})"] = {**wilcoxon_signed_rank(x, y),
                                                           "wins_of_first": int(sum(u < v for u, v in zip(x, y))),
                                                           "subjects": len(x)}
    return {"methods": table, "comparisons": comparisons}


def _kinds(columns: dict) -> list[str]:
    """The degradations a result has, in table order (results from before `absent` lack it)."""
    return [kind for kind in KINDS if kind in columns]


def markdown(results: dict) -> str:
    s = results["settings"]
    kinds = _kinds(next(iter(results["methods"].values()), {}))
    lines = [f"### Robustness: {s['task']} with `{s['corrupted_source']}` degraded at test time", "",
             (f"The checkpoints a `medk2n-bench quality` run kept in `{Path(s['trained']).name}/`"
              if s.get("trained") else f"Preset `{s['preset']}`") + f", {_budget_text(s)}, seed {s['seed']}; "
             f"{len(results['split']['test'])} test subjects. Masked PSNR (dB, mean over the task's targets): "
             "clean, and the drop (clean minus degraded; smaller is more robust), mean ± sd over subjects."
             + (f" `absent`: the task without `{s['corrupted_source']}` (clean data), the drop of a method that "
                "detected the degraded source and ignored it." if ABSENT in kinds else "")
             + (f" `<method>{EXCLUDING}`: the same model run as `medk2n-run --exclude-mislabelled` runs it (a source "
                "its check doubts is left out, by the thresholds in the check table where given), clean and "
                "degraded." if any(m.endswith(EXCLUDING)
                                                                             for m in results["methods"]) else ""),
             "",
             "| method | steps | clean | drop: " + " | drop: ".join(kinds) + " |",
             "|---|---|---|" + "---|" * len(kinds)]
    for method, row in results["methods"].items():
        cells = [format_mean_sd(row[kind]["drop"]) for kind in kinds]
        lines.append(f"| {method} | {row['steps']} | {format_mean_sd(row['clean'])} | " + " | ".join(cells) + " |")
    lines += ["", "Paired drops (exact Wilcoxon signed-rank; `wins` = subjects where the first method dropped less):",
              "", "| comparison | wins | median drop difference | p |", "|---|---|---|---|"]
    for name, test in results["comparisons"].items():
        median = test.get("median_diff")
        lines.append(f"| {name} | {test['wins_of_first']}/{test['subjects']} | "
                     f"{'–' if median is None else f'{median:+.2f}'} | {format_p(test)} |")
    checks = results.get("source_check") or {}
    fitted = any("flagged_at_0.5" in c for c in checks.values())
    if checks:
        lines += ["", f"Source check (models with one): mean p(`{s['corrupted_source']}` holds the contrast it is "
                  "named as) over the test subjects' brain slices, the AUC of telling each corruption from "
                  "clean (0.5 chance, 1 perfect; the check is trained on wrong contrasts only), and the subjects "
                  "`medk2n-run` would warn about (median p over their slices < 0.5"
                  + ("; or, where a threshold is given, below the one an export fits on the model's validation "
                     "subjects, with the count at 0.5 in parentheses" if fitted else "") + "):", "",
                  "| method | slices | clean | " + " | ".join(CORRUPTIONS) + " | " +
                  " | ".join(f"AUC {k}" for k in CORRUPTIONS) + (" | threshold" if fitted else "")
                  + " | flagged: clean | " + " | ".join(CORRUPTIONS) + " |",
                  "|---|---|---|" + "---|" * (3 * len(CORRUPTIONS) + 1 + bool(fitted))]
        for method, c in checks.items():
            p, flagged = c["p_named_right"], c.get("flagged")  # results before 2026-12-02 night have no flags
            at_half = c.get("flagged_at_0.5")  # results before 2026-12-03 have no fitted threshold
            flags = [CLEAN, *CORRUPTIONS]
            lines.append(f"| {method} | {c['slices']} | {p[CLEAN]:.3f} | "
                         + " | ".join(f"{p[k]:.3f}" for k in CORRUPTIONS) + " | "
                         + " | ".join(f"{c['auc'][k]:.3f}" for k in CORRUPTIONS) + " | "
                         + (f"{c['threshold']:.3f} | " if at_half else "– | " if fitted else "")
                         + " | ".join((f"{flagged[k]:.0%}" + (f" ({at_half[k]:.0%})" if at_half else ""))
                                      if flagged else "–" for k in flags) + " |")
    return "\n".join(lines) + "\n"


def _budget_text(settings: dict) -> str:
    if settings.get("steps"):
        return "a fixed step budget per method (" + ", ".join(f"{m} {n}" for m, n in settings["steps"].items()) + ")"
    return f"{settings['budget_minutes']:g} min of training per method"


def write_outputs(results: dict, out: Path, stem: str = "robustness") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    write_atomic(paths[0], (json.dumps(results, indent=2, sort_keys=True, default=str) + "\n").encode())
    write_atomic(paths[1], markdown(results).encode())
    return paths
