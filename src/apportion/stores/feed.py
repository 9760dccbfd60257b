"""The store's event feed: every ledger change, in order, for live readers (the dashboard).

A store appends one :class:`FeedEvent` per ledger event (open, begin, extend, finish,
release, expire, close, child, child_close) in the same atomic step as the change, with the
state after it (the request's status, the agent's tokens held and consumed, the request's
free pool). Readers ask for the events after a cursor (:meth:`Store.feed
<apportion.stores.base.Store.feed>`), waiting up to a timeout for new ones; the feed is
bounded (the oldest events are dropped first), so it is for watching, not for accounting.

:class:`FeedRing` is the in-process feed (the memory store's): a bounded ring buffer with a
condition for threads and loop-safe wakeups for asyncio tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from apportion.errors import InvalidArgument
from apportion.ledger import Event, check_time

__all__ = [
    "FEED_KINDS",
    "NOTE_KINDS",
    "FeedEvent",
    "FeedPage",
    "FeedRing",
    "check_feed_args",
    "check_note",
    "cursor_key",
    "with_notes",
]

FEED_KINDS: Final = frozenset(
    {
        "open",
        "begin",
        "extend",
        "finish",
        "release",
        "expire",
        "close",
        "child",
        "child_close",
        "refused",
        "fitted",
    }
)
"""The kinds of event a feed carries: those of :class:`~apportion.ledger.Event`, and the
notes (:meth:`Store.note <apportion.stores.base.Store.note>`), which change no ledger:
``refused``, a begin or an extension the controller refused (the note says which), and
``fitted``, messages of a call dropped or shortened to fit its grant (the tokens removed in
``context_tokens``, the messages in ``note``)."""

NOTE_KINDS: Final = frozenset({"refused", "fitted"})
"""The kinds of feed-only event :meth:`Store.note` appends."""


def with_notes(events: Sequence[Event], notes: Iterable[tuple[int, Event]]) -> list[Event]:
    """A request's events with its notes in their places.

    Args:
        events: the request's ledger events, oldest first.
        notes: ``(ledger events before it, note)`` per note, oldest first.
    """
    merged: list[Event] = []
    done = 0
    for before, note in notes:
        merged += events[done:before]
        done = max(done, before)
        merged.append(note)
    merged += events[done:]
    return merged


_new = tuple.__new__  # builds a NamedTuple from a full tuple, skipping its slow __new__

MAX_FEED_LIMIT: Final = 10_000
"""The most events one read may ask for."""


class FeedEvent(NamedTuple):
    """One ledger change, as the feed carries it.

    Attributes:
        cursor: where the event is in the feed (opaque text, increasing; pass it back as
            ``after`` to read what came next).
        request_id: the store's id of the request changed (a gateway's ``TENANT/ID``).
        event: the ledger's event (kind, time, agent, grant id, tokens, note ...).
        status: the request's status after the change (``open``, or how it closed).
        granted: tokens the agent holds in open grants after the change (for an event of
            no agent: the request's reserved tokens).
        used: tokens the agent consumed so far (no agent: the request's).
        free: the request's free pool after the change.
        consumed: the tokens the request consumed so far (its reserved tokens are
            ``ceiling - free - consumed``).
    """

    cursor: str
    request_id: str
    event: Event
    status: str
    granted: int
    used: int
    free: int
    consumed: int

    @property
    def kind(self) -> str:
        """The kind of change (``begin``, ``finish`` ...)."""
        return self.event.kind

    @property
    def agent(self) -> str | None:
        """The agent concerned, or ``None``."""
        return self.event.agent

    @property
    def at(self) -> float:
        """The clock time of the change."""
        return self.event.at

    @property
    def tenant(self) -> str:
        """The part of the request id before its first ``/`` (a gateway's tenant), or ``""``."""
        head, slash, _ = self.request_id.partition("/")
        return head if slash else ""


@dataclass(frozen=True, slots=True)
class FeedPage:
    """What one read of the feed returns.

    Attributes:
        events: the events after the cursor asked for (those matching the prefix), oldest
            first.
        cursor: the cursor to ask from next (past every event read, matched or not).
    """

    events: tuple[FeedEvent, ...]
    cursor: str


def cursor_key(cursor: str) -> tuple[int, ...]:
    """What orders two cursors of one feed: later events have greater keys.

    Every store's cursors are whole numbers joined by ``-`` (the memory store's ``17``,
    a Redis stream's ``1700000000000-3``); a part that is not a number counts as 0.
    """
    key: list[int] = []
    for part in cursor.split("-"):
        try:
            key.append(int(part))
        except ValueError:
            key.append(0)
    return tuple(key)


def check_feed_args(
    after: object, prefix: object, limit: object, timeout: object
) -> tuple[str | None, str, int, float]:
    """Check the arguments of :meth:`Store.feed`; return them.

    Raises:
        InvalidArgument: a cursor or prefix that is not text, a limit not in
            ``[1, 10000]``, a timeout that is not a number of seconds.
    """
    if after is not None and (not isinstance(after, str) or len(after) > 64):
        raise InvalidArgument("after", after, "a cursor the feed returned, or None")
    if not isinstance(prefix, str):
        raise InvalidArgument("prefix", prefix, "the start of the request ids to read")
    if type(limit) is not int or not 1 <= limit <= MAX_FEED_LIMIT:
        raise InvalidArgument("limit", limit, f"an integer in [1, {MAX_FEED_LIMIT}]")
    seconds = check_time("timeout", timeout)
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument("timeout", timeout, "a finite number of seconds")
    return after, prefix, limit, seconds


def check_note(event: object) -> Event:
    """Check an event for :meth:`Store.note`; return it.

    Raises:
        InvalidArgument: not an :class:`~apportion.ledger.Event` of a note kind, of an
            agent, at a finite time, with token counts.
    """
    if not isinstance(event, Event) or event.kind not in NOTE_KINDS:
        raise InvalidArgument("event", event, f"an Event of kind {', '.join(sorted(NOTE_KINDS))}")
    if not isinstance(event.agent, str) or not event.agent:
        raise InvalidArgument("event.agent", event.agent, "the agent the note is about")
    check_time("event.at", event.at)
    for name in ("grant_id", "context_tokens", "output_tokens"):
        value = getattr(event, name)
        if type(value) is not int or not 0 <= value < 2**53:
            raise InvalidArgument(f"event.{name}", value, "a count, at least 0")
    if not isinstance(event.note, str) or len(event.note) > 200:
        raise InvalidArgument("event.note", event.note, "a short text")
    return event


class FeedRing:
    """A bounded in-process feed: the newest ``size`` events, cursors ``1, 2, 3 ...``.

    Appending never blocks; a reader waits on a condition (threads) or an event woken
    through its loop (asyncio tasks), so a waiting task never blocks its event loop.

    Args:
        size: how many events are kept (the oldest are dropped first).
    """

    def __init__(self, size: int = 10_000) -> None:
        if type(size) is not int or not 1 <= size <= 2**32:
            raise InvalidArgument("feed_size", size, "a number of events, at least 1")
        self._events: deque[FeedEvent] = deque(maxlen=size)
        self._last = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._sleeping = 0  # threads waiting on the condition
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @property
    def last(self) -> int:
        """The newest event's cursor (0: none yet)."""
        return self._last

    def append(
        self,
        request_id: str,
        event: Event,
        status: str,
        granted: int,
        used: int,
        free: int,
        consumed: int,
    ) -> None:
        """Append one change and wake the readers (cheap when nobody waits)."""
        with self._lock:
            self._last += 1
            item = (str(self._last), request_id, event, status, granted, used, free, consumed)
            self._events.append(_new(FeedEvent, item))
            if self._sleeping:
                self._cond.notify_all()
            for loop, woken in self._waiters:
                with contextlib.suppress(RuntimeError):  # a loop closed: nobody to wake
                    loop.call_soon_threadsafe(woken.set)

    def _after(self, after: str | None) -> int:
        if after is None:
            return 0
        try:
            return int(after)
        except ValueError:
            raise InvalidArgument("after", after, "a cursor this feed returned") from None

    def _page(self, seq: int, prefix: str, limit: int) -> FeedPage | None:
        """The events after ``seq`` (``None``: nothing new yet). Hold the condition."""
        if self._last <= seq:
            return None
        first = self._last - len(self._events) + 1
        start = max(seq + 1, first) - first
        out: list[FeedEvent] = []
        cursor = str(seq)
        for i in range(start, len(self._events)):
            item = self._events[i]
            cursor = item.cursor
            if item.request_id.startswith(prefix):
                out.append(item)
                if len(out) >= limit:
                    break
        return FeedPage(tuple(out), cursor)

    def read(self, after: str | None, prefix: str, limit: int, timeout: float) -> FeedPage:
        """The events after ``after``, waiting up to ``timeout`` seconds for one."""
        seq = self._after(after)
        with self._cond:
            page = self._page(seq, prefix, limit)
            if page is None and timeout > 0:
                self._sleeping += 1
                try:
                    self._cond.wait_for(lambda: self._last > seq, timeout)
                finally:
                    self._sleeping -= 1
                page = self._page(seq, prefix, limit)
        return page if page is not None else FeedPage((), str(seq))

    async def aread(self, after: str | None, prefix: str, limit: int, timeout: float) -> FeedPage:
        """Async :meth:`read`: waits without blocking the event loop."""
        seq = self._after(after)
        with self._cond:
            page = self._page(seq, prefix, limit)
            if page is not None or timeout <= 0:
                return page if page is not None else FeedPage((), str(seq))
            woken = asyncio.Event()
            waiter = (asyncio.get_running_loop(), woken)
            self._waiters.add(waiter)
        try:
            await asyncio.wait_for(woken.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            with self._cond:
                self._waiters.discard(waiter)
        with self._cond:
            page = self._page(seq, prefix, limit)
        return page if page is not None else FeedPage((), str(seq))
