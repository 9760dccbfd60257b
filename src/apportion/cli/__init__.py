"""The ``apportion`` command line.

:func:`build_app` makes the Typer application and registers each command module on it
explicitly: :mod:`~apportion.cli.simulate` (demo, bench, replay, policies, validate),
:mod:`~apportion.cli.learn` (learn), :mod:`~apportion.cli.sweep` (sweep, optimize) and
:mod:`~apportion.cli.telemetry` (report, profile, ingest) and :mod:`~apportion.cli.serve`
(serve).
"""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.markup import escape

from apportion.cli import learn, serve, simulate, sweep, telemetry
from apportion.cli.console import console as stdout  # (apportion.cli.console: the module)


def installed_version() -> str:
    """The version of the installed ``apportion`` distribution (its package metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("apportion")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from apportion import __version__

        return __version__


def _show_version(value: bool) -> None:
    if value:
        stdout.print(f"apportion {installed_version()}", highlight=False)
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Token budgets per agent for multi-agent LLM pipelines."""


def build_app() -> typer.Typer:
    """The ``apportion`` Typer application with every command registered."""
    application = typer.Typer(
        help="Token budgets per agent for multi-agent LLM pipelines.",
        no_args_is_help=True,
        add_completion=False,
    )
    application.callback()(_root)
    for module in (simulate, learn, sweep, telemetry, serve):
        module.register(application)
    return application


app = build_app()


def main() -> None:
    """Entry point of the ``apportion`` command.

    Last resort: an exception that is not handled (a bug, never bad input: the loaders
    raise ApportionError) prints one ``error:`` line and exits with 2;
    ``APPORTION_DEBUG=1`` shows the traceback instead.
    """
    try:
        app()
    except Exception as exc:
        if os.environ.get("APPORTION_DEBUG"):
            raise
        from apportion.limits import excerpt

        shown = excerpt(str(exc), 120)[1:-1]
        stdout.print(
            f"error: internal error ({type(exc).__name__}: {escape(shown)}); please report "
            "it (APPORTION_DEBUG=1 shows the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise SystemExit(2) from None


__all__ = ["app", "build_app", "installed_version", "main"]
