"""How calls ended, counted for the report (see :mod:`apportion.calls` for each status).

A call's status is the one it was recorded with; a call ingested without one reads
``cut`` or ``completed`` from its ``truncated`` flag when it finished with usage,
``released`` when released unused, else ``unknown``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from apportion.telemetry.records import CallUsage

__all__ = ["STATUS_ORDER", "ordered", "status_of", "statuses_of"]


STATUS_ORDER: Final = (
    "completed",
    "wrapped_up",
    "cut",
    "late",
    "released",
    "expired",
    "closed",
    "refused",
    "unknown",
)
"""The order a report lists call statuses in."""


def status_of(call: CallUsage) -> str:
    """How a call ended: its status, else what its ``truncated`` flag tells."""
    return call.ending


def statuses_of(calls: Sequence[CallUsage], refused: int = 0) -> dict[str, int]:
    """Calls counted by status (see the module docstring), in :data:`STATUS_ORDER`."""
    counts: dict[str, int] = {}
    for call in calls:
        status = status_of(call)
        counts[status] = counts.get(status, 0) + 1
    if refused:
        counts["refused"] = counts.get("refused", 0) + refused
    return ordered(counts)


_RANK: Final = {s: i for i, s in enumerate(STATUS_ORDER)}


def ordered(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts by status in :data:`STATUS_ORDER` (others after, by name)."""
    return {s: counts[s] for s in sorted(counts, key=lambda s: (_RANK.get(s, len(_RANK)), s))}
