"""The ``apportion`` command line.

:func:`build_app` makes the Typer application and registers each command module on it
explicitly: :mod:`~apportion.cli.simulate` (demo, bench, replay, policies, validate),
:mod:`~apportion.cli.learn` (learn), :mod:`~apportion.cli.sweep` (sweep, optimize) and
:mod:`~apportion.cli.telemetry` (report, profile, ingest).
"""

from __future__ import annotations

from typing import Annotated

import typer

from apportion.cli import learn, simulate, sweep, telemetry
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
    for module in (simulate, learn, sweep, telemetry):
        module.register(application)
    return application


app = build_app()


def main() -> None:
    """Entry point of the ``apportion`` command."""
    app()


__all__ = ["app", "build_app", "installed_version", "main"]
