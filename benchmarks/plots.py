"""PNG charts for the result files (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from medk2n.fsutil import write_atomic


def latency_chart(results: dict, path: Path) -> None:
    """Grouped bars: slices/s per backend (x) and batch size (one bar colour each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["status"] == "ok"]
    labels = list(dict.fromkeys(_label(r) for r in rows))
    batches = sorted({r["batch"] for r in rows})
    rate = {(_label(r), r["batch"]): r["slices_per_s"] for r in rows}
    width = 0.8 / max(1, len(batches))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(labels)), 4.0), dpi=120)
    for i, batch in enumerate(batches):
        x = np.arange(len(labels)) + (i - (len(batches) - 1) / 2) * width
        ax.bar(x, [rate.get((label, batch), 0.0) for label in labels], width, label=f"batch {batch}")
    ax.set_xticks(np.arange(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("slices / s")
    machine = results["machine"]
    ax.set_title(f"medk2n latency{' (' + results['tag'] + ')' if results.get('tag') else ''}: "
                 f"{machine['cpu']}, {machine['threads']} threads", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def save_figure(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_atomic(Path(path), buffer.getvalue())


def _label(row: dict) -> str:
    if row["backend"].startswith("torch-"):
        return row["backend"]
    return f"{row['backend']}\n{row['model']} {row['precision']}"
