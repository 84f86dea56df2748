"""A real Triton server on the CPU for the triton backend's tests (PyTriton's bundled tritonserver).

The server runs `medk2n/benchmarks/pytriton_server.py` under the interpreter
named by MEDK2N_TRITON_PYTHON (`make test` points it at .venv-triton, a venv
made from Debian's python3.11: the wheel's Python backend stub needs a shared
libpython, which pyenv builds lack). Where no such interpreter is given, or
the server does not come up, the tests skip with the reason, except under
MEDK2N_REQUIRE_TRITON=1 (CI), where that is a failure: CI must run them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

import medk2n.benchmarks

SERVER_SCRIPT = Path(medk2n.benchmarks.__file__).parent / "pytriton_server.py"
START_TIMEOUT_S = 120.0


@dataclass
class ServerProcess:
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
            os.killpg(self.process.pid, signal.SIGKILL)  # the server's own group (start_new_session)
        except ProcessLookupError:
            pass
        self.process.wait()


def unavailable(reason: str) -> None:
    """Skip, or fail where the Triton tests are required to run (CI)."""
    if os.environ.get("MEDK2N_REQUIRE_TRITON") == "1":
        pytest.fail(f"Triton server required (MEDK2N_REQUIRE_TRITON=1) but unavailable: {reason}")
    pytest.skip(reason)


def server_python() -> Path:
    name = os.environ.get("MEDK2N_TRITON_PYTHON")
    if not name:
        unavailable("no server interpreter: set MEDK2N_TRITON_PYTHON (make test builds .venv-triton)")
    path = Path(name)
    if not path.exists():
        unavailable(f"MEDK2N_TRITON_PYTHON={name} does not exist (make .venv-triton/.installed)")
    return path


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_server(repo: Path, workdir: Path, *extra: str) -> ServerProcess:
    """Start the stand-in on `repo` and wait until its model is ready (skip/fail with the log's last line)."""
    import tritonclient.grpc as grpcclient

    python = server_python()
    grpc_port, http_port, metrics_port = free_ports(3)
    log = workdir / f"server-{grpc_port}.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [str(python), str(SERVER_SCRIPT), str(repo), "--grpc-port", str(grpc_port), "--http-port", str(http_port),
             "--metrics-port", str(metrics_port), "--log-file", str(workdir / f"triton-{grpc_port}.log"), *extra],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir)
    server = ServerProcess(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics", process, log)
    client = grpcclient.InferenceServerClient(server.url)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                if client.is_model_ready("medk2n", client_timeout=2):
                    return server
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.5)
    finally:
        client.close()
    server.stop()
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    unavailable(f"Triton server did not start ({lines[-1] if lines else 'no output'}); log: {log}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, ServerProcess]]:
    """(bundle, repository, running server) for a K=2/N=4 fake bundle with a target axis, batch 1..8."""
    from runtime_fixtures import make_bundle

    from medk2n.export.triton_repo import TritonOptions, write_repository

    root = tmp_path_factory.mktemp("triton")
    bundle = make_bundle(root / "bundle", k=2, n=4, target_axis=True, batch={"min": 1, "opt": 4, "max": 8})
    repo = root / "repo"
    write_repository(TritonOptions(bundle=bundle, out=repo, kind="cpu"))
    server = start_server(repo, root)
    yield bundle, repo, server
    server.stop()
