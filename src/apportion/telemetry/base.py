"""The sink contract: what every telemetry sink provides."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from apportion.telemetry.records import RequestUsage

__all__ = ["Sink"]


class Sink(abc.ABC):
    """Base class of telemetry sinks (any object with a ``write`` method also works).

    ``write`` is called from a worker thread, one batch at a time, never concurrently for
    one sink; it may block (network, disk) and may raise: the batch is then reported and
    dropped, and each of its records counted as dropped (so a sink that can write part of
    a batch should write all of it or none). ``close`` runs at interpreter exit, after the
    last write. A sink connects to nothing and starts no thread when it is made: it does so
    on its first ``write``.

    Attributes:
        name: how messages name the sink (never with a password).
    """

    name: str = ""

    @abc.abstractmethod
    def write(self, batch: Sequence[RequestUsage]) -> None:
        """Write a batch of closed requests."""

    def close(self) -> None:  # noqa: B027  (optional hook)
        """Release what the sink holds (default: nothing)."""
