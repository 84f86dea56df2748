"""The runtime needs numpy, nibabel and onnxruntime only: never torch (nor scipy/matplotlib/PIL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
from runtime_fixtures import SHAPE, write_case

BLOCKED = ("torch", "scipy", "matplotlib", "PIL")

IMPORT_ALL = f"""
import importlib, pkgutil, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # any import of these now fails
import medk2n.runtime
modules = [m.name for m in pkgutil.walk_packages(medk2n.runtime.__path__, "medk2n.runtime.")]
for name in modules:
    importlib.import_module(name)
print("imported", len(modules))
from medk2n.runtime.cli import main
main(["-h"])
"""

RUN_BLOCKED = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None
from medk2n.runtime.cli import main
main(sys.argv[1:])
"""


def python(*args: str, executable: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=120)


def test_every_runtime_module_imports_without_torch() -> None:
    proc = python("-c", IMPORT_ALL)
    assert proc.returncode == 0, proc.stderr
    assert "imported" in proc.stdout and "--sources" in proc.stdout
    count = int(proc.stdout.split("imported", 1)[1].split()[0])
    assert count >= 10  # runners, trt_plan, bundle, backends, inferer, synthesizer, pipeline, outputs, png, cli


def test_a_whole_run_needs_no_torch(tmp_path: Path, bundle_dir: Path) -> None:
    case = write_case(tmp_path / "case001", "lps")
    out = tmp_path / "out"
    proc = python("-c", RUN_BLOCKED, str(bundle_dir), str(case), "--sources", "t2,flair", "--targets", "dwi,adc",
                  "--out", str(out), "--png")
    assert proc.returncode == 0, proc.stderr
    assert nib.load(out / "case001" / "adc.nii.gz").shape == SHAPE


def test_base_install_runs_the_cli(tmp_path: Path, bundle_dir: Path) -> None:
    base = os.environ.get("MEDK2N_BASE_PYTHON")
    if not base:
        pytest.skip("MEDK2N_BASE_PYTHON is unset (`make test` points it at .venv-base, a plain `pip install .[cpu]`)")
    probe = python("-c", "import importlib.util as u; print(u.find_spec('torch') is None)", executable=base)
    assert probe.stdout.strip() == "True", "torch must not be installed in the base environment"
    case = write_case(tmp_path / "case001", "oblique")
    out = tmp_path / "out"
    proc = subprocess.run([base, "-m", "medk2n.runtime.cli", str(bundle_dir), str(case), "--sources", "t2,flair",
                           "--targets", "dwi,adc", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert nib.load(out / "case001" / "dwi.nii.gz").shape == SHAPE


@pytest.mark.parametrize("entry, args, extra", [
    ("medk2n.cli_util:summary_main", [], "train"),
    ("medk2n.train.cli:main", ["--config", "tiny", "--data", "data", "--out", "run"], "train"),
])
def test_base_install_names_the_extra_a_command_needs(tmp_path: Path, entry: str, args: list, extra: str) -> None:
    base = os.environ.get("MEDK2N_BASE_PYTHON")
    if not base:
        pytest.skip("MEDK2N_BASE_PYTHON is unset (`make test` points it at .venv-base, a plain `pip install .[cpu]`)")
    module, func = entry.split(":")
    (tmp_path / "data").mkdir()
    proc = subprocess.run([base, "-c", f"import sys; from {module} import {func}; {func}(sys.argv[1:])", *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: this command needs the [{extra}] extra: pip install 'medk2n[{extra}]' (no module named 'torch')"]


def test_a_missing_module_of_no_extra_is_not_disguised() -> None:
    from medk2n.cli_util import missing_extra

    assert missing_extra(ModuleNotFoundError("x", name="torch.nn")) is not None
    assert missing_extra(ModuleNotFoundError("x", name="numpy")) is None


def test_the_library_imports_from_the_source_root() -> None:
    """A regular (non-editable) install, used from inside the clone: the source folder medk2n/ shadows the
    installed package there, and export/, runtime/, benchmarks/ are not inside it."""
    base = os.environ.get("MEDK2N_BASE_PYTHON")
    if not base:
        pytest.skip("MEDK2N_BASE_PYTHON is unset (`make test` points it at .venv-base, a plain `pip install .[cpu]`)")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([base, "-c", "import sys, medk2n.runtime.synthesizer as s; print(s.__file__); "
                           "print('torch' in sys.modules)"], capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr
    location, torch_loaded = proc.stdout.split()
    assert Path(location) == root / "runtime" / "synthesizer.py" and torch_loaded == "False"
