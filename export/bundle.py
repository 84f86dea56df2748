"""Bundle folder: atomic publication, manifest with hashes, manifest copy inside each ONNX.

A bundle is built in a hidden sibling folder and renamed into place only once
complete, so a failed or interrupted export leaves nothing at `--out`. The
manifest also travels inside every ONNX file's `metadata_props` (as JSON), so
a model file copied out of its bundle still says what it is; that copy has
no `files` hashes (a file cannot contain its own hash) and no `created` time,
which keeps the ONNX bytes identical across repeated exports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import onnx

from medk2n.errors import ExportError
from medk2n.fsutil import make_temp_dir, swap_in_dir
from medk2n.manifest import MANIFEST_HASH_NAME, MANIFEST_NAME, Manifest, hash_bundle_files

METADATA_KEY = "medk2n.manifest"


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing non-empty folder (or any file) unless asked to."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out}: folder is not empty (pass --overwrite to replace it)")


@contextmanager
def staging(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder next to `out`; removed on any failure, including Ctrl-C."""
    out = Path(out)
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, out.name, ".partial")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished bundle into place; an old bundle is swapped out, never half-overwritten."""
    check_target(out, overwrite)
    swap_in_dir(tmp, out)


def embed_manifest(onnx_path: Path, manifest: Manifest) -> None:
    """Put the manifest (JSON, without hashes and creation time) into the ONNX metadata_props."""
    text = dataclasses.replace(manifest, files={}, created="").to_json()
    model = onnx.load(str(onnx_path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=text)
    onnx.save(model, str(onnx_path))


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Embed the manifest in each ONNX model, hash every file, then write manifest.json last."""
    for model in manifest.models:
        if model.format == "onnx":
            embed_manifest(folder / model.file, manifest)
    final = dataclasses.replace(
        manifest,
        files=hash_bundle_files(folder),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    text = (final.to_json() + "\n").encode()
    (folder / MANIFEST_NAME).write_bytes(text)
    (folder / MANIFEST_HASH_NAME).write_text(f"{hashlib.sha256(text).hexdigest()}  {MANIFEST_NAME}\n")
    return final
