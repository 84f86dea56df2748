"""The triton backend against a real Triton server on the CPU (PyTriton's tritonserver, triton_fixtures).

The server runs the bundle's own ONNX graph with ONNX Runtime, so what the
client writes must equal a local `--backend cpu` run within the FP32 parity
tolerance, whatever batches the server's batcher formed; the server's own
counters prove the slices went through it. Every fault is one line, a
non-zero exit and no output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner, Result
from runtime_fixtures import check_probability, make_bundle, write_case
from triton_fixtures import local_server

from medk2n.benchmarks.triton_local import LocalServer, free_ports, server_counts
from medk2n.errors import BundleError, MedK2NError, RunFault
from medk2n.manifest import hash_bundle_files
from medk2n.runtime.bundle import load_bundle
from medk2n.runtime.cli import command
from medk2n.runtime.synthesizer import Synthesizer
from medk2n.runtime.triton import TritonRunner, TritonServer, split_rows

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("triton")]

FP32_MAX_ABS = 1e-3  # export.verify.FP32_MAX_ABS: the runtime tests do not import export's torch side
TASKS = {"case24": (("t2", "flair"), ("t1", "dwi", "adc", "pd"), "oblique"),
         "case12": (("t1",), ("t2", "dwi"), "aniso")}


def run(*args: object) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args])


def inference_count(server: LocalServer) -> int:
    """Rows the server's model has run (Triton's nv_inference_count metric)."""
    return server_counts(server.metrics_url)[0]


def write_cases(root: Path) -> dict[str, Path]:
    return {name: write_case(root / name, kind, sources) for name, (sources, _, kind) in TASKS.items()}


def assert_same_outputs(served_dir: Path, local_dir: Path) -> None:
    names = sorted(p.name for p in local_dir.iterdir())
    assert names and names == sorted(p.name for p in served_dir.iterdir())
    for name in names:
        a, b = nib.load(served_dir / name), nib.load(local_dir / name)
        np.testing.assert_array_equal(a.affine, b.affine)
        assert a.header == b.header
        np.testing.assert_allclose(a.get_fdata(), b.get_fdata(), rtol=0, atol=FP32_MAX_ABS)


def test_two_tasks_sharing_one_server_write_what_the_cpu_backend_writes(tmp_path: Path, served) -> None:
    bundle, _, server = served
    cases = write_cases(tmp_path / "in")
    before = inference_count(server)
    start, reports, errors = threading.Barrier(len(cases)), {}, []

    def client(name: str) -> None:  # each request from its own library client, at the same time
        sources, targets, _ = TASKS[name]
        try:
            with Synthesizer(bundle, backend="triton", server=TritonServer(server.url, in_flight=3)) as synth:
                start.wait()
                reports[name] = synth.run_case(cases[name], sources, targets, tmp_path / "served")
        except BaseException as exc:  # noqa: BLE001 - re-raised below in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(name,)) for name in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert inference_count(server) - before == sum(r.slices_inferred for r in reports.values()) > 0
    with Synthesizer(bundle, backend="cpu") as synth:
        for name, (sources, targets, _) in TASKS.items():
            synth.run_case(cases[name], sources, targets, tmp_path / "local")
    for name in cases:
        assert_same_outputs(tmp_path / "served" / name, tmp_path / "local" / name)
        sources = TASKS[name][0]  # the served graph's third output reaches the report
        assert reports[name].source_check == {s: check_probability(s) for s in sources}


def test_medk2n_run_backend_triton_writes_the_cpu_backends_nifti(tmp_path: Path, served) -> None:
    bundle, repo, server = served
    cases = write_cases(tmp_path / "in")
    sources, targets, _ = TASKS["case24"]
    request = [cases["case24"], "--sources", ",".join(sources), "--targets", ",".join(targets)]
    # The served run is a real console process, as a user runs it, and its bundle is the repository's
    # version folder: a one-model bundle's file and manifest are all a client needs.
    proc = subprocess.run([sys.executable, "-m", "medk2n.runtime.cli", str(repo / "medk2n" / "1"), *map(str, request),
                           "--out", str(tmp_path / "served"), "--backend", "triton", "--url", server.url],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "backend: triton (model.onnx, fp32): model 'medk2n' on" in proc.stdout
    local = run(bundle, *request, "--out", tmp_path / "local", "--backend", "cpu")
    assert local.exit_code == 0, local.output
    assert_same_outputs(tmp_path / "served" / "case24", tmp_path / "local" / "case24")


def assert_one_line_failure(result: Result, out: Path, *expected: str) -> str:
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and all(e in line for e in expected), line
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    return line


def triton_args(bundle: Path, case: Path, out: Path, url: str, *extra: str) -> list:
    return [bundle, case, "--sources", "t2,flair", "--targets", "t1,dwi", "--out", out, "--backend", "triton",
            "--url", url, *extra]


def test_unreachable_server_is_one_line(tmp_path: Path, bundle_dir: Path) -> None:
    case = write_case(tmp_path / "case")
    (port,) = free_ports(1)
    out = tmp_path / "out"
    result = run(*triton_args(bundle_dir, case, out, f"127.0.0.1:{port}"))
    assert_one_line_failure(result, out, f"Triton server at 127.0.0.1:{port} is unreachable")


@pytest.mark.parametrize("args, expected", [
    (["--backend", "triton"], "--url HOST:PORT"),
    (["--backend", "cpu", "--url", "127.0.0.1:1"], "goes with --backend triton"),
    (["--backend", "triton", "--url", "http://127.0.0.1:8001"], "gRPC address as HOST:PORT"),
])
def test_backend_and_url_go_together(tmp_path: Path, bundle_dir: Path, args: list, expected: str) -> None:
    case = write_case(tmp_path / "case")
    out = tmp_path / "out"
    result = run(bundle_dir, case, "--sources", "t2", "--targets", "t1", "--out", out, *args)
    assert_one_line_failure(result, out, expected)


def test_missing_model_names_what_the_server_has(tmp_path: Path, served) -> None:
    bundle, _, server = served
    case = write_case(tmp_path / "case")
    out = tmp_path / "out"
    result = run(*triton_args(bundle, case, out, server.url, "--model", "nope"))
    assert_one_line_failure(result, out, "triton model 'nope'", "no such model ready on the server")


def test_a_server_holding_another_model_is_refused_by_hash(tmp_path: Path, served) -> None:
    _, _, server = served
    other = make_bundle(tmp_path / "other", k=2, n=4, size=16, target_axis=True)
    case = write_case(tmp_path / "case")
    out = tmp_path / "out"
    result = run(*triton_args(other, case, out, server.url))
    assert_one_line_failure(result, out, "serves a model that is not in", str(other))


@pytest.fixture(scope="module")
def fault_server(served, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """The same model without medk2n's sha256 parameter (a repository not written by medk2n), failing
    every model execution after the first."""
    _, repo, _ = served
    root = tmp_path_factory.mktemp("triton-fault")
    shutil.copytree(repo, root / "repo")
    config = root / "repo" / "medk2n" / "config.pbtxt"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if not line.startswith("parameters")))
    with local_server(root / "repo", root, "--fail-after", "1") as server:
        yield server


def test_model_io_differing_from_the_manifest_is_one_line(tmp_path: Path, fault_server: LocalServer) -> None:
    legacy = make_bundle(tmp_path / "legacy", k=2, n=4, legacy=True)  # outputs "confidence", not "scale"
    case = write_case(tmp_path / "case")
    out = tmp_path / "out"
    result = run(*triton_args(legacy, case, out, fault_server.url))
    assert_one_line_failure(result, out, "triton model 'medk2n'", "differ from the manifest")


def test_server_error_mid_case_leaves_no_output(tmp_path: Path, served, fault_server: LocalServer) -> None:
    bundle, _, _ = served
    case = write_case(tmp_path / "case")
    out = tmp_path / "out"
    result = run(*triton_args(bundle, case, out, fault_server.url, "--batch-size", "1", "--in-flight", "1"))
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "server error" in line and "injected failure" in line, line
    assert "Traceback" not in result.output
    assert not (out / "case").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_without_the_triton_extra_the_backend_names_it(tmp_path: Path, bundle_dir: Path) -> None:
    case = write_case(tmp_path / "case")
    blocked = "import sys; sys.modules['tritonclient'] = None; from medk2n.runtime.cli import main; main(sys.argv[1:])"
    proc = subprocess.run([sys.executable, "-c", blocked, *map(str, triton_args(bundle_dir, case, tmp_path / "out",
                                                                               "127.0.0.1:1"))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: backend 'triton' needs the [triton] extra: pip install 'medk2n[triton]' " \
                                  "(no module named 'tritonclient')"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rows, parts, largest, spans", [
    (16, 4, 8, [(0, 4), (4, 8), (8, 12), (12, 16)]),
    (10, 4, 8, [(0, 3), (3, 6), (6, 9), (9, 10)]),
    (20, 1, 8, [(0, 7), (7, 14), (14, 20)]),
    (3, 4, 8, [(0, 1), (1, 2), (2, 3)]),
    (0, 4, 8, []),
])
def test_a_call_is_split_into_requests_in_flight_no_larger_than_the_server_takes(rows, parts, largest, spans) -> None:
    assert split_rows(rows, parts, largest) == spans


def test_the_server_address_is_checked_before_any_connection() -> None:
    with pytest.raises(MedK2NError, match="HOST:PORT"):
        TritonServer("localhost")
    with pytest.raises(MedK2NError, match="in_flight"):
        TritonServer("localhost:8001", in_flight=0)


def test_bench_serve_measures_clients_against_the_server(tmp_path: Path, served) -> None:
    from medk2n.benchmarks.serve import ServeOptions, run_serve
    from medk2n.benchmarks.serve_report import write_serve

    bundle, _, server = served
    for name in ("a", "b"):
        write_case(tmp_path / "data" / name)
    opts = ServeOptions(bundle=bundle, data=tmp_path / "data", sources=["t2", "flair"], targets=["t1", "dwi"],
                        clients=[1, 2], volumes_per_client=1, url=server.url, metrics_url=server.metrics_url)
    results = run_serve(opts)
    assert [r["clients"] for r in results["rows"]] == [1, 2]
    for row in results["rows"]:
        assert row["volumes"] == row["clients"] and row["slices"] > 0 and row["slices_per_s"] > 0
        assert row["requests"] >= 1 and row["mean_server_batch"] >= 1
        assert 0 < row["slice_p50_ms"] <= row["slice_p95_ms"] and row["volume_p50_ms"] <= row["volume_p95_ms"]
    assert results["local_cpu"]["slices"] == results["rows"][0]["slices"]
    paths = write_serve(results, tmp_path / "results")
    assert [p.name for p in paths] == ["serve.json", "serve.md", "serve.png"]
    assert "| 2 | 2 |" in paths[1].read_text()


def runner_serving(parameters: dict) -> TritonRunner:
    """A runner whose served config carries `parameters` (no server needed for check_serves / _fault)."""
    runner = TritonRunner(TritonServer("127.0.0.1:1"))
    runner.config = {"parameters": {k: {"string_value": v} for k, v in parameters.items()}}
    return runner


def test_the_served_file_is_named_when_it_is_another_precision_of_the_bundle(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "bundle")
    (folder / "model.int8.onnx").write_bytes((folder / "model.onnx").read_bytes() + b" ")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["models"].append({"file": "model.int8.onnx", "format": "onnx", "precision": "int8"})
    manifest["files"] = hash_bundle_files(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    bundle = load_bundle(folder)
    fp32 = bundle.model("onnx", "fp32")
    runner_serving({"medk2n_sha256": bundle.sha256(fp32)}).check_serves(bundle, fp32)  # the same file: fine
    runner_serving({}).check_serves(bundle, fp32)  # not written by medk2n: tensor check only
    int8 = bundle.model("onnx", "int8")
    with pytest.raises(BundleError, match=r"serves model.int8.onnx \(int8\) of .*, not model.onnx \(fp32\): "
                                          r"pass --precision int8"):
        runner_serving({"medk2n_sha256": bundle.sha256(int8)}).check_serves(bundle, fp32)


class FakeError(Exception):
    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self._status, self._text = status, text

    def status(self) -> str:
        return self._status

    def message(self) -> str:
        return self._text


def test_a_server_gone_mid_run_stops_the_run_and_a_server_error_fails_the_case() -> None:
    runner = runner_serving({})
    gone = runner._fault(FakeError("StatusCode.UNAVAILABLE", "failed to connect to all addresses"))
    assert isinstance(gone, RunFault) and "server lost mid-run (failed to connect to all addresses)" in str(gone)
    failed = runner._fault(FakeError("StatusCode.INTERNAL", "Model execute error: Traceback (most recent call "
                                     "last):\n  File \"m.py\", line 1\nValueError: bad rows\n\nAt:\n  m.py(1)"))
    assert not isinstance(failed, RunFault)
    assert str(failed).endswith("server error: Model execute error: ValueError: bad rows")
