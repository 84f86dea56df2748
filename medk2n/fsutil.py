"""Files and folders that appear whole or not at all, with ordinary permissions.

Everything medk2n writes goes to a temporary sibling that is renamed into
place. `tempfile.mkstemp` and `mkdtemp` create 0600 files and 0700 folders;
renamed as they are, users sharing an output folder could not read them, so
`chmod_plain` gives them the mode a plain `open()` or `mkdir()` would have
under the current umask. Torch-free: the runtime uses it too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def chmod_plain(path: str | Path) -> None:
    """0666 (files) or 0777 (folders) minus the process umask."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes to a temporary sibling, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        chmod_plain(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_temp_dir(parent: str | Path, name: str, suffix: str = "") -> Path:
    """A hidden folder `.<name>.*<suffix>` in `parent`, to be renamed into place when complete."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=suffix, dir=parent))
    chmod_plain(tmp)
    return tmp


def swap_in_dir(tmp: str | Path, directory: str | Path) -> None:
    """Rename the finished folder `tmp` to `directory`, swapping an existing one out first, so that one of
    the two is always complete on disk (never a half-overwritten folder)."""
    tmp, directory = Path(tmp), Path(directory)
    if not directory.exists():
        os.replace(tmp, directory)
        return
    # The old folder goes into a fresh hidden folder of its own: a fixed name such as `.NAME.old` could be
    # something of the user's, or another run's swap in progress.
    aside = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
    os.replace(directory, aside / directory.name)
    os.replace(tmp, directory)
    shutil.rmtree(aside, ignore_errors=True)
