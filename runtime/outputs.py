"""Output folders that appear whole or not at all.

A case is written into a hidden temporary folder inside OUT and renamed to
OUT/<case> only when every file is there, so a failed or interrupted case
leaves nothing behind. An existing OUT/<case> is refused unless the user
says `--overwrite`, and even then a folder that holds the inputs or the
bundle is never replaced: nothing a user gave is ever lost.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from medk2n.errors import DataError
from medk2n.fsutil import make_temp_dir


def check_output_free(final: Path, overwrite: bool) -> None:
    if final.exists() and not overwrite:
        raise DataError(f"{final}: output folder already exists; pass --overwrite to replace it")


def check_no_clobber(finals: Iterable[Path], protected: Iterable[Path]) -> None:
    """Refuse outputs that would replace an input folder (or a folder holding one)."""
    keep = [p.resolve() for p in protected]
    for final in finals:
        target = final.resolve()
        for path in keep:
            if target == path or target in path.parents:
                raise DataError(f"{final}: output folder would replace input {path}; choose another --out")


@contextmanager
def case_output(out_dir: Path, name: str, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes OUT/<name>, on failure it is removed."""
    final = out_dir / name
    check_output_free(final, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out_dir, name, ".partial")
    try:
        yield tmp
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.rename(tmp, final)
        return
    # --overwrite: move the old folder aside first so OUT/<case> is never half old, half new.
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    os.rename(final, old / final.name)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
