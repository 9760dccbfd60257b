"""What every ``apportion`` command shares: the console, the error line, the progress bar.

Tables and messages go to :data:`console` (standard output); progress bars go to
:data:`progress_console` (standard error, erased when done), so they never mix with what
a command prints or writes. When standard error is no terminal (a log, a CI job), where a
bar cannot be drawn, the progress is a plain line every :data:`LOG_EVERY` seconds instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(width=None if sys.stdout.isatty() else 120)
progress_console = Console(stderr=True)
LOG_EVERY = 15.0
"""Seconds between two progress lines when standard error is no terminal."""


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


class _LoggedProgress(Progress):
    """Progress for a console that is no terminal: a plain line every ``every`` seconds."""

    def __init__(self, *columns: Any, every: float, **options: Any) -> None:
        super().__init__(*columns, **options)
        self._every = every
        self._logged = time.monotonic()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def update(self, task_id: TaskID, **changes: Any) -> None:
        super().update(task_id, **changes)
        if changes.get("advance"):
            self._log(task_id)

    def _log(self, task_id: TaskID) -> None:
        now = time.monotonic()
        if now - self._logged < self._every:
            return
        self._logged = now
        task = self._tasks[task_id]
        left = task.time_remaining
        total = f"/{task.total:,.0f}" if task.total is not None else ""
        estimate = "unknown" if left is None else f"about {timedelta(seconds=int(left))}"
        self.console.print(
            f"{task.description}: {task.completed:,.0f}{total}, "
            f"{timedelta(seconds=int(task.elapsed or 0))} elapsed, time left {estimate}",
            highlight=False,
            markup=False,
        )


def write_outputs(*outputs: tuple[str, Path | None, str | bytes | None]) -> None:
    """Write each ``(what, path, content)`` that has a path, atomically, and say so.

    Produce every content first: then a failure to draw or compute leaves no file at all.

    Raises:
        typer.Exit: a file could not be written (after the one ``error:`` line).
    """
    from apportion.files import write_atomic

    try:
        for what, path, content in outputs:
            if path is not None and content is not None:
                write_atomic(path, content)
                console.print(f"{what} written to {path}", highlight=False)
    except OSError as exc:
        raise fail(exc) from exc


def progress() -> Progress:
    """A transient progress bar on standard error: steps done, time spent, time left.

    On a console that is no terminal, the same progress as a line every :data:`LOG_EVERY`
    seconds.
    """
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    if progress_console.is_terminal:
        return Progress(*columns, console=progress_console, transient=True)
    return _LoggedProgress(*columns, every=LOG_EVERY, console=progress_console, transient=True)


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
