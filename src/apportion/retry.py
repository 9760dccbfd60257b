"""How the controller retries a store call whose outcome is unknown.

A call to a networked store can fail after it was sent: the connection dropped, or the
reply did not come in time (:class:`~apportion.errors.StoreOutcomeUnknown`). The operation
may then have been carried out or not. Every mutating call the controller makes carries an
operation id, which the store answers with the first outcome when it sees it again
(:mod:`apportion.stores.base`), so the controller calls again with the same id, a bounded
number of times with exponential backoff, and only then raises the error (a
:class:`~apportion.errors.StoreUnavailable`). Reads (``get``, ``events``) are retried the
same way; a call that failed to connect (nothing was sent) is not retried.

The sleeps are injected (tenacity's ``sleep``), so tests never wait for real.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from apportion.errors import InvalidArgument

__all__ = ["StoreRetry"]


def _no_wait(seconds: float) -> None:
    del seconds


@dataclass(frozen=True)
class StoreRetry:
    """Retries of a store call whose outcome is unknown.

    Args:
        attempts: calls in all, the first included (1: never retry), at most 20.
        first_delay: seconds before the second call.
        factor: each later delay is this many times the one before (at least 1).
        max_delay: the longest delay, in seconds.
        sleep: waits that many seconds (blocking calls).
        asleep: waits that many seconds (async calls).

    Raises:
        InvalidArgument: a bad count, delay or factor, or a sleep that is not callable.
    """

    attempts: int = 3
    first_delay: float = 0.02
    factor: float = 2.0
    max_delay: float = 1.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    asleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)

    def __post_init__(self) -> None:
        if type(self.attempts) is not int or not 1 <= self.attempts <= 20:
            raise InvalidArgument("attempts", self.attempts, "an integer from 1 to 20")
        for name, least in (("first_delay", 0.0), ("factor", 1.0), ("max_delay", 0.0)):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not least <= value <= 3600
            ):
                raise InvalidArgument(name, value, f"a number from {least} to 3600")
        for name in ("sleep", "asleep"):
            if not callable(getattr(self, name)):
                raise InvalidArgument(name, getattr(self, name), "a function of seconds")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed call number ``attempt`` (1 for the first)."""
        return float(min(self.max_delay, self.first_delay * self.factor ** (attempt - 1)))

    @classmethod
    def immediate(cls, attempts: int = 3) -> StoreRetry:
        """Retries without waiting (tests, or a store on the same host)."""
        return cls(attempts, 0.0, sleep=_no_wait, asleep=_no_await)


async def _no_await(seconds: float) -> None:
    del seconds
