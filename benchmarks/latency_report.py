"""Markdown for `latency.json`: per-backend tables, the end-to-end split, FLOPs and the machine.

Everything shown is computed from the results dict, so `latency.md` and the
README section generated from it can never disagree with the raw JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from medk2n.benchmarks.machine import format_machine
from medk2n.errors import MedK2NError
from medk2n.fsutil import write_atomic

COLUMNS = ("backend", "model", "precision", "batch", "p50 ms", "p95 ms", "p99 ms", "slices/s", "peak MB",
           "speed-up", "GFLOP/s", "% of peak")


def result_stem(tag: str | None, kind: str = "latency") -> str:
    """`<kind>` or `<kind>-<tag>`, so CPU and GPU results sit side by side."""
    if tag is None:
        return kind
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", tag):
        raise MedK2NError(f"--tag {tag!r}: use letters, digits, '.', '_' or '-' (it becomes a file name)")
    return f"{kind}-{tag}"


def write_latency(results: dict, out: Path, tag: str | None = None) -> list[Path]:
    """latency[-tag].json (raw), .md (tables) and .png (chart) in `out`, each written atomically."""
    from medk2n.benchmarks.plots import latency_chart

    stem = result_stem(tag)
    results = {**results, "tag": tag}
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    write_atomic(paths[0], (json.dumps(results, indent=2) + "\n").encode())
    write_atomic(paths[1], latency_markdown(results).encode())
    latency_chart(results, paths[2])
    return paths


def latency_markdown(results: dict) -> str:
    s, model, inputs = results["settings"], results["model"], results["inputs"]
    lines = [
        f"# Latency{_tag(results)}",
        "",
        format_machine(results["machine"]),
        "",
        f"Model: {model['arch']}" + (f" ({model['encoder']})" if model.get("encoder") else "")
        + f", K={model['k']} -> N={model['n']}, {model['image_size']}x{model['image_size']}, "
        f"{model['gflops_per_slice']:.3f} GFLOP per slice. Inputs: {inputs['case']}, "
        f"{', '.join(inputs['sources'])} -> {', '.join(inputs['targets'])}, the same slices for every backend. "
        f"{s['warmup']} warm-up + {s['iters']} timed calls per row, {s['threads']} threads.",
        "",
        "## Per backend and batch",
        "",
        _row(COLUMNS),
        _row(["---"] * len(COLUMNS)),
        *(_backend_row(r) for r in results["rows"]),
        *(_row([r["backend"], r["model"], r["precision"], "-", f"not run: {r['reason']}"] + [""] * 7)
          for r in results["not_run"]),
        "",
        "Latency is per batch; slices/s = batch / mean latency; speed-up = p50 of torch eager on the same "
        "device and batch / p50 of the row.",
        f"Peak memory: {results['memory_method']}. {_baseline_line(results['rows'])}",
        _peak_line(results["peak"], model["gflops_per_slice"], results.get("int8_peak")),
        "",
        "## End to end (one volume)",
        "",
        *_e2e_lines(results["e2e"]),
        "",
        *_request_lines(results),
        *_volume_lines(results),
    ]
    return "\n".join(lines)


def _volume_lines(results: dict) -> list[str]:
    """A whole volume through every bundle, every request, beside the time its FLOPs take at the measured peak."""
    volumes = results.get("volumes")
    if not volumes:
        return []
    sources = results["inputs"]["sources"]
    lines = ["## Whole volume through every bundle", "",
             "Inference seconds for the volume above, beside the compute floor: its FLOPs (slices inferred x "
             "GFLOP per slice of the request) at the measured GEMM peak (the INT8 peak for INT8 bundles on CPU). "
             "The floor counts every FLOP at the peak, which no graph reaches.", "",
             _row(("bundle", "precision", "request", "slices", "GFLOP", "infer s", "total s", "floor s",
                   "infer / floor")), _row(("---",) * 9)]
    for v in volumes:
        total = sum(v["timings_s"].values())
        gflop = f"{v['gflop']:.0f}" if v["gflop"] >= 10 else f"{v['gflop']:.2f}"
        floor = f"{v['limit_s']:.2f}" if v.get("limit_s") else "-"
        ratio = f"{v['infer_over_limit']:.1f}x" if v.get("infer_over_limit") else "-"
        lines.append(_row((v["bundle"], v["precision"], f"{len(sources)}→{len(v['targets'])}", v["slices_inferred"],
                           gflop, f"{v['timings_s'].get('infer', 0.0):.3f}", f"{total:.3f}", floor, ratio)))
    return lines + [""]


def _request_lines(results: dict) -> list[str]:
    """All targets vs one target through the same bundle: what a one-contrast request costs."""
    one = results.get("e2e_one_target")
    if not one:
        return []
    sources, targets = results["inputs"]["sources"], results["inputs"]["targets"]
    full_infer = results["e2e"]["timings_s"].get("infer", 0.0)
    how = ("the graph computes only the targets asked for" if results.get("dynamic_targets")
           else "a fixed-N graph: every request computes N targets")
    lines = ["## One target vs all targets (one volume)", "",
             f"Same bundle, same volume; {how}.", "",
             _row(("request", "targets", "infer s", "total s", "infer vs all targets")), _row(("---",) * 5)]
    for e2e, names in ((results["e2e"], targets), (one, targets[:1])):
        infer, total = e2e["timings_s"].get("infer", 0.0), sum(e2e["timings_s"].values())
        ratio = f"{infer / full_infer:.2f}x" if full_infer > 0 else "-"
        lines.append(_row((f"{len(sources)}→{len(names)}", ", ".join(names), f"{infer:.3f}", f"{total:.3f}", ratio)))
    return lines + [""]


def _tag(results: dict) -> str:
    return f" ({results['tag']})" if results.get("tag") else ""


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _backend_row(r: dict) -> str:
    head = [r["backend"], r["model"], r["precision"], r["batch"]]
    if r["status"] != "ok":
        return _row(head + [f"{r['status']}: {r['reason']}"] + [""] * 7)
    fraction = f"{100 * r['peak_fraction']:.1f}" if r.get("peak_fraction") is not None else "-"
    return _row(head + [f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['slices_per_s']:.1f}",
                        f"{r['peak_rss_mb']:.0f}", f"{r['speedup']:.2f}x vs {r['speedup_vs']}",
                        f"{r['gflops_achieved']:.2f}", fraction])


def _baseline_line(rows: list[dict]) -> str:
    """The same process right after its imports, before the model: what the libraries alone cost."""
    first = {}
    for r in rows:
        if r["status"] == "ok" and r.get("baseline_rss_mb") is not None:
            first.setdefault(r["backend"], r["baseline_rss_mb"])
    if not first:
        return ""
    return "RSS after imports, before loading the model: " + ", ".join(f"{b} {mb:.0f} MB" for b, mb in first.items()) + "."


def _peak_line(peaks: dict, gflops: float, int8_peak: dict | None = None) -> str:
    measured = "; ".join(f"{device.upper()} {p['gflops']:.1f} GFLOP/s ({p['method']}, {p['threads']} threads)"
                         for device, p in peaks.items())
    int8 = (f" Measured CPU INT8 peak: {int8_peak['gops']:.1f} GOP/s ({int8_peak['method']}, {int8_peak['threads']} "
            f"threads; {int8_peak['gops'] / peaks['cpu']['gflops']:.2f}x the FP32 peak)." if int8_peak and "cpu" in peaks
            else "")
    return (f"FLOPs: {gflops:.3f} GFLOP per slice (torch FlopCounterMode, one multiply-add = 2 FLOPs); "
            f"measured FP32 peak: {measured}. % of peak compares every precision with the FP32 peak.{int8}")


def _e2e_lines(e2e: dict) -> list[str]:
    t = e2e["timings_s"]
    infer = t.get("infer", 0.0)
    lines = [f"Backend: {e2e['backend']}, batch {e2e['batch_size']}, {e2e['slices_inferred']}/{e2e['slices']} "
             f"slices inferred, peak RSS {e2e['peak_rss_mb']:.0f} MB.", "",
             _row(("stage", "seconds", "% of infer")), _row(("---",) * 3)]
    for stage in ("read", "preprocess", "infer", "postprocess", "write"):
        pct = f"{100 * t[stage] / infer:.1f}" if infer > 0 and stage in t else "-"
        lines.append(_row((stage, f"{t.get(stage, 0.0):.3f}", pct)))
    pct = e2e["overhead_pct_of_infer"]
    lines.append(_row(("pre+post+IO", f"{e2e['overhead_s']:.3f}", f"{pct:.1f}" if pct is not None else "-")))
    verdict = "met" if e2e["target_met"] else "not met"
    lines += ["", f"Target: pre+post+IO < {e2e['target_pct']:.0f} % of infer on CPU: {verdict}."]
    return lines
