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

from medk2n.runtime.runners import THREADS_ENV


def pytest_configure(config) -> None:
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not workers.isdigit() or int(workers) < 2 or THREADS_ENV in os.environ:
        return  # one process, or the caller chose the threads
    threads = max(1, (os.cpu_count() or 1) // int(workers))
    os.environ[THREADS_ENV] = str(threads)
    if "torch" in sys.modules:  # imported before this ran (a plugin): it has read the variable already
        sys.modules["torch"].set_num_threads(threads)
