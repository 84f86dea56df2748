"""Suite-wide: pytest-xdist workers share the machine's cores instead of each taking all of them.

`make test` runs one worker per core. Left alone, every worker's PyTorch and ONNX Runtime start one
thread per core, so W workers run W x cores spinning threads on the cores: each waits on threads
that have no core (two 2-thread training processes on 2 cores took 15x longer a step each). Each worker gets
cores / workers threads through OMP_NUM_THREADS, which PyTorch, the runtime (runners.default_threads)
and every subprocess a test starts (the CLIs, the Triton server) read.
"""

from __future__ import annotations

import os
import sys


def worker_threads(cores: int | None, workers: int) -> int:
    return max(1, (cores or 1) // max(1, workers))


def pytest_configure(config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not workers.isdigit() or int(workers) < 2 or "OMP_NUM_THREADS" in os.environ:
        return  # one process, or the caller chose the threads
    threads = worker_threads(os.cpu_count(), int(workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if "torch" in sys.modules:  # imported before this ran (a plugin): it has read the variable already
        sys.modules["torch"].set_num_threads(threads)
