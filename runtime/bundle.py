"""Load a bundle and check it before anything runs.

`load_bundle` reads `manifest.json`, verifies the sha256 of every listed file
(a tampered or incomplete bundle is refused) and checks that the declared
tensors match the K->N contract, so the rest of the runtime can trust names,
shapes and the modality vocabulary without guessing (optimum-style: export
and runtime read the same description).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medk2n.config import NormSpec
from medk2n.errors import BundleError, ConfigError
from medk2n.manifest import Manifest, ModelFile, TensorSpec, read_manifest, verify_bundle
from medk2n.runtime.uncertainty import check_calibration

# The IO contract every bundle follows (DESIGN.md, "Export"): name -> (dtype, dims after batch).
INPUT_NAMES = ("x", "src", "tgt", "avail")
TARGET_AXIS = "targets"  # export.spec.TARGET_AXIS (the runtime does not import export)
OUTPUT_NAMES = ("images", "scale")
# A graph whose model has a source check adds, per source slot, p(the frame holds the contrast it is
# named as) (export.spec.SOURCE_CHECK); bundles without one run the same, unchecked.
SOURCE_CHECK = "source_check"
# Bundles exported before the Laplace scale output carry an uninformative "confidence" map:
# they still run (images only).
LEGACY_OUTPUT_NAMES = ("images", "confidence")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle folder and its manifest."""

    path: Path
    manifest: Manifest
    norms: dict[str, NormSpec]

    @property
    def modalities(self) -> list[str]:
        return self.manifest.modalities

    @property
    def k(self) -> int:
        return self.manifest.k

    @property
    def n(self) -> int:
        return self.manifest.n

    @property
    def image_size(self) -> int:
        return self.manifest.image_size

    @property
    def batch(self) -> dict[str, int]:
        return self.manifest.batch

    @property
    def fixed_batch(self) -> bool:
        return self.batch["min"] == self.batch["max"]

    @property
    def dynamic_targets(self) -> bool:
        """The graph takes 1..N targets per call (bundles exported before 2026-12-02 always compute N:
        a shorter request is padded with its last target and the extra outputs dropped)."""
        return has_target_axis(self.manifest)

    def modality_id(self, name: str) -> int:
        return self.modalities.index(name)

    def precisions(self, fmt: str) -> list[str]:
        return [m.precision for m in self.manifest.models if m.format == fmt]

    def model(self, fmt: str, precision: str) -> ModelFile | None:
        return self.manifest.model(fmt, precision)

    def model_path(self, model: ModelFile) -> Path:
        return self.path / model.file

    def sha256(self, model: ModelFile) -> str:
        return self.manifest.files[model.file]

    @property
    def has_scale(self) -> bool:
        """Whether the graph outputs the per-voxel Laplace scale (bundles from before it do not)."""
        return any(spec.name == "scale" for spec in self.manifest.outputs)

    @property
    def has_source_check(self) -> bool:
        """Whether the graph reports, per source, whether it looks like the contrast it is named as."""
        return any(spec.name == SOURCE_CHECK for spec in self.manifest.outputs)

    @property
    def check_thresholds(self) -> dict[str, float]:
        """{source contrast: the p below which the check doubts it}, fitted at export on held-out subjects;
        empty for bundles without (runtime.source_check.THRESHOLD applies)."""
        return {str(m): float(t) for m, t in (self.manifest.source_check or {}).get("thresholds", {}).items()}


def load_bundle(path: str | Path) -> Bundle:
    """Read, hash-verify and contract-check a bundle folder."""
    path = Path(path)
    manifest = read_manifest(path)
    verify_bundle(path, manifest)
    where = path / "manifest.json"
    _check_contract(manifest, where)
    try:
        norms = {m: NormSpec(**manifest.normalization[m]) for m in manifest.modalities}
    except (TypeError, ConfigError) as exc:
        raise BundleError(f"{where}: bad normalisation entry: {exc}") from None
    return Bundle(path=path, manifest=manifest, norms=norms)


def has_target_axis(manifest: Manifest) -> bool:
    """Whether the graph's target axis is the symbolic TARGET_AXIS (1..N targets) rather than N."""
    tgt = next((spec for spec in manifest.inputs if spec.name == "tgt"), None)
    return manifest.n > 1 and tgt is not None and tgt.shape[1:] == [TARGET_AXIS]


def _check_contract(manifest: Manifest, where: Path) -> None:
    m = manifest
    if not (1 <= m.k and 1 <= m.n and m.image_size >= 1):
        raise BundleError(f"{where}: k, n and image_size must be positive (k={m.k}, n={m.n}, size={m.image_size})")
    if len(set(m.modalities)) != len(m.modalities) or len(m.modalities) < 2:
        raise BundleError(f"{where}: modality vocabulary must hold at least two distinct names: {m.modalities}")
    lo, opt, hi = (m.batch.get(key) for key in ("min", "opt", "max"))
    if not all(isinstance(v, int) for v in (lo, opt, hi)) or not 1 <= lo <= opt <= hi:
        raise BundleError(f"{where}: batch must be integers with 1 <= min <= opt <= max, got {m.batch}")
    if not any(model.format in ("onnx", "trt-plan") for model in m.models):
        raise BundleError(f"{where}: lists no onnx or trt-plan model")
    size = m.image_size
    n = TARGET_AXIS if has_target_axis(m) else m.n
    expected = {
        "x": ("float32", [m.k, size, size]),
        "src": ("int64", [m.k]),
        "tgt": ("int64", [n]),
        "avail": ("float32", [m.k]),
        "images": ("float32", [n, size, size]),
        "scale": ("float32", [n, size, size]),
        "confidence": ("float32", [m.n, size, size]),
        SOURCE_CHECK: ("float32", [m.k]),
    }
    _check_tensors(m.inputs, INPUT_NAMES, expected, m.batch, where)
    names = sorted(s.name for s in m.outputs)
    contract = next((c for c in (LEGACY_OUTPUT_NAMES, (*OUTPUT_NAMES, SOURCE_CHECK)) if names == sorted(c)),
                    OUTPUT_NAMES)
    _check_tensors(m.outputs, contract, expected, m.batch, where)
    if m.uncertainty:
        check_calibration(m.uncertainty, m.modalities, where)


def _check_tensors(specs: list[TensorSpec], names: tuple[str, ...], expected: dict[str, tuple[str, list[int]]],
                   batch: dict[str, int], where: Path) -> None:
    got = sorted(s.name for s in specs)
    if got != sorted(names):
        raise BundleError(f"{where}: tensors {got} do not match the contract {list(names)}")
    for spec in specs:
        dtype, dims = expected[spec.name]
        lead, rest = spec.shape[0] if spec.shape else None, list(spec.shape[1:])
        lead_ok = isinstance(lead, str) or (lead == batch["min"] == batch["max"])
        if spec.dtype != dtype or rest != dims or not lead_ok:
            raise BundleError(
                f"{where}: tensor {spec.name!r} is {spec.dtype} {spec.shape}, expected {dtype} [batch, "
                f"{', '.join(map(str, dims))}] (batch fixed only when min == max)"
            )
