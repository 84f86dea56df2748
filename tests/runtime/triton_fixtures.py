"""A real Triton server on the CPU for the triton backend's tests (PyTriton's bundled tritonserver).

The server is `medk2n.benchmarks.triton_local`'s stand-in, run under the
interpreter named by MEDK2N_TRITON_PYTHON (`make test` points it at
.venv-triton, a venv made from Debian's python3.11: the wheel's Python backend
stub needs a shared libpython, which pyenv builds lack). Where no such
interpreter is given, or the server does not come up, the tests skip with the
reason, except under MEDK2N_REQUIRE_TRITON=1 (CI), where that is a failure:
CI must run them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from medk2n.benchmarks.triton_local import LocalServer, start_server
from medk2n.errors import MedK2NError


def unavailable(reason: str) -> None:
    """Skip, or fail where the Triton tests are required to run (CI)."""
    if os.environ.get("MEDK2N_REQUIRE_TRITON") == "1":
        pytest.fail(f"Triton server required (MEDK2N_REQUIRE_TRITON=1) but unavailable: {reason}")
    pytest.skip(reason)


def local_server(repo: Path, workdir: Path, *extra: str) -> LocalServer:
    python = os.environ.get("MEDK2N_TRITON_PYTHON")
    if not python:
        unavailable("no server interpreter: set MEDK2N_TRITON_PYTHON (make test builds .venv-triton)")
    try:
        return start_server(Path(python), repo, workdir, *extra)
    except MedK2NError as exc:
        unavailable(str(exc))
        raise


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, LocalServer]]:
    """(bundle, repository, running server) for a K=2/N=4 fake bundle with a target axis, batch 1..8, and
    a source check output."""
    from runtime_fixtures import make_bundle

    from medk2n.export.triton_repo import TritonOptions, write_repository

    root = tmp_path_factory.mktemp("triton")
    bundle = make_bundle(root / "bundle", k=2, n=4, target_axis=True, batch={"min": 1, "opt": 4, "max": 8},
                         source_check=True)
    repo = root / "repo"
    write_repository(TritonOptions(bundle=bundle, out=repo, kind="cpu"))
    with local_server(repo, root) as server:
        yield bundle, repo, server
