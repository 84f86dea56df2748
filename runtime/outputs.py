"""Output folders that appear whole or not at all.

A case is written into a hidden temporary folder inside OUT and renamed to
OUT/<case> only when every file is there, so a failed or interrupted case
leaves nothing behind. An existing OUT/<case> is refused unless the user
says `--overwrite`, and even then a folder that holds the inputs or the
bundle is never replaced: nothing a user gave is ever lost.

Publication is exclusive: the existence check and the rename happen under an
advisory lock on OUT itself (flock on the directory, no lock file left
behind), so two runs writing into one OUT cannot both pass the check; the
later one finds the folder and refuses, unless it was given `--overwrite`.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from medk2n.errors import DataError, RunFault
from medk2n.fsutil import make_temp_dir, swap_in_dir

# OS errors after which no other case can be written either: the run stops instead of failing each case.
RUN_FAULT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


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
    remove_stale_partials(out_dir, name)
    tmp = None
    try:
        tmp = make_temp_dir(out_dir, f"{name}.{os.getpid()}", ".partial")
        yield tmp
        with publish_lock(out_dir):
            if final.exists() and not overwrite:
                raise DataError(f"{final}: output folder appeared while this run worked on it (another run "
                                "writing to the same --out?); kept it, pass --overwrite to replace it")
            swap_in_dir(tmp, final)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_own_partials(out_dir: Path, names: Iterable[str]) -> None:
    """On interruption: every partial folder this process made for `names` (a signal can land between
    a folder's creation and the code that would remove it)."""
    for name in names:
        for path in out_dir.glob(f"{glob.escape(f'.{name}.{os.getpid()}.')}*.partial"):
            shutil.rmtree(path, ignore_errors=True)


def remove_stale_partials(out_dir: Path, name: str) -> list[Path]:
    """Remove `.<name>.<pid>.*.partial` folders left by runs that were killed (their pid is gone).

    A partial folder of a live process, another run working now, is never touched.
    """
    removed = []
    prefix = f".{name}."
    for path in out_dir.glob(f"{glob.escape(prefix)}*.partial"):
        pid = path.name[len(prefix):].split(".", 1)[0]
        if path.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def check_output_writable(out_dir: Path) -> None:
    """Before any work: OUT can be created and written (a whole-run fault, one line naming it)."""
    probe = None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = make_temp_dir(out_dir, "write-check")
    except OSError as exc:
        raise RunFault(f"{out_dir}: output folder is not writable ({exc.strerror or exc})") from None
    finally:
        if probe is not None:
            probe.rmdir()


@contextmanager
def publish_lock(out_dir: Path) -> Iterator[None]:
    """Exclusive advisory lock on the OUT folder for the check-and-rename of one case."""
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
