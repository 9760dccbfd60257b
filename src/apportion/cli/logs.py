"""Reading a call log for ``replay`` and ``learn``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apportion.cli.console import console


def load_log(calls: Path, pipeline: Path, split: str | None) -> tuple[Any, Any]:
    """The pipeline and the call log it names (noting a ``--split`` that filters nothing)."""
    from apportion.sim.replay import load_calls
    from apportion.spec import Pipeline

    spec = Pipeline.from_yaml(pipeline)
    log = load_calls(calls, spec)
    if split is not None and not log.has_split:
        console.print(
            f"note: {calls} has no split column: --split filters nothing",
            highlight=False,
            soft_wrap=True,
        )
    return spec, log
