"""A small phantom dataset shared by the benchmark runs that train (quality, robustness)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    """4 subjects at 4 mm: enough for a 3/1 split; tests must not write into it."""
    from medk2n.data.phantom import generate_dataset

    root = tmp_path_factory.mktemp("bench-phantom") / "data"
    generate_dataset(root, subjects=4, seed=5, spacing=4.0)
    return root
