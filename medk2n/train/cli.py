"""`medk2n-train`: curriculum training of Med-K2N (or a baseline) to a checkpoint folder.

Runs unchanged under `torchrun --nproc_per_node G -m medk2n.train.cli ...` for DDP.
"""

from __future__ import annotations

from pathlib import Path

import click

from medk2n.cli_util import debug_option, run_cli


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", default="default", show_default=True,
              help="Preset (tiny, default, large) or a YAML/JSON file overriding one (key `base:`).")
@click.option("--data", "data", required=True, type=click.Path(path_type=Path), help="Dataset folder of cases.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Run folder (checkpoints/, logs/).")
@click.option("--max-steps", type=int, default=None, help="Override train.max_steps (with --resume: continue up to it).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from checkpoints/last.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--ablation", default=None, help="Override model.ablation (B0..B5).")
@click.option("--arch", type=click.Choice(["medk2n", "unet"]), default=None, help="Override model.arch.")
@click.option("--encoder-checkpoint", type=click.Path(path_type=Path), default=None,
              help="Official SAM2 checkpoint (.pt, state dict under 'model') to initialise the encoder.")
@click.option("--budget-minutes", type=float, default=None,
              help="Wall-clock budget: stop (validate and save) once it is spent.")
@click.option("--fit-to-budget", is_flag=True,
              help="Spread the curriculum and the learning-rate decay over --budget-minutes instead of "
                   "train.max_steps (not resumable).")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs still written).")
@debug_option
def main(config, data, out, max_steps, resume, device, ablation, arch, encoder_checkpoint, budget_minutes,
         fit_to_budget, no_progress, debug):
    """Train on DATASET and write OUT/checkpoints/{best,last}/ (model.safetensors + config.json)."""

    def body() -> int:
        from medk2n.config import load_config
        from medk2n.errors import DataError
        from medk2n.train.loop import train

        cfg = load_config(config)
        if ablation:
            cfg.model.ablation = ablation
            cfg.model.__post_init__()
        if arch:
            cfg.model.arch = arch
        if encoder_checkpoint:
            cfg.model.encoder_checkpoint = str(encoder_checkpoint)
        if not data.is_dir():
            raise DataError(f"{data}: dataset folder not found")
        if out.exists() and any(out.iterdir()) and not resume:
            raise DataError(f"{out}: run folder exists and is not empty (use --resume or a new --out)")
        result = train(cfg, data, out, max_steps=max_steps, resume=resume, device=device,
                       progress=not no_progress, budget_minutes=budget_minutes, fit_to_budget=fit_to_budget)
        click.echo(f"trained to step {result.step}; best held-out masked PSNR {result.best_metric:.2f} dB; "
                   f"checkpoints in {out / 'checkpoints'}")
        if result.stopped_early:
            # Loud on purpose: a cut-short run looks like a finished one in every file it leaves.
            click.echo(f"WARNING: training stopped by {result.stopped_early} at step {result.step}, before the end "
                       "of its schedule; its checkpoints, and every bundle and report made from them, say so",
                       err=True)
        return 0

    run_cli(body, debug)


if __name__ == "__main__":
    main()
