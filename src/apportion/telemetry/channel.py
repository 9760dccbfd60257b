"""Buffered delivery of usage records to one sink, from a worker thread.

A :class:`Channel` sits in front of each sink. :meth:`Channel.submit` only appends to an
in-memory buffer and returns at once; a worker thread, started on the first submit (never
by a constructor), hands the records to the sink in batches of up to :data:`BATCH_SIZE`
(after waiting up to :data:`LINGER_SECONDS` for a batch to fill). What a caller submits may
be a record not built yet (:class:`~apportion.telemetry.records.PendingUsage`): the worker
builds it, so the caller's thread only queues it. A failing sink never blocks or breaks a
request, and every record that never reaches the sink is counted, in records, in
:attr:`Channel.dropped`:

- a sink that cannot be reached (its write raised :class:`ConnectionError`, such as
  :class:`~apportion.errors.DatabaseUnavailable`, or :class:`TimeoutError`) keeps its
  records: they go back to the front of the buffer and are written again after a pause
  that doubles up to :data:`RETRY_MAX_SECONDS`, with one warning per outage;
- the buffer holds :data:`BUFFER_SIZE` records at most: past that bound (the sink is down,
  or slower than the traffic) the *oldest* records are dropped, counted in
  :attr:`Channel.dropped_full`, with one warning each time the buffer fills;
- a write that fails otherwise (the sink refused what it was given) is tried again on
  each half of the batch, down to single records, so a record the sink refuses loses only
  itself (a sink that refuses everything is given up on after a few halvings); what is
  lost is counted in :attr:`Channel.dropped_failed` and said in a
  :class:`TelemetryWarning` naming how many records it lost and how many so far. A sink
  that refuses some records of a batch itself (:class:`~apportion.errors.RecordsRejected`,
  as the SQL sink does) has the others counted as delivered.

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
from collections.abc import Callable, Sequence
from typing import Any, Final

from apportion.errors import RecordsRejected

__all__ = [
    "BATCH_SIZE",
    "BUFFER_SIZE",
    "IDLE_SECONDS",
    "LINGER_SECONDS",
    "RETRY_MAX_SECONDS",
    "Channel",
    "TelemetryWarning",
    "channels",
    "flush_all",
    "observe_drops",
]

BUFFER_SIZE: Final = 10_000
"""Records a channel holds at most; past it, the oldest are dropped."""

BATCH_SIZE: Final = 1_000
"""Records handed to a sink in one ``write`` at most."""

LINGER_SECONDS: Final = 0.05
"""How long a worker waits for a batch to fill before it writes a smaller one."""

IDLE_SECONDS: Final = 2.0
"""How long a worker waits for records before it ends."""

RETRY_FIRST_SECONDS: Final = 0.1
"""The pause before writing again to a sink that could not be reached."""

RETRY_MAX_SECONDS: Final = 5.0
"""The longest pause between two tries of a sink that cannot be reached."""

EXIT_FLUSH_SECONDS: Final = 10.0
"""How long the exit handler waits for all channels together."""


class TelemetryWarning(RuntimeWarning):
    """A telemetry sink failed, or records were dropped; the request was not affected."""


_channels: weakref.WeakSet[Channel] = weakref.WeakSet()
_registry_lock = threading.Lock()
_atexit_registered = False


_drop_observers: list[Callable[[str, str, int], None]] = []


def observe_drops(observer: Callable[[str, str, int], None]) -> None:
    """Call ``observer(sink name, reason, records)`` whenever a channel drops records.

    ``reason`` is ``full`` (the oldest, past the buffer's bound), ``failed`` (refused by
    the sink, or not buildable) or ``discarded``. The observer runs on the thread that
    dropped them and must be quick (a Prometheus counter's ``inc``); its errors are
    ignored. Adding the same observer again does nothing.
    """
    with _registry_lock:
        if observer not in _drop_observers:
            _drop_observers.append(observer)


def _observe(name: str, reason: str, count: int) -> None:
    for observer in list(_drop_observers):
        with contextlib.suppress(Exception):
            observer(name, reason, count)


def channels() -> list[Channel]:
    """Every channel of this process (each sink in use has one)."""
    with _registry_lock:
        return list(_channels)


def _unreachable(exc: BaseException) -> bool:
    """Whether a write failed for want of the sink (kept and tried again), not its data."""
    return isinstance(exc, ConnectionError | TimeoutError)


class Channel:
    """The buffer and worker in front of one sink.

    Every record submitted ends up counted once: ``delivered``, ``dropped``, or still
    pending (in the buffer or being written).

    Args:
        sink: an object with ``write(batch)`` (and optionally ``close()``).
        capacity: records held at most; past it the oldest are dropped.
        retry: the first and the longest pause, in seconds, between tries of a sink that
            cannot be reached.

    Attributes:
        delivered: records the sink wrote.
        dropped: records that never reached the sink, for any reason
            (``dropped_full + dropped_failed + discarded``).
        dropped_full: the oldest records, dropped when the buffer was past its bound.
        dropped_failed: records the sink refused (or that could not be built).
        failures: deliveries that lost records to failed writes.
        retries: writes that found the sink unreachable (their records were kept).
        discarded: records given up on by :meth:`discard`.
    """

    def __init__(
        self,
        sink: Any,
        *,
        capacity: int = BUFFER_SIZE,
        retry: tuple[float, float] = (RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS),
    ) -> None:
        self.sink = sink
        self.capacity = capacity
        self.retry = retry
        self.delivered = 0
        self.dropped_full = 0
        self.dropped_failed = 0
        self.failures = 0
        self.retries = 0
        self.discarded = 0
        self._buffer: deque[Any] = deque()
        self._pending = 0  # submitted, not yet written (or given up)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._waiting = False  # the worker waits for records: notify it
        self._flushing = 0  # callers waiting in flush: no lingering
        self._warned_full = False
        self._down = False  # the sink could not be reached at the last try
        self._pause = 0.0
        self._loss_reported = 0
        with _registry_lock:
            _channels.add(self)

    @property
    def dropped(self) -> int:
        """Records that never reached the sink: past the buffer's bound, or refused."""
        return self.dropped_full + self.dropped_failed + self.discarded

    @property
    def pending(self) -> int:
        """Records submitted and not yet written nor given up on."""
        return self._pending

    def counts(self) -> dict[str, int]:
        """The counters: ``delivered``, ``dropped_full``, ``dropped_failed``, ``discarded``, ..."""
        with self._cond:
            return {
                "delivered": self.delivered,
                "dropped_full": self.dropped_full,
                "dropped_failed": self.dropped_failed,
                "discarded": self.discarded,
                "pending": self._pending,
                "retries": self.retries,
            }

    def loss(self) -> str | None:
        """What the sink lost so far, in words (``None``: nothing).

        For example ``telemetry sink sql(sqlite:///a.db) lost 412 record(s): 12 dropped
        (the oldest) because its buffer was full, 400 in writes that failed (2 failed
        writes)``.
        """
        if not self.dropped:
            return None
        return (
            f"telemetry sink {self.name} lost {self.dropped} record(s): "
            f"{self.dropped_full} dropped (the oldest) because its buffer was full, "
            f"{self.dropped_failed} in writes that failed ({self.failures} failed write(s))"
            + (f", {self.discarded} given up on" if self.discarded else "")
        )

    @property
    def name(self) -> str:
        """The sink's name for messages."""
        return str(getattr(self.sink, "name", None) or type(self.sink).__name__)

    def submit(self, record: Any) -> bool:
        """Queue one record for the sink; never blocks on the sink.

        When the buffer is at its bound, the oldest record in it is dropped to make room.

        Returns:
            Whether the buffer had room (``False``: the oldest record was dropped).
        """
        with self._cond:
            buffer = self._buffer
            buffer.append(record)
            full = len(buffer) > self.capacity
            if full:
                buffer.popleft()
                self.dropped_full += 1
                warn = not self._warned_full
                self._warned_full = True
            else:
                self._pending += 1
                warn = False
            if self._thread is None:
                self._start()
            elif self._waiting and (len(buffer) >= BATCH_SIZE or len(buffer) == 1):
                self._cond.notify()
        if full:
            _observe(self.name, "full", 1)
        if warn:
            self._warn_full(3)
        return not full

    def _warn_full(self, stacklevel: int) -> None:
        warnings.warn(
            f"telemetry sink {self.name} is falling behind: its buffer of "
            f"{self.capacity} records is full, the oldest records are dropped "
            "(counted in its channel's dropped_full and dropped)",
            TelemetryWarning,
            stacklevel=stacklevel + 1,
        )

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
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._pending:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
            finally:
                self._flushing -= 1
        return True

    def discard(self) -> int:
        """Drop every record still buffered (counted in ``discarded``); how many.

        For giving up on a sink that cannot be reached (its worker stops retrying once
        nothing is left); records being written are not affected.
        """
        with self._cond:
            count = len(self._buffer)
            self._buffer.clear()
            self.discarded += count
            self._pending -= count
            self._cond.notify_all()
        if count:
            _observe(self.name, "discarded", count)
        return count

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

    def _take(self) -> list[Any] | None:
        """The next batch (``None``: idle for long enough, the worker ends)."""
        with self._cond:
            buffer = self._buffer
            if not buffer:
                self._waiting = True
                self._cond.wait(IDLE_SECONDS)
                self._waiting = False
                if not buffer:
                    self._thread = None  # idle: end; the next submit starts a new worker
                    return None
            if len(buffer) < BATCH_SIZE and not self._flushing and LINGER_SECONDS > 0:
                self._waiting = True  # let a batch fill (a flush or a full batch wakes us)
                self._cond.wait(LINGER_SECONDS)
                self._waiting = False
            count = min(BATCH_SIZE, len(buffer))
            return [buffer.popleft() for _ in range(count)]

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            kept = self._deliver(batch)
            excess = 0
            with self._cond:
                self._pending -= len(batch) - len(kept)
                if kept:  # the sink cannot be reached: back to the front, oldest first
                    self._buffer.extendleft(reversed(kept))
                    excess = len(self._buffer) - self.capacity
                    for _ in range(max(0, excess)):
                        self._buffer.popleft()
                    if excess > 0:
                        self.dropped_full += excess
                        self._pending -= excess
                    self._pause = min(self.retry[1], max(self.retry[0], self._pause * 2))
                    if self._pending:
                        self._cond.wait(self._pause)
                else:
                    self._pause = 0.0
                    if not self._buffer:
                        self._warned_full = False  # the next overflow is said again
                self._cond.notify_all()
            if excess > 0:
                _observe(self.name, "full", excess)
                if not self._warned_full:
                    self._warned_full = True
                    self._warn_full(1)
            elif not kept:
                self._report_loss()

    def _deliver(self, batch: Sequence[Any]) -> list[Any]:
        """Write ``batch``; the records to try again later (the sink was unreachable)."""
        from apportion.telemetry.records import PendingUsage, RolloutRecord

        records: list[Any] = []
        rollouts: list[Any] = []
        for item in batch:
            if type(item) is PendingUsage:
                try:
                    item = item.record()
                except Exception as exc:  # a record that cannot be built loses only itself
                    with self._cond:
                        self.dropped_failed += 1
                    _observe(self.name, "failed", 1)
                    warnings.warn(
                        f"telemetry: request {item.request_id!r} not recorded: {exc!r}",
                        TelemetryWarning,
                        stacklevel=2,
                    )
                    continue
            (rollouts if type(item) is RolloutRecord else records).append(item)
        kept: list[Any] = []
        if rollouts:  # only submitted to sinks that have write_rollouts
            kept += self._write(self.sink.write_rollouts, rollouts)
        if records:
            kept += self._write(self.sink.write, records)
        return kept

    def _write(self, write: Callable[[Sequence[Any]], Any], records: list[Any]) -> list[Any]:
        """Hand ``records`` to the sink, halving a refused batch down to the records refused.

        Returns:
            The records to try again (the sink could not be reached); the others are
            counted as delivered or as dropped.
        """
        stack = [records]
        delivered = lost = rejected = failed = 0
        budget = 2 * len(records).bit_length() + 2  # failed tries before giving up halving
        first: BaseException | None = None
        kept: list[Any] = []
        while stack:
            part = stack.pop()
            try:
                write(part)
            except RecordsRejected as exc:  # only some records: the others were written
                delivered += len(part) - exc.rejected
                rejected += exc.rejected
                first = first or exc
            except Exception as exc:
                if _unreachable(exc):
                    kept = [*part, *(r for rest in reversed(stack) for r in rest)]
                    self._unreachable_now(exc, len(kept))
                    break
                failed += 1
                if first is None or isinstance(first, RecordsRejected):
                    first = exc
                if len(part) > 1 and (delivered or failed < budget):
                    middle = len(part) // 2
                    stack += [part[middle:], part[:middle]]
                else:
                    lost += len(part)
            else:
                delivered += len(part)
        with self._cond:
            self.delivered += delivered
            self.dropped_failed += lost + rejected
            if lost or rejected:
                self.failures += 1
            total = self.dropped
            if not kept:
                self._down = False
        if lost or rejected:
            _observe(self.name, "failed", lost + rejected)
        if first is None or not (lost or rejected):
            return kept
        if lost:
            message = (
                f"telemetry sink {self.name} failed to write {lost + rejected} record(s) of "
                f"{len(records)}, dropped them ({total} record(s) lost so far): "
            )
        else:
            message = (
                f"telemetry sink {self.name} could not store {rejected} of {len(records)} "
                f"record(s), stored the others ({total} record(s) lost so far): "
            )
        warnings.warn(message + _describe(first), TelemetryWarning, stacklevel=3)
        return kept

    def _report_loss(self) -> None:
        """Tell a sink that keeps them (``record_losses``) what this channel lost so far.

        After a write that went through, and only when the counts changed: the SQL sink
        keeps them in its database, where ``apportion report`` reads them.
        """
        record = getattr(self.sink, "record_losses", None)
        if record is None:
            return
        counts = self.counts()
        lost = counts["dropped_full"] + counts["dropped_failed"] + counts["discarded"]
        if lost == self._loss_reported:
            return
        try:
            record(counts)
        except Exception:  # said again after the next write that goes through
            return
        self._loss_reported = lost

    def _unreachable_now(self, exc: BaseException, kept: int) -> None:
        with self._cond:
            first = not self._down
            self._down = True
        if first:
            warnings.warn(
                f"telemetry sink {self.name} cannot be reached, keeping {kept} record(s) to "
                f"write again (past {self.capacity} buffered, the oldest are dropped): "
                f"{_describe(exc)}",
                TelemetryWarning,
                stacklevel=4,
            )
        with self._cond:
            self.retries += 1  # after the warning: a reader of retries has seen it


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
