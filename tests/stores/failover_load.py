"""Load while a primary fails over: threads calling an operation while the main thread kills.

:func:`load_during_failover` starts ``threads`` threads that call ``operation(thread, n)``
for ``n = 0, 1, 2, ...``; once each has done ``warmup`` calls, the main thread runs
``failover`` (kill the primary and wait for its replacement), then the threads go on for
``settle`` more calls each and stop. A call that raises one of ``retry_on`` is retried with
the same ``(thread, n)`` after a short pause, until it succeeds or ``give_up_after`` seconds
have passed since its first attempt; any other exception stops the run and is raised.

The :class:`LoadReport` counts what happened, and lists every acknowledged call with the
time it returned, so a test can check which acknowledged writes survived the failover
(those acknowledged after the failover ended must all be there; those before it may be lost
up to the replication lag).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")


@dataclass(frozen=True)
class Acknowledged(Generic[T]):
    """One call that returned: which, when (``time.monotonic()``), after how many failures."""

    thread: int
    number: int
    sent_at: float  # when the attempt that succeeded started
    returned_at: float
    failures: int
    result: T


@dataclass
class LoadReport(Generic[T]):
    """What a run of :func:`load_during_failover` saw."""

    acknowledged: list[Acknowledged[T]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # exception class name -> count
    gave_up: int = 0  # calls still failing after give_up_after seconds
    killed_at: float = 0.0  # when kill() was called (time.monotonic())
    dead_at: float = 0.0  # when kill() returned: the primary can acknowledge nothing more
    failed_over_at: float = 0.0  # when wait() returned
    longest_outage: float = 0.0  # longest time any thread went from a failure to a success
    longest_stall: float = 0.0  # longest time between two acknowledgments of one thread

    @property
    def retried(self) -> int:
        """Calls that succeeded after at least one failure."""
        return sum(1 for ack in self.acknowledged if ack.failures)

    @property
    def failover_seconds(self) -> float:
        """How long ``kill()`` and ``wait()`` took."""
        return self.failed_over_at - self.killed_at

    def before(self) -> list[Acknowledged[T]]:
        """Calls acknowledged before the kill (at risk: replication is asynchronous)."""
        return [ack for ack in self.acknowledged if ack.returned_at < self.killed_at]

    def sent_after_kill(self) -> list[Acknowledged[T]]:
        """Calls sent once the old primary was dead: a live node acknowledged them.

        A call that returned after the kill but was sent before it may have been
        acknowledged by the old primary (its reply still in the socket) and be lost
        with it, so these are the calls that must all be kept.
        """
        return [ack for ack in self.acknowledged if ack.sent_at > self.dead_at]

    def after(self) -> list[Acknowledged[T]]:
        """Calls acknowledged after the failover ended (on the new primary)."""
        return [ack for ack in self.acknowledged if ack.returned_at > self.failed_over_at]

    def summary(self) -> dict[str, object]:
        """The counts as one JSON-able dict (for a test's or benchmark's output)."""
        return {
            "acknowledged": len(self.acknowledged),
            "before_kill": len(self.before()),
            "after_failover": len(self.after()),
            "retried": self.retried,
            "errors": dict(self.errors),
            "gave_up": self.gave_up,
            "failover_seconds": round(self.failover_seconds, 3),
            "longest_outage_seconds": round(self.longest_outage, 3),
            "longest_stall_seconds": round(self.longest_stall, 3),
        }


def load_during_failover(
    operation: Callable[[int, int], T],
    kill: Callable[[], K],
    wait: Callable[[K], object],
    *,
    threads: int = 4,
    warmup: int = 20,
    settle: int = 20,
    retry_on: tuple[type[BaseException], ...] = (OSError,),
    pause: float = 0.02,
    give_up_after: float = 15.0,
    timeout: float = 60.0,
) -> LoadReport[T]:
    """Run ``operation`` from ``threads`` threads while ``wait(kill())`` runs on this one.

    Args:
        operation: ``operation(thread, n)``; it should be idempotent for a given
            ``(thread, n)`` (or record that it may have run twice), as a retried call repeats.
        kill: kills the primary and returns once it is dead (what it returns goes to
            ``wait``).
        wait: returns once the replacement serves.
        threads: how many threads call ``operation``.
        warmup: calls each thread completes before the kill.
        settle: calls each thread completes after the failover returned.
        retry_on: the exceptions that mean "try again" (connection refused, timeouts, a
            cluster still electing); anything else ends the run and is raised here.
        pause: seconds between attempts of one call.
        give_up_after: a call failing this long since its first attempt is counted in
            ``gave_up`` and its thread stops.
        timeout: the whole run's bound; past it, the run stops and raises ``TimeoutError``.

    Returns:
        The :class:`LoadReport`.
    """
    report: LoadReport[T] = LoadReport()
    lock = threading.Lock()
    warmed = threading.Barrier(threads + 1)
    failed_over = threading.Event()
    stop = threading.Event()
    crashes: list[BaseException] = []

    def run(thread: int) -> None:
        number = 0
        settled = 0
        previous = time.monotonic()
        outage_started: float | None = None
        try:
            while not stop.is_set():
                first = time.monotonic()
                failures = 0
                while True:
                    sent = time.monotonic()
                    try:
                        result = operation(thread, number)
                        break
                    except retry_on as error:
                        failures += 1
                        now = time.monotonic()
                        outage_started = outage_started if outage_started is not None else now
                        with lock:
                            report.errors[type(error).__name__] += 1
                        if now - first > give_up_after or stop.is_set():
                            with lock:
                                report.gave_up += 1
                            if number < warmup:
                                warmed.abort()  # no kill without every thread loaded
                            return
                        time.sleep(pause)
                returned = time.monotonic()
                with lock:
                    report.acknowledged.append(
                        Acknowledged(thread, number, sent, returned, failures, result)
                    )
                    report.longest_stall = max(report.longest_stall, returned - previous)
                    if outage_started is not None:
                        report.longest_outage = max(
                            report.longest_outage, returned - outage_started
                        )
                outage_started = None
                number += 1
                if number == warmup:
                    warmed.wait(timeout)
                previous = time.monotonic()  # not counting the wait for the others
                if failed_over.is_set() and returned > report.failed_over_at:
                    settled += 1
                    if settled >= settle:
                        return
        except threading.BrokenBarrierError:
            return
        except BaseException as error:  # raised in the caller's thread below
            crashes.append(error)
            warmed.abort()

    workers = [
        threading.Thread(target=run, args=(index,), name=f"load-{index}", daemon=True)
        for index in range(threads)
    ]
    for worker in workers:
        worker.start()
    try:
        warmed.wait(timeout)
    except threading.BrokenBarrierError:
        stop.set()
    if not crashes and not stop.is_set():
        report.killed_at = time.monotonic()
        try:
            killed = kill()
            report.dead_at = time.monotonic()
            wait(killed)
        except BaseException:
            stop.set()
            raise
        report.failed_over_at = time.monotonic()
        failed_over.set()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    if crashes:
        raise crashes[0]
    if any(worker.is_alive() for worker in workers):
        raise TimeoutError(f"the load did not finish within {timeout} s")
    if not failed_over.is_set():
        raise RuntimeError(f"a thread gave up before the kill: {report.summary()}")
    report.acknowledged.sort(key=lambda ack: ack.returned_at)
    return report
