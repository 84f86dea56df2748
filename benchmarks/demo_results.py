"""`medk2n-bench demo`: commit the demo's evaluation as a result file the README quotes.

`make demo` writes its evaluation under demo/eval/, which is not committed.
This copies the parts a reader needs into benchmarks/results/: the Markdown
table (demo.md), the JSON with every subject's figures plus the machine stamp
(demo.json) and the risk-coverage plot of the uncertainty
(demo_risk_coverage.png), so `medk2n-bench readme` can quote the demo like any
benchmark and no README number is typed by hand. The large per-case montage
stays in demo/.
"""

from __future__ import annotations

import json
from pathlib import Path

from medk2n.benchmarks.machine import machine_stamp
from medk2n.errors import MedK2NError
from medk2n.fsutil import write_atomic


def commit_demo(metrics: Path, out: Path, stem: str = "demo") -> list[Path]:
    """metrics.json (+ .md, _risk_coverage.png beside it) -> out/<stem>.json, .md, _risk_coverage.png."""
    metrics = Path(metrics)
    markdown = metrics.with_suffix(".md")
    missing = [p for p in (metrics, markdown) if not p.is_file()]
    if missing:
        raise MedK2NError(f"{missing[0]}: not found; run `make demo` (or medk2n-eval) first")
    try:
        doc = json.loads(metrics.read_text())
    except ValueError as exc:
        raise MedK2NError(f"{metrics}: not a medk2n-eval metrics file ({exc})") from None
    if not isinstance(doc, dict) or "summary" not in doc:
        raise MedK2NError(f"{metrics}: not a medk2n-eval metrics file (no summary)")
    doc["machine"] = machine_stamp()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{stem}.json", out / f"{stem}.md"]
    write_atomic(written[0], (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    write_atomic(written[1], markdown.read_bytes())
    plot = metrics.with_name(metrics.stem + "_risk_coverage.png")
    if plot.is_file():
        written.append(out / f"{stem}_risk_coverage.png")
        write_atomic(written[-1], plot.read_bytes())
    return written
