"""One runner interface for every backend, and the ONNX Runtime runner.

A runner is a context manager that owns one loaded model (polygraphy
`backend/base/runner.py`): `activate` loads it, `infer(feed)` maps input
names to arrays and returns output names to arrays, `deactivate` frees it.
The inferer and the benchmarks only ever see this interface, so comparing
backends is one loop. `OrtRunner` covers ONNX Runtime's CPU, CUDA and
TensorRT execution providers; `trt_plan.TrtPlanRunner` runs TensorRT plans.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import onnxruntime as ort

from medk2n.errors import BundleError, MedK2NError

# Where a scheduler or a shared machine sets how many cores a job gets: SLURM, OpenMP and PyTorch all read it.
THREADS_ENV = "OMP_NUM_THREADS"


def default_threads() -> int | None:
    """ONNX Runtime's intra-op threads when none are asked for: `OMP_NUM_THREADS` if it holds a positive count.

    Unset, ORT starts one spinning thread per physical core in every session. Two jobs on one machine,
    a batch scheduler's slot, or test workers side by side then oversubscribe the cores, and spinning
    threads that wait for a core slow every job down many times over (two 2-thread trainings on 2 cores
    took 8.7-9.0 s a step each, against 0.6 s with one thread each). PyTorch already honours the
    variable; the runtime does too. A nested-OpenMP list ("4,2") gives its first level; anything else
    that is not a positive count is ignored, as OpenMP ignores it."""
    text = os.environ.get(THREADS_ENV, "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options every medk2n ONNX Runtime session starts from: errors only in the log (warnings would drown the
    one-line CLI output), and `threads` intra-op threads, else `default_threads()`, else ORT's own default."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    threads = threads or default_threads()
    if threads:
        options.intra_op_num_threads = threads
    return options


# ONNX Runtime's type strings of the tensors a bundle exchanges, as numpy dtype names.
ORT_DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(float16)": "float16"}


class Runner(ABC):
    """Base class: timing and the activate/deactivate life cycle."""

    # Batches one `infer` call may carry: a remote runner (runtime/triton.py) splits a call into this
    # many requests in flight, so the inferer hands it that many batches' rows at once.
    requests_per_call = 1

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_active = False
        self._last_time: float | None = None

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; the wall time of the call is kept for `last_inference_time`."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name!r} used outside its `with` block")
        start = time.perf_counter()
        outputs = self._infer(feed)
        self._last_time = time.perf_counter() - start
        return outputs

    def last_inference_time(self) -> float | None:
        """Seconds taken by the latest `infer` call (None before the first)."""
        return self._last_time

    @property
    def providers(self) -> list[str]:
        """What actually executes the model, for reports."""
        return [self.name]

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


Provider = Union[str, tuple[str, dict[str, Any]]]


def provider_name(provider: Provider) -> str:
    return provider if isinstance(provider, str) else provider[0]


# ORT's MatMulAddFusion turns a quantised Linear (DQ -> MatMul -> bias Add) into DQ -> float Gemm
# before its QDQ fusions run, and ORT has no float-output QGemm, so the INT8 MatMuls would run
# in float plus a dequantisation. Without it they become MatMulIntegerToFloat (int8 kernels):
# measured ~1.4x faster INT8 on the default preset (see medk2n.export.quantize).
INT8_DISABLED_OPTIMIZERS = ("MatMulAddFusion",)


class OrtRunner(Runner):
    """Run an ONNX file with an ordered provider list (first = the one wanted).

    On a GPU provider the outputs are bound to device memory through IO
    binding, so ORT allocates them on the GPU and copies them back in one step.
    """

    def __init__(self, onnx_path: str | Path, providers: list[Provider], threads: int | None = None,
                 name: str = "onnxruntime", disabled_optimizers: Sequence[str] = ()) -> None:
        super().__init__(name)
        self.onnx_path = Path(onnx_path)
        self.requested = list(providers)
        self.threads = threads
        self.disabled_optimizers = list(disabled_optimizers)
        self._session: ort.InferenceSession | None = None
        self._output_names: list[str] = []
        self._use_binding = False

    def _activate(self) -> None:
        options = session_options(self.threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(self.onnx_path), sess_options=options, providers=self.requested,
                                           disabled_optimizers=self.disabled_optimizers or None)
        except Exception as exc:  # noqa: BLE001 - ORT's exception types are not a public hierarchy
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BundleError(f"{self.onnx_path}: ONNX Runtime cannot load the model "
                              f"({type(exc).__name__}: {first_line})") from None
        wanted = provider_name(self.requested[0])
        got = session.get_providers()
        if wanted not in got:
            # ORT silently falls back to CPU when a provider's libraries fail to load.
            raise MedK2NError(f"{self.onnx_path}: ONNX Runtime could not start {wanted} (session got {got}); "
                              "check the CUDA/TensorRT libraries or choose another --backend")
        self._session = session
        self._output_names = [o.name for o in session.get_outputs()]
        self._use_binding = got[0] != "CPUExecutionProvider"

    def _deactivate(self) -> None:
        self._session = None

    def io_signature(self) -> dict[str, tuple[str, list]]:
        """name -> (numpy dtype name, shape with symbolic dims as strings) of the graph's inputs and outputs."""
        assert self._session is not None
        return {arg.name: (ORT_DTYPES.get(arg.type, arg.type), [d if isinstance(d, int) else str(d) for d in arg.shape])
                for arg in [*self._session.get_inputs(), *self._session.get_outputs()]}

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._session is not None
        if not self._use_binding:
            return dict(zip(self._output_names, self._session.run(self._output_names, feed)))
        binding = self._session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._output_names:
            binding.bind_output(name, "cuda")
        self._session.run_with_iobinding(binding)
        return dict(zip(self._output_names, binding.copy_outputs_to_cpu()))

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers() if self._session is not None else [provider_name(p) for p in self.requested]
