"""Buffered delivery of usage records to one sink, from a worker thread.

A :class:`Channel` sits in front of each sink. :meth:`Channel.submit` only appends to an
in-memory buffer and returns at once; a worker thread, started on the first submit (never
by a constructor), hands the records to the sink in batches. A failing sink is skipped, it
never blocks or breaks a request; but every record that never reaches the sink is counted,
in records, in :attr:`Channel.dropped`:

- a batch the sink fails to write is not retried (the sink may reconnect for the next
  one): its records are dropped, counted in :attr:`Channel.dropped_failed`, and the
  failure is reported with a :class:`TelemetryWarning` naming how many records it lost and
  how many the sink has lost so far;
- when the buffer is full (the sink is slower than the traffic), new records are dropped
  and counted in :attr:`Channel.dropped_full`, with one warning.

A worker that finds nothing to do for :data:`IDLE_SECONDS` ends; the next submit starts
another. :func:`flush_all` waits until every channel has delivered what it was given; it
runs at interpreter exit (registered when the first worker starts), and then warns once
more, per sink that lost records, how many it lost and why.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

from apportion.errors import RecordsRejected

__all__ = ["BATCH_SIZE", "BUFFER_SIZE", "IDLE_SECONDS", "Channel", "TelemetryWarning", "flush_all"]

BUFFER_SIZE: Final = 10_000
"""Records a channel holds at most before it drops new ones."""

BATCH_SIZE: Final = 200
"""Records handed to a sink in one ``write`` at most."""

IDLE_SECONDS: Final = 2.0
"""How long a worker waits for records before it ends."""

EXIT_FLUSH_SECONDS: Final = 10.0
"""How long the exit handler waits for all channels together."""


class TelemetryWarning(RuntimeWarning):
    """A telemetry sink failed, or records were dropped; the request was not affected."""


_channels: weakref.WeakSet[Channel] = weakref.WeakSet()
_registry_lock = threading.Lock()
_atexit_registered = False


class Channel:
    """The buffer and worker in front of one sink.

    Every record submitted ends up counted once: ``delivered``, ``dropped``, or still
    pending (in the buffer or being written).

    Args:
        sink: an object with ``write(batch)`` (and optionally ``close()``).
        capacity: records held at most before new ones are dropped.

    Attributes:
        delivered: records the sink wrote.
        dropped: records that never reached the sink, for any reason
            (``dropped_full + dropped_failed``).
        dropped_full: records refused because the buffer was full.
        dropped_failed: records lost in writes that failed.
        failures: writes that failed (each lost a whole batch: see ``dropped_failed``).
    """

    def __init__(self, sink: Any, *, capacity: int = BUFFER_SIZE) -> None:
        self.sink = sink
        self.capacity = capacity
        self.delivered = 0
        self.dropped_full = 0
        self.dropped_failed = 0
        self.failures = 0
        self._buffer: deque[Any] = deque()
        self._pending = 0  # submitted, not yet written (or given up)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._warned_full = False
        with _registry_lock:
            _channels.add(self)

    @property
    def dropped(self) -> int:
        """Records that never reached the sink: buffer full or a failed write."""
        return self.dropped_full + self.dropped_failed

    @property
    def pending(self) -> int:
        """Records submitted and not yet written nor given up on."""
        return self._pending

    def loss(self) -> str | None:
        """What the sink lost so far, in words (``None``: nothing).

        For example ``telemetry sink sql(sqlite:///a.db) lost 412 record(s): 12 dropped
        because its buffer was full, 400 in writes that failed (2 failed writes)``.
        """
        if not self.dropped:
            return None
        return (
            f"telemetry sink {self.name} lost {self.dropped} record(s): "
            f"{self.dropped_full} dropped because its buffer was full, "
            f"{self.dropped_failed} in writes that failed ({self.failures} failed write(s))"
        )

    @property
    def name(self) -> str:
        """The sink's name for messages."""
        return str(getattr(self.sink, "name", None) or type(self.sink).__name__)

    def submit(self, record: Any) -> bool:
        """Queue one record for the sink; never blocks on the sink.

        Returns:
            Whether the record was queued (``False``: the buffer was full, it was dropped).
        """
        with self._cond:
            if self._pending >= self.capacity:
                self.dropped_full += 1
                warn = not self._warned_full
                self._warned_full = True
            else:
                warn = False
                self._buffer.append(record)
                self._pending += 1
                self._cond.notify()
                if self._thread is None:
                    self._start()
                return True
        if warn:
            warnings.warn(
                f"telemetry sink {self.name} is falling behind: its buffer of "
                f"{self.capacity} records is full, new records are dropped "
                "(counted in its channel's dropped_full and dropped)",
                TelemetryWarning,
                stacklevel=3,
            )
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted so far was handed to the sink.

        Args:
            timeout: seconds to wait at most (``None``: as long as it takes).

        Returns:
            Whether everything was delivered (or given up on after a failure) in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._pending and self._thread is None:
                self._start()
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _start(self) -> None:
        global _atexit_registered
        thread = threading.Thread(
            target=self._work, name=f"apportion-telemetry-{self.name}", daemon=True
        )
        self._thread = thread
        with _registry_lock:
            if not _atexit_registered:
                atexit.register(_flush_at_exit)
                _atexit_registered = True
        thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._buffer:
                    self._cond.wait(IDLE_SECONDS)
                if not self._buffer:
                    self._thread = None  # idle: end; the next submit starts a new worker
                    return
                batch = [self._buffer.popleft() for _ in range(min(BATCH_SIZE, len(self._buffer)))]
            self._deliver(batch)
            with self._cond:
                self._pending -= len(batch)
                self._cond.notify_all()

    def _deliver(self, batch: Sequence[Any]) -> None:
        from apportion.telemetry.records import RolloutRecord

        rollouts = [r for r in batch if isinstance(r, RolloutRecord)]
        usage = [r for r in batch if not isinstance(r, RolloutRecord)] if rollouts else batch
        if rollouts:  # only submitted to sinks that have write_rollouts
            self._write(self.sink.write_rollouts, rollouts)
        if usage:
            self._write(self.sink.write, usage)

    def _write(self, write: Any, records: Sequence[Any]) -> None:
        """Hand ``records`` to the sink; count them as delivered or as dropped."""
        try:
            write(records)
        except RecordsRejected as exc:  # only some records: the others were written
            with self._cond:
                self.failures += 1
                self.dropped_failed += exc.rejected
                self.delivered += len(records) - exc.rejected
                lost = self.dropped
            warnings.warn(
                f"telemetry sink {self.name} could not store {exc.rejected} of "
                f"{len(records)} record(s), stored the others ({lost} record(s) lost so far): "
                f"{_describe(exc)}",
                TelemetryWarning,
                stacklevel=3,
            )
        except Exception as exc:  # a failing sink is reported and skipped
            with self._cond:
                self.failures += 1
                self.dropped_failed += len(records)
                lost = self.dropped
            warnings.warn(
                f"telemetry sink {self.name} failed to write {len(records)} record(s), "
                f"dropped them ({lost} record(s) lost so far): {_describe(exc)}",
                TelemetryWarning,
                stacklevel=3,
            )
        else:
            with self._cond:
                self.delivered += len(records)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def flush_all(timeout: float | None = None) -> bool:
    """Wait until every channel delivered what it was given.

    Args:
        timeout: seconds to wait at most over all channels (``None``: no limit).

    Returns:
        Whether every channel finished in time.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    with _registry_lock:
        channels = list(_channels)
    done = True
    for channel in channels:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        done = channel.flush(left) and done
    return done


def _flush_at_exit() -> None:
    if not flush_all(EXIT_FLUSH_SECONDS):
        with _registry_lock:
            unwritten = sum(channel.pending for channel in _channels)
        warnings.warn(
            f"telemetry: {unwritten} record(s) were not written before exit",
            TelemetryWarning,
            stacklevel=1,
        )
    with _registry_lock:
        channels = list(_channels)
    for channel in channels:
        loss = channel.loss()
        if loss is not None:
            warnings.warn(loss, TelemetryWarning, stacklevel=1)
        close = getattr(channel.sink, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):  # exiting: nothing left to report to
                close()
