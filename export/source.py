"""The checkpoint an export starts from, checked against the requested K and N.

The config is read and the task size validated before the model is built, so
an impossible request fails in milliseconds. The manifest's `source` section
records the checkpoint's hashes and full config, so a bundle can always be
traced back to the weights it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from medk2n.config import ExperimentConfig
from medk2n.errors import ExportError
from medk2n.manifest import sha256_file
from medk2n.train.checkpoint import CONFIG, WEIGHTS, load_checkpoint, read_checkpoint_config


@dataclass
class Source:
    model: nn.Module
    config: ExperimentConfig
    record: dict[str, Any]  # manifest.source


def check_task_size(modalities: list[str], k: int, n: int, where: Path) -> None:
    """K sources and N targets must be distinct modalities of the vocabulary."""
    vocab = len(modalities)
    if k < 1 or n < 1:
        raise ExportError(f"--k {k} --n {n}: both must be at least 1")
    if k + n > vocab:
        raise ExportError(
            f"{where}: --k {k} --n {n} needs {k + n} distinct modalities but the checkpoint's "
            f"vocabulary has {vocab} ({', '.join(modalities)})"
        )


def load_source(checkpoint: Path, k: int, n: int) -> Source:
    checkpoint = Path(checkpoint)
    cfg, _ = read_checkpoint_config(checkpoint)
    check_task_size(cfg.model.modalities, k, n, checkpoint)
    model, cfg, meta = load_checkpoint(checkpoint)
    record = {
        "checkpoint": checkpoint.resolve().name,
        "weights_sha256": sha256_file(checkpoint / WEIGHTS),
        "config_sha256": sha256_file(checkpoint / CONFIG),
        "config": cfg.to_dict(),
        "training": meta,
    }
    return Source(model=model, config=cfg, record=record)
