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


# Montage tiles are enlarged (nearest neighbour, integer factor) to at least this many pixels a side,
# so a 64x64 model slice is readable on a screen and its labels fit under it.
MIN_TILE = 160
TEXT_SCALE = 2
PAD = 4


def _text_strip(lines: Sequence[str], width: int, scale: int = TEXT_SCALE) -> np.ndarray:
    """White text lines on black, `width` pixels wide; lines too long are cut to fit."""
    from medk2n.runtime.font import GLYPH_HEIGHT, fit_text, render

    line_height = GLYPH_HEIGHT * scale + PAD
    strip = np.zeros((_strip_height(len(lines), scale), width), dtype=np.uint8)
    for i, line in enumerate(lines):
        ink = render(fit_text(line, width - 2 * PAD, scale), scale)
        y = PAD + i * line_height
        strip[y:y + ink.shape[0], PAD:PAD + ink.shape[1]][ink] = 255
    return strip


def _strip_height(lines: int, scale: int = TEXT_SCALE) -> int:
    from medk2n.runtime.font import GLYPH_HEIGHT

    return lines * (GLYPH_HEIGHT * scale + PAD) + PAD


def _wrap(text: str, width: int, scale: int = TEXT_SCALE) -> list[str]:
    from medk2n.runtime.font import GLYPH_WIDTH

    per_line = max(1, (width - 2 * PAD) // (scale * (GLYPH_WIDTH + 1)))
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > per_line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def labelled_grid(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], notes: Sequence[str] = (),
                  gap: int = 2) -> np.ndarray:
    """Rows of (row title, [(caption, [0,1] tile), ...]) -> one uint8 image with the labels drawn in.

    Tiles are enlarged to at least MIN_TILE pixels, each row gets its title above it and each tile its
    caption; `notes` (e.g. the windowing) are wrapped under the grid."""
    height, width = rows[0][1][0][1].shape
    factor = max(1, -(-MIN_TILE // max(height, width)))
    tile_h, tile_w = height * factor, width * factor
    n_cols = max(len(tiles) for _, tiles in rows)
    canvas_w = max(n_cols * (tile_w + gap) - gap, 1)
    parts = []
    for title, tiles in rows:
        parts.append(_text_strip([title], canvas_w))
        captions = np.zeros((_strip_height(1), canvas_w), dtype=np.uint8)
        row = np.zeros((tile_h, canvas_w), dtype=np.uint8)
        for c, (caption, tile) in enumerate(tiles):
            x = c * (tile_w + gap)
            captions[:, x:x + tile_w] = _text_strip([caption], tile_w)
            big = np.clip(tile, 0.0, 1.0).repeat(factor, axis=0).repeat(factor, axis=1)
            row[:, x:x + tile_w] = np.round(big * 255).astype(np.uint8)
        parts += [captions, row, np.zeros((gap * 2, canvas_w), dtype=np.uint8)]
    lines = [line for note in notes for line in _wrap(note, canvas_w, 1)]
    if lines:
        parts.append(_text_strip(lines, canvas_w, scale=1))
    return np.concatenate(parts, axis=0)
