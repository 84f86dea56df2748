"""Permissions for files and folders created atomically.

`tempfile.mkstemp` and `mkdtemp` create 0600 files and 0700 folders; renamed
into place they would keep those modes, and users sharing an output folder
could not read what medk2n wrote. `chmod_plain` gives them the mode a plain
`open()` or `mkdir()` would have under the current umask.
"""

from __future__ import annotations

import os
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def chmod_plain(path: str | Path) -> None:
    """0666 (files) or 0777 (folders) minus the process umask."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~_umask())
