"""One reader of the store's event feed per worker, fanned out to every live page.

Each dashboard page keeps a Server-Sent Events stream open. Were each stream to read the
store's feed itself, a hundred pages would be a hundred blocked ``XREAD`` calls, each
holding one of the Redis client's connections (a pool of 100). :class:`FeedHub` reads the
feed once per worker process (one task, started when the first stream subscribes and
stopped when the last one leaves, or at shutdown) and hands each event to every
subscriber whose prefix it matches.

A subscriber starts from the cursor its page was drawn at: it registers first, reads what
it missed straight from the store (:meth:`Subscription.catch_up`, no waiting), then takes
the hub's events, skipping those it already had (cursors compare by
:func:`~apportion.stores.feed.cursor_key`). Nothing is missed: what the hub read before the
subscriber registered is in the store when it catches up, and what the hub reads after is
queued for it.

Each subscriber's queue is bounded (:data:`QUEUE_EVENTS`): one that falls that far behind
(a slow client) is dropped (:attr:`Subscription.dropped`) rather than let grow; its stream
ends and the browser reconnects with ``Last-Event-ID``, catching up from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

from apportion.errors import StoreUnavailable
from apportion.stores.base import Store
from apportion.stores.feed import FeedEvent, cursor_key

__all__ = ["QUEUE_EVENTS", "READ_EVENTS", "FeedHub", "Subscription"]

QUEUE_EVENTS: Final = 5000
"""The most events a subscriber may have waiting before it is dropped."""

READ_EVENTS: Final = 500
"""The most events one read of the feed asks for."""

WAIT_SECONDS: Final = 10.0
"""How long one read of the hub waits for new events (then it reads again)."""

_log = logging.getLogger("apportion.serve")


class Subscription:
    """One stream's view of the hub: its events, in order, from its cursor on.

    Made by :meth:`FeedHub.subscribe`; leave with :meth:`FeedHub.unsubscribe` (or use
    :meth:`FeedHub.subscription` as an async context manager).

    Attributes:
        prefix: the start of the request ids it receives.
        cursor: the newest cursor it has been given (events up to it are delivered).
        dropped: it fell :data:`QUEUE_EVENTS` behind and gets no more events.
    """

    def __init__(self, hub: FeedHub, prefix: str, cursor: str, limit: int) -> None:
        self.hub = hub
        self.prefix = prefix
        self.cursor = cursor
        self.dropped = False
        self._key = cursor_key(cursor)
        self._limit = limit
        self._queue: deque[FeedEvent] = deque()
        self._woken = asyncio.Event()

    def _offer(self, events: list[FeedEvent]) -> None:
        """Queue the hub's events of this prefix (the hub's task calls it)."""
        if self.dropped:
            return
        mine = [e for e in events if e.request_id.startswith(self.prefix)]
        if not mine:
            return
        if len(self._queue) + len(mine) > self._limit:
            self.dropped = True
            self._queue.clear()
        else:
            self._queue.extend(mine)
        self._woken.set()

    def _wake(self) -> None:
        self._woken.set()

    async def catch_up(self, limit: int = READ_EVENTS) -> list[FeedEvent]:
        """The next events after :attr:`cursor` read from the store (``[]``: caught up).

        Call it until it answers ``[]``, then :meth:`next`.

        Raises:
            StoreUnavailable: the store cannot be reached.
        """
        while True:
            page = await self.hub.store.afeed(self.cursor, prefix=self.prefix, limit=limit)
            if page.cursor == self.cursor:
                return []
            self._advance(page.cursor)
            if page.events:
                return list(page.events)

    def _advance(self, cursor: str) -> None:
        key = cursor_key(cursor)
        if key > self._key:
            self.cursor, self._key = cursor, key

    async def next(self, timeout: float) -> list[FeedEvent]:
        """The hub's events not yet given, waiting up to ``timeout`` seconds (``[]``: none).

        After :attr:`dropped` it answers ``[]`` at once.
        """
        if not self._queue and not self.dropped:
            self._woken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), timeout)
        out: list[FeedEvent] = []
        while self._queue:
            event = self._queue.popleft()
            key = cursor_key(event.cursor)
            if key > self._key:  # else: read while catching up
                out.append(event)
                self.cursor, self._key = event.cursor, key
        return out

    @property
    def problem(self) -> str | None:
        """Why the hub cannot read the feed now (the store is down), or ``None``."""
        return self.hub.problem


class FeedHub:
    """One task reading the store's feed, fanning its events out to subscribers.

    Args:
        store: the store whose feed is read.
        queue_events: the most events a subscriber may have waiting (then it is dropped).
        wait_seconds: how long one read waits for new events.
    """

    def __init__(
        self,
        store: Store,
        *,
        queue_events: int = QUEUE_EVENTS,
        wait_seconds: float = WAIT_SECONDS,
    ) -> None:
        self.store = store
        self.queue_events = queue_events
        self.wait_seconds = wait_seconds
        self.problem: str | None = None
        """Why the last read failed (the store is down), or ``None``."""
        self.reads = 0
        """Reads of the feed the hub's task made so far."""
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def subscribers(self) -> int:
        """How many subscribers the hub has now."""
        return len(self._subscribers)

    @property
    def running(self) -> bool:
        """Whether the reading task is running."""
        return self._task is not None and not self._task.done()

    def subscribe(self, cursor: str, prefix: str = "") -> Subscription:
        """A new subscriber from ``cursor`` for request ids starting with ``prefix``.

        Starts the reading task if it is not running (in the running event loop).
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new loop (an app served again): start afresh
            self._subscribers.clear()
            self._task = None
            self._loop = loop
        sub = Subscription(self, prefix, cursor, self.queue_events)
        self._subscribers.add(sub)
        if not self.running:
            self._task = loop.create_task(self._read(), name="apportion-feed-hub")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove ``sub``; the reading task stops when nobody is left."""
        self._subscribers.discard(sub)
        if not self._subscribers and self._task is not None:
            self._task.cancel()
            self._task = None

    @contextlib.asynccontextmanager
    async def subscription(self, cursor: str, prefix: str = "") -> AsyncIterator[Subscription]:
        """:meth:`subscribe`, and :meth:`unsubscribe` on leaving the block."""
        sub = self.subscribe(cursor, prefix)
        try:
            yield sub
        finally:
            self.unsubscribe(sub)

    async def aclose(self) -> None:
        """Stop the reading task and let every subscriber go (at shutdown)."""
        task, self._task = self._task, None
        subscribers, self._subscribers = self._subscribers, set()
        for sub in subscribers:
            sub.dropped = True
            sub._wake()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _read(self) -> None:
        cursor: str | None = None
        while self._subscribers:
            try:
                if cursor is None:
                    cursor = await self.store.afeed_cursor()
                page = await self.store.afeed(cursor, limit=READ_EVENTS, timeout=self.wait_seconds)
            except StoreUnavailable as exc:
                if self.problem is None:
                    _log.warning("the dashboard cannot read the store's feed: %s", exc.reason)
                self.problem = exc.reason
                for sub in list(self._subscribers):
                    sub._wake()
                await asyncio.sleep(1.0)
                continue
            self.reads += 1
            self.problem = None
            cursor = page.cursor
            if page.events:
                events = list(page.events)
                for sub in list(self._subscribers):
                    sub._offer(events)
                    if sub.dropped:
                        self._subscribers.discard(sub)
