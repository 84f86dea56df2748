"""A local Triton server for a bundle: the PyTriton stand-in started, awaited and stopped, plus its counters.

`medk2n-bench serve` and the triton backend's tests both need a real server
on a machine without Triton's container. This writes the bundle's model
repository, starts `pytriton_server.py` under a Python that can run PyTriton's
backend stub (see that file and the Makefile's .venv-triton), waits until the
model is ready and stops the whole process group afterwards. Server counters
come from Triton's Prometheus endpoint, as they would on a GPU box.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from medk2n.errors import MedK2NError

SERVER_SCRIPT = Path(__file__).with_name("pytriton_server.py")
START_TIMEOUT_S = 120.0


@dataclass
class LocalServer:
    url: str
    metrics_url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        """SIGTERM lets Triton unload and stop its own children; the process group is killed if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own group (start_new_session)
        except ProcessLookupError:
            pass
        self.process.wait()

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_server(python: Path, repo: Path, workdir: Path, *extra: str, model: str = "medk2n") -> LocalServer:
    """Start the stand-in on `repo` and wait until `model` is ready; a MedK2NError with the log's last
    line when it does not come up."""
    import tritonclient.grpc as grpcclient

    if not Path(python).exists():
        raise MedK2NError(f"{python}: no such interpreter for the Triton server (make .venv-triton/.installed)")
    grpc_port, http_port, metrics_port = free_ports(3)
    log = workdir / f"server-{grpc_port}.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [str(python), str(SERVER_SCRIPT), str(repo), "--model", model, "--grpc-port", str(grpc_port),
             "--http-port", str(http_port), "--metrics-port", str(metrics_port),
             "--log-file", str(workdir / f"triton-{grpc_port}.log"), *extra],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir)
    server = LocalServer(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics", process, log)
    client = grpcclient.InferenceServerClient(server.url)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if client.is_model_ready(model, client_timeout=2):
                    return server
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
    finally:
        client.close()
    server.stop()
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    raise MedK2NError(f"Triton server did not start ({lines[-1] if lines else 'no output'}); log: {log}")


def server_counts(metrics_url: str, model: str = "medk2n") -> tuple[int, int]:
    """(rows inferred, model executions) so far: Triton's nv_inference_count and nv_inference_exec_count."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()

    def total(metric: str) -> int:
        pattern = rf'^{metric}\{{model="{re.escape(model)}".*\}} (\S+)$'
        return sum(int(float(v)) for v in re.findall(pattern, text, re.M))

    return total("nv_inference_count"), total("nv_inference_exec_count")
