"""`medk2n-run`: synthesise missing contrasts for case folders with a bundle.

Inputs are case folders or dataset roots in any layout `medk2n-data check`
reads (generic, BraTS 2023, ISLES 2022 BIDS, nnU-Net raw), each case written
to OUT/<case>/; or, in single-study mode (`-i flair=a.nii.gz -i adc=b.nii.gz`,
as SynthSR's `--i/--o`), named files of one study written straight into OUT/.

Thin on purpose (nnU-Net style): parse, build a `Synthesizer`, call
`run_cases`, print. stdout gets the backend line, one line per written case
and the summary; stderr gets one `error: ...` line per failed case and
`WARNING: ...` lines (a model trained short, a source that fails the model's
source check: runtime.source_check; with --exclude-mislabelled that source is
left out), so scripts can tell them apart. Exit code 2 when any case
failed. SIGTERM is an interruption like Ctrl-C: one line, exit 130, and the
case being written leaves nothing behind.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

try:  # ONNX Runtime and nibabel take seconds to import: Ctrl-C then is one line too, not a traceback
    import click

    from medk2n.cli_util import debug_option, run_cli
    from medk2n.data.cases import Case, normalise_modality_name
    from medk2n.data.nifti import MAX_VOXELS
    from medk2n.errors import DataError, RunFault
    from medk2n.runtime.backends import BACKENDS, PRECISIONS, ort_conflict_note
    from medk2n.runtime.pipeline import CaseReport, run_cases, write_run_json
    from medk2n.runtime.synthesizer import Synthesizer
    from medk2n.runtime.triton import TritonServer
    from medk2n.runtime.uncertainty import DEFAULT_COVERAGE
except KeyboardInterrupt:
    sys.stderr.write("error: interrupted\n")
    raise SystemExit(130) from None
except ModuleNotFoundError as _missing:  # a base install without [cpu]/[gpu]: one line naming them, exit 2
    from medk2n.cli_util import exit_if_missing_extra

    exit_if_missing_extra(_missing)
    raise


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("case_dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-i", "--input", "inputs", multiple=True, metavar="MODALITY=FILE",
              help="Single-study mode: one source file (repeat per source); outputs go straight into OUT/.")
@click.option("--sources", default=None,
              help="Comma-separated source modalities, e.g. flair,adc (first = slot 0) [default with -i: their order].")
@click.option("--targets", required=True, help="Comma-separated modalities to synthesise, e.g. dwi,t2.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Output folder; each case goes to OUT/<case>/ (with -i: OUT/ itself, which must not exist).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: TensorRT plan -> ORT TensorRT EP -> ORT CUDA -> ORT CPU, whichever runs here; "
                   "triton: the model on a Triton server (--url).")
@click.option("--url", default=None, metavar="HOST:PORT", help="With --backend triton: the server's gRPC address.")
@click.option("--model", "served_model", default="medk2n", show_default=True,
              help="With --backend triton: the model's name on the server.")
@click.option("--in-flight", type=click.IntRange(min=1), default=4, show_default=True,
              help="With --backend triton: requests of --batch-size slices kept in flight at once.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Which model of the bundle to run [default: the manifest's precision].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Slices per model call [default: the bundle's optimal batch].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for ONNX Runtime [default: $OMP_NUM_THREADS if set, else one per physical core].")
@click.option("--reference", default=None,
              help="Resample every source onto this modality's grid (outputs are written on it).")
@click.option("--coverage", type=float, default=DEFAULT_COVERAGE, show_default=True,
              help="Coverage of the per-voxel intervals written as <target>_uncertainty.nii.gz (half-widths).")
@click.option("--max-voxels", type=click.IntRange(min=1), default=MAX_VOXELS, show_default=True,
              help="Refuse volumes larger than this (checked on the header, before anything is allocated).")
@click.option("--overwrite", is_flag=True, help="Replace existing OUT/<case> folders.")
@click.option("--png", is_flag=True, help="Also write OUT/<case>/montage.png (middle axial slice).")
@click.option("--exclude-mislabelled", is_flag=True,
              help="Leave out a source the model's source check doubts (it does not look like the contrast it is "
                   "named as) and synthesise from the others; default: warn and keep it.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a JSON summary: backend, providers, per-case stage timings, failures.")
@debug_option
def command(bundle: Path, case_dirs: tuple[Path, ...], inputs: tuple[str, ...], sources: str | None, targets: str,
            out_dir: Path, backend: str, url: str | None, served_model: str, in_flight: int,
            precision: str | None, batch_size: int | None, threads: int | None,
            reference: str | None, coverage: float, max_voxels: int, overwrite: bool, png: bool,
            exclude_mislabelled: bool, json_path: Path | None, debug: bool) -> None:
    """Synthesise TARGETS from SOURCES for each CASE_DIR (a case folder or a dataset root) with the bundle
    at BUNDLE, or for the one study given with -i."""

    def body() -> int:
        start = time.perf_counter()
        cases, publish_dir = _cases(case_dirs, inputs, out_dir)
        source_names = _names(sources) if sources else (list(cases[0].files) if inputs else [])
        if not source_names:
            raise DataError("--sources is required with case folders (e.g. --sources flair,adc)")
        server = TritonServer(url, served_model, in_flight) if url is not None else None
        with Synthesizer(bundle, backend=backend, precision=precision, threads=threads, batch_size=batch_size,
                         coverage=coverage, max_voxels=max_voxels, server=server) as synth:
            click.echo(f"backend: {synth.choice.describe()}; providers: {', '.join(synth.runner.providers)}")
            if synth.training_note:
                click.echo(f"WARNING: {synth.training_note}", err=True)
            conflict = ort_conflict_note()
            if conflict:
                click.echo(f"WARNING: {conflict}", err=True)
            if synth.uncertainty_note:
                click.echo(f"note: {synth.uncertainty_note}", err=True)
            else:
                click.echo(f"uncertainty: <target>_uncertainty.nii.gz = half-width of a {coverage:.0%} interval")
                missing = synth.uncalibrated(source_names, _names(targets))
                if missing:
                    click.echo(f"note: no conformal calibration for {', '.join(missing)} in this bundle: "
                               "no uncertainty map for it", err=True)
            if exclude_mislabelled and not synth.bundle.has_source_check:
                click.echo("note: this bundle's model has no source check: --exclude-mislabelled cannot act; "
                           "every source is used as named", err=True)
            try:
                reports = run_cases(synth, cases, source_names, _names(targets), publish_dir,
                                    reference=reference, overwrite=overwrite, png=png, show_progress=True,
                                    raise_errors=debug, on_case=_echo_case,
                                    exclude_mislabelled=exclude_mislabelled)
            except RunFault as fault:
                if json_path is not None:
                    write_run_json(json_path, synth, fault.reports, time.perf_counter() - start, str(fault))
                raise
            if json_path is not None:
                write_run_json(json_path, synth, reports, time.perf_counter() - start)
        failed = [r.name for r in reports if not r.ok]
        click.echo(f"{len(reports)} case(s): {len(reports) - len(failed)} written to {out_dir}, "
                   f"{len(failed)} failed" + (f" ({', '.join(failed)})" if failed else ""))
        return 2 if failed else 0

    run_cli(body, debug)


def _cases(case_dirs: tuple[Path, ...], inputs: tuple[str, ...], out_dir: Path) -> tuple[list, Path]:
    """(inputs for run_cases, the folder cases are published into).

    Single-study mode is one case named after OUT and published as OUT itself, so it gets the same
    all-or-nothing write and the same refusal to replace an existing folder as OUT/<case> does."""
    if inputs and case_dirs:
        raise DataError("give case folders or -i MODALITY=FILE inputs, not both")
    if not inputs:
        if not case_dirs:
            raise DataError("no input: give case folders / dataset roots, or -i MODALITY=FILE for one study")
        return list(case_dirs), out_dir
    files: dict[str, Path] = {}
    for item in inputs:
        modality, sep, file = item.partition("=")
        modality = normalise_modality_name(modality)
        if not sep or not modality or not file:
            raise DataError(f"-i {item!r}: expected MODALITY=FILE, e.g. -i flair=/data/flair.nii.gz")
        if modality in files:
            raise DataError(f"-i {item!r}: modality '{modality}' given twice ({files[modality]} and {file})")
        files[modality] = Path(file)
    final = out_dir.resolve()
    if final.parent == final:
        raise DataError(f"{out_dir}: not usable as a single-study output folder")
    return [Case(name=final.name, files=files, masks={})], final.parent


def _echo_case(report: CaseReport) -> None:
    for warning in report.warnings:
        click.echo(f"WARNING: {warning}", err=True)
    if report.ok:
        seconds = sum(report.timings.values())
        click.echo(f"{report.name}: wrote {len(report.outputs)} files "
                   f"({report.slices_inferred}/{report.slices} slices inferred, {seconds:.2f} s)")
    else:
        click.echo(f"error: {report.error}", err=True)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through case_output, which removes the case's partial folder


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _terminated)
    command.main(args=argv, prog_name="medk2n-run")


if __name__ == "__main__":
    main()
