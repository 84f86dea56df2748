"""`medk2n-bench serve`: 1, 2, 4, 8 concurrent clients against one Triton server.

Each client is a `Synthesizer` on the triton backend doing what `medk2n-run`
does per volume (check, preprocess, slices to the server with requests in
flight, restore to the input grid) on volumes read once up front, so disk
reads do not enter the timings. Clients are threads of this process (numpy,
gRPC and ONNX Runtime release the GIL for their heavy parts); a deployment
runs them as separate processes (docs/serving.md).

Per step (number of clients) it records slices/s over the step's wall time,
p50/p95 latency per slice (send to answer of the request carrying it) and per
volume (a client's whole call), and the mean batch the server's model ran:
Triton's nv_inference_count / nv_inference_exec_count over the step. A local
`--backend cpu` run of one client in this process gives the reference rate.

Without `--url`, the bundle is served here by PyTriton's tritonserver
(benchmarks/triton_local.py), which shares the CPU with the clients.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from medk2n.benchmarks.machine import machine_stamp
from medk2n.benchmarks.triton_local import server_counts, start_server
from medk2n.data.cases import discover_dataset, load_case
from medk2n.errors import ConfigError
from medk2n.runtime.bundle import load_bundle
from medk2n.runtime.inferer import brain_slices
from medk2n.runtime.synthesizer import Synthesizer
from medk2n.runtime.triton import TritonServer


@dataclass
class ServeOptions:
    bundle: Path
    data: Path
    sources: list[str]
    targets: list[str]
    clients: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    volumes_per_client: int = 2
    cases: int = 4
    batch_size: int | None = None
    in_flight: int = 4
    url: str | None = None
    metrics_url: str | None = None
    model: str = "medk2n"
    server_python: Path | None = None
    server_threads: int = 1


def run_serve(opts: ServeOptions, progress: Callable[[str], None] = lambda _: None) -> dict:
    load = os.getloadavg()[0]  # the machine may be shared: the numbers travel with how busy it was
    volumes = _load_volumes(opts)
    with ExitStack() as stack:
        url, metrics_url = opts.url, opts.metrics_url
        if url is None:
            url, metrics_url = _local_server(opts, stack, progress)
        if metrics_url is None:
            raise ConfigError("--metrics-url is needed with --url (Triton's metrics port, e.g. http://host:8002/metrics)")
        server = TritonServer(url, opts.model, opts.in_flight)
        _warm_up(opts, server, volumes)
        rows = []
        for clients in opts.clients:
            row = _step(opts, server, metrics_url, volumes, clients)
            progress(f"{clients} client(s): {row['slices_per_s']:.1f} slices/s, slice p95 {row['slice_p95_ms']:.0f} ms, "
                     f"volume p50 {row['volume_p50_ms']:.0f} ms, mean server batch {row['mean_server_batch']:.2f}")
            rows.append(row)
    local = _local_reference(opts, volumes)
    progress(f"local cpu, 1 client: {local['slices_per_s']:.1f} slices/s")
    settings = {**_settings(opts, url, volumes), "load_avg_1m_at_start": round(load, 2)}
    return {"settings": settings, "rows": rows, "local_cpu": local, "machine": machine_stamp()}


def _load_volumes(opts: ServeOptions) -> list[tuple[str, dict]]:
    cases = [c for c in discover_dataset(opts.data) if all(s in c.files for s in opts.sources)][:opts.cases]
    if not cases:
        raise ConfigError(f"{opts.data}: no case has every source of {','.join(opts.sources)}")
    return [(c.name, load_case(c, opts.sources)) for c in cases]


def _local_server(opts: ServeOptions, stack: ExitStack, progress: Callable[[str], None]) -> tuple[str, str]:
    from medk2n.export.triton_repo import TritonOptions, write_repository

    if opts.server_python is None:
        raise ConfigError("give --url (a running server) or --server-python (to serve the bundle here)")
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medk2n-serve-")))
    write_repository(TritonOptions(bundle=opts.bundle, out=work / "repo", model_name=opts.model, kind="cpu"))
    server = stack.enter_context(start_server(opts.server_python, work / "repo", work, "--threads",
                                              str(opts.server_threads), model=opts.model))
    progress(f"serving {opts.bundle} on {server.url} (PyTriton's tritonserver, {opts.server_threads} ORT thread(s))")
    return server.url, server.metrics_url


def _warm_up(opts: ServeOptions, server: TritonServer, volumes: list) -> None:
    with Synthesizer(opts.bundle, backend="triton", server=server, batch_size=opts.batch_size) as synth:
        synth.run(volumes[0][1], opts.sources, opts.targets, name=volumes[0][0])


def _step(opts: ServeOptions, server: TritonServer, metrics_url: str, volumes: list, clients: int) -> dict:
    synths = [Synthesizer(opts.bundle, backend="triton", server=server, batch_size=opts.batch_size)
              for _ in range(clients)]
    volume_ms: list[float] = []
    start, lock, errors = threading.Barrier(clients + 1), threading.Lock(), []

    def client(index: int) -> None:
        start.wait()
        try:
            for j in range(opts.volumes_per_client):
                name, vols = volumes[(index + j * clients) % len(volumes)]
                began = time.perf_counter()
                synths[index].run(vols, opts.sources, opts.targets, name=name)
                with lock:
                    volume_ms.append(1000.0 * (time.perf_counter() - began))
        except Exception as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    rows0, executions0 = server_counts(metrics_url, opts.model)
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    rows1, executions1 = server_counts(metrics_url, opts.model)
    for synth in synths:
        synth.close()
    if errors:
        raise errors[0]
    per_slice = np.concatenate([np.repeat([t for _, t in s.runner.request_times], [r for r, _ in s.runner.request_times])
                                for s in synths]) * 1000.0
    executions = executions1 - executions0
    return {"clients": clients, "volumes": len(volume_ms), "slices": int(rows1 - rows0),
            "requests": sum(len(s.runner.request_times) for s in synths), "wall_s": wall,
            "slices_per_s": (rows1 - rows0) / wall, "slice_p50_ms": float(np.percentile(per_slice, 50)),
            "slice_p95_ms": float(np.percentile(per_slice, 95)), "volume_p50_ms": float(np.percentile(volume_ms, 50)),
            "volume_p95_ms": float(np.percentile(volume_ms, 95)),
            "mean_server_batch": (rows1 - rows0) / executions if executions else 0.0, "server_executions": executions}


def _local_reference(opts: ServeOptions, volumes: list) -> dict:
    """One client on the local ONNX Runtime CPU backend, as many threads as the served model: the rate
    without a server in between."""
    with Synthesizer(opts.bundle, backend="cpu", batch_size=opts.batch_size, threads=opts.server_threads) as synth:
        synth.run(volumes[0][1], opts.sources, opts.targets, name=volumes[0][0])  # warm-up
        slices, volume_ms = 0, []
        for name, vols in volumes[:opts.volumes_per_client]:
            began = time.perf_counter()
            request = synth.request(opts.sources, opts.targets, name)
            prepared = synth.prepare(vols, request, name=name)
            synth.restore(*synth.infer(prepared, request), prepared, request)
            volume_ms.append(1000.0 * (time.perf_counter() - began))
            slices += int(brain_slices(prepared.brain).sum())
    return {"clients": 1, "volumes": len(volume_ms), "slices": slices, "slices_per_s": slices / (sum(volume_ms) / 1000.0),
            "volume_p50_ms": float(np.percentile(volume_ms, 50))}


def describe_bundle(path: Path) -> str:
    """`demo-model (hiera_micro, 64 px), K=2 N=4 fp32, batch 1:8:16`: what was served, not where it lay."""
    m = load_bundle(path).manifest
    source = m.source or {}
    model = (source.get("config") or {}).get("model") or {}
    b = m.batch
    return (f"{source.get('checkpoint', path.name)} ({model.get('encoder', '?')}, {m.image_size} px), K={m.k} N={m.n} "
            f"{m.precision}, batch {b['min']}:{b['opt']}:{b['max']}")


def _settings(opts: ServeOptions, url: str, volumes: list) -> dict:
    return {"bundle": describe_bundle(opts.bundle), "data": str(opts.data),
            "cases": [[name, list(next(iter(vols.values()))[0].shape)] for name, vols in volumes],
            "sources": opts.sources, "targets": opts.targets,
            "clients": opts.clients, "volumes_per_client": opts.volumes_per_client, "batch_size": opts.batch_size,
            "in_flight": opts.in_flight, "server": "local PyTriton stand-in" if opts.url is None else url,
            "server_threads": opts.server_threads if opts.url is None else None}


def parse_clients(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--clients {text!r}: expected comma-separated integers, e.g. 1,2,4,8") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--clients {text!r}: expected positive integers")
    return values


def sources_targets(task: str) -> tuple[list[str], list[str]]:
    sources, sep, targets = task.partition(":")
    if not sep or not sources or not targets:
        raise ConfigError(f"--task {task!r}: expected SOURCES:TARGETS, e.g. flair,adc:dwi,t2")
    return [s.strip() for s in sources.split(",") if s.strip()], [t.strip() for t in targets.split(",") if t.strip()]
