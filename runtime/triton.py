"""The `triton` backend: the model runs on a Triton Inference Server, everything else stays here.

Volume pre/post-processing and NIfTI I/O run on the client exactly as for a
local backend; only batches of slices cross the network, over gRPC. One
`infer` call of the inferer is split into `in_flight` requests sent at once,
so the server's dynamic batcher can merge them with other clients' requests
(per-row `src`/`tgt`/`avail` make rows of different K->N tasks compatible;
Triton merges requests whose shapes agree, i.e. with the same number of
targets).

Before the first slice the runner checks what it talks to: that the server
answers, that the model is loaded, that the served file is the bundle's (by
the sha256 `medk2n-export triton` writes into config.pbtxt) and that its
inputs and outputs are the manifest's (`backends.check_graph_io`). Each
failure is one line naming the server and model.

tritonclient comes from the `[triton]` extra and is imported only when this
backend starts, so the base runtime never needs it.
"""

from __future__ import annotations

import logging
import queue
import re
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from medk2n.errors import BundleError, MedK2NError, RunFault
from medk2n.manifest import ModelFile
from medk2n.runtime.bundle import Bundle
from medk2n.runtime.runners import Runner

log = logging.getLogger(__name__)

# Model parameters `medk2n-export triton` writes into config.pbtxt (export/triton_repo.py).
SHA256_PARAMETER = "medk2n_sha256"
PRECISION_PARAMETER = "medk2n_precision"
FILE_PARAMETER = "medk2n_file"
# Triton wire types <-> numpy dtype names of the tensors a bundle exchanges.
WIRE_TYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64"}
NUMPY_TYPES = {wire: name for name, wire in WIRE_TYPES.items()}
# gRPC status of a server that is gone (as opposed to one that answered with an error).
GONE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\w*: ")


@dataclass(frozen=True)
class TritonServer:
    """Where the model is served: gRPC address, model name, and how many requests to keep in flight."""

    url: str
    model: str = "medk2n"
    in_flight: int = 4
    connect_timeout_s: float = 10.0  # liveness and metadata calls at start
    request_timeout_s: float = 600.0  # one inference request, queueing included

    def __post_init__(self) -> None:
        if not self.url or self.url.startswith(("http://", "https://")) or ":" not in self.url:
            raise MedK2NError(f"--url {self.url!r}: give the server's gRPC address as HOST:PORT (e.g. localhost:8001)")
        if self.in_flight < 1:
            raise MedK2NError(f"in_flight must be >= 1, got {self.in_flight}")


def import_client() -> tuple[Any, type]:
    """(tritonclient.grpc, InferenceServerException), or a one-line error naming the extra."""
    try:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException
    except ModuleNotFoundError as exc:
        raise MedK2NError("backend 'triton' needs the [triton] extra: pip install 'medk2n[triton]' "
                          f"(no module named {(exc.name or 'tritonclient').split('.')[0]!r})") from None
    return grpcclient, InferenceServerException


def first_line(exc: BaseException) -> str:
    """One line from a client or server error; a Python backend's traceback is reduced to the exception
    it ended in (`RuntimeError: ...`), which is what names the fault."""
    text = str(exc.message() if hasattr(exc, "message") and callable(exc.message) else exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    head, marker = lines[0], "Traceback (most recent call last):"
    raised = [line for line in lines[1:] if RAISED.match(line) and marker not in line]
    if marker in head and raised:
        return f"{head.replace(marker, '').rstrip()} {raised[-1]}"
    return head


class TritonRunner(Runner):
    """Runner interface over one model on a Triton server (gRPC)."""

    def __init__(self, server: TritonServer) -> None:
        super().__init__(f"triton model {server.model!r} at {server.url}")
        self.server = server
        self.requests_per_call = server.in_flight
        self._grpc: Any = None
        self._error: type = Exception
        self._client: Any = None
        self.config: dict[str, Any] = {}
        self._metadata: dict[str, Any] = {}
        # (rows, seconds from send to answer) of the latest requests: per-slice latency for benchmarks.
        self.request_times: deque[tuple[int, float]] = deque(maxlen=100_000)

    def _activate(self) -> None:
        self._grpc, self._error = import_client()
        client = self._grpc.InferenceServerClient(self.server.url)
        try:
            self._check_ready(client)
            self.config = client.get_model_config(self.server.model, as_json=True,
                                                  client_timeout=self.server.connect_timeout_s)["config"]
            self._metadata = client.get_model_metadata(self.server.model, as_json=True,
                                                       client_timeout=self.server.connect_timeout_s)
        except self._error as exc:
            client.close()
            raise MedK2NError(f"{self.name}: {first_line(exc)}") from None
        except BaseException:
            client.close()
            raise
        self._client = client
        if self.max_batch_size < 1:
            self._deactivate()
            raise BundleError(f"{self.name}: max_batch_size is {self.max_batch_size}, but medk2n sends batches of "
                              "slices; write the repository with `medk2n-export triton`")

    def _check_ready(self, client: Any) -> None:
        timeout = self.server.connect_timeout_s
        try:
            client.is_server_live(client_timeout=timeout)
        except self._error as exc:
            raise MedK2NError(f"Triton server at {self.server.url} is unreachable ({first_line(exc)})") from None
        if not client.is_model_ready(self.server.model, client_timeout=timeout):
            index = client.get_model_repository_index(as_json=True, client_timeout=timeout).get("models", [])
            have = sorted(f"{m['name']} ({m.get('state') or 'not loaded'})" for m in index)
            raise BundleError(f"{self.name}: no such model ready on the server (it has: {', '.join(have) or 'none'})")

    def _deactivate(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    @property
    def max_batch_size(self) -> int:
        return int(self.config.get("max_batch_size", 0))

    @property
    def providers(self) -> list[str]:
        platform = self.config.get("platform") or self.config.get("backend") or "?"
        return [f"triton:{platform}"]

    def io_signature(self) -> dict[str, tuple[str, list]]:
        """name -> (numpy dtype name, shape) from the server's model metadata; -1 dims become symbolic."""
        return {t["name"]: (NUMPY_TYPES.get(t["datatype"], t["datatype"]),
                            [int(d) if int(d) >= 0 else "?" for d in t["shape"]])
                for t in [*self._metadata.get("inputs", []), *self._metadata.get("outputs", [])]}

    def check_serves(self, bundle: Bundle, model: ModelFile) -> None:
        """The served file must be `model` of `bundle`: same sha256, or a one-line error saying which it is."""
        parameters = self.config.get("parameters", {})
        served = parameters.get(SHA256_PARAMETER, {}).get("string_value")
        if served is None:
            log.warning("%s: its config.pbtxt carries no %s: cannot check it serves %s of %s", self.name,
                        SHA256_PARAMETER, model.file, bundle.path)
            return
        if served == bundle.sha256(model):
            return
        other = next((m for m in bundle.manifest.models if bundle.sha256(m) == served), None)
        if other is not None:
            raise BundleError(f"{self.name} serves {other.file} ({other.precision}) of {bundle.path}, not "
                              f"{model.file} ({model.precision}): pass --precision {other.precision}")
        raise BundleError(f"{self.name} serves a model that is not in {bundle.path} (sha256 {served[:12]}..., "
                          f"its {model.file} is {bundle.sha256(model)[:12]}...)")

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(feed.values())))
        spans = split_rows(rows, self.requests_per_call, self.max_batch_size)
        outputs = [t["name"] for t in self._metadata.get("outputs", [])]
        done: queue.SimpleQueue = queue.SimpleQueue()
        sent: list[float] = []
        for i, (lo, hi) in enumerate(spans):
            sent.append(time.perf_counter())
            try:
                self._client.async_infer(
                    self.server.model, self._inputs(feed, lo, hi), partial(_collect, done, i),
                    outputs=[self._grpc.InferRequestedOutput(name) for name in outputs],
                    client_timeout=self.server.request_timeout_s)
            except self._error as exc:  # requests already sent answer into a queue nobody reads: harmless
                raise self._fault(exc) from None
        results: dict[int, dict[str, np.ndarray]] = {}
        failure: BaseException | None = None
        for _ in spans:  # every callback comes: the request timeout bounds each one
            i, result, error, answered = done.get()
            self.request_times.append((spans[i][1] - spans[i][0], answered - sent[i]))
            if error is not None:
                failure = failure or error
                continue
            results[i] = {name: result.as_numpy(name) for name in outputs}
        if failure is not None:
            raise self._fault(failure)
        for i, (lo, hi) in enumerate(spans):
            short = [name for name in outputs if results[i][name] is None or len(results[i][name]) != hi - lo]
            if short:
                raise MedK2NError(f"{self.name}: answered {short[0]!r} without {hi - lo} rows")
        return {name: np.concatenate([results[i][name] for i in range(len(spans))]) for name in outputs}

    def _inputs(self, feed: dict[str, np.ndarray], lo: int, hi: int) -> list[Any]:
        inputs = []
        for name, array in feed.items():
            part = np.ascontiguousarray(array[lo:hi])
            item = self._grpc.InferInput(name, list(part.shape), WIRE_TYPES[part.dtype.name])
            item.set_data_from_numpy(part)
            inputs.append(item)
        return inputs

    def _fault(self, error: BaseException) -> MedK2NError:
        status = str(error.status()) if hasattr(error, "status") else ""
        if status in GONE:
            return RunFault(f"{self.name}: server lost mid-run ({first_line(error)}); stopping the run")
        return MedK2NError(f"{self.name}: server error: {first_line(error)}")


def _collect(done: queue.SimpleQueue, index: int, result: Any, error: Any) -> None:
    done.put((index, result, error, time.perf_counter()))


def split_rows(rows: int, parts: int, largest: int) -> list[tuple[int, int]]:
    """[lo, hi) spans: `parts` near-equal requests, more when one would exceed `largest` rows."""
    count = max(parts, -(-rows // max(largest, 1)))
    size = -(-rows // count) if rows else 0
    return [(lo, min(lo + size, rows)) for lo in range(0, rows, size)] if rows else []
