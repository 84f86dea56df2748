"""Files and folders created atomically get ordinary permissions, not mkstemp's 0600 / mkdtemp's 0700."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from medk2n.fsutil import write_atomic
from medk2n.runtime.outputs import case_output


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_and_case_folders_are_readable_by_others(tmp_path: Path, umask_022) -> None:
    with case_output(tmp_path / "out", "case001", overwrite=False) as folder:
        write_atomic(folder / "run.json", b"{}")
    final = tmp_path / "out" / "case001"
    assert mode(final) == 0o755
    assert mode(final / "run.json") == 0o644
    assert (final / "run.json").read_bytes() == b"{}"
