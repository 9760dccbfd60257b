"""What every ``apportion`` command shares: the console, the error line, the progress bar."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(width=None if sys.stdout.isatty() else 120)


def fail(error: Exception) -> typer.Exit:
    """Print ``error: <message>`` on one line; the ``typer.Exit`` (code 2) to raise.

    Args:
        error: The exception whose message is shown.

    Returns:
        The exit to raise (``raise fail(exc) from exc``).
    """
    # escape: messages hold brackets (``apportion[redis]``, ``agents[2]``) Rich would eat
    console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def progress() -> Progress:
    """A transient progress bar with the steps done, the time spent and the time left."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
