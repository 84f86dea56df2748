"""`medk2n-summary`: parameter counts and FLOPs per slice of each preset's generator.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` for one
eval-mode forward of batch 1 (one slice position) with K sources and N
targets, after the LoRA merge, i.e. the graph that gets exported. One
multiply-add counts as 2 FLOPs.
"""

from __future__ import annotations

import json
import warnings

import click
import torch
from torch.utils.flop_counter import FlopCounterMode

from medk2n.cli_util import debug_option, run_cli
from medk2n.config import PRESETS, ModelConfig, preset
from medk2n.models import ARCHS, build_model


def model_summary(cfg: ModelConfig, k: int = 2, n: int = 4) -> dict:
    """{arch, encoder, ablation, image_size, k, n, params, trainable_params, gflops_per_slice}."""
    text = torch.zeros(len(cfg.modalities), cfg.text_dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, text_embeddings=text, pretrained=False)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.eval()
    model.merge_lora()
    size, vocab = cfg.image_size, len(cfg.modalities)
    x = torch.rand(1, k, size, size)
    src = torch.arange(k).remainder(vocab).unsqueeze(0)
    tgt = (torch.arange(n) + k).remainder(vocab).unsqueeze(0)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, src, tgt)
    return {
        "arch": cfg.arch,
        "encoder": cfg.encoder if cfg.arch == "medk2n" else None,
        "ablation": cfg.ablation,
        "image_size": size,
        "k": k,
        "n": n,
        "params": params,
        "trainable_params": trainable,
        "gflops_per_slice": counter.get_total_flops() / 1e9,
    }


def _format(row: dict) -> str:
    encoder = row["encoder"] or "-"
    return (
        f"{row['preset']:<8} {row['arch']:<7} {encoder:<12} {row['image_size']:>5} "
        f"{row['k']}->{row['n']:<3} {row['params'] / 1e6:>9.2f}M {row['trainable_params'] / 1e6:>9.2f}M "
        f"{row['gflops_per_slice']:>9.2f}"
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--preset", "presets", multiple=True, type=click.Choice(PRESETS),
              help="Preset(s) to summarise (default: all).")
@click.option("--arch", "archs", multiple=True, type=click.Choice(ARCHS), help="Architecture(s) (default: all).")
@click.option("--k", default=2, show_default=True, help="Number of source slots.")
@click.option("--n", default=4, show_default=True, help="Number of targets.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@debug_option
def _cli(presets, archs, k, n, as_json, debug):
    """Print parameters and FLOPs per slice for each preset and architecture."""

    def body() -> None:
        rows = []
        for name in presets or PRESETS:
            for arch in archs or ARCHS:
                cfg = preset(name).model
                cfg.arch = arch
                rows.append({"preset": name, **model_summary(cfg, k=k, n=n)})
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        click.echo(f"{'preset':<8} {'arch':<7} {'encoder':<12} {'size':>5} {'task':<6} "
                   f"{'params':>10} {'trainable':>10} {'GFLOPs':>9}")
        for row in rows:
            click.echo(_format(row))

    run_cli(body, debug)


def main(argv: list[str] | None = None) -> None:
    _cli.main(args=argv, prog_name="medk2n-summary")


if __name__ == "__main__":
    main()
