"""Tiny-preset models and inputs for the model tests (1 CPU thread, seeded)."""

from __future__ import annotations

import warnings

import pytest
import torch
from model_fixtures import random_text, tiny_config

from medk2n.models import build_model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_model():
    def make(seed: int = 0, **overrides) -> torch.nn.Module:
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build_model(tiny_config(**overrides), text_embeddings=random_text())

    return make


@pytest.fixture
def make_inputs():
    def make(b: int = 2, k: int = 2, n: int = 4, size: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(b, k, size, size, generator=g)
        ids = torch.stack([torch.randperm(7, generator=g) for _ in range(b)])
        src = ids[:, :k].contiguous()
        tgt = ids[:, k:][:, torch.arange(n) % (7 - k)].contiguous()
        return x, src, tgt

    return make
