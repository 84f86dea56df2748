"""Serve a medk2n Triton model repository on the CPU with PyTriton's bundled `tritonserver`.

The tests and `medk2n-bench serve` need a real Triton server on machines
without a GPU or Triton's container. The `nvidia-pytriton` wheel ships a real
`tritonserver` with its Python backend only (no ONNX Runtime backend), so this
script stands in for Triton's ONNX Runtime backend: it reads the repository's
`config.pbtxt` (parsed with Triton's own protobuf schema), binds a function
that runs `<version>/model.onnx` with ONNX Runtime under the same model name,
tensor names, dims, max_batch_size, dynamic batching settings and parameters,
and serves it on 127.0.0.1. Everything a client sees (gRPC, the batcher,
statistics, metrics) is Triton's own.

Run it with a Python whose shared libpython the backend stub can load (a venv
made from Debian's /usr/bin/python3.11; `make .venv-triton`), holding
nvidia-pytriton and onnxruntime. It imports nothing from medk2n.

    python pytriton_server.py REPO [--model medk2n] [--grpc-port 8001] ...

`--fail-after N` makes every model execution after the N-th raise (a
server-side error mid-case, for the fault tests).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import signal
import sys
from typing import Any

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.models import model as pytriton_model
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig
from tritonclient.grpc import model_config_pb2

DTYPES = {model_config_pb2.TYPE_FP32: np.float32, model_config_pb2.TYPE_FP16: np.float16,
          model_config_pb2.TYPE_INT64: np.int64}


def read_config(repo: pathlib.Path, name: str) -> Any:
    text = (repo / name / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    if config.platform != "onnxruntime_onnx":
        sys.exit(f"error: {repo / name}: platform {config.platform!r}; this stand-in serves onnxruntime_onnx only")
    return config


def latest_version(repo: pathlib.Path, name: str) -> pathlib.Path:
    versions = sorted((p for p in (repo / name).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        sys.exit(f"error: {repo / name}: no version folder")
    return versions[-1] / "model.onnx"


class OnnxModel:
    """The bound function: one ONNX Runtime session, requests grouped by shape, one run per group."""

    def __init__(self, path: pathlib.Path, threads: int, fail_after: int | None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.fail_after = fail_after
        self.executions = 0

    def __call__(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        self.executions += 1
        if self.fail_after is not None and self.executions > self.fail_after:
            raise RuntimeError(f"injected failure at execution {self.executions}")
        results: list[dict[str, np.ndarray] | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(tuple((k, v.shape[1:]) for k, v in sorted(request.items())), []).append(i)
        for members in groups.values():
            feed = {k: np.concatenate([requests[i][k] for i in members]) for k in requests[members[0]]}
            out = dict(zip(self.outputs, self.session.run(self.outputs, feed)))
            start = 0
            for i in members:
                rows = len(next(iter(requests[i].values())))
                results[i] = {k: v[start:start + rows] for k, v in out.items()}
                start += rows
        return results  # type: ignore[return-value]


def with_parameters(parameters: dict[str, str]) -> None:
    """Make PyTriton's generated config.pbtxt carry the repository's parameters (the medk2n sha256),
    which its ModelConfig has no field for."""
    original = pytriton_model.Model._get_triton_model_config

    def patched(self: Any) -> Any:
        config = original(self)
        config.backend_parameters.update(parameters)
        return config

    pytriton_model.Model._get_triton_model_config = patched


def tensors(specs: Any) -> list[Tensor]:
    return [Tensor(name=t.name, dtype=DTYPES[t.data_type], shape=tuple(int(d) for d in t.dims)) for t in specs]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=pathlib.Path)
    parser.add_argument("--model", default="medk2n")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--fail-after", type=int, default=None)
    parser.add_argument("--log-file", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    config = read_config(args.repo, args.model)
    with_parameters({k: v.string_value for k, v in config.parameters.items()})
    batching = config.dynamic_batching
    model = OnnxModel(latest_version(args.repo, args.model), args.threads, args.fail_after)
    server = TritonConfig(grpc_address="127.0.0.1", grpc_port=args.grpc_port, http_address="127.0.0.1",
                          http_port=args.http_port, metrics_address="127.0.0.1", metrics_port=args.metrics_port,
                          exit_on_error=True, log_file=args.log_file)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds through Triton's context: a clean stop
    # PyTriton guards the repository, statistics and logging endpoints with a token by default; Triton
    # itself does not, and clients (medk2n-run naming the models a server has) expect its defaults.
    # The server listens on 127.0.0.1 only.
    with Triton(config=server, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        triton.bind(
            model_name=args.model, infer_func=model, inputs=tensors(config.input), outputs=tensors(config.output),
            config=ModelConfig(max_batch_size=config.max_batch_size, batcher=DynamicBatcher(
                max_queue_delay_microseconds=batching.max_queue_delay_microseconds,
                preferred_batch_size=list(batching.preferred_batch_size) or None)),
            strict=True,
        )
        print(f"serving {args.model} on 127.0.0.1:{args.grpc_port}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
