"""`medk2n-bench preprocess`: the runtime's preprocessing, with each brain-mask implementation.

Preprocessing computes a brain mask K+1 times per case (one per source for its
intensity percentiles, one on their sum for the model's slices). With scipy
(installed by the [cpu] and [gpu] runtime extras) the connected components and
hole filling come from `scipy.ndimage`; without it, from the numpy sweeps of
`data/mask.py`. This times both on the same volumes, checks that they agree
voxel for voxel, and times the whole preprocess stage (reorient, normalise,
mask, resample to model slices) with each, so the saving is seen where a user
pays it. Timings are medians of `repeats` calls in this process; they depend on
the machine, so the stamp travels with them.
"""

from __future__ import annotations

import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence
from unittest import mock

import numpy as np

from medk2n.benchmarks.machine import machine_stamp
from medk2n.config import default_normalization
from medk2n.data import mask as mask_module
from medk2n.data.cases import discover_dataset, load_case
from medk2n.data.preprocess import prepare_case
from medk2n.errors import ConfigError
from medk2n.fsutil import write_atomic

IMPLEMENTATIONS = ("numpy", "scipy")


@contextmanager
def mask_implementation(name: str) -> Iterator[None]:
    """Run `brain_mask` with scipy.ndimage (when installed) or with the numpy fallback."""
    if name == "scipy":
        if mask_module._ndimage() is None:
            raise ConfigError("scipy is not installed here: the scipy mask cannot be measured (pip install scipy)")
        yield
    else:
        with mock.patch.object(mask_module, "_ndimage", lambda: None):
            yield


def median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def run_preprocess(data: Path, sources: Sequence[str], size: int = 256, cases: int = 4, repeats: int = 5,
                   progress: Callable[[str], None] = lambda _: None) -> dict:
    """Per case: mask time per implementation (each source volume), voxel agreement, and prepare_case time."""
    found = [c for c in discover_dataset(Path(data)) if all(s in c.files for s in sources)][:cases]
    if not found:
        raise ConfigError(f"{data}: no case has every source of {','.join(sources)}")
    norms = default_normalization()
    rows = []
    for case in found:
        volumes = load_case(case, sources)
        row: dict = {"case": case.name, "shape": list(next(iter(volumes.values()))[0].shape), "mask_ms": {},
                     "prepare_ms": {}}
        masks = {}
        for impl in IMPLEMENTATIONS:
            with mask_implementation(impl):
                masks[impl] = [mask_module.brain_mask(array) for array, _ in volumes.values()]
                row["mask_ms"][impl] = sum(median_ms(lambda a=array: mask_module.brain_mask(a), repeats)
                                           for array, _ in volumes.values())
                row["prepare_ms"][impl] = median_ms(lambda: prepare_case(volumes, norms, size), repeats)
        row["identical"] = all(np.array_equal(a, b) for a, b in zip(masks["numpy"], masks["scipy"]))
        row["masked_voxels"] = [int(m.sum()) for m in masks["scipy"]]
        progress(f"{case.name}: mask numpy {row['mask_ms']['numpy']:.0f} ms, scipy {row['mask_ms']['scipy']:.0f} ms, "
                 f"identical: {row['identical']}")
        rows.append(row)
    return {"settings": {"data": str(data), "sources": list(sources), "size": size, "repeats": repeats},
            "cases": rows, "machine": machine_stamp()}


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = ["# Preprocessing: brain mask with scipy and with numpy", "",
             f"Sources {', '.join(s['sources'])} of each case, model slices {s['size']}², median of "
             f"{s['repeats']} calls. `mask`: one brain mask per source volume, summed over the sources; "
             "`preprocess`: the runtime's whole preprocess stage (reorient, normalise, K+1 masks, resample).", "",
             "| case | shape | mask numpy ms | mask scipy ms | mask speed-up | identical masks | preprocess numpy ms "
             "| preprocess scipy ms | preprocess speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["cases"]:
        m, p = r["mask_ms"], r["prepare_ms"]
        lines.append(f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {m['numpy']:.1f} | {m['scipy']:.1f} | "
                     f"{m['numpy'] / m['scipy']:.2f}x | {'yes' if r['identical'] else '**no**'} | {p['numpy']:.1f} | "
                     f"{p['scipy']:.1f} | {p['numpy'] / p['scipy']:.2f}x |")
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, out: Path, stem: str = "preprocess") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    write_atomic(paths[0], (json.dumps(results, indent=2, sort_keys=True) + "\n").encode())
    write_atomic(paths[1], markdown(results).encode())
    return paths
