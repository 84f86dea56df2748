"""`medk2n-eval`: score a checkpoint or a bundle on a dataset, with simple references beside it."""

from __future__ import annotations

from pathlib import Path

import click

from medk2n.cli_util import debug_option, run_cli


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_path", type=click.Path(path_type=Path))
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--sources", required=True, help="Comma-separated source modalities, e.g. flair,adc.")
@click.option("--targets", required=True, help="Comma-separated target modalities, e.g. dwi,t2.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("metrics.json"), show_default=True,
              help="JSON path; .csv, .md and .png are written beside it.")
@click.option("--train-data", type=click.Path(path_type=Path), default=None,
              help="Training dataset for the mean-training-image reference.")
@click.option("--backend", default="auto", show_default=True, help="Bundle backend (auto|cpu|cuda|tensorrt|trt-plan).")
@click.option("--precision", default=None, help="Which model of a bundle (fp32|fp16|int8).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", help="Device for a checkpoint.")
@click.option("--reference", default=None, help="Resample sources onto this modality's grid.")
@click.option("--coverage", type=float, default=0.9, show_default=True,
              help="Coverage of the intervals whose empirical coverage is scored (calibrated bundles).")
@click.option("--no-montage", is_flag=True, help="Skip the PNG montage and the risk-coverage plot.")
@click.option("--exclude-mislabelled", is_flag=True,
              help="Score what medk2n-run --exclude-mislabelled writes: a source the model's check doubts is "
                   "left out of that subject's synthesis.")
@debug_option
def main(model_path, dataset, sources, targets, out, train_data, backend, precision, device, reference,
         coverage, no_montage, exclude_mislabelled, debug):
    """Evaluate MODEL_PATH (checkpoint folder or bundle) on DATASET."""

    def body() -> int:
        from medk2n.eval.evaluate import evaluate
        from medk2n.eval.predictor import open_predictor
        from medk2n.eval.report import markdown, write_reports

        src, tgt = _names(sources), _names(targets)
        with open_predictor(model_path, k=len(src), n=len(tgt), backend=backend, precision=precision,
                            device=device, coverage=coverage) as predictor:
            result = evaluate(predictor, dataset, src, tgt, train_dir=train_data, reference=reference,
                              exclude_mislabelled=exclude_mislabelled)
            backend_used = predictor.choice.describe()
        title = f"{model_path.name}: {'+'.join(src)} → {'+'.join(tgt)} ({backend_used})"
        paths = write_reports(result, out, title, montage=not no_montage)
        click.echo(markdown(result, title))
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()))
        return 0

    run_cli(body, debug)


if __name__ == "__main__":
    main()
