"""What every ``apportion`` command shares: the console, the error line, the progress bar.

Tables and messages go to :data:`console` (standard output); progress bars go to
:data:`progress_console` (standard error, drawn only on a terminal and erased when done),
so they never mix with what a command prints or writes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
progress_console = Console(stderr=True)


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
    """A transient progress bar on standard error: steps done, time spent, time left."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=progress_console,
        transient=True,
    )


@contextmanager
def stages(*names: str) -> Iterator[Callable[[], None]]:
    """A progress bar over a command's stages, for work that reports no finer steps.

    Args:
        names: each stage's description, in order.

    Yields:
        ``done()``, to call as each stage ends (the bar moves on to the next name).
    """
    with progress() as bar:
        task = bar.add_task(names[0], total=len(names))
        finished = 0

        def done() -> None:
            nonlocal finished
            finished += 1
            bar.update(task, advance=1, description=names[min(finished, len(names) - 1)])

        yield done
