"""What each extra installs, read from the installed package's own metadata (no index, no network).

The bug this guards: the base install required the CPU `onnxruntime`, and `onnxruntime-gpu`
unpacks into the same `onnxruntime/` folder, so `pip install .[gpu]` gave a CPU-only runtime.
The console commands are run with ONNX Runtime and torch made unimportable, as on a base
install: each either works or prints one line naming the extra it needs.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ORT_BUILDS = {"onnxruntime", "onnxruntime-gpu"}


def resolved_names(*extras: str) -> set[str]:
    """Distribution names medk2n itself asks for with these extras (first level, as pip reads them)."""
    names = set()
    for line in requires("medk2n") or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras or ("",)):
            names.add(req.name.lower())
    return names


def test_the_base_install_brings_no_onnxruntime_build() -> None:
    assert not resolved_names() & ORT_BUILDS
    assert {"numpy", "nibabel", "click", "tqdm"} <= resolved_names()


@pytest.mark.parametrize("extras, build", [
    (("cpu",), "onnxruntime"),
    (("gpu",), "onnxruntime-gpu"),
    (("gpu", "export", "train"), "onnxruntime-gpu"),
    (("cpu", "export", "train", "dev"), "onnxruntime"),
])
def test_each_machine_gets_exactly_one_onnxruntime_build(extras: tuple[str, ...], build: str) -> None:
    assert resolved_names(*extras) & ORT_BUILDS == {build}


def test_no_extra_but_cpu_and_gpu_names_an_onnxruntime_build() -> None:
    for extra in ("data", "train", "export", "trt", "triton", "dev"):
        assert not resolved_names(extra) & ORT_BUILDS, extra


def test_the_trt_extra_floors_cuda_python_at_the_first_release_with_cuda_bindings() -> None:
    (cuda,) = [Requirement(line) for line in requires("medk2n") or [] if Requirement(line).name == "cuda-python"]
    assert not cuda.specifier.contains("12.1.0") and cuda.specifier.contains("12.6.1")


def test_the_triton_extra_is_the_grpc_client_alone() -> None:
    (client,) = [Requirement(line) for line in requires("medk2n") or [] if Requirement(line).name == "tritonclient"]
    assert client.extras == {"grpc"} and client.marker.evaluate({"extra": "triton"})
    assert "nvidia-pytriton" not in resolved_names("triton", "dev")  # the test server is the Makefile's


def installed_closure(*extras: str) -> set[str]:
    """Every installed distribution medk2n[extras] pulls in, through the requirements of each (markers evaluated)."""
    seen, todo = set(), sorted(resolved_names(*extras) - ORT_BUILDS)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            lines = requires(name) or []
        except PackageNotFoundError:  # an optional extra this environment did not install
            continue
        for line in lines:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name.lower().replace("_", "-"))
    return seen


def test_no_dependency_of_the_other_extras_brings_an_onnxruntime_build_of_its_own() -> None:
    """Transitively, over what this environment installed: [gpu] plus [train, export, ...] must not get the CPU
    build by the back door (another package requiring `onnxruntime` would shadow onnxruntime-gpu again)."""
    closure = installed_closure("train", "export", "triton", "dev", "data")
    assert {"hydra-core", "iopath", "sympy"} <= closure  # second-level names: the walk went through the tree
    assert not closure & ORT_BUILDS


# Every console script, with torch and onnxruntime unimportable (a base install).
NO_EXTRAS = """
import sys
for name in ("torch", "onnxruntime", "scipy", "matplotlib", "nilearn", "sam2", "onnx"):
    sys.modules[name] = None
from {module} import {func}
{func}(sys.argv[1:])
"""
NEEDS_ORT = "this command needs ONNX Runtime: pip install 'medk2n[cpu]'"


@pytest.mark.parametrize("entry, args, expect", [
    ("medk2n.runtime.cli:main", ["bundle", "case", "--sources", "t2", "--targets", "t1", "--out", "o"], NEEDS_ORT),
    ("medk2n.export.cli:main", ["ckpt", "--k", "2", "--n", "2", "--out", "b"], "pip install 'medk2n[export]'"),
    ("medk2n.eval.cli:main", ["pred", "data", "--sources", "t2", "--targets", "t1", "--out", "m.json"],
     "this command needs"),
    ("medk2n.train.cli:main", ["--config", "tiny", "--data", "data", "--out", "run"],
     "pip install 'medk2n[train]'"),
    ("medk2n.cli_util:summary_main", [], "pip install 'medk2n[train]'"),
    ("medk2n.data.cli:main", ["phantom", "--out", "ph", "--subjects", "1"], "pip install 'medk2n[data]'"),
    ("medk2n.data.cli:main", ["check", "data"], "data: no cases found"),
    ("medk2n.benchmarks.cli:main", ["-h"], None),
])
def test_each_console_command_works_or_names_its_extra_without_extras(tmp_path: Path, entry: str, args: list,
                                                                       expect: str | None) -> None:
    (tmp_path / "data").mkdir()
    module, func = entry.split(":")
    proc = subprocess.run([sys.executable, "-c", NO_EXTRAS.format(module=module, func=func), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    if expect is None:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and expect in line, line
