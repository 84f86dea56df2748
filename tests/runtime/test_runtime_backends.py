"""Backend choice and runners on the providers this machine has (CPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from runtime_fixtures import make_bundle

from medk2n.errors import BundleError, MedK2NError
from medk2n.runtime.backends import (
    BackendChoice,
    backend_chain,
    make_runner,
    open_runner,
    select_backend,
    tensorrt_ep_options,
)
from medk2n.runtime.bundle import load_bundle
from medk2n.runtime.runners import OrtRunner, default_threads
from medk2n.runtime.trt_plan import TrtPlanRunner

needs_no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                                       reason="tensorrt is installed here")
cpu_only = pytest.mark.skipif(ort.get_available_providers().count("CUDAExecutionProvider") > 0,
                              reason="this onnxruntime has CUDA")
# Asking ORT for a provider it lacks is the point of these tests; its warning is expected.
provider_warning = pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")


def feed(batch: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.random((batch, 2, 32, 32), dtype=np.float32),
        "src": np.tile(np.array([1, 2], np.int64), (batch, 1)),
        "tgt": np.tile(np.array([3, 4], np.int64), (batch, 1)),
        "avail": np.ones((batch, 2), np.float32),
    }


@cpu_only
def test_auto_picks_cpu_here_and_says_why(bundle_dir: Path) -> None:
    choice = select_backend("auto", load_bundle(bundle_dir))
    assert choice.backend == "cpu"
    assert "CPUExecutionProvider" in choice.describe()


@cpu_only
@pytest.mark.parametrize("backend, provider", [("cuda", "CUDAExecutionProvider"),
                                               ("tensorrt", "TensorrtExecutionProvider")])
def test_named_provider_that_is_missing_is_a_clear_error(bundle_dir: Path, backend: str, provider: str) -> None:
    with pytest.raises(MedK2NError, match=rf"{provider}.*medk2n\[gpu\]"):
        backend_chain(backend, load_bundle(bundle_dir))


def test_missing_precision_names_what_the_bundle_has(bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match=r"no onnx model at precision int8 \(bundle has: fp32\)"):
        backend_chain("cpu", load_bundle(bundle_dir), "int8")


@needs_no_tensorrt
def test_trt_plan_backend_without_tensorrt_names_the_extra(tmp_path: Path) -> None:
    bundle = load_bundle(make_bundle(tmp_path / "b", plan=True))
    with pytest.raises(MedK2NError, match=r"\[trt\] extra \(pip install medk2n\[trt\]\)"):
        backend_chain("trt-plan", bundle)
    with pytest.raises(MedK2NError, match=r"medk2n\[trt\]"):
        TrtPlanRunner(bundle.path / "model.plan").activate()


@needs_no_tensorrt
@cpu_only
def test_auto_skips_a_plan_it_cannot_run(tmp_path: Path) -> None:
    chain = backend_chain("auto", load_bundle(make_bundle(tmp_path / "b", plan=True)))
    assert [c.backend for c in chain] == ["cpu"]


def test_ort_runner_interface(bundle_dir: Path) -> None:
    runner = OrtRunner(bundle_dir / "model.onnx", ["CPUExecutionProvider"], threads=1, name="ort-cpu")
    assert runner.last_inference_time() is None
    with runner:
        out = runner.infer(feed())
        assert runner.providers == ["CPUExecutionProvider"]
    assert not runner.is_active
    assert set(out) == {"images", "scale"}
    assert out["images"].shape == (3, 2, 32, 32)
    assert runner.last_inference_time() is not None
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        runner.infer(feed())


@cpu_only
@provider_warning
def test_ort_runner_refuses_a_silent_cpu_fallback(bundle_dir: Path) -> None:
    runner = OrtRunner(bundle_dir / "model.onnx", [("CUDAExecutionProvider", {}), "CPUExecutionProvider"])
    with pytest.raises(MedK2NError, match="could not start CUDAExecutionProvider"):
        runner.activate()


def test_unloadable_model_is_a_bundle_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(BundleError, match="ONNX Runtime cannot load the model"):
        OrtRunner(bad, ["CPUExecutionProvider"]).activate()


@cpu_only
@provider_warning
def test_open_runner_falls_back_along_the_chain(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    model = bundle.model("onnx", "fp32")
    chain = [BackendChoice("cuda", model, "test"), BackendChoice("cpu", model, "test")]
    runner, choice = open_runner(chain, bundle)
    try:
        assert choice.backend == "cpu" and runner.is_active
    finally:
        runner.deactivate()


def test_tensorrt_ep_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = load_bundle(make_bundle(tmp_path / "b"))
    model = bundle.model("onnx", "fp32")
    options = tensorrt_ep_options(bundle, model)
    cache = Path(options["trt_engine_cache_path"])
    assert cache.parent == tmp_path / "cache" / "medk2n" / "trt" and cache.is_dir()
    assert cache.name.startswith(bundle.sha256(model)[:16])
    assert options["trt_timing_cache_path"] == str(cache)
    assert (options["trt_fp16_enable"], options["trt_int8_enable"]) == ("False", "False")
    assert options["trt_profile_min_shapes"] == "x:1x2x32x32,src:1x2,tgt:1x2,avail:1x2"
    assert options["trt_profile_max_shapes"] == "x:8x2x32x32,src:8x2,tgt:8x2,avail:8x2"
    runner = make_runner(BackendChoice("tensorrt", model, "test"), bundle)
    assert [p if isinstance(p, str) else p[0] for p in runner.requested] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert runner.requested[1][1]["use_tf32"] == "0"


def test_fixed_batch_has_no_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bundle = load_bundle(make_bundle(tmp_path / "b", batch={"min": 4, "opt": 4, "max": 4}))
    assert "trt_profile_opt_shapes" not in tensorrt_ep_options(bundle, bundle.model("onnx", "fp32"))


def test_two_onnxruntime_builds_installed_at_once_are_named_with_the_fix(monkeypatch):
    """onnxruntime and onnxruntime-gpu share one folder; with both installed the GPU build can silently lose."""
    from importlib import metadata

    from medk2n.runtime import backends

    def pretend(installed):
        def distribution(name):
            if name not in installed:
                raise metadata.PackageNotFoundError(name)
            return object()
        monkeypatch.setattr(metadata, "distribution", distribution)

    pretend({"onnxruntime", "onnxruntime-gpu"})
    assert backends.installed_ort_builds() == ["onnxruntime", "onnxruntime-gpu"]
    note = backends.ort_conflict_note()
    assert note.startswith("onnxruntime and onnxruntime-gpu are installed together and overwrite each other's files")
    assert note.endswith("keep one: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")
    pretend({"onnxruntime"})
    assert backends.ort_conflict_note() is None


@pytest.mark.parametrize("value, expected", [("3", 3), (" 2 ", 2), ("4,2", 4), ("0", None), ("-1", None),
                                             ("abc", None), ("", None), (None, None)])
def test_default_threads_reads_omp_num_threads(monkeypatch, value, expected) -> None:
    if value is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert default_threads() == expected


@cpu_only
def test_ort_runner_takes_its_threads_from_the_environment_unless_asked(bundle_dir: Path, monkeypatch) -> None:
    """A job given one core (OMP_NUM_THREADS=1) must not start a spinning thread per core in its session."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    runner = OrtRunner(bundle_dir / "model.onnx", ["CPUExecutionProvider"], name="ort-cpu")
    with runner:
        assert runner._session.get_session_options().intra_op_num_threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert OrtRunner(bundle_dir / "model.onnx", ["CPUExecutionProvider"], threads=2).threads == 2
