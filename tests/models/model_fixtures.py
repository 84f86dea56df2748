"""Helpers shared by the model tests (imported by conftest.py and test modules)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medk2n.config import ModelConfig, preset


def tiny_config(**overrides) -> ModelConfig:
    cfg = preset("tiny").model
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def random_text(vocab: int = 7, dim: int = 384) -> torch.Tensor:
    """Stand-in for the sentence embeddings (the real ones are tested in test_models_text.py)."""
    return F.normalize(torch.randn(vocab, dim, generator=torch.Generator().manual_seed(1)), dim=1)


def smooth_blobs(n: int, size: int, generator: torch.Generator, count: int = 4) -> torch.Tensor:
    """[n,size,size] sums of random Gaussian blobs scaled to [0,1]: smooth, image-like slices."""
    axis = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    centres = torch.rand(n, count, 2, generator=generator)
    amplitude = torch.rand(n, count, 1, 1, generator=generator)
    sigma = 0.08 + 0.12 * torch.rand(n, count, 1, 1, generator=generator)
    dist = (xx - centres[..., 0, None, None]) ** 2 + (yy - centres[..., 1, None, None]) ** 2
    image = (amplitude * torch.exp(-dist / (2 * sigma**2))).sum(dim=1)
    return image / image.amax(dim=(1, 2), keepdim=True)


def seeded_model(cfg: ModelConfig, seed: int = 0) -> tuple[torch.nn.Module, torch.Generator]:
    """A model built under a fixed torch seed (warnings about the untrained encoder hidden), and a
    generator for the test's own draws, so a short training run replays exactly."""
    import warnings

    from medk2n.models import build_model

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, text_embeddings=random_text())
    return model, torch.Generator().manual_seed(seed)
