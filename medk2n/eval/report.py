"""Evaluation outputs: metrics.json, per-subject CSV, a Markdown summary, a PNG montage and,
when the model predicts its error, a risk-coverage (sparsification) plot."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np

from medk2n.eval.evaluate import MODEL, EvalResult
from medk2n.eval.protocol import percentile_scale, percentile_slope
from medk2n.eval.uncertainty import ause, save_risk_coverage, sparsification
from medk2n.runtime.source_check import threshold_for
from medk2n.fsutil import write_atomic

COLUMNS = ("masked_psnr", "masked_ssim", "masked_mae", "psnr", "ssim", "lesion_mae", "lesion_bias",
           "masked_mae_physical", "uncertainty_spearman", "ause", "coverage")


def best_copy(summary: dict, target: str) -> str | None:
    """The source whose copy scores the highest masked PSNR for `target` (the stand-in to beat)."""
    copies = [m for m in summary if m.startswith("copy:") and target in summary[m]]
    return max(copies, key=lambda m: summary[m][target]["masked_psnr"]["mean"], default=None)


def markdown(result: EvalResult, title: str) -> str:
    summary = result.summary()
    lesioned = len({r["case"] for r in result.rows if "lesion_mae" in r})
    warning = [f"**{result.training_warning}**", ""] if result.training_warning else []
    lines = [f"### {title}", "", *warning, f"Sources: {', '.join(result.sources)}; subjects: "
             f"{len({r['case'] for r in result.rows})}; mean ± sd over subjects"
             + (f" (lesion_* over the {lesioned} with a lesion mask; bias < 0: lesion too dark)." if lesioned else "."),
             "uncertainty_spearman: Spearman(predicted error, |error|) inside the brain; ause: area between its "
             "sparsification curve and the oracle's (0 = perfect ranking)"
             + (f"; coverage: fraction of brain voxels inside the {result.coverage:.0%} intervals."
                if result.coverage is not None else "; no coverage: this model carries no conformal calibration."),
             ""]
    header = ["target", "method"] + [c for c in COLUMNS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for target in result.targets:
        methods = [MODEL] + [m for m in (best_copy(summary, target), "mean-train") if m and target in summary.get(m, {})]
        for method in methods:
            stats = summary[method][target]
            cells = [f"{stats[c]['mean']:.3f} ± {stats[c]['sd']:.3f}" if c in stats else "–" for c in COLUMNS]
            label = f"{method} (best copy)" if method.startswith("copy:") else method
            lines.append("| " + " | ".join([target, label, *cells]) + " |")
    if result.source_check:
        lines += ["", source_check_line(result.source_check, result.check_thresholds)]
    if result.excluded:
        left_out = [f"{case} ({', '.join(names)})" for case, names in result.excluded.items() if names]
        lines += ["", "With --exclude-mislabelled: sources left out of a subject's synthesis: "
                  f"{', '.join(left_out) or 'none'}."]
    return "\n".join(lines) + "\n"


def source_check_line(checks: dict[str, dict[str, float]], thresholds: dict[str, float] | None = None) -> str:
    """One sentence on the model's source check over the subjects: lowest p per source against its threshold,
    and who failed it."""
    sources = list(dict.fromkeys(s for per_case in checks.values() for s in per_case))
    lowest = ", ".join(f"{s} {min(c[s] for c in checks.values() if s in c):.3f} "
                       f"(threshold {threshold_for(s, thresholds):.3f})" for s in sources)
    failed = [f"{case} ({s} {p:.3f})" for case, per_case in checks.items() for s, p in per_case.items()
              if p < threshold_for(s, thresholds)]
    return (f"Source check (the model's p that each source holds the contrast it is named as; median over a "
            f"subject's slices): lowest per source {lowest}; below threshold: {', '.join(failed) or 'none'}.")


def write_reports(result: EvalResult, out: Path, title: str, montage: bool = True) -> dict[str, Path]:
    """`out` is the JSON path; CSV, Markdown and PNG are written beside it with the same stem."""
    out = Path(out)
    paths = {"json": out, "csv": out.with_suffix(".csv"), "md": out.with_suffix(".md")}
    doc = {"title": title, "sources": result.sources, "targets": result.targets, "model": result.model,
           "summary": result.summary(), "subjects": result.rows,
           **({"source_check": result.source_check} if result.source_check else {}),
           **({"excluded_sources": result.excluded} if result.excluded else {})}
    write_atomic(paths["json"], json.dumps(doc, indent=2, sort_keys=True, allow_nan=False, default=float).encode())
    write_atomic(paths["md"], markdown(result, title).encode())
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(k for row in result.rows for k in row)))
    writer.writeheader()
    writer.writerows(result.rows)
    write_atomic(paths["csv"], table.getvalue().encode())
    curves = risk_coverage_curves(result)
    if curves:
        doc["risk_coverage"] = curves
        write_atomic(paths["json"], json.dumps(doc, indent=2, sort_keys=True, allow_nan=False, default=float).encode())
    if montage and importlib.util.find_spec("matplotlib") is None:
        # The metrics are the product; the pictures need the [data] extra. Say so, do not fail at the end.
        print("note: no montage or risk-coverage PNG: matplotlib is not installed (pip install 'medk2n[data]')",
              file=sys.stderr)
        montage = False
    if montage and result.examples:
        paths["png"] = save_montage(result, out.with_suffix(".png"))
    if montage and curves:
        path = out.with_name(out.stem + "_risk_coverage.png")
        paths["risk_coverage"] = save_risk_coverage(curves, path, title="Error of the voxels kept as the most "
                                                    "uncertain are removed (pooled over subjects)")
    return paths


def risk_coverage_curves(result: EvalResult) -> dict[str, dict]:
    """target -> pooled sparsification curve of the model's predicted error (empty when it has none)."""
    curves = {}
    for target, pairs in result.errors.items():
        curve = sparsification(np.concatenate([e for e, _ in pairs]), np.concatenate([s for _, s in pairs]))
        curve["ause"] = ause(curve)
        curve["units"] = "normalised intensity" if not _physical(result, target) else "physical units"
        curves[target] = curve
    return curves


def _physical(result: EvalResult, target: str) -> bool:
    return any(r.get("target") == target and "masked_mae_physical" in r for r in result.rows)


def save_montage(result: EvalResult, path: Path) -> Path:
    """Rows: examples; columns: sources, synthesis, truth, |error|, predicted error (interval half-width,
    else the Laplace scale), both on the synthesis' percentile scale and the same colour range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.examples
    cols = len(result.sources) + 3 + any(ex["spread"] is not None for ex in result.examples)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.2 * cols, 2.3 * len(rows)), squeeze=False)
    for r, ex in enumerate(rows):
        mask = ex["mask"]
        pred, truth = percentile_scale(ex["pred"], mask), percentile_scale(ex["truth"], mask)
        panels = [(f"{s}", percentile_scale(img, mask)) for s, img in ex["sources"].items()]
        panels += [(f"synth {ex['target']}", pred), (f"true {ex['target']}", truth), ("|error|", np.abs(pred - truth))]
        if ex["spread"] is not None:
            panels.append(("predicted error", ex["spread"] * percentile_slope(ex["pred"], mask)))
        for c, (name, img) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(np.rot90(img), cmap="magma" if name in ("|error|", "predicted error") else "gray",
                      vmin=0, vmax=1 if name not in ("|error|", "predicted error") else 0.5)
            ax.set_title(f"{ex['case']}: {name}" if c == 0 else name, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    plt.close(fig)
    write_atomic(path, png.getvalue())
    return path

