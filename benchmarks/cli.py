"""`medk2n-bench`: latency, quality and README results (thin CLI over the benchmark modules)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import click

from medk2n.cli_util import debug_option, run_cli

RESULTS = Path("benchmarks/results")


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _progress(message: str) -> None:
    click.echo(message, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Benchmarks whose results the README quotes: latency, quality, serve, readme."""


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Checkpoint folder: the torch eager FP32 baseline.")
@click.option("--bundles", "bundles", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Bundle folder(s) exported from that checkpoint; more may follow as arguments.")
@click.argument("more_bundles", nargs=-1, type=click.Path(path_type=Path))
@click.option("--batch-sizes", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--threads", type=int, default=None, help="CPU threads for every backend [default: all CPUs].")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed calls before timing.")
@click.option("--iters", type=int, default=20, show_default=True, help="Timed calls per backend and batch.")
@click.option("--volume-case", type=click.Path(path_type=Path), default=None,
              help="Case folder for the slices and the end-to-end run [default: a 1.5 mm phantom subject].")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=RESULTS, show_default=True)
@click.option("--tag", default=None, help="Name the files latency-<tag>.* (e.g. an H100 run beside the CPU one).")
@debug_option
def latency(checkpoint: Path, bundles: tuple[Path, ...], more_bundles: tuple[Path, ...], batch_sizes: str,
            threads: int | None, warmup: int, iters: int, volume_case: Path | None, out: Path, tag: str | None,
            debug: bool) -> None:
    """Time torch eager and every bundle on every backend here, on the same slices and threads."""

    def body() -> int:
        from medk2n.benchmarks.latency import LatencyOptions, parse_batch_sizes, run_latency
        from medk2n.benchmarks.latency_report import result_stem, write_latency

        result_stem(tag)  # a bad --tag fails before minutes of measuring
        opts = LatencyOptions(checkpoint=checkpoint, bundles=[*bundles, *more_bundles],
                              batch_sizes=parse_batch_sizes(batch_sizes), threads=threads or _cpus(),
                              warmup=warmup, iters=iters, volume_case=volume_case)
        results = run_latency(opts, progress=_progress)
        for row in results["rows"]:
            click.echo(f"{row['backend']:<12} {row['model']:<16} {row['precision']:<5} batch {row['batch']:>3}: "
                       f"p50 {row['p50_ms']:.2f} ms, {row['slices_per_s']:.1f} slices/s, "
                       f"{row['speedup']:.2f}x vs {row['speedup_vs']}" if row["status"] == "ok"
                       else f"{row['backend']:<12} {row['model']:<16} batch {row['batch']}: failed: {row['reason']}")
        for row in results["not_run"]:
            click.echo(f"{row['backend']:<12} {row['model']:<16} not run: {row['reason']}")
        e2e = results["e2e"]
        click.echo(f"end to end: pre+post+IO = {e2e['overhead_pct_of_infer']:.1f} % of infer "
                   f"(target < {e2e['target_pct']:.0f} %)")
        for path in write_latency(results, out, tag):
            click.echo(f"wrote {path}")
        return 0

    run_cli(body, debug)


@cli.command()
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Dataset folder to split and train on (or --trained).")
@click.option("--budget-minutes", type=float, default=30.0, show_default=True, help="Training budget per model.")
@click.option("--preset", default="tiny", show_default=True,
              help="Model preset to train and compare, or a YAML recipe over one (e.g. configs/demo.yaml).")
@click.option("--methods", default=None, help="Comma-separated subset of B0..B5,unet [default: all].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where every method trains and is evaluated (exports are scored with ONNX Runtime).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=RESULTS, show_default=True)
@click.option("--tag", default=None, help="Name the files quality-<tag>.* (e.g. a GPU run beside the CPU one).")
@click.option("--steps", default=None,
              help="Fixed step budget instead of --budget-minutes: N, or METHOD=N,... per method (e.g. the steps "
                   "each reached in a wall-clock run on an idle machine), so a loaded machine gives the same result.")
@click.option("--work", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Keep the split, checkpoints and bundles in this new or empty folder (to re-score them later) "
                   "[default: a temporary folder, removed at the end].")
@click.option("--trained", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Score the checkpoints an earlier --work folder kept, on its own split, instead of --data and "
                   "training (the run's seed and steps apply; B5 is exported to a temporary folder).")
@debug_option
def quality(data: Path | None, budget_minutes: float, preset: str, methods: str | None, seed: int, device: str,
            out: Path, tag: str | None, steps: str | None, work: Path | None, trained: Path | None,
            debug: bool) -> None:
    """PSNR / SSIM / MAE of Med-K2N, its ablations and baselines, with Wilcoxon p-values."""

    def body() -> int:
        from medk2n.benchmarks.quality import METHODS, kept_methods, run_quality
        from medk2n.errors import ConfigError

        if (data is None) == (trained is None):
            raise ConfigError("give either --data (split it and train) or --trained (score a kept --work folder)")
        every = kept_methods(trained) if trained is not None else list(METHODS)
        chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else every
        run_quality(data, budget_minutes, out, preset=preset, seed=seed, progress=_progress, device=device, tag=tag,
                    methods=chosen, steps=steps, work=work, trained=trained)
        click.echo(f"wrote quality results to {out}")
        return 0

    run_cli(body, debug)


@cli.command()
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Dataset folder to split and train on (or --trained).")
@click.option("--task", default="flair,adc->dwi,t2,t1,pd", show_default=True, help="SOURCES->TARGETS (two sources).")
@click.option("--corrupt", "source", default=None,
              help="Source(s) degraded at test time, comma-separated [default: the task's last]. Several train the "
                   "methods once and write robustness[-tag]-<source>.* each.")
@click.option("--methods", default="B0,B5,unet", show_default=True, help="Comma-separated methods to compare.")
@click.option("--budget-minutes", type=float, default=5.0, show_default=True, help="Training budget per method.")
@click.option("--preset", default="tiny", show_default=True, help="Preset, or a YAML recipe over one.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=RESULTS, show_default=True)
@click.option("--tag", default=None, help="Name the files robustness-<tag>.* (e.g. another corrupted source).")
@click.option("--steps", default=None,
              help="Fixed step budget instead of --budget-minutes: N, or METHOD=N,... per method (e.g. the steps "
                   "each reached in a wall-clock run on an idle machine), so a loaded machine gives the same result.")
@click.option("--trained", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Score the checkpoints a `medk2n-bench quality --work DIR` run kept, on its own test subjects, "
                   "instead of --data and training (the run's split, seed and steps apply).")
@debug_option
def robustness(data: Path, task: str, source: str | None, methods: str, budget_minutes: float, preset: str,
               seed: int, device: str, out: Path, tag: str | None, steps: str | None, trained: Path | None,
               debug: bool) -> None:
    """Train each method alike, then score it with one source degraded (noise, ghosting, wrong contrast)."""

    def body() -> int:
        from medk2n.benchmarks.robustness import markdown, run_robustness
        from medk2n.errors import ConfigError

        names = [m.strip() for m in methods.split(",") if m.strip()]
        if (data is None) == (trained is None):
            raise ConfigError("give either --data (split it and train) or --trained (score a kept quality run)")
        results = run_robustness(data, out, task, source, names, budget_minutes, preset, seed, device=device,
                                 progress=_progress, tag=tag, steps=steps, trained=trained)
        for one in results.values():
            click.echo(markdown(one))
        return 0

    run_cli(body, debug)


@cli.command()
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset folder (e.g. a 1.5 mm phantom).")
@click.option("--sources", default="flair,adc", show_default=True, help="Comma-separated source modalities.")
@click.option("--size", type=click.IntRange(min=8), default=256, show_default=True, help="Model slice size.")
@click.option("--cases", type=click.IntRange(min=1), default=4, show_default=True, help="How many cases to time.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True, help="Calls per timing (median).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=RESULTS, show_default=True)
@debug_option
def preprocess(data: Path, sources: str, size: int, cases: int, repeats: int, out: Path, debug: bool) -> None:
    """Time the runtime's preprocessing with the scipy and the numpy brain mask (and check they agree)."""

    def body() -> int:
        from medk2n.benchmarks.preprocess import markdown, run_preprocess, write_outputs

        names = [m.strip() for m in sources.split(",") if m.strip()]
        results = run_preprocess(data, names, size, cases, repeats, progress=_progress)
        write_outputs(results, out)
        click.echo(markdown(results))
        return 0

    run_cli(body, debug)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset folder the clients synthesise.")
@click.option("--task", default="flair,adc:dwi,t2,t1,pd", show_default=True, help="SOURCES:TARGETS of every request.")
@click.option("--clients", default="1,2,4,8", show_default=True, help="Comma-separated numbers of concurrent clients.")
@click.option("--volumes-per-client", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--cases", type=click.IntRange(min=1), default=4, show_default=True, help="Distinct volumes to cycle.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Slices per request [default: bundle opt].")
@click.option("--in-flight", type=click.IntRange(min=1), default=4, show_default=True, help="Requests in flight per client.")
@click.option("--url", default=None, metavar="HOST:PORT", help="A running server's gRPC address [default: serve here].")
@click.option("--metrics-url", default=None, help="With --url: its Prometheus endpoint, e.g. http://host:8002/metrics.")
@click.option("--model", default="medk2n", show_default=True, help="Model name on the server.")
@click.option("--server-python", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Without --url: the Python that runs PyTriton's server [default: $MEDK2N_TRITON_PYTHON or "
                   ".venv-triton/bin/python].")
@click.option("--server-threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Without --url: ONNX Runtime threads of the served model.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=RESULTS, show_default=True)
@debug_option
def serve(bundle: Path, data: Path, task: str, clients: str, volumes_per_client: int, cases: int,
          batch_size: int | None, in_flight: int, url: str | None, metrics_url: str | None, model: str,
          server_python: Path | None, server_threads: int, out: Path, debug: bool) -> None:
    """Concurrent clients against one Triton server: slices/s, slice and volume latency, mean server batch."""

    def body() -> int:
        from medk2n.benchmarks.serve import ServeOptions, parse_clients, run_serve, sources_targets
        from medk2n.benchmarks.serve_report import markdown, write_serve

        sources, targets = sources_targets(task)
        python = server_python or Path(os.environ.get("MEDK2N_TRITON_PYTHON") or ".venv-triton/bin/python")
        opts = ServeOptions(bundle=bundle, data=data, sources=sources, targets=targets, clients=parse_clients(clients),
                            volumes_per_client=volumes_per_client, cases=cases, batch_size=batch_size,
                            in_flight=in_flight, url=url, metrics_url=metrics_url, model=model,
                            server_python=None if url else python, server_threads=server_threads)
        results = run_serve(opts, progress=_progress)
        click.echo(markdown(results))
        for path in write_serve(results, out):
            click.echo(f"wrote {path}")
        return 0

    run_cli(body, debug)


@cli.command()
@click.option("--sizes", default="256,512", show_default=True, help="Comma-separated cube sides of the phantom cases.")
@click.option("--code", "codes", multiple=True, metavar="LABEL=PATH",
              help="Also run another checkout of the project (e.g. before=/tmp/old); 'current' is always run.")
@click.option("--work", type=click.Path(path_type=Path, file_okay=False), default=Path("build/bench-memory"),
              show_default=True, help="Folder for the phantom cases, the bundle and the outputs (reused).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="ONNX Runtime threads.")
@click.option("--note", "notes", multiple=True, help="A line for the Markdown report (e.g. how 'before' was run).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=RESULTS, show_default=True)
@debug_option
def memory(sizes: str, codes: tuple[str, ...], work: Path, threads: int, notes: tuple[str, ...], out: Path,
           debug: bool) -> None:
    """Peak RSS of one medk2n-run case (flair,adc -> dwi,t2,t1,pd) per volume size, in a child process."""

    def body() -> int:
        from medk2n.benchmarks.memory import markdown, run_memory, write_outputs
        from medk2n.errors import ConfigError

        if not all(s.strip().isdigit() for s in sizes.split(",")):
            raise ConfigError(f"--sizes {sizes}: expected comma-separated integers, e.g. 256,512")
        checkouts: dict[str, Path | None] = {}
        for item in codes:
            label, sep, path = item.partition("=")
            if not sep or not Path(path, "medk2n").is_dir():
                raise ConfigError(f"--code {item}: expected LABEL=PATH of a project checkout")
            checkouts[label] = Path(path).resolve()
        checkouts["current"] = None
        results = run_memory(work, [int(s) for s in sizes.split(",")], checkouts, threads, notes,
                             progress=_progress)
        write_outputs(results, out)
        click.echo(markdown(results))
        return 0

    run_cli(body, debug)


@cli.command()
@click.argument("metrics", type=click.Path(path_type=Path, dir_okay=False), default=Path("demo/eval/metrics.json"))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=RESULTS, show_default=True)
@debug_option
def demo(metrics: Path, out: Path, debug: bool) -> None:
    """Commit the demo's evaluation (METRICS, default demo/eval/metrics.json) as <out>/demo.*."""

    def body() -> int:
        from medk2n.benchmarks.demo_results import commit_demo

        for path in commit_demo(metrics, out):
            click.echo(f"wrote {path}")
        return 0

    run_cli(body, debug)


@cli.command("demo-model")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("assets/demo-model"),
              show_default=True)
@click.option("--recipe", required=True, help="How the run was made (data, config, steps), kept in provenance.json.")
@click.option("--replace", is_flag=True, help="Ship over an existing demo model folder.")
@debug_option
def demo_model(run_dir: Path, out: Path, recipe: str, replace: bool, debug: bool) -> None:
    """Ship RUN_DIR's finished checkpoint as the demo model `make demo` evaluates."""

    def body() -> int:
        from medk2n.benchmarks.demo_model import ship_demo_model

        click.echo(f"shipped {ship_demo_model(run_dir, out, recipe, replace)}")
        return 0

    run_cli(body, debug)


@cli.command()
@click.option("--results", type=click.Path(path_type=Path, file_okay=False), default=RESULTS, show_default=True)
@click.option("--readme", type=click.Path(path_type=Path, dir_okay=False), default=Path("README.md"),
              show_default=True, help="Gets the compact block: the demo table and a link to --results-doc.")
@click.option("--results-doc", type=click.Path(path_type=Path, dir_okay=False), default=Path("docs/results.md"),
              show_default=True, help="Gets the full block: demo, latency and quality.")
@click.option("--check", is_flag=True, help="Change nothing; exit 1 when either file is out of date.")
@debug_option
def readme(results: Path, readme: Path, results_doc: Path, check: bool, debug: bool) -> None:
    """Regenerate README and results page between <!-- BEGIN RESULTS --> and <!-- END RESULTS --> from the results."""

    def body() -> int:
        from medk2n.benchmarks.readme import update_all

        changed = update_all(results, readme, results_doc, check=check)
        if check and changed:
            for path in changed:
                click.echo(f"{path}: results section is out of date; run `medk2n-bench readme`", err=True)
            return 1
        for path in (readme, results_doc):
            click.echo(f"{path}: {'updated' if path in changed else 'up to date'}")
        return 0

    run_cli(body, debug)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="medk2n-bench")


if __name__ == "__main__":
    main()
