"""The exported graph's I/O, declared once (optimum's `OnnxConfig` idea).

ONNX export, the TensorRT profile and the manifest all read the names, shapes
and batch range from here, so the runtime never guesses them. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from medk2n.errors import ExportError
from medk2n.manifest import TensorSpec

INPUT_NAMES = ("x", "src", "tgt", "avail")
OUTPUT_NAMES = ("images", "scale")
# Third output of a graph whose model has a source check: p(source slot k holds the contrast it is
# named as), [batch, K]; absent slots (avail 0) carry a value nothing should read.
SOURCE_CHECK = "source_check"
BATCH_AXIS = "batch"
# The target axis of tgt/images/scale: symbolic (1..N) in graphs with N > 1, so a request for
# fewer targets computes only those (everything after the encoder runs once per target).
TARGET_AXIS = "targets"
PRECISIONS = ("fp32", "fp16", "int8")
ENGINES = ("onnx", "trt")
DEFAULT_OPSET = 18
MIN_OPSET = 17  # LayerNormalization is one op from 17 on (kept FP32 in FP16 export)


@dataclass(frozen=True)
class BatchSpec:
    """Batch range of the exported graph; min == max means a fixed batch."""

    min: int
    opt: int
    max: int

    @property
    def fixed(self) -> bool:
        return self.min == self.max

    def as_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


def parse_batch(text: str) -> BatchSpec:
    """`"4"` -> fixed batch 4; `"1:8:16"` -> dynamic batch, TensorRT profile min/opt/max."""
    parts = str(text).split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ExportError(f"--batch {text!r}: expected N or MIN:OPT:MAX with integers") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ExportError(f"--batch {text!r}: expected N or MIN:OPT:MAX")
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise ExportError(f"--batch {text!r}: need 1 <= MIN <= OPT <= MAX")
    return BatchSpec(lo, opt, hi)


@dataclass(frozen=True)
class GraphSpec:
    """What one exported graph is: fixed K sources, N targets, image size, batch range, opset."""

    k: int
    n: int
    size: int
    batch: BatchSpec
    opset: int = DEFAULT_OPSET
    source_check: bool = False

    def __post_init__(self) -> None:
        if self.k < 1 or self.n < 1:
            raise ExportError(f"--k {self.k} --n {self.n}: both must be at least 1")
        if self.size < 32 or self.size % 32:
            raise ExportError(f"--size {self.size}: must be a positive multiple of 32 (Hiera windows)")
        if self.opset < MIN_OPSET:
            raise ExportError(f"--opset {self.opset}: need at least {MIN_OPSET}")

    @property
    def batch_dim(self) -> int | str:
        return self.batch.min if self.batch.fixed else BATCH_AXIS

    @property
    def dynamic_targets(self) -> bool:
        """N is the most targets one call makes; with N > 1 the graph takes 1..N (torch.export
        specialises a size-1 axis, so N = 1 stays fixed)."""
        return self.n > 1

    @property
    def output_names(self) -> tuple[str, ...]:
        return (*OUTPUT_NAMES, SOURCE_CHECK) if self.source_check else OUTPUT_NAMES

    @property
    def target_dim(self) -> int | str:
        return TARGET_AXIS if self.dynamic_targets else self.n

    def shapes(self, batch: int | str, targets: int | str | None = None) -> dict[str, list[int | str]]:
        """Every input and output shape for one batch size and target count (ints, or the symbolic
        axes; `targets` defaults to the graph's own target axis)."""
        k, s = self.k, self.size
        n = self.target_dim if targets is None else targets
        return {
            "x": [batch, k, s, s],
            "src": [batch, k],
            "tgt": [batch, n],
            "avail": [batch, k],
            "images": [batch, n, s, s],
            "scale": [batch, n, s, s],
            SOURCE_CHECK: [batch, k],
        }

    def inputs(self) -> list[TensorSpec]:
        shapes = self.shapes(self.batch_dim)
        dtypes = {"x": "float32", "src": "int64", "tgt": "int64", "avail": "float32"}
        return [TensorSpec(name, dtypes[name], shapes[name]) for name in INPUT_NAMES]

    def outputs(self) -> list[TensorSpec]:
        shapes = self.shapes(self.batch_dim)
        return [TensorSpec(name, "float32", shapes[name]) for name in self.output_names]
