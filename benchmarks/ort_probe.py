"""Probe: torch eager vs ONNX Runtime CPU on exported graphs, interleaved, same threads.

A measurement tool for export/runtime work, not part of `medk2n-bench`:

    python -m medk2n.benchmarks.ort_probe --preset default --batch 8 --threads 1 --reps 3 \
        --onnx fp32=bundle/model.onnx --onnx int8=bundle/model.int8.onnx
    python -m medk2n.benchmarks.ort_probe ... --profile int8   # per-op-type ORT kernel times

Every backend runs the same random batch; rounds are interleaved (one call of
each backend per round) so load from other processes hits all of them alike.
It reports the minimum and median wall time and the minimum process CPU time
per batch: on a shared machine CPU time is the steadier figure, and with one
thread it is the work itself. ORT sessions are built the way the runtime builds
them (`medk2n.runtime.runners.OrtRunner`), INT8 included. Torch runs the
checkpoint's model (or a random-init one of the preset) under
`torch.inference_mode()` with `torch.set_num_threads(threads)`, in the LoRA-merged
form that is exported.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np


def _torch_runner(preset: str, checkpoint: str | None, k: int, n: int, batch: int, threads: int):
    import torch

    from medk2n.export.spec import BatchSpec, GraphSpec
    from medk2n.export.wrapper import example_inputs, prepare_for_export

    torch.set_num_threads(threads)
    if checkpoint:
        from medk2n.train.checkpoint import load_checkpoint

        model, cfg, _ = load_checkpoint(Path(checkpoint))
    else:
        from medk2n.config import preset as get_preset
        from medk2n.models import build_model

        cfg = get_preset(preset)
        torch.manual_seed(0)
        model = build_model(cfg.model)
    spec = GraphSpec(k, n, cfg.model.image_size, BatchSpec(batch, batch, batch))
    graph, _ = prepare_for_export(model, spec)
    args = example_inputs(spec, len(cfg.model.modalities), batch)

    def run() -> None:
        with torch.inference_mode():
            graph(*args)

    feed = {name: a.numpy() for name, a in zip(("x", "src", "tgt", "avail"), args)}
    return run, feed


def _ort_session(path: str, threads: int, int8: bool, profile: str | None = None):
    import onnxruntime as ort

    from medk2n.runtime.runners import INT8_DISABLED_OPTIMIZERS

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    disabled = list(INT8_DISABLED_OPTIMIZERS) if int8 else None
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def _is_int8(path: str) -> bool:
    import onnx

    return any(node.op_type == "QuantizeLinear" for node in onnx.load(path, load_external_data=False).graph.node)


def op_profile(session, feed: dict[str, np.ndarray], top: int = 15) -> list[tuple[str, float, int]]:
    """(op type, ms, node count) of one profiled run (the session's first, so ~5% one-off costs), heaviest first."""
    session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    times: Counter = Counter()
    counts: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"].get("op_name", "?")
            times[op] += event["dur"] / 1e3
            counts[op] += 1
    return [(op, ms, counts[op]) for op, ms in times.most_common(top)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--checkpoint", default=None, help="torch model from a checkpoint (else random init)")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--onnx", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--profile", default=None, metavar="LABEL", help="print ORT per-op times for LABEL")
    args = parser.parse_args(argv)

    torch_run, feed = _torch_runner(args.preset, args.checkpoint, args.k, args.n, args.batch, args.threads)
    runs = {} if args.no_torch else {"torch-eager": torch_run}
    for item in args.onnx:
        label, _, path = item.partition("=")
        session = _ort_session(path, args.threads, _is_int8(path))
        runs[f"ort-{label}"] = lambda s=session: s.run(None, feed)
    for run in runs.values():  # warm-up: allocations, thread pools, ORT's first-run planning
        run()
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, run in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    base = min(cpu["torch-eager"]) if "torch-eager" in cpu else None
    result = {"batch": args.batch, "threads": args.threads, "reps": args.reps, "backends": {}}
    print(f"batch {args.batch}, {args.threads} thread(s), {args.reps} interleaved rounds")
    for name in runs:
        row = {
            "wall_min_ms": round(min(wall[name]) * 1e3, 1),
            "wall_median_ms": round(float(np.median(wall[name])) * 1e3, 1),
            "cpu_min_ms": round(min(cpu[name]) * 1e3, 1),
        }
        if base:
            row["speedup_vs_torch_cpu"] = round(base / min(cpu[name]), 2)
        result["backends"][name] = row
        print(f"{name:18s} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    if args.profile:
        path = dict(item.partition("=")[::2] for item in args.onnx)[args.profile]
        session = _ort_session(path, args.threads, _is_int8(path), profile="/tmp/medk2n-ort-probe")
        for op, ms, count in op_profile(session, feed):
            print(f"  {op:28s} {ms:9.1f} ms  x{count}")
    return result


if __name__ == "__main__":
    main()
