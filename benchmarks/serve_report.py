"""Write `medk2n-bench serve` results: serve.json, serve.md (table + machine) and serve.png."""

from __future__ import annotations

import json
from pathlib import Path

from medk2n.benchmarks.machine import format_machine
from medk2n.benchmarks.plots import save_figure
from medk2n.fsutil import write_atomic


def setup(s: dict) -> str:
    """One paragraph: what was served, what was asked, by whom, on how busy a machine."""
    volumes = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in s.get("cases", []))
    batch = f"batch {s['batch_size']} per request" if s["batch_size"] else "the bundle's opt batch per request"
    threads = f" ({s['server_threads']} ONNX Runtime threads)" if s.get("server_threads") else ""
    load = s.get("load_avg_1m_at_start")
    load = f" The 1-minute load average was {load} at the start." if load is not None else ""
    return (f"Bundle: {s['bundle']}. Request {','.join(s['sources'])} -> {','.join(s['targets'])} on "
            f"{len(s.get('cases', []))} volumes ({volumes}) cycled over the clients, {s['volumes_per_client']} per "
            f"client; {s['in_flight']} requests in flight per client, {batch}. Server: {s['server']}{threads}. "
            f"Clients are threads of one process; volumes are read before timing.{load}")


def markdown(results: dict) -> str:
    s, local = results["settings"], results["local_cpu"]
    lines = [
        "# Serving on Triton: concurrent clients against one server",
        "",
        setup(s),
        "",
        "| clients | volumes | slices | slices/s | slice p50 ms | slice p95 ms | volume p50 ms | volume p95 ms "
        "| mean server batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['clients']} | {r['volumes']} | {r['slices']} | {r['slices_per_s']:.1f} | "
                     f"{r['slice_p50_ms']:.0f} | {r['slice_p95_ms']:.0f} | {r['volume_p50_ms']:.0f} | "
                     f"{r['volume_p95_ms']:.0f} | {r['mean_server_batch']:.2f} |")
    lines += [
        "",
        f"Reference without a server: one client on the local ONNX Runtime CPU backend, {local['slices_per_s']:.1f} "
        f"slices/s, volume p50 {local['volume_p50_ms']:.0f} ms.",
        "",
        "Slice latency: send to answer of the request carrying the slice. Volume latency: one client's whole call "
        "(checks, preprocessing, inference, restoring to the input grid). Mean server batch: Triton's "
        "nv_inference_count / nv_inference_exec_count over the step.",
        "",
        format_machine(results["machine"]),
    ]
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    """Throughput and mean server batch (left), p50/p95 slice latency (right), against clients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    clients = [r["clients"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6), dpi=120)
    left.plot(clients, [r["slices_per_s"] for r in rows], "o-", label="slices/s (Triton)")
    left.axhline(results["local_cpu"]["slices_per_s"], color="grey", ls="--", label="slices/s, local cpu, 1 client")
    left.set_xlabel("concurrent clients")
    left.set_ylabel("slices / s")
    twin = left.twinx()
    twin.plot(clients, [r["mean_server_batch"] for r in rows], "s:", color="tab:orange", label="mean server batch")
    twin.set_ylabel("mean server batch", color="tab:orange")
    left.set_ylim(bottom=0)  # from zero: differences within the noise must not look like steps
    twin.set_ylim(bottom=0)
    left.legend(loc="upper left", fontsize=7)
    right.plot(clients, [r["slice_p50_ms"] for r in rows], "o-", label="slice p50")
    right.plot(clients, [r["slice_p95_ms"] for r in rows], "o--", label="slice p95")
    right.plot(clients, [r["volume_p50_ms"] for r in rows], "s-", label="volume p50")
    right.set_xlabel("concurrent clients")
    right.set_ylabel("ms")
    right.set_yscale("log")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
    fig.suptitle(f"medk2n on Triton: {results['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_serve(results: dict, out: Path, stem: str = "serve") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    write_atomic(paths[0], (json.dumps(results, indent=2, sort_keys=True) + "\n").encode())
    write_atomic(paths[1], markdown(results).encode())
    chart(results, paths[2])
    return paths
