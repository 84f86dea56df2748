"""Open a checkpoint folder or a bundle folder as one kind of predictor.

Both come back as a runtime `Synthesizer`, so a PyTorch checkpoint and its
exported FP32/FP16/INT8 bundles are scored by the same preprocessing, slice
inferer and restoration code, and export accuracy is measured like for like.
"""

from __future__ import annotations

from pathlib import Path

from medk2n.manifest import MANIFEST_NAME, Manifest, ModelFile, TensorSpec, sha256_file, training_roles
from medk2n.runtime.synthesizer import Synthesizer


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def open_predictor(path: str | Path, k: int, n: int, backend: str = "auto", precision: str | None = None,
                   device: str = "cpu", batch_size: int | None = None, coverage: float = 0.9) -> Synthesizer:
    """A Synthesizer for `path` taking up to `k` sources and `n` targets (intervals at `coverage`)."""
    if is_bundle(path):
        return Synthesizer(path, backend=backend, precision=precision, batch_size=batch_size, coverage=coverage)
    return checkpoint_synthesizer(path, k, n, device=device, batch_size=batch_size)


def checkpoint_synthesizer(path: str | Path, k: int, n: int, device: str = "cpu",
                           batch_size: int | None = None,
                           check_thresholds: dict[str, float] | None = None) -> Synthesizer:
    """The checkpoint behind the runtime's pipeline; `check_thresholds` stands in for the per-contrast source-check
    lines an export would fit (export.check_threshold), without which the check's p = 0.5 applies."""
    from medk2n.models.medk2n import has_source_check
    from medk2n.models.runner import TorchRunner
    from medk2n.runtime.backends import BackendChoice
    from medk2n.runtime.bundle import Bundle
    from medk2n.train.checkpoint import WEIGHTS, load_checkpoint

    model, cfg, meta = load_checkpoint(path, device=device)
    mc = cfg.model
    manifest = Manifest(
        k=k, n=n, image_size=mc.image_size, modalities=list(mc.modalities),
        normalization={m: vars(spec) for m, spec in mc.normalization.items()}, precision="fp32",
        # A checkpoint has the scale output but no conformal calibration: its scale is scored, no interval.
        models=[], inputs=[], outputs=[TensorSpec(name, "float32", []) for name in
                                       ("images", "scale", *(("source_check",) if has_source_check(model) else ()))],
        batch={"min": 1, "opt": 8, "max": 1024},
        roles=training_roles(cfg.train),
        source={"weights_sha256": sha256_file(Path(path) / WEIGHTS), "training": meta},
        source_check={"thresholds": dict(check_thresholds)} if check_thresholds else {},
    )
    bundle = Bundle(path=Path(path), manifest=manifest, norms=dict(mc.normalization))
    runner = TorchRunner(model, device=device)
    choice = BackendChoice(f"torch-{device}", ModelFile(file=str(path), format="torch", precision="fp32"),
                           "checkpoint evaluated in PyTorch")
    return Synthesizer.from_runner(bundle, runner, choice, batch_size=batch_size)
