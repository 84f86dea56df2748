"""Shared fixtures: one tiny checkpoint, one phantom dataset, one exported K=2/N=4 bundle.

Exports cost seconds each on a 2-core box, so the FP32 bundle is built once
per session and every test that only reads a bundle shares it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medk2n.config import preset
from medk2n.data.phantom import generate_dataset
from medk2n.export.calibration import phantom_spacing
from medk2n.export.exporter import ExportOptions, ExportResult, export_bundle
from medk2n.models import build_model
from medk2n.train.checkpoint import load_checkpoint, save_checkpoint

CALIB_SLICES = 8


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    cfg = preset("tiny")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best", model, cfg, {"step": 0})


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The checkpoint's model, eval mode, as PyTorch reference (never merged)."""
    model, cfg, _ = load_checkpoint(tiny_checkpoint)
    return model.eval(), cfg


@pytest.fixture(scope="session")
def phantom_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "data"
    generate_dataset(root, subjects=3, seed=0, spacing=phantom_spacing(preset("tiny").model.image_size))
    return root


@pytest.fixture(scope="session")
def make_options(tiny_checkpoint, phantom_data):
    """ExportOptions for a K=2/N=4 export of the tiny checkpoint, calibrated on the phantom data."""

    def make(out: Path, **overrides) -> ExportOptions:
        fields = dict(checkpoint=tiny_checkpoint, out=out, k=2, n=4, calib=phantom_data, calib_slices=CALIB_SLICES)
        fields.update(overrides)
        return ExportOptions(**fields)

    return make


@pytest.fixture(scope="session")
def fp32_bundle(make_options, tmp_path_factory) -> ExportResult:
    return export_bundle(make_options(tmp_path_factory.mktemp("bundles") / "fp32"))
