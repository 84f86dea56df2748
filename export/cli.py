"""`medk2n-export`: checkpoint folder -> verified bundle (thin CLI over `export_bundle`), and
`medk2n-export triton`: verified bundle -> Triton model repository (over `write_repository`).

The repository verb is dispatched by the first argument rather than through a click group, so
`medk2n-export CHECKPOINT --k ...` keeps working unchanged (a checkpoint folder literally named
`triton` is given as `./triton`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import click

from medk2n.cli_util import debug_option, run_cli
from medk2n.export.spec import DEFAULT_OPSET, ENGINES, PRECISIONS


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint_dir", type=click.Path(path_type=Path))
@click.option("--k", "k", type=int, required=True, help="Number of source modalities the graph takes.")
@click.option("--n", "n", type=int, required=True, help="Number of target modalities the graph produces.")
@click.option("--engine", type=click.Choice(ENGINES), default="onnx", show_default=True,
              help="trt also builds a TensorRT plan (needs the [trt] extra and an NVIDIA GPU).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--size", type=int, default=None, help="Image size (default: the checkpoint's image_size).")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Dataset folder for calibration and checks (default: phantom subjects).")
@click.option("--calib-slices", type=int, default=64, show_default=True, help="INT8 calibration slices.")
@click.option("--heldout", type=click.Path(path_type=Path), default=None,
              help="Dataset of subjects the model never trained on, for the uncertainty's conformal calibration "
                   "(default: the cases of --calib the checkpoint did not train on).")
@click.option("--calib-task", "calib_tasks", multiple=True, metavar="SOURCES:TARGETS",
              help="A request the site will make, e.g. flair,adc:dwi,t2 (repeatable): its uncertainty gets "
                   "its own conformal calibration; others use the calibration over random requests.")
@click.option("--batch", default="1", show_default=True, help="Fixed batch N, or MIN:OPT:MAX for a dynamic batch.")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True)
@click.option("--force", is_flag=True, help="Write the bundle even when parity/accuracy is outside tolerance.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out folder.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle folder to create.")
@debug_option
def cli(checkpoint_dir: Path, k: int, n: int, engine: str, precision: str, size: int | None, calib: Path | None,
         calib_slices: int, heldout: Path | None, calib_tasks: tuple[str, ...], batch: str, opset: int, force: bool, overwrite: bool, out: Path, debug: bool) -> None:
    """Export CHECKPOINT_DIR to a bundle: ONNX (FP32/FP16/INT8) [+ TensorRT plan] + manifest.json.

    `medk2n-export triton BUNDLE --out REPO` then writes a Triton model repository from the bundle
    (see `medk2n-export triton -h`)."""

    def body() -> int:
        from medk2n.export.exporter import ExportOptions, export_bundle

        options = ExportOptions(
            checkpoint=checkpoint_dir, out=out, k=k, n=n, engine=engine, precision=precision, size=size,
            calib=calib, calib_slices=calib_slices, heldout=heldout, calib_tasks=calib_tasks, batch=batch, opset=opset, force=force, overwrite=overwrite,
        )
        result = export_bundle(options, progress=lambda msg: click.echo(msg, err=True))
        manifest = result.manifest
        click.echo(f"bundle: {result.path}")
        for model in manifest.models:
            click.echo(f"  {model.file}  ({model.format}, {model.precision})")
        click.echo("parity: " + json.dumps(manifest.parity, sort_keys=True))
        click.echo("accuracy: " + json.dumps(manifest.accuracy, sort_keys=True))
        click.echo("timings (s): " + json.dumps(result.timings))
        return 0

    run_cli(body, debug)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Model repository folder (created if needed; other models in it are left alone).")
@click.option("--model", "model_name", default="medk2n", show_default=True, help="Model name on the server.")
@click.option("--version", type=click.IntRange(min=1), default=1, show_default=True, help="Model version folder.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "trt-plan"]), default="onnx", show_default=True,
              help="onnx: Triton's ONNX Runtime backend; trt-plan: its TensorRT backend (the plan must have "
                   "been built for the serving GPU and TensorRT version).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Which of the bundle's models to serve [default: the manifest's precision].")
@click.option("--kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="Instance group kind.")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Model instances per device.")
@click.option("--max-queue-delay-us", type=click.IntRange(min=0), default=2000, show_default=True,
              help="How long the dynamic batcher may hold a request to fill a preferred batch.")
@click.option("--overwrite", is_flag=True, help="Replace an existing REPO/<model> folder.")
@debug_option
def triton_cli(bundle: Path, out: Path, model_name: str, version: int, fmt: str, precision: str | None, kind: str,
               instances: int, max_queue_delay_us: int, overwrite: bool, debug: bool) -> None:
    """Write a Triton model repository from the verified bundle at BUNDLE: REPO/<model>/config.pbtxt,
    REPO/<model>/<version>/model.onnx (or model.plan) and the bundle's manifest.json beside it."""

    def body() -> int:
        from medk2n.export.triton_repo import TritonOptions, write_repository

        folder = write_repository(TritonOptions(
            bundle=bundle, out=out, model_name=model_name, version=version, format=fmt, precision=precision,
            kind=kind, instances=instances, max_queue_delay_us=max_queue_delay_us, overwrite=overwrite))
        click.echo(f"model repository: {out} (model {model_name!r}, version {version})")
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            click.echo(f"  {path.relative_to(out)}")
        return 0

    run_cli(body, debug)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point `medk2n-export` (and its `triton` verb)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["triton"]:
        triton_cli.main(args=args[1:], prog_name="medk2n-export triton")
    else:
        cli.main(args=args, prog_name="medk2n-export")


if __name__ == "__main__":
    main()
