"""The machine stamp every result carries."""

from __future__ import annotations

import datetime as dt

from medk2n.benchmarks.machine import cpu_model, format_machine, machine_stamp, physical_cores

CPUINFO = """processor\t: 0
model name\t: Test CPU 9000
physical id\t: 0
core id\t: 0

processor\t: 1
model name\t: Test CPU 9000
physical id\t: 0
core id\t: 0

processor\t: 2
model name\t: Test CPU 9000
physical id\t: 0
core id\t: 1
"""


def test_stamp_has_every_key_the_readme_quotes():
    stamp = machine_stamp(threads=3)
    assert set(stamp) >= {"cpu", "logical_cpus", "physical_cores", "threads", "gpu", "versions", "date"}
    assert stamp["threads"] == 3
    assert isinstance(stamp["gpu"], list)
    assert {"python", "numpy", "onnxruntime", "medk2n"} <= set(stamp["versions"])
    assert dt.datetime.fromisoformat(stamp["date"]).utcoffset() == dt.timedelta(0)


def test_cpuinfo_parsing(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert cpu_model(path) == "Test CPU 9000"
    assert physical_cores(path) == 2  # three logical CPUs, two (physical id, core id) pairs
    assert physical_cores(tmp_path / "missing") is None


def test_format_machine_line():
    stamp = {"cpu": "Test CPU", "logical_cpus": 4, "physical_cores": 2, "threads": 2, "gpu": [],
             "versions": {"python": "3.11.7", "onnxruntime": "1.2.3"}, "date": "2026-01-02T03:04:05+00:00"}
    line = format_machine(stamp)
    assert line == ("Machine: Test CPU (2 cores / 4 logical CPUs, 2 threads used), GPU: none; "
                    "python 3.11.7, onnxruntime 1.2.3; 2026-01-02T03:04:05+00:00")
    assert "GPU: NVIDIA H100, 550.0, 81559 MiB;" in format_machine({**stamp, "gpu": ["NVIDIA H100, 550.0, 81559 MiB"]})
