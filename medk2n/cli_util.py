"""Shared CLI edge: one-line errors, `--debug` for tracebacks.

Every console script wraps its body in `run_cli` so bad input always ends as
`error: <file>: <problem>` on stderr with exit code 2 (1 for unexpected
failures), never a traceback unless `--debug` was given.
"""

from __future__ import annotations

import sys
from typing import Callable

import click

from medk2n.errors import MedK2NError

# Top-level packages an optional extra installs: a command run without them names the extra.
EXTRAS = {
    "torch": "train", "sam2": "train", "safetensors": "train", "yaml": "train", "tensorboard": "train",
    "sentence_transformers": "train", "onnx": "export", "onnxscript": "export",
    "matplotlib": "data", "scipy": "data", "nilearn": "data", "tensorrt": "trt", "cuda": "trt", "onnxruntime": "cpu",
    "tritonclient": "triton",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The one-line message for a package an extra would have installed (None for any other module)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    if top == "onnxruntime":
        return ("this command needs ONNX Runtime: pip install 'medk2n[cpu]', or 'medk2n[gpu]' on an NVIDIA "
                "machine (one of the two, never both)")
    return f"this command needs the [{extra}] extra: pip install 'medk2n[{extra}]' (no module named {top!r})"


debug_option = click.option(
    "--debug", is_flag=True, default=False, help="Show full tracebacks on errors."
)


def run_cli(body: Callable[[], int | None], debug: bool) -> None:
    """Run `body`; turn known errors into one line and a non-zero exit."""
    try:
        code = body()
    except MedK2NError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException:
        raise
    except ModuleNotFoundError as exc:
        if not debug:
            exit_if_missing_extra(exc)
        raise
    except Exception as exc:  # noqa: BLE001 - the CLI edge: one line unless --debug
        if debug:
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (rerun with --debug for details)", err=True)
        sys.exit(1)
    sys.exit(code or 0)


def summary_main(argv: list[str] | None = None) -> None:
    """`medk2n-summary`: its module imports torch at the top, so a base install is told which extra it needs."""
    try:
        from medk2n.models.summary import main
    except ModuleNotFoundError as exc:
        exit_if_missing_extra(exc)
        raise
    main(argv)


def exit_if_missing_extra(exc: ModuleNotFoundError) -> None:
    """One line and exit 2 when an extra would have installed the module; return otherwise (a real bug)."""
    message = missing_extra(exc)
    if message is not None:
        click.echo(f"error: {message}", err=True)
        sys.exit(2)
