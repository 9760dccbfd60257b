"""Failed authentication, limited: :class:`FailureWindow` (per client address, per process).

After ``limit`` failed authentications from one client address within ``window`` seconds,
every call from that address is refused with :class:`AuthenticationThrottled` (429 with
``Retry-After``) until the oldest of those failures is ``window`` seconds old. Successful
calls are never counted. A client address, not a key, is what is counted: a guesser sends
a new key each time, so counting per key would stop nothing, and a key's prefix is the
guesser's to choose.

The window lives in the process's memory, not in the store: a replica counts the failures
it sees, so ``N`` replicas behind a balancer let through at most ``N * limit`` guesses per
window (still a few per second against keys of 128 bits and more), and the hot path of a
good key costs no store round trip. Memory is bounded: at most ``capacity`` addresses are
tracked (the least recently failing is forgotten first), each with at most ``limit``
timestamps, however many distinct bad keys arrive. Behind a reverse proxy, run uvicorn
with ``--proxy-headers`` (and ``--forwarded-allow-ips``) so the address is the client's.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Final

from apportion.errors import InvalidArgument
from apportion.serve.errors import AuthenticationThrottled

__all__ = ["DEFAULT_CAPACITY", "FailureWindow"]

DEFAULT_CAPACITY: Final = 10_000
"""Client addresses tracked at most (a few hundred bytes each)."""

UNKNOWN_CLIENT: Final = "?"
"""The address of a call whose client is not known (counted together)."""


def _check(limit: int, window: float, capacity: int) -> None:
    for name, value in (("limit", limit), ("capacity", capacity)):
        if type(value) is not int or value < 1:
            raise InvalidArgument(name, value, "a positive whole number")
    if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
        raise InvalidArgument("window", window, "a positive number of seconds")


class FailureWindow:
    """Failed authentications per client address within a sliding window.

    Args:
        limit: failures allowed within ``window`` (the next call is refused).
        window: seconds.
        capacity: client addresses tracked at most.
        clock: seconds as a float (the gateway's).

    Raises:
        InvalidArgument: a bad limit, window or capacity.
    """

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        *,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check(limit, window, capacity)
        self.limit, self.window, self.capacity, self.clock = limit, float(window), capacity, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def configure(self, limit: int, window: float) -> None:
        """Take a new limit and window (a config reload), keeping the failures counted.

        Each client keeps its latest ``limit`` failures; the window applies from now on.

        Raises:
            InvalidArgument: a bad limit or window (nothing changed).
        """
        _check(limit, window, self.capacity)
        if limit != self.limit:
            for address, times in self._failures.items():
                self._failures[address] = deque(times, maxlen=limit)
        self.limit, self.window = limit, float(window)

    def __len__(self) -> int:
        """Client addresses tracked now."""
        return len(self._failures)

    def check(self, client: str | None) -> None:
        """Refuse ``client`` while it has ``limit`` failures within the window.

        Raises:
            AuthenticationThrottled: it has; ``retry_after`` says when it may call again.
        """
        times = self._failures.get(client or UNKNOWN_CLIENT)
        if times is None or len(times) < self.limit:
            return
        wait = times[0] + self.window - self.clock()
        if wait > 0:
            raise AuthenticationThrottled(max(1, math.ceil(wait)), self.limit, self.window)

    def failed(self, client: str | None) -> None:
        """Count a failed authentication of ``client`` (the oldest client goes when full)."""
        address = client or UNKNOWN_CLIENT
        now = self.clock()
        times = self._failures.pop(address, None)
        if times is None:
            times = deque(maxlen=self.limit)
            while len(self._failures) >= self.capacity:
                self._failures.popitem(last=False)
        times.append(now)
        self._failures[address] = times  # most recent last
        self._forget_old(now)

    def _forget_old(self, now: float) -> None:
        """Drop the clients whose last failure left the window (oldest first, a few per call)."""
        for _ in range(4):
            oldest = next(iter(self._failures.items()), None)
            if oldest is None or oldest[1][-1] + self.window > now:
                return
            del self._failures[oldest[0]]
