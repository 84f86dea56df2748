"""Cases in, OUT/<case>/ folders out, with per-stage timings.

Each input is a `Case` or a path that `resolve_cases` reads: a case folder
of any supported layout (generic, BraTS, BIDS subject, nnU-Net images
folder) or a dataset root, expanded to its cases under the names `medk2n-data
check` gives them.

Each case runs five stages: read, preprocess (both in `load_stage`), infer,
postprocess and write (in `finish_stage`). With several cases a one-worker
thread reads and preprocesses the next case while the current one is in
the model (a one-deep prefetch queue); numpy and ONNX Runtime release the
GIL for their heavy parts. A case above PREFETCH_MAX_VOXELS runs alone: its
memory, not two cases', is the run's peak. A failed case becomes a report with its error and
leaves no output; the others go on: bad input and faults of that case alone
(out of memory, a backend error) alike. A fault no case can escape (disk
full, output not writable: `RunFault`) stops the run, carrying the reports
made so far so the summary is still written.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from medk2n.data.cases import Case, case_folder, case_readers, resolve_cases
from medk2n.data.nifti import write_volume
from medk2n.data.preprocess import PreparedCase
from medk2n.errors import DataError, MedK2NError, RunFault
from medk2n.fsutil import write_atomic
from medk2n.runtime.inferer import brain_slices
from medk2n.runtime.outputs import (RUN_FAULT_ERRNOS, case_output, check_no_clobber, check_output_free,
                                    check_output_writable, remove_own_partials)
from medk2n.runtime.png import labelled_grid, write_png
from medk2n.runtime.source_check import mislabel_warnings, threshold_for

if TYPE_CHECKING:
    from medk2n.runtime.synthesizer import Request, Synthesizer

STAGES = ("read", "preprocess", "infer", "postprocess", "write")


@dataclass
class CaseReport:
    name: str
    case_dir: str
    ok: bool = False
    error: str | None = None
    slices: int = 0
    slices_inferred: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    outputs: list[str] = field(default_factory=list)
    # source -> the model's p(it holds the contrast it is named as); None when the bundle has no check
    source_check: dict[str, float] | None = None
    # source -> the p below which it is doubted (the bundle's fitted line, else 0.5); with source_check only
    source_check_thresholds: dict[str, float] | None = None
    # sources left out by --exclude-mislabelled (the synthesis used the others); None when not asked
    excluded_sources: list[str] | None = None
    warnings: list[str] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def timed(self, name: str, call: Callable[[], Any]) -> Callable[[], Any]:
        """`call`, counted in stage `name` whenever it runs."""
        def run() -> Any:
            with self.stage(name):
                return call()
        return run


@dataclass
class LoadedCase:
    """A case after read + preprocess, ready for the model."""

    report: CaseReport
    request: "Request"
    prepared: PreparedCase


def case_name(case_dir: Path) -> str:
    return case_dir.resolve().name


def expand_inputs(inputs: Sequence[Path | Case], sources: Sequence[str], targets: Sequence[str]
                  ) -> list[Case | CaseReport]:
    """Every case the inputs name, in order; an input that names none becomes a failed report."""
    out: list[Case | CaseReport] = []
    for item in inputs:
        if isinstance(item, Case):
            out.append(item)
            continue
        try:
            out.extend(resolve_cases(Path(item), [*sources, *targets]))
        except MedK2NError as exc:
            out.append(_failed(Path(item), None, str(exc)))
    return out


def load_stage(synth: "Synthesizer", case: Case | Path, sources: Sequence[str], targets: Sequence[str],
               out_dir: Path, reference: str | None, overwrite: bool) -> LoadedCase:
    if not isinstance(case, Case):
        found = resolve_cases(Path(case), [*sources, *targets])
        if len(found) != 1:
            raise DataError(f"{case}: holds {len(found)} cases; give one case folder")
        case = found[0]
    report = CaseReport(name=case.name, case_dir=str(case_folder(case)))
    check_no_clobber([out_dir / case.name], [*_input_folders(case), synth.bundle.path])
    check_output_free(out_dir / case.name, overwrite)  # before any work, not after it
    request = synth.request(sources, targets, case.name)
    # Each source is read on its turn inside preprocessing (one volume in memory at a time, issue
    # 22); its reading time still counts as "read", not twice.
    readers = {m: report.timed("read", read) for m, read in case_readers(case, request.sources,
                                                                          synth.max_voxels).items()}
    read_before = report.timings.get("read", 0.0)
    with report.stage("preprocess"):
        prepared = synth.prepare(readers, request, reference, case.name)
    report.timings["preprocess"] -= report.timings.get("read", 0.0) - read_before
    return LoadedCase(report, request, prepared)


def _input_folders(case: Case) -> list[Path]:
    """Folders holding the case's files: no output may replace one (or a folder above one)."""
    return sorted({p.parent for p in [*case.files.values(), *case.masks.values()]})


def finish_stage(synth: "Synthesizer", loaded: LoadedCase, out_dir: Path, overwrite: bool, png: bool,
                 show_progress: bool = False, exclude_mislabelled: bool = False) -> CaseReport:
    report, request, prepared = loaded.report, loaded.request, loaded.prepared
    keep = brain_slices(prepared.brain)
    report.slices, report.slices_inferred = len(keep), int(keep.sum())
    with report.stage("infer"), tqdm(total=report.slices_inferred, desc=report.name, unit="slice",
                                     disable=None if show_progress else True, leave=False) as bar:
        inference = synth.infer_detailed(prepared, request, progress=bar.update,
                                         exclude_mislabelled=exclude_mislabelled)
    images, scale, report.source_check = inference.images, inference.scale, inference.source_check
    request, report.excluded_sources = inference.request, inference.excluded
    thresholds = synth.bundle.check_thresholds
    if report.source_check is not None:
        report.source_check_thresholds = {m: threshold_for(m, thresholds) for m in report.source_check}
    report.warnings = mislabel_warnings(report.name, report.source_check, report.excluded_sources, thresholds)
    with report.stage("postprocess"):
        montage = (case_montage(prepared, request, images, scale, keep, report.source_check, thresholds)
                   if png else None)
        head = synth.head_for(prepared, request)
    # One target at a time, restored, written and dropped: peak memory holds one target's image
    # and scale on the input grid, not N of each plus N uncertainty maps (issue 22).
    like = prepared.reference
    with case_output(out_dir, report.name, overwrite) as tmp:
        for i, target in enumerate(request.targets):
            with report.stage("postprocess"):
                image, spread = synth.restore_target(target, images[i], scale[i], prepared, head)
            with report.stage("write"):
                write_volume(image, tmp / f"{target}.nii.gz", like)
            del image
            with report.stage("postprocess"):
                halfwidth = synth.halfwidth(target, spread, request.sources)
            del spread
            if halfwidth is not None:
                with report.stage("write"):
                    write_volume(halfwidth, tmp / f"{target}_uncertainty.nii.gz", like)
            del halfwidth
        with report.stage("write"):
            if montage is not None:
                write_png(tmp / "montage.png", montage)
            report.outputs = sorted(p.name for p in tmp.iterdir())
    report.ok = True
    return report


def case_montage(prepared: PreparedCase, request: "Request", images: np.ndarray, scale: np.ndarray,
                 keep: np.ndarray, source_check: dict[str, float] | None = None,
                 check_thresholds: dict[str, float] | None = None) -> np.ndarray:
    """Middle brain slice, labelled: sources / syntheses / predicted error rows, neurological view (anterior up).

    The error row is the Laplace scale, each tile stretched to its own maximum (bright = least trusted);
    the maximum is printed under each tile and the windowing under the grid. With a source check, each
    source's caption carries its probability, and FAIL when it is below the threshold."""
    brain = np.flatnonzero(keep)
    mid = int(brain[len(brain) // 2]) if len(brain) else len(keep) // 2

    def view(tile: np.ndarray) -> np.ndarray:
        return np.flipud(tile.T)  # canonical tile[x, y] -> rows = y with anterior on top, columns = x

    errors = []
    for target, spread in zip(request.targets, scale):
        top = max(float(spread[mid].max()), 1e-6)
        errors.append((f"{target} max {top:.3f}", view(spread[mid] / top)))
    def source_label(m: str) -> str:
        if not source_check or m not in source_check:
            return m
        p = source_check[m]
        return f"{m} check {p:.2f}" + (" FAIL" if p < threshold_for(m, check_thresholds) else "")

    return labelled_grid(
        [("Sources", [(source_label(m), view(prepared.slices[m][mid])) for m in request.sources]),
         ("Syntheses", [(t, view(img[mid])) for t, img in zip(request.targets, images)]),
         ("Predicted error (Laplace scale)", errors)],
        notes=[f"Slice {mid} of the model grid (axial, anterior up, neurological: patient left on the left). Sources and "
               "syntheses: grey 0-1 = the normalised intensity the model sees (per-volume percentile scaling; "
               "ADC a fixed physical range). Error row: 0 to each tile's own max, in the same normalised units.",
               *([f"Source check: the model's p that each source is the contrast it is named as (median over the "
                  "case's slices); FAIL below the bundle's threshold for that contrast "
                  f"({', '.join(f'{m} {threshold_for(m, check_thresholds):.3f}' for m in request.sources)}): "
                  "check that series' label."] if source_check else [])],
    )


def run_cases(synth: "Synthesizer", inputs: Sequence[Path | Case], sources: Sequence[str], targets: Sequence[str],
              out_dir: Path, reference: str | None = None, overwrite: bool = False, png: bool = False,
              show_progress: bool = False, raise_errors: bool = False,
              on_case: Callable[[CaseReport], None] | None = None,
              exclude_mislabelled: bool = False) -> list[CaseReport]:
    """Process every case the inputs name; failures are reported (or raised with `raise_errors`), the rest
    still written. `exclude_mislabelled`: leave out a source the model's check doubts
    (Synthesizer.infer_detailed)."""
    items = expand_inputs(inputs, sources, targets)
    if raise_errors:
        for item in items:
            if isinstance(item, CaseReport):
                raise DataError(item.error)
    cases = [item for item in items if isinstance(item, Case)]
    names = [c.name for c in cases]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise DataError(f"several cases are named {clash[0]!r}: their outputs would collide in {out_dir}")
    # No case's output may replace another case's input either.
    check_no_clobber([out_dir / n for n in names], [f for c in cases for f in _input_folders(c)])
    check_output_writable(out_dir)

    def load(item: Case | CaseReport) -> LoadedCase | CaseReport:
        if isinstance(item, CaseReport):
            return item
        return _guard(lambda: load_stage(synth, item, sources, targets, out_dir, reference, overwrite),
                      item, raise_errors)

    reports: list[CaseReport] = []
    if not items:
        return reports
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medk2n-prefetch") as pool:
        pending = pool.submit(load, items[0])
        try:
            for i, item in enumerate(items):
                loaded = pending.result()
                follows = i + 1 < len(items)
                ahead = follows and prefetch_beside(loaded)
                if ahead:
                    pending = pool.submit(load, items[i + 1])  # read the next case while this one runs
                report = loaded
                if isinstance(loaded, LoadedCase):
                    report = _guard(lambda: finish_stage(synth, loaded, out_dir, overwrite, png, show_progress,
                                                         exclude_mislabelled),
                                    item, raise_errors, loaded.report)
                reports.append(report)
                if on_case is not None:
                    on_case(report)
                if follows and not ahead:
                    pending = pool.submit(load, items[i + 1])
        except RunFault as fault:
            pending.cancel()
            fault.reports = reports
            raise
        except KeyboardInterrupt:
            pending.cancel()
            if out_dir.is_dir():
                remove_own_partials(out_dir, names)
            raise
    return reports


# Largest case (voxels of its grid) beside which the next case is read and preprocessed: 256^3.
# Above it the next case waits until this one is written, so a run of large cases peaks at one
# case's memory (issue 22), not two; below it the overlap costs little and saves the reading time.
PREFETCH_MAX_VOXELS = 1 << 24


def prefetch_beside(loaded: "LoadedCase | CaseReport") -> bool:
    """Whether the next case may be loaded while `loaded` is inferred and written."""
    if not isinstance(loaded, LoadedCase):
        return True
    return int(np.prod(loaded.prepared.reference.shape, dtype=np.int64)) <= PREFETCH_MAX_VOXELS


def _guard(step: Callable[[], Any], case: Case | Path, raise_errors: bool, report: CaseReport | None = None) -> Any:
    """Run one stage; a fault of this case becomes a failed report unless the caller wants it raised.

    Bad input (MedK2NError) reports its own one-line message; any other failure of the case (out
    of memory, a backend error, an unreadable file) reports its type and message. An OS error no
    case can escape (RUN_FAULT_ERRNOS: disk full, read-only or forbidden output) is a RunFault.
    """
    name = case.name if isinstance(case, Case) else case_name(case)
    where = case_folder(case) if isinstance(case, Case) else case
    try:
        return step()
    except RunFault:
        raise
    except OSError as exc:
        if exc.errno in RUN_FAULT_ERRNOS and not isinstance(exc, FileNotFoundError):
            raise RunFault(f"{exc.filename or where}: {exc.strerror or exc}; stopping the run") from exc
        if raise_errors:
            raise
        return _failed(case, report, f"{name}: {exc.filename or where}: {exc.strerror or type(exc).__name__}")
    except MedK2NError as exc:
        if raise_errors:
            raise
        return _failed(case, report, str(exc))
    except MemoryError:
        if raise_errors:
            raise
        return _failed(case, report, f"{name}: out of memory (lower --batch-size, "
                                     "or --max-voxels to refuse such volumes up front)")
    except Exception as exc:  # noqa: BLE001 - a fault of one case must not cost the others theirs
        if raise_errors:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return _failed(case, report, f"{name}: {type(exc).__name__}: {first}")


def _failed(case: Case | Path, report: CaseReport | None, message: str) -> CaseReport:
    if report is None:
        if isinstance(case, Case):
            report = CaseReport(name=case.name, case_dir=str(case_folder(case)))
        else:
            report = CaseReport(name=case_name(case) if case.exists() else case.name, case_dir=str(case))
    report.ok, report.error, report.outputs = False, message, []
    return report


def write_run_json(path: Path, synth: "Synthesizer", reports: Sequence[CaseReport], total_s: float,
                   fault: str | None = None) -> None:
    """The `--json` summary: backend, providers, per-case stage timings and failures (and the fault that
    stopped the run, if one did)."""
    summary = {
        "bundle": str(synth.bundle.path),
        "backend": synth.choice.backend,
        "model": synth.choice.model.file,
        "precision": synth.choice.model.precision,
        "providers": synth.runner.providers,
        "batch_size": synth.batch_size,
        "stages": list(STAGES),
        "cases": [asdict(r) for r in reports],
        "failed": [r.name for r in reports if not r.ok],
        "total_s": total_s,
        "fault": fault,
    }
    write_atomic(Path(path), (json.dumps(summary, indent=2) + "\n").encode())
