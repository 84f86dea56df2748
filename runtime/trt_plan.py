"""TensorRT plan runner, written against the TensorRT 10/11 tensor API.

`tensorrt` and `cuda-python` are imported only when a plan runner starts, so
the base install (no GPU stack) imports this module fine and fails with one
clear line when the backend is asked for. Flow (TensorRT samples,
DEPLOY_NOTES.md): deserialize_cuda_engine -> execution context -> per call
set_input_shape / set_tensor_address -> execute_async_v3 on our own stream.
Device buffers grow when a bigger batch arrives and are reused otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from medk2n.errors import BundleError, MedK2NError
from medk2n.runtime.runners import Runner

TRT_MISSING = "TensorRT backend needs the [trt] extra (pip install medk2n[trt]) and an NVIDIA GPU"


def import_tensorrt() -> tuple[Any, Any]:
    """(tensorrt, cuda.bindings.runtime), or a MedK2NError saying what to install."""
    try:
        import tensorrt as trt
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise MedK2NError(f"{TRT_MISSING} ({exc})") from None
    return trt, cudart


def _cuda(cudart: Any, result: tuple) -> Any:
    """cuda-python calls return (error, *values); raise on error, unwrap one value."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise MedK2NError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else tuple(values)


class TrtPlanRunner(Runner):
    """Run a serialized TensorRT engine (`model.plan`) from the bundle."""

    def __init__(self, plan_path: str | Path, trt_version: str | None = None,
                 compute_capability: str | None = None, name: str = "trt-plan") -> None:
        super().__init__(name)
        self.plan_path = Path(plan_path)
        self.trt_version = trt_version
        self.compute_capability = compute_capability
        self._trt: Any = None
        self._cudart: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._inputs: list[tuple[str, np.dtype]] = []
        self._outputs: list[tuple[str, np.dtype]] = []
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _activate(self) -> None:
        trt, cudart = import_tensorrt()
        self._trt, self._cudart = trt, cudart
        self._check_target()
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(self.plan_path.read_bytes())
        if engine is None:
            raise BundleError(f"{self.plan_path}: TensorRT could not deserialize the plan "
                              "(built for another GPU or TensorRT version?)")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = _cuda(cudart, cudart.cudaStreamCreate())  # not the default stream
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs).append((name, dtype))

    def _check_target(self) -> None:
        """A plan only runs on the TensorRT version and GPU generation it was built for."""
        if self.trt_version and self._trt.__version__ != self.trt_version:
            raise BundleError(f"{self.plan_path}: plan built with TensorRT {self.trt_version}, this is "
                              f"{self._trt.__version__}; rebuild it or use --backend tensorrt")
        cudart = self._cudart
        if _cuda(cudart, cudart.cudaGetDeviceCount()) < 1:
            raise MedK2NError(f"{TRT_MISSING}: no CUDA device found")
        props = _cuda(cudart, cudart.cudaGetDeviceProperties(0))
        here = f"{props.major}{props.minor}"
        if self.compute_capability and re.sub(r"\D", "", self.compute_capability) != here:
            raise BundleError(f"{self.plan_path}: plan built for compute capability {self.compute_capability}, "
                              f"this GPU is {props.major}.{props.minor}; rebuild it or use --backend tensorrt")

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _cuda(self._cudart, self._cudart.cudaFree(ptr))
            ptr = _cuda(self._cudart, self._cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, ctx, stream = self._cudart, self._context, self._stream
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        staged = []  # keep host arrays alive until the stream is synchronised
        for name, dtype in self._inputs:
            array = np.ascontiguousarray(feed[name], dtype=dtype)
            if not ctx.set_input_shape(name, array.shape):
                raise MedK2NError(f"{self.plan_path}: input {name!r} shape {array.shape} is outside the plan's profile")
            ptr = self._device_buffer(name, array.nbytes)
            _cuda(cudart, cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, to_device, stream))
            ctx.set_tensor_address(name, ptr)
            staged.append(array)
        outputs = {}
        for name, dtype in self._outputs:
            host = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=dtype)
            ctx.set_tensor_address(name, self._device_buffer(name, max(host.nbytes, 1)))
            outputs[name] = host
        if not ctx.execute_async_v3(int(stream)):
            raise MedK2NError(f"{self.plan_path}: TensorRT execution failed")
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, host in outputs.items():
            ptr = self._buffers[name][0]
            _cuda(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, to_host, stream))
        _cuda(cudart, cudart.cudaStreamSynchronize(stream))
        return outputs

    def _deactivate(self) -> None:
        for ptr, _ in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
        self._context = self._engine = self._stream = None
        self._inputs, self._outputs = [], []

    @property
    def providers(self) -> list[str]:
        version = self._trt.__version__ if self._trt is not None else "?"
        return [f"TensorRT {version}"]
