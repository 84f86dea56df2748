"""`medk2n-data`: check a dataset before training, or generate a phantom dataset.

Thin click layer over `medk2n.data.check` and `medk2n.data.phantom`; errors
end as one line through `run_cli`. The phantom generator needs the optional
`[data]` extra (scipy, nilearn, matplotlib), so it is imported only when its
command runs and `-h` works without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import click

from medk2n.cli_util import debug_option, run_cli
from medk2n.data.check import check_dataset, format_table
from medk2n.errors import MedK2NError


def _split_names(values: Sequence[str]) -> list[str]:
    """`--require t1,t2 --require flair` -> [t1, t2, flair]."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Dataset tools for medk2n: validate NIfTI cases, generate phantom brains."""


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option(
    "--require", multiple=True, metavar="MODS",
    help="Modalities every case must have (comma-separated or repeated), e.g. --require flair,adc.",
)
@click.option(
    "--reference", default=None, metavar="MOD",
    help="Modality whose grid the others will be resampled onto; mismatched grids are then not a problem.",
)
@debug_option
def check(dataset: Path, require: tuple[str, ...], reference: str | None, debug: bool) -> None:
    """Print a table of the cases in DATASET and their problems; exit 1 if any case is unusable."""

    def body() -> int:
        reports = check_dataset(dataset, _split_names(require), reference)
        click.echo(format_table(reports))
        return 0 if all(r.usable for r in reports) else 1

    run_cli(body, debug)


@cli.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder to create.")
@click.option("--subjects", default=4, show_default=True, type=int, help="Number of cases.")
@click.option("--seed", default=0, show_default=True, type=int, help="Subject i depends only on (seed, i).")
@click.option("--spacing", default=None, type=float, metavar="MM", help="Base voxel size in mm (generator default if omitted).")
@click.option("--tissue-jitter", default=0.03, show_default=True, type=float, metavar="SD",
              help="Relative sd of every tissue's T1/T2/PD/ADC per subject; raise it for contrasts unlike training's.")
@click.option("--montage/--no-montage", default=True, show_default=True, help="Write <case>/montage.png for a visual check.")
@debug_option
def phantom(out: Path, subjects: int, seed: int, spacing: float | None, tissue_jitter: float, montage: bool,
            debug: bool) -> None:
    """Generate a multi-contrast phantom dataset (no download needed)."""

    def body() -> int:
        try:
            from medk2n.data.phantom import generate_dataset, save_montage
        except ImportError as exc:
            raise MedK2NError(
                f"phantom generation needs the optional data extra: pip install 'medk2n[data]' ({exc})"
            ) from None
        cases = generate_dataset(out, subjects, seed, spacing, tissue_jitter)
        for case_dir in cases:
            if montage:
                save_montage(case_dir, case_dir / "montage.png")
            click.echo(str(case_dir))
        return 0

    run_cli(body, debug)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point `medk2n-data`."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="medk2n-data")


if __name__ == "__main__":
    main()
