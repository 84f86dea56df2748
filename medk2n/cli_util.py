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
    except Exception as exc:  # noqa: BLE001 - the CLI edge: one line unless --debug
        if debug:
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (rerun with --debug for details)", err=True)
        sys.exit(1)
    sys.exit(code or 0)
