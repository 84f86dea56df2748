"""`medk2n-data check`: read every case of a dataset and report what would stop it.

A case is unusable when a required modality is missing, a file is unreadable,
truncated, 4-D, 2-D, non-finite or constant, two files claim one modality, or
its volumes are on different grids (unless `--reference` names the grid to
resample onto). Files with unknown modality names are reported but ignored.
Everything is collected per case, so one report shows all problems at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from medk2n.data.cases import Case, normalise_modality_name, resolve_cases
from medk2n.data.geometry import geometry_mismatch, orientation_codes
from medk2n.data.nifti import VolumeInfo, read_volume
from medk2n.errors import DataError


@dataclass
class CaseReport:
    """One table row. `problems` make the case unusable; `warnings` do not."""

    name: str
    modalities: list[str]
    shape: str = "-"
    spacing: str = "-"
    orientation: str = "-"
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.problems


def _read_info(path: Path) -> VolumeInfo:
    """Read and validate one volume; the error names the file only (the table names the case)."""
    try:
        return read_volume(path)[1]
    except DataError as exc:
        raise DataError(str(exc).replace(str(path), path.name)) from None


def check_case(case: Case, require: Sequence[str] = (), reference: str | None = None) -> CaseReport:
    """Validate one case: names, readability, values and geometry of every modality file."""
    report = CaseReport(name=case.name, modalities=sorted(case.files))
    if case.unknown:
        report.warnings.append(f"unknown modality files ignored: {', '.join(p.name for p in case.unknown)}")
    for modality, paths in sorted(case.duplicates.items()):
        report.problems.append(f"several files for '{modality}': {', '.join(p.name for p in paths)}")
    if not case.files:
        report.problems.append("no file named after a known modality")
    missing = [m for m in (normalise_modality_name(r) for r in require) if m not in case.files]
    if missing:
        report.problems.append(f"missing {', '.join(missing)}")
    infos: dict[str, VolumeInfo] = {}
    for modality, path in sorted(case.files.items()):
        try:
            infos[modality] = _read_info(path)
        except DataError as exc:
            report.problems.append(str(exc))
    if reference is not None and normalise_modality_name(reference) not in case.files:
        report.problems.append(f"reference modality '{reference}' missing")
    _check_grids(report, infos, None if reference is None else normalise_modality_name(reference))
    return report


def _check_grids(report: CaseReport, infos: dict[str, VolumeInfo], reference: str | None) -> None:
    """Fill shape/spacing/orientation from the reference (or first) volume; flag other grids."""
    if not infos:
        return
    ref_name = reference if reference in infos else next(iter(infos))
    ref = infos[ref_name]
    report.shape = "x".join(str(n) for n in ref.shape)
    report.spacing = "x".join(f"{z:.3g}" for z in ref.zooms)
    report.orientation = orientation_codes(ref.affine)
    if reference is not None:
        return
    for name, info in infos.items():
        why = geometry_mismatch(ref, info)
        if why is not None:
            report.problems.append(f"{name} grid differs from {ref_name} ({why}); use --reference")


def check_dataset(root: Path, require: Sequence[str] = (), reference: str | None = None) -> list[CaseReport]:
    """A report per case `root` names: a dataset root or one case/subject folder, any supported layout
    (the same reading `medk2n-run` makes of its inputs)."""
    vocabulary = [*require, *([reference] if reference else [])]
    return [check_case(case, require, reference) for case in resolve_cases(Path(root), vocabulary)]


_COLUMNS = ("case", "modalities", "shape", "spacing (mm)", "orient", "problems")


def format_table(reports: Sequence[CaseReport]) -> str:
    """Plain-text table, one row per case, then a one-line summary."""
    rows = [
        (
            r.name,
            ",".join(r.modalities) or "-",
            r.shape,
            r.spacing,
            r.orientation,
            "; ".join([*r.problems, *(f"warning: {w}" for w in r.warnings)]) or "ok",
        )
        for r in reports
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(_COLUMNS, *rows)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [_COLUMNS, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    bad = sum(not r.usable for r in reports)
    lines.append(f"{len(reports)} case(s): {len(reports) - bad} usable, {bad} unusable")
    return "\n".join(lines)
