"""`medk2n-bench memory`: peak resident memory of one `medk2n-run` case, by volume size.

Issue 22: memory must follow the header, not the whole volume times K+N. This
runs the real CLI in a child process per size and reads the child's own peak
RSS from `os.wait4` (ru_maxrss), so nothing the benchmark itself holds (the
phantom it wrote, the parent interpreter) is counted.

The bundle is the shipped demo model's contract (its vocabulary, its 64 x 64
slices, its normalisation with the histogram-standardised T1/T2/PD targets, a
conformal calibration so every target also writes its uncertainty map) around
a closed-form graph: the mean of the source slots for every target, a constant
scale. A real network adds its own weights and activations, a constant that
does not grow with the volume (ONNX Runtime's arena for a batch of 64 x 64
slices); the pipeline's share, which grows with it, is what is measured here.
`--code` runs another checkout of the project (e.g. the commit before a change)
through the same cases and bundle, so before and after are one run on one
machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np

import medk2n
from medk2n.benchmarks.machine import format_machine, machine_stamp
from medk2n.errors import ConfigError
from medk2n.fsutil import write_atomic
from medk2n.manifest import Manifest, ModelFile, TensorSpec, hash_bundle_files
from medk2n.runtime.uncertainty import LEVELS

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "assets" / "demo-model" / "config.json"
THIS_CHECKOUT = Path(medk2n.__file__).resolve().parents[1]  # the folder holding the imported medk2n
SOURCES = ("flair", "adc")
TARGETS = ("dwi", "t2", "t1", "pd")


def write_phantom_case(folder: Path, size: int) -> Path:
    """A smooth head-like `size`^3 case at 256/size mm: FLAIR stored as int16 (as scanners write it),
    ADC as float32 in physical units, both gzipped. Content only has to look like a head to the mask."""
    folder.mkdir(parents=True, exist_ok=True)
    zoom = 256.0 / size
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = -128.0
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(axis, axis, indexing="ij")
    flair = np.empty((size,) * 3, np.int16)
    adc = np.empty((size,) * 3, np.float32)
    rng = np.random.default_rng(0)
    for k, z in enumerate(axis):  # slice by slice: the writer's own memory stays one volume per contrast
        radius = np.sqrt((x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.75) ** 2)
        brain = radius < 0.85
        ventricle = np.sqrt((x / 0.15) ** 2 + (y / 0.3) ** 2 + (z / 0.3) ** 2) < 1
        signal = (np.where(radius < 1, 300.0, 0.0) + np.where(brain, 400 + 80 * np.sin(6 * x) * np.cos(5 * y + z), 0)
                  - np.where(ventricle, 450, 0) + rng.normal(0, 8, x.shape))
        flair[:, :, k] = np.clip(signal, 0, None).astype(np.int16)
        diffusion = np.where(brain, 800 + 100 * np.cos(4 * x + 3 * z), 0) + np.where(ventricle, 2200, 0)
        adc[:, :, k] = np.clip(diffusion + np.abs(rng.normal(0, 20, x.shape)), 0, None)
    for name, array in (("flair", flair), ("adc", adc)):
        img = nib.Nifti1Image(array, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        nib.save(img, folder / f"{name}.nii.gz")
    return folder


def mean_model(k: int, size: int):
    """ONNX graph with the bundle IO contract: images[b, t] = mean of the K source slots, scale = 0.05."""
    from onnx import TensorProto, helper  # the benchmark extra; the runtime never imports onnx

    nodes = [
        helper.make_node("ReduceMean", ["x", "axis_k"], ["mean"], keepdims=1),
        helper.make_node("Shape", ["tgt"], ["bt"]),
        helper.make_node("Concat", ["bt", "hw"], ["out_shape"], axis=0),
        helper.make_node("Expand", ["mean", "out_shape"], ["images"]),
        helper.make_node("Expand", ["level", "out_shape"], ["scale"]),
    ]
    consts = [helper.make_tensor("axis_k", TensorProto.INT64, [1], [1]),
              helper.make_tensor("hw", TensorProto.INT64, [2], [size, size]),
              helper.make_tensor("level", TensorProto.FLOAT, [], [0.05])]
    graph = helper.make_graph(
        nodes, "mean_k2n",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k, size, size]),
                helper.make_tensor_value_info("src", TensorProto.INT64, ["batch", k]),
                helper.make_tensor_value_info("tgt", TensorProto.INT64, ["batch", "targets"]),
                helper.make_tensor_value_info("avail", TensorProto.FLOAT, ["batch", k])],
        outputs=[helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", "targets", size, size]),
                 helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["batch", "targets", size, size])],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def write_mean_bundle(folder: Path, config: Path = DEMO_CONFIG, k: int = 2, n: int = 4) -> Path:
    """A verified bundle with the demo model's vocabulary, slice size and normalisation around `mean_model`."""
    import onnx

    experiment = json.loads(config.read_text())["experiment"]["model"]
    size, modalities = int(experiment["image_size"]), list(experiment["modalities"])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(mean_model(k, size), folder / "model.onnx")
    quantiles = {m: [2.0 * level for level in LEVELS] for m in modalities}
    manifest = Manifest(
        k=k, n=n, image_size=size, modalities=modalities, normalization=dict(experiment["normalization"]),
        precision="fp32", models=[ModelFile(file="model.onnx", format="onnx", precision="fp32")],
        inputs=[TensorSpec("x", "float32", ["batch", k, size, size]), TensorSpec("src", "int64", ["batch", k]),
                TensorSpec("tgt", "int64", ["batch", "targets"]), TensorSpec("avail", "float32", ["batch", k])],
        outputs=[TensorSpec("images", "float32", ["batch", "targets", size, size]),
                 TensorSpec("scale", "float32", ["batch", "targets", size, size])],
        batch={"min": 1, "opt": 8, "max": 16}, files=hash_bundle_files(folder), created="medk2n-bench memory",
        uncertainty={"method": "benchmark", "levels": list(LEVELS), "quantiles": {"fp32": quantiles}},
    )
    (folder / "manifest.json").write_text(manifest.to_json())
    return folder


def peak_rss_mb(command: Sequence[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int, str]:
    """(peak RSS MiB of the child alone, wall s, exit code, stderr tail) for one command."""
    start = time.perf_counter()
    child = subprocess.Popen(list(command), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    child.stderr.close()
    return usage.ru_maxrss / 1024.0, time.perf_counter() - start, child.returncode, stderr.strip()[-400:]


def run_memory(work: Path, sizes: Sequence[int] = (256, 512), codes: dict[str, Path | None] | None = None,
               threads: int = 2, notes: Sequence[str] = (),
               progress: Callable[[str], None] = lambda _: None) -> dict:
    """Peak RSS of `medk2n-run` (2 -> 4, uncertainty maps on) per volume size and per code checkout.

    `codes` maps a label to a project checkout put first on PYTHONPATH (None: this one); `notes`
    travel with the result (e.g. which commit 'before' is)."""
    codes = codes or {"current": None}
    work.mkdir(parents=True, exist_ok=True)
    bundle = write_mean_bundle(work / "bundle")
    rows = []
    for size in sizes:
        case = work / f"cases{size}" / f"head{size}"
        if not (case / "adc.nii.gz").is_file():
            progress(f"writing a {size}^3 phantom case")
            write_phantom_case(case, size)
        for label, code in codes.items():
            out = work / f"out-{label}-{size}"
            # The child runs in `work`, so `-m` finds no project in its working directory: only the
            # checkout put first on PYTHONPATH (this one's root when none is named) is imported.
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(code or THIS_CHECKOUT), os.environ.get("PYTHONPATH", "")]).strip(os.pathsep))
            command = [sys.executable, "-m", "medk2n.runtime.cli", str(bundle), str(case), "--sources",
                       ",".join(SOURCES), "--targets", ",".join(TARGETS), "--out", str(out), "--overwrite",
                       "--threads", str(threads)]
            peak, wall, rc, err = peak_rss_mb(command, env, work)
            if rc != 0:
                raise ConfigError(f"medk2n-run ({label}, {size}^3) exited {rc}: {err}")
            volume_mb = size ** 3 * 4 / 2 ** 20
            rows.append({"code": label, "size": size, "peak_rss_mb": round(peak, 1), "wall_s": round(wall, 1),
                         "float32_volume_mb": round(volume_mb, 1), "peak_in_volumes": round(peak / volume_mb, 2),
                         "outputs": sorted(p.name for p in (out / case.name).iterdir())})
            progress(f"{label} {size}^3: peak {peak:.0f} MiB ({peak / volume_mb:.2f} float32 volumes), {wall:.1f} s")
    return {"benchmark": "memory", "sources": list(SOURCES), "targets": list(TARGETS), "threads": threads,
            "bundle": "demo-model contract, closed-form mean graph (see benchmarks/memory.py)",
            "peak": "MiB, ru_maxrss of the medk2n-run child from os.wait4", "machine": machine_stamp(threads),
            "notes": list(notes), "rows": rows}


def markdown(result: dict) -> str:
    lines = ["# Memory: peak RSS of one medk2n-run case", "",
             f"{','.join(result['sources'])} -> {','.join(result['targets'])} with uncertainty maps "
             f"({2 * len(result['targets'])} output volumes), {result['threads']} ORT threads; bundle: "
             f"{result['bundle']}. Cases: a head-like phantom, FLAIR stored int16 and ADC float32, gzipped. "
             "Peak RSS is the child process's own (os.wait4).", "",
             "| code | volume | peak RSS MiB | in float32 volumes | wall s |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['code']} | {row['size']}³ | {row['peak_rss_mb']:.0f} | {row['peak_in_volumes']:.2f} "
                     f"| {row['wall_s']:.1f} |")
    lines += ["", *(f"{note}  " for note in result.get("notes", [])), "", format_machine(result["machine"]), ""]
    return "\n".join(lines)


def write_outputs(result: dict, out: Path, stem: str = "memory") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    write_atomic(json_path, (json.dumps(result, indent=2) + "\n").encode())
    write_atomic(md_path, markdown(result).encode())
    return [json_path, md_path]
