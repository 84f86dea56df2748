"""TensorRT path without TensorRT: pure profile/naming functions, the missing-TRT error, a fake builder."""

import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from medk2n.errors import ExportError
from medk2n.export import tensorrt_build as tb
from medk2n.export.cli import cli
from medk2n.export.exporter import ExportOptions, export_bundle
from medk2n.export.spec import GraphSpec, parse_batch

TARGET = tb.BuildTarget(trt_version="10.13.0.35", compute_capability="8.9")


def test_profile_shapes_dynamic_batch():
    shapes = tb.profile_shapes(GraphSpec(k=2, n=4, size=64, batch=parse_batch("1:8:16")))
    assert shapes == {
        "x": ((1, 2, 64, 64), (8, 2, 64, 64), (16, 2, 64, 64)),
        "src": ((1, 2), (8, 2), (16, 2)),
        "tgt": ((1, 1), (8, 4), (16, 4)),  # 1..N targets, optimised for N
        "avail": ((1, 2), (8, 2), (16, 2)),
    }


def test_profile_shapes_fixed_batch():
    shapes = tb.profile_shapes(GraphSpec(k=3, n=1, size=32, batch=parse_batch("4")))
    assert shapes["x"] == ((4, 3, 32, 32),) * 3
    assert shapes["tgt"] == ((4, 1),) * 3


def test_plan_and_cache_names_are_keyed_by_gpu_and_tensorrt(tmp_path):
    assert tb.plan_filename("fp16", TARGET) == "model.fp16.sm89.trt10.13.0.35.plan"
    other_gpu = tb.BuildTarget(TARGET.trt_version, "9.0")
    other_trt = tb.BuildTarget("11.0.0.1", TARGET.compute_capability)
    names = {tb.plan_filename("int8", t) for t in (TARGET, other_gpu, other_trt)}
    caches = {tb.timing_cache_path(tmp_path, t) for t in (TARGET, other_gpu, other_trt)}
    assert len(names) == 3 and len(caches) == 3
    assert tb.timing_cache_path(tmp_path, TARGET).parent == tmp_path


def test_network_flags_strongly_typed_on_trt10_implicit_on_trt11():
    flag = SimpleNamespace(STRONGLY_TYPED=5)
    assert tb.network_flags(SimpleNamespace(__version__="10.13.0", NetworkDefinitionCreationFlag=flag)) == 1 << 5
    assert tb.network_flags(SimpleNamespace(__version__="11.0.1")) == 0


def test_missing_tensorrt_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ExportError, match=r"needs the \[trt\] extra \(pip install medk2n\[trt\]\) and an NVIDIA GPU"):
        tb.require_tensorrt()


def test_trt_export_fails_before_any_work(monkeypatch, tmp_path):
    """The checkpoint does not even exist: the TensorRT check must come first and write nothing."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "bundle"
    options = ExportOptions(checkpoint=tmp_path / "missing", out=out, k=2, n=4, engine="trt", precision="fp16")
    with pytest.raises(ExportError, match="TensorRT engine build needs"):
        export_bundle(options)
    assert list(tmp_path.iterdir()) == []


def test_trt_cli_exits_nonzero_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, [str(tmp_path), "--k", "2", "--n", "4", "--engine", "trt", "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {tb.TRT_MISSING}"]
    assert not out.exists()


class _FakeTensorRT:
    """Just enough of the TensorRT 10 builder API to drive build_plan; records what it was given."""

    __version__ = "10.13.0.35"
    NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
    MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    def __init__(self, parse_ok=True):
        self.calls = {"profile": {}}
        calls = self.calls

        class Config:
            builder_optimization_level = None

            def set_memory_pool_limit(self, pool, size):
                calls["workspace"] = size

            def add_optimization_profile(self, profile):
                pass

            def create_timing_cache(self, data):
                calls["cache_in"] = data
                return "cache"

            def set_timing_cache(self, cache, ignore_mismatch):
                pass

            def get_timing_cache(self):
                return SimpleNamespace(serialize=lambda: b"timing")

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                calls["flags"] = flags
                return "network"

            def create_optimization_profile(self):
                return SimpleNamespace(set_shape=lambda name, lo, opt, hi: calls["profile"].update({name: (lo, opt, hi)}))

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                calls["opt_level"] = config.builder_optimization_level
                return b"plan-bytes"

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                return parse_ok

            def get_error(self, index):
                return "In node 3 (Foo): unsupported"

        self.Builder = Builder
        self.OnnxParser = OnnxParser


def test_build_plan_writes_plan_and_timing_cache(tmp_path):
    trt = _FakeTensorRT()
    spec = GraphSpec(k=2, n=4, size=64, batch=parse_batch("1:2:4"))
    cache = tmp_path / "cache" / "timing.cache"
    tb.build_plan(trt, tmp_path / "m.onnx", tmp_path / "m.plan", spec, cache)
    assert (tmp_path / "m.plan").read_bytes() == b"plan-bytes"
    assert cache.read_bytes() == b"timing"
    assert trt.calls["flags"] == 1 << 1
    assert trt.calls["profile"] == tb.profile_shapes(spec)
    assert trt.calls["cache_in"] == b""
    assert trt.calls["opt_level"] == tb.OPTIMIZATION_LEVEL
    tb.build_plan(trt, tmp_path / "m.onnx", tmp_path / "m.plan", spec, cache)
    assert trt.calls["cache_in"] == b"timing"  # the saved cache is loaded on the next build


def test_build_plan_reports_parser_error(tmp_path):
    spec = GraphSpec(k=2, n=4, size=64, batch=parse_batch("1"))
    with pytest.raises(ExportError, match="TensorRT cannot parse the model: In node 3"):
        tb.build_plan(_FakeTensorRT(parse_ok=False), tmp_path / "m.onnx", tmp_path / "m.plan", spec, tmp_path / "c")
    assert not (tmp_path / "m.plan").exists()
