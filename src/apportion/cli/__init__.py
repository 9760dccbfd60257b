"""The ``apportion`` command line.

:func:`build_app` makes the Typer application and registers each command module on it
explicitly: :mod:`~apportion.cli.simulate` (demo, bench, replay, policies, validate),
:mod:`~apportion.cli.learn` (learn), :mod:`~apportion.cli.sweep` (sweep, optimize) and
:mod:`~apportion.cli.telemetry` (report, profile, ingest).
"""

from __future__ import annotations

import typer

from apportion.cli import learn, simulate, sweep, telemetry


def build_app() -> typer.Typer:
    """The ``apportion`` Typer application with every command registered."""
    application = typer.Typer(
        help="Token budgets per agent for multi-agent LLM pipelines.",
        no_args_is_help=True,
        add_completion=False,
    )
    for module in (simulate, learn, sweep, telemetry):
        module.register(application)
    return application


app = build_app()


def main() -> None:
    """Entry point of the ``apportion`` command."""
    app()


__all__ = ["app", "build_app", "main"]
