"""The bundle manifest: the one contract between export and runtime.

Export writes it; the runtime reads it and guesses nothing: tensor names and
shapes, K and N, the modality vocabulary, per-modality normalisation, the
precision of each model file and the sha256 of every file all come from here.
Torch-free: both `medk2n.export` and `medk2n.runtime` import it.

Integrity model: sha256 catches accidents, not attackers. Every bundle file
is hashed in the manifest, and the manifest itself in `manifest.sha256`
beside it, so a truncated copy, a swapped model or a hand-edited
normalisation is refused at load; anyone who can write the folder can also
rewrite both hashes, so a bundle from an untrusted source needs a signature
this project does not provide. Every path the manifest names must stay inside
the bundle folder, and every field is type- and range-checked before use.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medk2n.errors import BundleError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_HASH_NAME = "manifest.sha256"  # sha256 of manifest.json (bundles from before it have none)
MAX_TASK = 64  # K and N above this are not a bundle this project made
IMAGE_SIZE_RANGE = (8, 4096)


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64"
    shape: list[int | str]  # str entries are symbolic (dynamic batch: "batch")


@dataclass
class ModelFile:
    """One runnable artefact in the bundle."""

    file: str  # relative to the bundle folder
    format: str  # "onnx" | "trt-plan"
    precision: str  # "fp32" | "fp16" | "int8"
    # trt-plan only: what the plan is tied to (rebuild when any changes).
    trt_version: str | None = None
    compute_capability: str | None = None


@dataclass
class Manifest:
    k: int
    n: int
    image_size: int
    modalities: list[str]
    normalization: dict[str, dict[str, Any]]  # modality -> NormSpec as dict
    precision: str
    models: list[ModelFile]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch: dict[str, int]  # {"min": 1, "opt": 8, "max": 16}; min == max means fixed
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    parity: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint path/sha, config
    # The roles the model was trained for (config train.sources / train.targets): a request
    # outside them is refused. Absent or empty: any modality of the vocabulary.
    roles: dict[str, list[str]] = field(default_factory=dict)
    # Split-conformal calibration of the `scale` output (export.conformal): what the runtime
    # needs to turn a scale into a half-width at a stated coverage. Empty: none (older bundles,
    # or exported without held-out subjects); the runtime then writes no uncertainty map.
    uncertainty: dict[str, Any] = field(default_factory=dict)
    # The source check's decision line per source contrast, fitted on held-out subjects
    # (export.check_threshold): {"thresholds": {modality: p}, ...}. Empty: the network's p = 0.5.
    source_check: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(data, dict):
            raise BundleError(f"{where}: manifest must be a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"{where}: format_version {version!r} not supported (expected {FORMAT_VERSION})")
        required = ["k", "n", "image_size", "modalities", "normalization", "precision", "models",
                    "inputs", "outputs", "batch", "files"]
        missing = [key for key in required if key not in data]
        if missing:
            raise BundleError(f"{where}: manifest lacks {missing}")
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(data) - known)
        if extra:
            raise BundleError(f"{where}: unknown manifest keys {extra}")
        try:
            fields = dict(data)
            fields["models"] = [ModelFile(**m) for m in data["models"]]
            fields["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
            fields["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
            manifest = cls(**fields)
        except TypeError as exc:
            raise BundleError(f"{where}: malformed manifest: {exc}") from None
        _check_fields(manifest, where)
        missing_norm = [m for m in manifest.modalities if m not in manifest.normalization]
        if missing_norm:
            raise BundleError(f"{where}: no normalisation for modalities {missing_norm}")
        return manifest

    def model(self, fmt: str, precision: str | None = None) -> ModelFile | None:
        for m in self.models:
            if m.format == fmt and (precision is None or m.precision == precision):
                return m
        return None


def _check_fields(m: Manifest, where: str) -> None:
    """Types and ranges of what the runtime sizes arrays and opens files by (a raw TypeError or a huge
    allocation otherwise), and no path that leaves the bundle."""
    def integer(name: str, value: Any, lo: int, hi: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise BundleError(f"{where}: {name} must be an integer in {lo}..{hi}, got {value!r}")

    integer("k", m.k, 1, MAX_TASK)
    integer("n", m.n, 1, MAX_TASK)
    integer("image_size", m.image_size, *IMAGE_SIZE_RANGE)
    if not isinstance(m.modalities, list) or not all(isinstance(x, str) and x for x in m.modalities):
        raise BundleError(f"{where}: modalities must be a list of names, got {m.modalities!r}")
    if not isinstance(m.normalization, dict) or not all(isinstance(v, dict) for v in m.normalization.values()):
        raise BundleError(f"{where}: normalization must map modality -> settings")
    if not isinstance(m.batch, dict) or not isinstance(m.files, dict) or not isinstance(m.uncertainty, dict):
        raise BundleError(f"{where}: batch, files and uncertainty must be JSON objects")
    for key in ("min", "opt", "max"):
        integer(f"batch.{key}", m.batch.get(key), 1, 1 << 16)
    for rel in [*m.files, *(model.file for model in m.models)]:
        check_inside(rel, where)


def check_inside(rel: Any, where: str) -> None:
    """A manifest path must be relative and stay inside the bundle folder."""
    path = Path(str(rel))
    if not isinstance(rel, str) or not rel or path.is_absolute() or ".." in path.parts:
        raise BundleError(f"{where}: file entry {rel!r} leaves the bundle folder; refused")


def training_roles(train: Any) -> dict[str, list[str]]:
    """{"sources": [...], "targets": [...]} of a TrainConfig, each only when training restricted it."""
    return {role: list(getattr(train, role)) for role in ("sources", "targets") if getattr(train, role, None)}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_bundle_files(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every file in the bundle except the manifest itself."""
    bundle_dir = Path(bundle_dir)
    return {
        p.relative_to(bundle_dir).as_posix(): sha256_file(p)
        for p in sorted(bundle_dir.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST_NAME, MANIFEST_HASH_NAME)
    }


def read_manifest(bundle_dir: Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST_NAME
    if not Path(bundle_dir).is_dir():
        raise BundleError(f"{bundle_dir}: bundle folder does not exist")
    if not path.is_file():
        raise BundleError(f"{path}: missing; not a medk2n bundle")
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable manifest: {exc}") from None
    sidecar = Path(bundle_dir) / MANIFEST_HASH_NAME
    if sidecar.is_file():
        recorded = sidecar.read_text().split()
        if not recorded or hashlib.sha256(raw).hexdigest() != recorded[0]:
            raise BundleError(f"{path}: does not match {MANIFEST_HASH_NAME} (edited or corrupted after export)")
    return Manifest.from_dict(data, where=str(path))


def verify_bundle(bundle_dir: Path, manifest: Manifest) -> None:
    """Refuse a tampered or incomplete bundle: every listed file must hash as recorded."""
    bundle_dir = Path(bundle_dir)
    for model in manifest.models:
        if model.file not in manifest.files:
            raise BundleError(f"{bundle_dir / model.file}: model file not listed in manifest hashes")
    for rel, expected in manifest.files.items():
        path = bundle_dir / rel
        if not path.is_file():
            raise BundleError(f"{path}: listed in manifest but missing from bundle")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(f"{path}: sha256 mismatch (bundle modified or corrupt)")


def training_cut_short(training: dict | None) -> tuple[str, str] | None:
    """("step S of M", what stopped it) when a checkpoint's training record says its run was cut short of its
    schedule, else None (it ran to its end, it is a snapshot taken on the way such as `best`, or it predates
    the record)."""
    training = training or {}
    if "stopped_by" not in training:
        return None
    total = training.get("max_steps")
    return f"step {training.get('step')}" + (f" of {total}" if total else ""), training["stopped_by"]
