"""Shared pools: a token budget per time window that many requests draw their ceilings from.

A :class:`Pool` belongs to a tenant or a pipeline: ``capacity`` tokens per window of
``window_seconds`` (60 for tokens per minute, 86 400 for tokens per day). Windows are
aligned on the clock: window ``k`` covers the times ``now`` from ``k * window_seconds``.

A request opened with ``pool="tenant-a"`` draws its whole ceiling from the pool's current
window when it opens, atomically: if the window has less left than the ceiling, the open is
refused with :class:`PoolExhausted` (its ``available`` says what could be drawn) and
nothing changes. When the request closes, what it left unused (``ceiling - consumed``)
returns to the window it was charged to, if that is still the pool's current window (a new
window starts full anyway). Tokens providers reported beyond the request's ceiling are
recorded as the pool's ``overflow``, never hidden.

Windows only move forward. Each caller stamps its draw with its own ``now``; the pool's
current window is the newest one any successful draw has reached, and it never goes back:
a draw stamped with an earlier window (a clock a little behind, or a clock read before
another process's draw landed) is charged to the newest window, and a give-back returns
tokens only to the window its draw was charged to, while that is still the current one.
So each window's count starts from 0 exactly once and never exceeds the capacity, under
any interleaving and any clock skew. Skew only moves *when* in real time a window's tokens
are drawn: with every clock within ``S`` seconds of true time, window ``k`` is drawn from
only between ``k * window_seconds - S`` and ``(k + 1) * window_seconds + S`` (it can begin
up to ``S`` early, when a clock ahead reaches it first, and a clock behind keeps drawing from
it up to ``S`` after its end unless a clock ahead has moved the pool on). A clock far ahead
pulls the pool's window ahead with it: the others then draw from that same window until
their own clocks reach it (fewer tokens, never more).

Orphaned draws. In the memory store a draw and its open are one step under one lock. The
Redis store takes two (the pool and the request live in different hash slots), so a draw
can outlive a request that never opened (a connection cut, a process killed between the
steps). Each such draw carries an open deadline; once ``reap`` sees it passed (by more than
the stated clock skew bound) it marks the draw void, atomically with the open, and gives it
back in full, and an open that still comes is refused with
:class:`~apportion.errors.PoolDrawExpired`: the tokens come back and are never used twice.
A request that did open is settled from its ledger, which is kept while it is open. See
:mod:`apportion.stores.redis`.

Priority classes: ``reserve`` holds tokens of each window back for requests of a class
(``critical``, ``standard``, ``peripheral``). A request may draw only on what is left above
the reserves of the classes strictly higher than its own, so peripheral work can never
drain what is kept for critical requests, while a critical request may draw everything.

:class:`PoolAccount` is the pure accounting of one pool (no I/O, no clock reads: ``now``
is handed in), used by the memory store under its lock; the Redis store runs the same
rules in Lua scripts, and both pass the same tests
(:mod:`apportion.testing.pool_conformance`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from apportion.errors import InvalidArgument, PoolExhausted
from apportion.ledger import check_ceiling, check_name, check_seconds, check_tokens
from apportion.spec import Priority

PRIORITY_RANKS: Mapping[str, int] = MappingProxyType({p.value: p.rank for p in Priority})
"""Priority class -> rank (critical 2, standard 1, peripheral 0)."""


def check_priority(priority: object) -> str:
    """Return ``priority`` as a priority class name, or raise :class:`InvalidArgument`."""
    name = priority.value if isinstance(priority, Priority) else priority
    if type(name) is not str or name not in PRIORITY_RANKS:
        raise InvalidArgument(
            "priority", priority, f"a priority class is one of {', '.join(PRIORITY_RANKS)}"
        )
    return name


def check_pool_name(name: object) -> str:
    """Return ``name`` as a pool name (non-empty, no braces), or raise :class:`InvalidArgument`."""
    if type(name) is not str or not name or "{" in name or "}" in name:
        raise InvalidArgument("pool", name, "a pool name is a non-empty string without braces")
    return check_name("pool", name)


@dataclass(frozen=True, slots=True)
class Pool:
    """A shared token budget: ``capacity`` tokens per window of ``window_seconds``.

    Args:
        name: the pool's name (a tenant, a pipeline); no braces.
        capacity: tokens each window holds (a positive token count).
        window_seconds: the window's length in seconds (``math.inf``: one window forever).
        reserve: tokens of each window held back for a priority class and the classes
            above it; lower classes cannot draw on them.

    Raises:
        InvalidArgument: a bad name, window, class name, or reserves above the capacity.
        InvalidTokenCount: the capacity or a reserve is not a token count.
    """

    name: str
    capacity: int
    window_seconds: float = 60.0
    reserve: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_pool_name(self.name)
        object.__setattr__(self, "capacity", check_ceiling(self.capacity))
        window = check_seconds("window_seconds", self.window_seconds)
        object.__setattr__(self, "window_seconds", window)
        if not isinstance(self.reserve, Mapping):
            reason = "a mapping of priority classes to tokens"
            raise InvalidArgument("reserve", self.reserve, reason)
        reserve = {
            check_priority(c): check_tokens(f"reserve[{c}]", t) for c, t in self.reserve.items()
        }
        if sum(reserve.values()) > self.capacity:
            raise InvalidArgument(
                "reserve",
                dict(reserve),
                f"pool {self.name!r}: reserves of {sum(reserve.values())} tokens exceed "
                f"the capacity of {self.capacity}",
            )
        object.__setattr__(self, "reserve", MappingProxyType({c: t for c, t in reserve.items()}))

    def window_of(self, now: float) -> int:
        """The index of the window that ``now`` falls in (by the clock alone)."""
        if math.isinf(self.window_seconds):
            return 0
        return math.floor(now / self.window_seconds)

    def held_from(self, priority: str) -> int:
        """Tokens of each window that a request of class ``priority`` may not draw on."""
        rank = PRIORITY_RANKS[priority]
        return sum(t for c, t in self.reserve.items() if PRIORITY_RANKS[c] > rank)

    def available_to(self, priority: str, drawn: int) -> int:
        """What a request of class ``priority`` may draw when ``drawn`` tokens are out."""
        return max(0, self.capacity - drawn - self.held_from(priority))


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A pool's state in one window, as a store reports it.

    Attributes:
        pool: the pool's configuration.
        window: the index of the current window.
        window_start: when the current window began (0.0 for an endless window).
        drawn: tokens out in this window: ceilings of open requests, plus what closed
            requests consumed.
        remaining: ``capacity - drawn``.
        open_draws: requests of this window that have not given their unused tokens back.
        overflow: tokens providers reported beyond the ceilings of this pool's requests
            (all windows).
        returned: tokens given back in this window: the unspent part of each draw charged
            to it, settled when its request closed (already taken off ``drawn``).
    """

    pool: Pool
    window: int
    window_start: float
    drawn: int
    remaining: int
    open_draws: int
    overflow: int
    returned: int = 0

    def available_to(self, priority: str = "standard") -> int:
        """What a request of class ``priority`` could draw now."""
        return self.pool.available_to(check_priority(priority), self.drawn)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        return {
            "name": self.pool.name,
            "capacity": self.pool.capacity,
            "window_seconds": self.pool.window_seconds,
            "reserve": dict(self.pool.reserve),
            "window": self.window,
            "window_start": self.window_start,
            "drawn": self.drawn,
            "remaining": self.remaining,
            "open_draws": self.open_draws,
            "overflow": self.overflow,
            "returned": self.returned,
        }


def current_window(pool: Pool, window: int | None, now: float) -> int:
    """The pool's current window at ``now``: the newest of its stored one and ``now``'s.

    Args:
        pool: the pool's configuration.
        window: the newest window a draw has reached (``None``: no draw yet).
        now: the caller's clock.
    """
    by_clock = pool.window_of(now)
    return by_clock if window is None or by_clock > window else window


def pool_status(
    pool: Pool,
    window: int | None,
    drawn: int,
    open_draws: int,
    overflow: int,
    now: float,
    returned: int = 0,
) -> PoolStatus:
    """The status of ``pool`` at ``now``, from its stored window, draws and overflow.

    ``open_draws`` counts the draws charged to the current window; ``drawn`` and
    ``returned`` are those of the stored window (none when ``now`` is past it).
    """
    current = current_window(pool, window, now)
    if window != current:
        drawn, open_draws, returned = 0, 0, 0
    start = 0.0 if math.isinf(pool.window_seconds) else current * pool.window_seconds
    return PoolStatus(
        pool, current, start, drawn, pool.capacity - drawn, open_draws, overflow, returned
    )


class PoolAccount:
    """The pure accounting of one pool (no I/O, no clock reads); not thread-safe by itself.

    ``window`` is the newest window a draw has reached (``None`` before the first draw);
    it never goes back (see the module docstring).

    Args:
        pool: the pool's configuration.
    """

    __slots__ = ("drawn", "draws", "overflow", "pool", "returned", "window")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.window: int | None = None
        self.drawn = 0
        self.returned = 0  # given back in the window
        self.overflow = 0
        self.draws: dict[str, tuple[int, int]] = {}  # draw key -> (window charged, tokens)

    def draw(self, key: str, tokens: int, priority: str, now: float) -> int:
        """Draw ``tokens`` for the request behind ``key``; return the window charged.

        The window charged is the pool's current one: ``now``'s window, or the newest one a
        draw has reached when ``now`` is behind it.

        Raises:
            PoolExhausted: ``priority`` may not draw that many now; nothing changes.
        """
        window = current_window(self.pool, self.window, now)
        drawn = self.drawn if window == self.window else 0
        available = self.pool.available_to(priority, drawn)
        if tokens > available:
            raise PoolExhausted(self.pool.name, tokens, available, priority)
        if window != self.window:
            self.returned = 0
        self.window, self.drawn = window, drawn + tokens
        self.draws[key] = (window, tokens)
        return window

    def give_back(self, key: str, unspent: int, overflow: int, now: float) -> int:
        """Settle the draw ``key``: return ``unspent`` tokens, record ``overflow``.

        Returns:
            The tokens returned: 0 when the window the draw was charged to is no longer the
            pool's current one (by the newest draw or by ``now``), or when the draw was
            settled already (settling twice changes nothing).
        """
        entry = self.draws.pop(key, None)
        if entry is None:
            return 0
        self.overflow += overflow
        if entry[0] != self.window or current_window(self.pool, self.window, now) != entry[0]:
            return 0
        back = min(unspent, entry[1])
        self.drawn -= back
        self.returned += back
        return back

    def status(self, now: float) -> PoolStatus:
        """The pool's status at ``now``."""
        window = current_window(self.pool, self.window, now)
        open_draws = sum(1 for w, _ in self.draws.values() if w == window)
        return pool_status(
            self.pool, self.window, self.drawn, open_draws, self.overflow, now, self.returned
        )
