"""Fixtures of the data-layer tests; the volumes themselves live in data_fixtures.py."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from data_fixtures import head, save_nifti


@pytest.fixture
def write_case() -> Callable[..., Path]:
    """write_case(folder, {"flair": array_or_None, ...}, affine=None): None -> a default head volume."""

    def write(folder: Path, files: dict[str, np.ndarray | None], affine: np.ndarray | None = None) -> Path:
        for i, (name, array) in enumerate(files.items()):
            name = name if name.lower().endswith((".nii", ".nii.gz")) else f"{name}.nii.gz"
            save_nifti(folder / name, head(seed=i) * (i + 1) if array is None else array, affine)
        return folder

    return write
