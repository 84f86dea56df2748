"""Real model inputs for the benchmarks: a phantom (or given) case, preprocessed as production does.

The slices go through the runtime's own `Synthesizer.request` and
`Synthesizer.prepare` (the preprocessing shared with training), so the
timed feeds are exactly what `medk2n-run` sends to the model. The batch is
the middle brain slices of the volume, the same rows for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medk2n.data.cases import load_case, scan_generic_case
from medk2n.errors import DataError
from medk2n.runtime.bundle import Bundle
from medk2n.runtime.inferer import brain_slices
from medk2n.runtime.synthesizer import Synthesizer

PHANTOM_SPACING = 1.5  # mm: the volume the end-to-end target (< 10 % overhead) is stated for


@dataclass(frozen=True)
class CaseFeed:
    case_dir: Path
    sources: list[str]
    targets: list[str]
    feed: dict[str, np.ndarray]  # x [B,K,H,W] float32, src/tgt [B,*] int64, avail [B,K] float32
    slice_index: list[int]  # axial positions of the B rows

    def batch(self, size: int) -> dict[str, np.ndarray]:
        return {name: np.ascontiguousarray(array[:size]) for name, array in self.feed.items()}


def phantom_case(root: Path, seed: int = 0) -> Path:
    """One isotropic 1.5 mm phantom subject under `root` (an empty or new folder)."""
    from medk2n.data.phantom import generate_dataset

    return generate_dataset(root, subjects=1, seed=seed, spacing=PHANTOM_SPACING)[0]


def pick_modalities(case_dir: Path, bundle: Bundle) -> tuple[list[str], list[str]]:
    """The bundle's first K present modalities as sources, the next N as targets (vocabulary order)."""
    present = set(scan_generic_case(case_dir, bundle.modalities).files)
    names = [m for m in bundle.modalities if m in present]
    if len(names) < 2:
        raise DataError(f"{case_dir}: needs at least two of the bundle's modalities "
                        f"({', '.join(bundle.modalities)}); found {', '.join(names) or 'none'}")
    sources = names[:min(bundle.k, len(names) - 1)]
    return sources, names[len(sources):len(sources) + bundle.n]


def case_feed(bundle: Bundle, case_dir: Path, rows: int) -> CaseFeed:
    """`rows` model-space slice positions of `case_dir` as a feed in the bundle's IO contract."""
    sources, targets = pick_modalities(case_dir, bundle)
    with Synthesizer(bundle, backend="cpu", threads=1) as synth:
        request = synth.request(sources, targets, case_dir.name)
        prepared = synth.prepare(load_case(case_dir, request.sources), request, name=case_dir.name)
    index = middle_rows(brain_slices(prepared.brain), rows)
    slots = [prepared.slices[m] for m in request.sources]
    slots += [np.zeros_like(slots[0])] * (bundle.k - len(slots))
    x = np.stack([slot[index] for slot in slots], axis=1).astype(np.float32)
    feed = {"x": x, **{name: np.repeat(getattr(request, name)[None], rows, axis=0)
                       for name in ("src", "tgt", "avail")}}
    return CaseFeed(case_dir, request.sources, request.targets, feed, [int(i) for i in index])


def middle_rows(keep: np.ndarray, rows: int) -> np.ndarray:
    """`rows` slice indices centred on the brain (cycled when the brain has fewer slices)."""
    brain = np.flatnonzero(keep)
    if len(brain) == 0:
        raise DataError("the case has no slice with brain in it")
    start = max(0, len(brain) // 2 - rows // 2)
    return np.resize(np.roll(brain, -start), rows)
