"""A tiny PNG writer (zlib + struct) for the per-case montage.

The runtime must install with numpy, nibabel and onnxruntime alone, so no
PIL/matplotlib: an 8-bit greyscale PNG is a signature, an IHDR chunk, the
zlib-compressed rows (each prefixed by filter type 0) and IEND, every chunk
closed by its CRC-32 (PNG spec, sections 5 and 11).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from medk2n.fsutil import write_atomic

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(gray: np.ndarray) -> bytes:
    """uint8 [H, W] -> PNG bytes (greyscale, 8 bit, no interlace)."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"encode_png needs a 2-D uint8 array, got {gray.dtype} {gray.shape}")
    height, width = gray.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)
    rows[:, 1:] = gray
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _chunk(b"IEND", b"")


def write_png(path: str | Path, gray: np.ndarray) -> Path:
    path = Path(path)
    write_atomic(path, encode_png(gray))
    return path


def tile_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Rows of equally sized [0,1] tiles -> one uint8 image, tiles separated by `gap` black pixels."""
    height, width = rows[0][0].shape
    n_cols = max(len(row) for row in rows)
    canvas = np.zeros((len(rows) * (height + gap) - gap, n_cols * (width + gap) - gap), dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            y, x = r * (height + gap), c * (width + gap)
            canvas[y:y + height, x:x + width] = np.round(np.clip(tile, 0.0, 1.0) * 255).astype(np.uint8)
    return canvas
