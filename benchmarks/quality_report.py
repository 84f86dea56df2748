"""Quality benchmark results: one JSON document, its Markdown tables and two figures.

`assemble` turns per-subject rows into summaries (mean ± sd over subjects),
Wilcoxon p-values against the full model and the export precision drop;
everything else here only renders that document, so the tables can be
re-drawn from a saved quality.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from medk2n.benchmarks.machine import format_machine, machine_stamp
from medk2n.benchmarks.plots import save_figure
from medk2n.benchmarks.stats import format_mean_sd, format_p, mean_sd, paired, per_subject, wilcoxon_signed_rank
from medk2n.eval.protocol import percentile_scale
from medk2n.eval.report import best_copy
from medk2n.fsutil import write_atomic

ALL = "all"  # pseudo-target: each subject's mean over the task's targets
TESTED = ("masked_psnr", "masked_ssim")
DROP_METRICS = ("masked_psnr", "masked_ssim", "masked_mae")
PRECISION_ORDER = ("fp32", "fp16", "int8")
# masked PSNR after an affine intensity map (eval.protocol.affine_fitted_psnr): what a ranking is worth once the
# synthesis' global intensity layout is forgiven; runs from before it show "–".
COLUMNS = (("masked_psnr", "masked PSNR", 2), ("masked_psnr_affine", "mPSNR, affine", 2), ("masked_ssim", "masked SSIM", 3),
           ("masked_mae", "masked MAE", 3), ("psnr", "PSNR", 2), ("ssim", "SSIM", 3))
LABELS = {"B5": "Med-K2N (B5, full)", "unet": "U-Net baseline", "mean-train": "mean training image"}


# --- the results document ------------------------------------------------------------------------------------


def assemble(rows: list[dict], runs: dict, tasks, split: dict, export: dict, reference: str, settings: dict) -> dict:
    summary, pvalues, drop = {}, {}, {}
    for task in tasks:
        task_rows = [r for r in rows if r["task"] == task.key]
        summary[task.key] = _summaries(task_rows, task.targets)
        pvalues[task.key] = _pvalues(task_rows, task.targets, reference)
        drop[task.key] = _drops(task_rows, task.targets, reference)
    return {
        "benchmark": "quality",
        "machine": quality_machine_stamp(settings.get("device", "cpu")),
        "settings": settings,
        "reference": reference,
        "split": {k: v for k, v in split.items() if not k.endswith("_dir")},
        "tasks": [{"key": t.key, "sources": list(t.sources), "targets": list(t.targets)} for t in tasks],
        "methods": {m: {k: (str(v) if isinstance(v, Path) else v) for k, v in run.items() if k != "checkpoint"}
                    for m, run in runs.items()},
        "summary": summary,
        "pvalues": pvalues,
        "precision": {"export": export, "drop": drop},
        "rows": rows,
    }


def _groups(task_rows: list[dict], targets: Sequence[str]):
    """(method, target-or-ALL, target list) for every method in the rows."""
    for method in dict.fromkeys(r["method"] for r in task_rows):
        mine = [r for r in task_rows if r["method"] == method]
        for target, over in ((ALL, list(targets)), *((t, [t]) for t in targets)):
            yield method, target, over, mine


def _metrics(rows: list[dict], over: Sequence[str]) -> list[str]:
    """Float metrics every row of `over` has (ADC's physical MAE is not averaged with unitless ones)."""
    keys = [{k for k, v in r.items() if isinstance(v, float)} for r in rows if r["target"] in over]
    return sorted(set.intersection(*keys)) if keys else []


def _summaries(task_rows, targets) -> dict:
    out: dict = {}
    for method, target, over, mine in _groups(task_rows, targets):
        stats = {m: mean_sd(per_subject(mine, m, over).values()) for m in _metrics(mine, over)}
        if stats:
            out.setdefault(method, {})[target] = stats
    return out


def _pvalues(task_rows, targets, reference) -> dict:
    """Exact Wilcoxon of `reference` vs every other non-export method, paired by subject."""
    ref_rows = [r for r in task_rows if r["method"] == reference]
    out: dict = {}
    if not ref_rows:
        return out
    for method, target, over, mine in _groups(task_rows, targets):
        if method == reference or "precision" in mine[0]:
            continue
        for metric in TESTED:
            a, b = paired(per_subject(ref_rows, metric, over), per_subject(mine, metric, over))
            out.setdefault(method, {}).setdefault(target, {})[metric] = wilcoxon_signed_rank(a, b)
    return out


def _drops(task_rows, targets, reference) -> dict:
    """Paired per-subject change of each exported precision vs ONNX FP32 (and of FP32 vs PyTorch)."""
    by_precision = {r["precision"]: r["method"] for r in task_rows if "precision" in r}
    out: dict = {}
    for precision, method in by_precision.items():
        base = reference if precision == "fp32" else by_precision.get("fp32")
        if base is None:
            continue
        mine = [r for r in task_rows if r["method"] == method]
        base_rows = [r for r in task_rows if r["method"] == base]
        for target, over in ((ALL, list(targets)), *((t, [t]) for t in targets)):
            entry = {"vs": base}
            for metric in DROP_METRICS:
                a, b = paired(per_subject(mine, metric, over), per_subject(base_rows, metric, over))
                entry[metric] = mean_sd(np.subtract(a, b))
            out.setdefault(precision, {})[target] = entry
    return out


def quality_machine_stamp(device: str) -> dict:
    """The shared machine stamp, plus the device the models trained and ran on in PyTorch."""
    import torch

    return {**machine_stamp(threads=torch.get_num_threads()), "device": device}


# --- Markdown ------------------------------------------------------------------------------------------------


def _display_methods(summary: dict, target: str, reference: str) -> list[str]:
    """Reference first, trained methods in run order, then the best copy and the mean training image."""
    trained = [m for m in summary if ":" not in m and m != "mean-train" and m != reference]
    copy = best_copy(summary, target) if target != ALL else _best_copy_overall(summary)
    refs = [m for m in (copy, "mean-train") if m and target in summary.get(m, {})]
    return [m for m in (reference, *trained, *refs) if m in summary and target in summary[m]]


def _best_copy_overall(summary: dict) -> str | None:
    copies = [m for m in summary if m.startswith("copy:") and ALL in summary[m]]
    return max(copies, key=lambda m: summary[m][ALL]["masked_psnr"]["mean"] or -np.inf, default=None)


def _label(method: str) -> str:
    return f"{method} (copy of source)" if method.startswith("copy:") else LABELS.get(method, method)


def _task_table(results: dict, task: dict) -> list[str]:
    summary, pvalues, ref = results["summary"][task["key"]], results["pvalues"][task["key"]], results["reference"]
    header = ["target", "method", *(name for _, name, _ in COLUMNS), f"p vs {ref} (mPSNR)", f"p vs {ref} (mSSIM)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    shown = task["targets"] if len(task["targets"]) == 1 else [ALL, *task["targets"]]
    for target in shown:
        for method in _display_methods(summary, target, ref):
            stats = summary[method][target]
            tests = pvalues.get(method, {}).get(target, {})
            cells = [format_mean_sd(stats.get(key), digits) for key, _, digits in COLUMNS]
            p_cells = ["–" if method == ref else format_p(tests.get(m)) for m in TESTED]
            name = "all (mean of targets)" if target == ALL else target
            lines.append("| " + " | ".join([name, _label(method), *cells, *p_cells]) + " |")
    return lines


# What each step of the ablation ladder adds to the one before (config.ABLATIONS).
LADDER_MODULES = {"B1": "MultiScaleNet, prototypes, sequential fusion", "B2": "PreWeightNet", "B3": "ThresholdNet",
                  "B4": "EffiWeightNet", "B5": "CMIM"}


def _ladder_table(results: dict) -> list[str]:
    """Each module's measured effect: masked PSNR of B0..B5 per task, and the change the step's module brought,
    paired per test subject (mean ± sd over subjects, exact Wilcoxon p)."""
    steps = [m for m in ("B0", "B1", "B2", "B3", "B4", "B5") if m in results["methods"]]
    if len(steps) < 2:
        return []
    keys = [t["key"] for t in results["tasks"]]
    targets = {t["key"]: t["targets"] for t in results["tasks"]}
    lines = ["| step (module added) | " + " | ".join(f"{k}: mPSNR; Δ vs previous step (p)" for k in keys) + " |",
             "|" + "---|" * (len(keys) + 1)]
    for i, step in enumerate(steps):
        cells = []
        for key in keys:
            now = results["summary"][key].get(step, {}).get(ALL, {}).get("masked_psnr", {}).get("mean")
            cell = "–" if now is None else f"{now:.2f}"
            if i and now is not None:
                rows = [r for r in results["rows"] if r.get("task") == key]
                a, b = paired(*(per_subject([r for r in rows if r["method"] == m], "masked_psnr", targets[key])
                                for m in (step, steps[i - 1])))
                if len(a):
                    delta = mean_sd(np.subtract(a, b))
                    sign = "+" if (delta.get("mean") or 0) >= 0 else ""
                    cell += f"; {sign}{format_mean_sd(delta)} ({format_p(wilcoxon_signed_rank(a, b))})"
            cells.append(cell)
        lines.append(f"| {step}{' (' + LADDER_MODULES[step] + ')' if step in LADDER_MODULES else ''} | "
                     + " | ".join(cells) + " |")
    return lines


def _precision_table(results: dict) -> list[str]:
    export = results["precision"]["export"]
    if not export:
        return []
    ref = results["reference"]
    lines = [f"Exported {ref} bundle: K={export.get('k')}, N={export.get('n')}, ONNX Runtime CPU, "
             "same protocol; Δ is the paired per-subject change vs ONNX FP32 (FP32: vs PyTorch).", "",
             "| task | precision | masked PSNR | masked SSIM | masked MAE "
             "| Δ masked PSNR | Δ masked SSIM | Δ masked MAE |",
             "|---|---|---|---|---|---|---|---|"]
    for task in results["tasks"]:
        summary, drops = results["summary"][task["key"]], results["precision"]["drop"][task["key"]]
        for precision in PRECISION_ORDER:
            method = f"{ref}:onnx-{precision}"
            if method not in summary:
                continue
            stats, drop = summary[method][ALL], drops.get(precision, {}).get(ALL, {})
            cells = [format_mean_sd(stats.get(m), d) for m, d in zip(DROP_METRICS, (2, 3, 3))]
            cells += [format_mean_sd(drop.get(m), d + 1) for m, d in zip(DROP_METRICS, (2, 3, 3))]
            lines.append(f"| {task['key']} | {precision} | " + " | ".join(cells) + " |")
    for precision, message in export.get("errors", {}).items():
        lines.append(f"\n{precision} export failed: {message}")
    checks = _export_checks(export)
    if checks:
        lines.append("\nExport checks on held-out training slices (from the bundle manifests): "
                     + "; ".join(checks) + ".")
    return lines


def _export_checks(export: dict) -> list[str]:
    """Each precision's parity gate and the INT8 accuracy gate, as the exporter recorded them."""
    parity, int8 = {}, None
    for bundle in export.get("bundles", {}).values():
        parity.update({p: v for p, v in bundle.get("parity", {}).items() if isinstance(v, dict) and "passed" in v})
        int8 = bundle.get("accuracy", {}).get("int8", int8)
    verdict = {True: "passed", False: "failed, exported with --force"}
    checks = [f"{p} parity vs {parity[p].get('reference', 'reference')} {verdict[bool(parity[p]['passed'])]}"
              for p in PRECISION_ORDER if p in parity]
    if int8:
        checks.append(f"INT8 masked-PSNR drop {int8['drop_db']:.2f} dB {verdict[bool(int8['passed'])]}")
    return checks


def _runs_table(results: dict) -> list[str]:
    lines = ["| method | steps | s/step (mean) | steps per stage (1→1 / k→1 / 1→n / k→n) | last lr | train s "
             "| eval s | best val mPSNR |",
             "|---|---|---|---|---|---|---|---|"]
    for name, run in results["methods"].items():
        best, lr, stages = run.get("best_val_masked_psnr"), run.get("last_lr"), run.get("stage_steps")
        cells = [run["steps"], run.get("step_seconds", "–"),  # "–": a kept run's times are in its own report
                 " / ".join(str(stages.get(stage, 0)) for stage in ("1to1", "kto1", "1ton", "kton")) if stages else "–",
                 "–" if lr is None else f"{lr:.1e}", run.get("train_seconds", "–"),
                 run.get("eval_seconds", "–"), "–" if best is None else f"{best:.2f}"]
        lines.append(f"| {_label(name)} | " + " | ".join(str(c) for c in cells) + " |")
    return lines


def budget_sentence(settings: dict, steps: str) -> str:
    if settings.get("steps"):
        return (f"Budget: a fixed number of steps per method ({steps}; same split and seed, preset "
                f"{settings['preset']}), on the step schedule: a result the machine's load cannot change.")
    return (f"Budget: {settings['budget_minutes']:g} min of training wall-clock per method (same split, seed and "
            f"budget; preset {settings['preset']}), the curriculum and the cosine decay spread over that budget. "
            f"Steps reached: {steps}.")


def markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    runs = results["methods"]
    steps = ", ".join(f"{name} {run['steps']}" for name, run in runs.items())
    lines = [
        f"# Quality benchmark ({s['preset']}, seed {s['seed']})", "",
        f"{format_machine(m)}; PyTorch device {m['device']}.", "",
        budget_sentence(s, steps), "",
        f"Subjects: {len(results['split']['train'])} training (part of them validate), "
        f"{len(results['split']['test'])} test. Metrics: `medk2n-eval` protocol, mean ± sd over test subjects; "
        f"p: two-sided exact Wilcoxon signed-rank vs {results['reference']}, paired per subject, uncorrected. "
        "mPSNR, affine: masked PSNR after the least-squares affine map of the scaled synthesis onto the scaled "
        "truth, a diagnostic that forgives the global intensity layout. "
        "Ablation gains and losses are as measured.", "",
    ]
    lines += ["## Training runs", "", *_runs_table(results), ""]
    for task in results["tasks"]:
        lines += [f"## {task['key']} ({len(task['sources'])}→{len(task['targets'])})", "",
                  *_task_table(results, task), ""]
    ladder = _ladder_table(results)
    if ladder:
        lines += ["## Ablation ladder (masked PSNR, all targets)", "", *ladder, ""]
    precision = _precision_table(results)
    if precision:
        lines += ["## Export precision drop", "", *precision, ""]
    return "\n".join(lines)


# --- figures -------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def psnr_figure(results: dict, path: Path) -> Path:
    """Masked PSNR (all targets) per task, one bar per method, sd as error bars."""
    plt = _pyplot()
    keys = [t["key"] for t in results["tasks"]]
    methods = list(dict.fromkeys(m for k in keys for m in _display_methods(results["summary"][k], ALL,
                                                                            results["reference"])))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(keys) * max(1, len(methods)) / 3), 4.0))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        stats = [results["summary"][k].get(method, {}).get(ALL, {}).get("masked_psnr", {}) for k in keys]
        means = [s.get("mean") or np.nan for s in stats]
        sds = [s.get("sd") or 0.0 for s in stats]
        ax.bar(np.arange(len(keys)) + (i - (len(methods) - 1) / 2) * width, means, width, yerr=sds, capsize=2,
               label=_label(method), hatch="//" if ":" in method or method == "mean-train" else None)
    ax.set_xticks(np.arange(len(keys)), keys, fontsize=8)
    ax.set_ylabel("brain-masked PSNR (dB), mean ± sd over subjects")
    s = results["settings"]
    ax.set_title("Quality at a fixed step budget per method" if s.get("steps")
                 else f"Quality at {s['budget_minutes']:g} min training per method")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def examples_figure(examples: dict, results: dict, path: Path, shown: Sequence[str] = ("B5", "unet")) -> Path | None:
    """One row per (task, target): the sources, the truth and each shown method's synthesis, same slice."""
    shown = [m for m in shown if m in examples]
    if not shown:
        return None
    first_method = examples[shown[0]]
    rows = [(t["key"], i) for t in results["tasks"] for i in range(len(first_method.get(t["key"], [])))]
    if not rows:
        return None
    plt = _pyplot()
    max_sources = max(len(first_method[key][i]["sources"]) for key, i in rows)
    cols = max_sources + 1 + len(shown)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.0 * cols, 2.1 * len(rows)), squeeze=False)
    for r, (key, i) in enumerate(rows):
        first = first_method[key][i]
        mask = first["mask"]
        panels = [(name, img) for name, img in first["sources"].items()]
        panels += [(None, None)] * (max_sources - len(panels)) + [(f"true {first['target']}", first["truth"])]
        panels += [(_label(m), examples[m][key][i]["pred"]) for m in shown]
        for c, (name, img) in enumerate(panels):
            axes[r, c].axis("off")
            if img is not None:
                axes[r, c].imshow(np.rot90(percentile_scale(img, mask)), cmap="gray", vmin=0, vmax=1)
                axes[r, c].set_title(f"{key}\n{name}" if c == 0 else name, fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def write_outputs(results: dict, examples: dict, out: Path, stem: str = "quality") -> list[Path]:
    """<stem>.json, <stem>.md, <stem>.png and <stem>_examples.png, each written atomically."""
    out = Path(out)
    document = json.dumps(jsonable(results), indent=2, sort_keys=True, allow_nan=False)
    write_atomic(out / f"{stem}.json", document.encode())
    write_atomic(out / f"{stem}.md", markdown(results).encode())
    figures = [psnr_figure(results, out / f"{stem}.png"),
               examples_figure(examples, results, out / f"{stem}_examples.png")]
    return [out / f"{stem}.json", out / f"{stem}.md", *(f for f in figures if f is not None)]


def jsonable(value):
    """Strict JSON: paths and numpy scalars as plain values, NaN and inf as null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
