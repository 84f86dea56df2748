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


def test_a_folder_swap_keeps_a_neighbour_named_like_the_old_copy(tmp_path: Path) -> None:
    """swap_in_dir sets the old folder aside under a fresh name: a user's `.case.old` is not the swap's to delete."""
    from medk2n.fsutil import swap_in_dir

    final, theirs = tmp_path / "case", tmp_path / ".case.old"
    for folder, text in ((final, "old"), (theirs, "keep")):
        folder.mkdir()
        (folder / "a.txt").write_text(text)
    new = tmp_path / "staged"
    new.mkdir()
    (new / "a.txt").write_text("new")
    swap_in_dir(new, final)
    assert (final / "a.txt").read_text() == "new" and (theirs / "a.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".case.old", "case"]
