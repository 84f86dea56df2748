"""`medk2n-run`: synthesise missing contrasts for case folders with a bundle.

Thin on purpose (nnU-Net style): parse, build a `Synthesizer`, call
`run_cases`, print. stdout gets the backend line, one line per written case
and the summary; stderr gets one `error: ...` line per failed case and
nothing else, so scripts can tell them apart. Exit code 2 when any case
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
    from medk2n.data.nifti import MAX_VOXELS
    from medk2n.errors import RunFault
    from medk2n.runtime.backends import BACKENDS, PRECISIONS, ort_conflict_note
    from medk2n.runtime.pipeline import CaseReport, run_cases, write_run_json
    from medk2n.runtime.synthesizer import Synthesizer
    from medk2n.runtime.uncertainty import DEFAULT_COVERAGE
except KeyboardInterrupt:
    sys.stderr.write("error: interrupted\n")
    raise SystemExit(130) from None


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("case_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--sources", required=True, help="Comma-separated source modalities, e.g. flair,adc (first = slot 0).")
@click.option("--targets", required=True, help="Comma-separated modalities to synthesise, e.g. dwi,t2.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Output folder; each case goes to OUT/<case>/.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: TensorRT plan -> ORT TensorRT EP -> ORT CUDA -> ORT CPU, whichever runs here.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Which model of the bundle to run [default: the manifest's precision].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Slices per model call [default: the bundle's optimal batch].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for ONNX Runtime.")
@click.option("--reference", default=None,
              help="Resample every source onto this modality's grid (outputs are written on it).")
@click.option("--coverage", type=float, default=DEFAULT_COVERAGE, show_default=True,
              help="Coverage of the per-voxel intervals written as <target>_uncertainty.nii.gz (half-widths).")
@click.option("--max-voxels", type=click.IntRange(min=1), default=MAX_VOXELS, show_default=True,
              help="Refuse volumes larger than this (checked on the header, before anything is allocated).")
@click.option("--overwrite", is_flag=True, help="Replace existing OUT/<case> folders.")
@click.option("--png", is_flag=True, help="Also write OUT/<case>/montage.png (middle axial slice).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a JSON summary: backend, providers, per-case stage timings, failures.")
@debug_option
def command(bundle: Path, case_dirs: tuple[Path, ...], sources: str, targets: str, out_dir: Path, backend: str,
            precision: str | None, batch_size: int | None, threads: int | None, reference: str | None,
            coverage: float, max_voxels: int, overwrite: bool, png: bool, json_path: Path | None, debug: bool) -> None:
    """Synthesise TARGETS from SOURCES for each CASE_DIR with the bundle at BUNDLE."""

    def body() -> int:
        start = time.perf_counter()
        with Synthesizer(bundle, backend=backend, precision=precision, threads=threads,
                         batch_size=batch_size, coverage=coverage, max_voxels=max_voxels) as synth:
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
                missing = synth.uncalibrated(_names(sources), _names(targets))
                if missing:
                    click.echo(f"note: no conformal calibration for {', '.join(missing)} in this bundle: "
                               "no uncertainty map for it", err=True)
            try:
                reports = run_cases(synth, case_dirs, _names(sources), _names(targets), out_dir,
                                    reference=reference, overwrite=overwrite, png=png, show_progress=True,
                                    raise_errors=debug, on_case=_echo_case)
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


def _echo_case(report: CaseReport) -> None:
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
