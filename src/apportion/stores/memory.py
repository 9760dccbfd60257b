"""The in-process store: ledgers in a dict, one lock around every operation.

Safe across threads and asyncio tasks (no operation awaits while holding the lock). The
ledgers it returns are live objects: read them, never change them. Closed requests stay
readable until ``keep_closed`` newer ones have closed. Shared pools live in the same
process (:class:`~apportion.pools.PoolAccount`, under the same lock): a draw and its open
are one step, and an open request is kept until it closes, so no draw is ever orphaned.
The event feed is a ring buffer of the newest ``feed_size`` events (:class:`FeedRing`),
appended under the same lock as the change. Operation ids (see
:class:`~apportion.stores.base.Store`) are kept per request, with the outcome they gave,
for as long as the request is: until ``keep_closed`` newer requests have closed after it,
or a new open of its id replaces it.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from apportion.errors import (
    DuplicateRequest,
    InvalidArgument,
    OperationConflict,
    UnknownAgent,
    UnknownPool,
    UnknownRequest,
)
from apportion.features import features_from
from apportion.ledger import (
    EXPIRED,
    MAX_TOKENS,
    OPEN,
    Event,
    Grant,
    Ledger,
    check_name,
    check_outcome,
    check_seconds,
    check_status,
    check_time,
)
from apportion.pools import Pool, PoolAccount, PoolStatus, check_pool_name, check_priority
from apportion.stores.base import (
    Digests,
    Reaped,
    Store,
    check_children,
    check_op_id,
    digest_operation,
)
from apportion.stores.feed import FeedPage, FeedRing, check_feed_args, check_note, with_notes


def check_state_write(key: object, data: object, expected_version: object) -> str:
    """Check the arguments of a store's ``put_state``; return the key.

    Raises:
        InvalidArgument: a key that is not a name, data that is not bytes, or a version
            that is not a non-negative integer.
    """
    key = check_name("key", key)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArgument("data", data, "a policy's state is bytes")
    if type(expected_version) is not int or not 0 <= expected_version < 2**53:
        raise InvalidArgument("expected_version", expected_version, "a version, at least 0")
    return key


_NEW: Any = object()
"""What :meth:`MemoryStore._first` returns for an operation id not seen yet."""


class MemoryStore(Store):
    """Ledgers of one process, kept in memory.

    Args:
        keep_closed: how many closed requests stay readable with :meth:`get`.
        feed_size: how many events the event feed keeps (the oldest are dropped first).
    """

    url = "memory://"

    def __init__(self, keep_closed: int = 1024, feed_size: int = 10_000) -> None:
        if type(keep_closed) is not int or not 0 <= keep_closed <= 2**40:
            raise InvalidArgument("keep_closed", keep_closed, "a number of requests, at least 0")
        self._lock = threading.Lock()
        self._open: dict[str, Ledger] = {}
        self._closed: OrderedDict[str, Ledger] = OrderedDict()
        self._keep_closed = keep_closed
        self._pools: dict[str, PoolAccount] = {}
        self._drawn: dict[str, PoolAccount] = {}  # open pooled request -> its pool
        self._states: dict[str, tuple[int, bytes]] = {}
        self._feed = FeedRing(feed_size)
        self._ops: dict[str, dict[str, tuple[str, Any]]] = {}  # request -> op id -> outcome
        self._notes: dict[str, list[tuple[int, Event]]] = {}  # request -> (events before, note)

    def _first(self, request_id: str, op_id: str | None, digest: str) -> Any:
        """The first outcome of operation ``op_id`` on the request, or ``_NEW`` (hold the lock).

        Raises:
            OperationConflict: the id was first used with other arguments.
        """
        if op_id is None:
            return _NEW
        done = self._ops.get(request_id, {}).get(op_id)
        if done is None:
            return _NEW
        if done[0] != digest:
            raise OperationConflict(
                op_id, digest_operation(digest), digest_operation(done[0]), request_id
            )
        return done[1]

    def _remember(self, request_id: str, op_id: str | None, digest: str, outcome: Any) -> None:
        """Record the outcome of operation ``op_id`` on the request (hold the lock)."""
        if op_id is not None:
            self._ops.setdefault(request_id, {})[op_id] = (digest, outcome)

    def _publish(self, marks: Iterable[tuple[Ledger, int]]) -> None:
        """Append to the feed the events each ledger recorded since its mark (hold the lock)."""
        feed = self._feed
        for ledger, start in marks:
            for event in ledger.events[start:]:
                agent = event.agent
                if agent is None:
                    granted, used = ledger.reserved, ledger.consumed
                else:
                    granted = ledger.reserved_by.get(agent, 0)
                    used = ledger.consumed_by.get(agent, 0)
                feed.append(
                    ledger.request_id,
                    event,
                    ledger.status,
                    granted,
                    used,
                    ledger.free,
                    ledger.consumed,
                )

    def _tree_marks(self, ledger: Ledger, top: bool = True) -> list[tuple[Ledger, int]]:
        """Marks of ``ledger``, its open descendants and its open parent (what a close touches)."""
        marks = [(ledger, len(ledger.events))]
        for child_id in ledger.children:
            child = self._open.get(child_id)
            if child is not None:
                marks += self._tree_marks(child, top=False)
        parent = self._open.get(ledger.parent_id) if top and ledger.parent_id else None
        if parent is not None:
            marks.insert(0, (parent, len(parent.events)))
        return marks

    def _ledger(self, request_id: str) -> Ledger:
        if type(request_id) is not str:
            raise UnknownRequest(request_id)
        ledger = self._open.get(request_id)
        if ledger is None:
            ledger = self._closed.get(request_id)
            if ledger is None:
                raise UnknownRequest(request_id)
        return ledger

    def open(
        self,
        request_id: str,
        ranks: Mapping[str, int],
        ceiling: int,
        now: float,
        *,
        allocation: Mapping[str, int] | None = None,
        reserve: Mapping[str, int] | None = None,
        ttl: float = math.inf,
        pool: str | None = None,
        pool_priority: str = "standard",
        ceiling_usd: int | None = None,
        features: Mapping[str, Any] | None = None,
        op_id: str | None = None,
    ) -> Ledger:
        """Open the ledger of a new request (drawing its ceiling from ``pool``) and return it."""
        op_id = check_op_id(op_id)
        now = check_time("now", now)
        ledger = Ledger(
            request_id,
            ranks,
            ceiling,
            now,
            allocation=allocation,
            reserve=reserve,
            expires_at=now + check_seconds("ttl", ttl),
            ceiling_usd=ceiling_usd,
            features=features,
        )
        if pool is not None:
            check_pool_name(pool)
            pool_priority = check_priority(pool_priority)
        digest = Digests.open(op_id, ledger.ranks, ledger.ceiling, pool, pool_priority, ceiling_usd)
        with self._lock:
            first = self._first(request_id, op_id, digest)
            if first is not _NEW:
                return first  # type: ignore[no-any-return]
            if request_id in self._open:
                raise DuplicateRequest(request_id)
            if pool is not None:
                account = self._pools.get(pool)
                if account is None:
                    raise UnknownPool(pool)
                account.draw(request_id, ledger.ceiling, pool_priority, now)
                self._drawn[request_id] = account
            if self._closed.pop(request_id, None) is not None:
                self._forget(request_id)  # the request it replaces
            self._open[request_id] = ledger
            self._remember(request_id, op_id, digest, ledger)
            self._publish([(ledger, 0)])
        return ledger

    def begin(
        self,
        request_id: str,
        agent: str,
        context_tokens: int,
        output_tokens: int,
        now: float,
        lease_seconds: float,
        *,
        model: str | None = None,
        prices: tuple[int, int] | None = None,
        asked: int | None = None,
        wrap_up_tokens: int = 0,
        op_id: str | None = None,
    ) -> tuple[Grant, Ledger]:
        """Reserve a grant; return it and the ledger."""
        op_id = check_op_id(op_id)
        held = context_tokens if asked is None else asked
        digest = Digests.begin(op_id, agent, held, wrap_up_tokens)
        with self._lock:
            ledger = self._ledger(request_id)
            first = self._first(request_id, op_id, digest)
            if first is not _NEW:
                return first  # type: ignore[no-any-return]
            mark = len(ledger.events)
            try:
                grant = ledger.begin(
                    agent,
                    context_tokens,
                    output_tokens,
                    now,
                    lease_seconds,
                    model=model,
                    prices=prices,
                    asked=asked,
                    wrap_up_tokens=wrap_up_tokens,
                )
            finally:  # a refused operation still expired the ended leases
                self._publish([(ledger, mark)])
            self._remember(request_id, op_id, digest, (grant, ledger))
            return grant, ledger

    def extend(
        self,
        request_id: str,
        grant: Grant,
        output_tokens: int,
        context_tokens: int,
        now: float,
        lease_seconds: float,
        *,
        op_id: str | None = None,
    ) -> tuple[Grant, Ledger]:
        """Grow an open grant; return it and the ledger."""
        op_id = check_op_id(op_id)
        digest = Digests.extend(op_id, grant)
        with self._lock:
            ledger = self._ledger(request_id)
            first = self._first(request_id, op_id, digest)
            if first is not _NEW:
                return first  # type: ignore[no-any-return]
            mark = len(ledger.events)
            try:
                grown = ledger.extend(grant, output_tokens, now, lease_seconds, context_tokens)
            finally:
                self._publish([(ledger, mark)])
            self._remember(request_id, op_id, digest, (grown, ledger))
            return grown, ledger

    def finish(
        self,
        request_id: str,
        grant: Grant,
        input_tokens: int,
        output_tokens: int,
        now: float,
        *,
        truncated: bool = False,
        allocation: Mapping[str, int] | None = None,
        op_id: str | None = None,
    ) -> Ledger:
        """Settle a grant with its real usage."""
        op_id = check_op_id(op_id)
        digest = Digests.finish(op_id, grant, input_tokens, output_tokens, truncated)
        with self._lock:
            ledger = self._ledger(request_id)
            first = self._first(request_id, op_id, digest)
            if first is not _NEW:
                return first  # type: ignore[no-any-return]
            mark = len(ledger.events)
            try:
                ledger.finish(
                    grant,
                    input_tokens,
                    output_tokens,
                    now,
                    truncated=truncated,
                    allocation=allocation,
                )
            finally:
                self._publish([(ledger, mark)])
            self._remember(request_id, op_id, digest, ledger)
            return ledger

    def release(
        self,
        request_id: str,
        grant: Grant,
        now: float,
        *,
        reason: str = "release",
        op_id: str | None = None,
    ) -> Ledger:
        """Settle a grant as unused."""
        op_id = check_op_id(op_id)
        digest = Digests.release(op_id, grant, reason)
        with self._lock:
            ledger = self._ledger(request_id)
            first = self._first(request_id, op_id, digest)
            if first is not _NEW:
                return first  # type: ignore[no-any-return]
            mark = len(ledger.events)
            try:
                ledger.release(grant, now, reason=reason)
            finally:
                self._publish([(ledger, mark)])
            self._remember(request_id, op_id, digest, ledger)
            return ledger

    def close(
        self,
        request_id: str,
        now: float,
        *,
        status: str = "closed",
        outcome: float | None = None,
        op_id: str | None = None,
    ) -> Ledger:
        """Close a request and keep it readable for a while."""
        op_id = check_op_id(op_id)
        digest = Digests.close(op_id, status, outcome)
        with self._lock:
            ledger = self._ledger(request_id)
            first = self._first(request_id, op_id, digest)
            if first is not _NEW:
                return first  # type: ignore[no-any-return]
            if ledger.children and ledger.status == OPEN:  # check before closing children
                status, outcome = check_status(status), check_outcome(outcome)
                now = check_time("now", now)
            marks = self._tree_marks(ledger)
            try:
                self._close_tree(ledger, now, status, outcome)
            finally:
                self._publish(marks)
            self._remember(request_id, op_id, digest, ledger)
            return ledger

    def _close_tree(
        self, ledger: Ledger, now: float, status: str, outcome: float | None = None
    ) -> list[str]:
        """Close ``ledger`` after its open children (depth first); settle it into its parent.

        Returns the ids closed, children first.
        """
        closed: list[str] = []
        for child_id in list(ledger.children):
            child = self._open.get(child_id)
            if child is not None and child.parent_id == ledger.request_id:
                closed += self._close_tree(child, now, status)
        ledger.close(now, status=status, outcome=outcome)
        if ledger.parent_id is not None:
            parent = self._open.get(ledger.parent_id)
            if parent is not None:
                parent.settle_child(ledger, now)
        self._retire(ledger, now)
        closed.append(ledger.request_id)
        return closed

    def open_children(
        self,
        parent_id: str,
        request_ids: Sequence[str],
        ranks: Mapping[str, int],
        now: float,
        *,
        priorities: Sequence[str],
        ceiling: int | None = None,
        share: float | None = None,
        allocation: Mapping[str, int] | None = None,
        reserve: Mapping[str, int] | None = None,
        ttl: float = math.inf,
        max_depth: int = 16,
        features: Mapping[str, Any] | None = None,
        op_id: str | None = None,
    ) -> tuple[Ledger, list[Ledger]]:
        """Open child requests of ``parent_id``, drawing their ceilings from it (one step)."""
        op_id = check_op_id(op_id)
        args = check_children(
            parent_id, request_ids, now, priorities, ceiling, share, ttl, max_depth
        )
        digest = Digests.children(op_id, args, max_depth)
        now = args.now
        # the plan is checked once, before anything changes
        Ledger(
            args.request_ids[0],
            ranks,
            MAX_TOKENS,
            now,
            allocation=allocation,
            reserve=reserve,
            features=features,
        )
        with self._lock:
            parent = self._ledger(args.parent_id)
            first = self._first(args.parent_id, op_id, digest)
            if first is not _NEW:
                return first  # type: ignore[no-any-return]
            mark = len(parent.events)
            for request_id in args.request_ids:
                if request_id in self._open:
                    raise DuplicateRequest(request_id)
            draws = parent.split(
                args.request_ids,
                args.ranks,
                now,
                ceiling=args.ceiling,
                share=args.share,
                max_depth=args.max_depth,
            )
            children = []
            for request_id, rank, (tokens, cost) in zip(
                args.request_ids, args.ranks, draws, strict=True
            ):
                fits = reserve if reserve and sum(reserve.values()) <= tokens else None
                child = Ledger(
                    request_id,
                    ranks,
                    tokens,
                    now,
                    allocation=allocation,
                    reserve=fits,
                    expires_at=now + args.ttl,
                    features=features,
                )
                child.adopt(parent, rank, cost)
                children.append(child)
            for child in children:
                parent.draw(child.request_id, child.ceiling, child.cost_ceiling, now)
                if self._closed.pop(child.request_id, None) is not None:
                    self._forget(child.request_id)
                self._open[child.request_id] = child
            self._publish([(parent, mark), *((child, 0) for child in children)])
            self._remember(args.parent_id, op_id, digest, (parent, children))
            return parent, children

    def _retire(self, ledger: Ledger, now: float) -> None:
        account = self._drawn.pop(ledger.request_id, None)
        if account is not None:
            account.give_back(ledger.request_id, ledger.free, ledger.overflow, now)
        del self._open[ledger.request_id]
        self._closed[ledger.request_id] = ledger
        while len(self._closed) > self._keep_closed:
            gone, _ = self._closed.popitem(last=False)
            self._forget(gone)

    def _forget(self, request_id: str) -> None:
        """Drop a closed request's operation ids and notes, gone with it (hold the lock)."""
        self._ops.pop(request_id, None)
        self._notes.pop(request_id, None)

    def get(self, request_id: str) -> Ledger:
        """The live ledger of a request (open or recently closed)."""
        with self._lock:
            return self._ledger(request_id)

    def events(self, request_id: str) -> list[Event]:
        """A copy of the request's events."""
        with self._lock:
            return list(self._ledger(request_id).events)

    def features(self, request_id: str) -> dict[str, Any]:
        """The features the request opened with (see :class:`Store`)."""
        with self._lock:
            return features_from(self._ledger(request_id).events[:1])

    def history(self, request_id: str) -> list[Event]:
        """The request's events with its notes in their places (see :class:`Store`)."""
        with self._lock:
            events = self._ledger(request_id).events
            return with_notes(events, self._notes.get(request_id, ()))

    def reap_expired(self, now: float) -> Reaped:
        """Expire ended leases and close overdue requests (see :class:`Store`)."""
        settled = 0
        expired: list[str] = []
        now = check_time("now", now)
        with self._lock:
            marks = [(ledger, len(ledger.events)) for ledger in self._open.values()]
            try:
                for ledger, _ in marks:
                    if ledger.status != OPEN:
                        continue  # closed with its expired parent, in this pass
                    settled += ledger.reap(now)
                    if ledger.expires_at <= now:
                        expired += self._close_tree(ledger, now, EXPIRED)
            finally:
                self._publish(marks)
        return Reaped(settled + len(expired), tuple(expired))

    def feed(
        self,
        after: str | None = None,
        *,
        prefix: str = "",
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> FeedPage:
        """The feed's events after ``after`` (see :class:`~apportion.stores.base.Store`)."""
        return self._feed.read(*check_feed_args(after, prefix, limit, timeout))

    async def afeed(
        self,
        after: str | None = None,
        *,
        prefix: str = "",
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> FeedPage:
        """Async :meth:`feed`: waits without blocking the event loop."""
        return await self._feed.aread(*check_feed_args(after, prefix, limit, timeout))

    def note(self, request_id: str, event: Event) -> None:
        """Append a feed-only event of a request (see :class:`~apportion.stores.base.Store`)."""
        event = check_note(event)
        with self._lock:
            ledger = self._ledger(request_id)
            agent = event.agent
            assert agent is not None  # checked
            if agent not in ledger.ranks:
                raise UnknownAgent(agent, list(ledger.ranks))
            self._notes.setdefault(ledger.request_id, []).append((len(ledger.events), event))
            self._feed.append(
                ledger.request_id,
                event,
                ledger.status,
                ledger.reserved_by.get(agent, 0),
                ledger.consumed_by.get(agent, 0),
                ledger.free,
                ledger.consumed,
            )

    def feed_cursor(self) -> str:
        """The newest event's cursor."""
        return str(self._feed.last)

    def open_requests(self, prefix: str = "") -> list[str]:
        """The ids of the open requests that start with ``prefix``, sorted."""
        if not isinstance(prefix, str):
            raise InvalidArgument("prefix", prefix, "the start of the request ids to list")
        with self._lock:
            return sorted(rid for rid in self._open if rid.startswith(prefix))

    def define_pool(self, pool: Pool) -> None:
        """Create a shared pool, or change its configuration (keeping what is drawn)."""
        if not isinstance(pool, Pool):
            raise InvalidArgument("pool", pool, "define_pool takes an apportion.pools.Pool")
        with self._lock:
            account = self._pools.get(pool.name)
            if account is None:
                self._pools[pool.name] = PoolAccount(pool)
            else:
                account.pool = pool

    def get_pool(self, name: str, now: float) -> PoolStatus:
        """A shared pool's status at ``now``."""
        now = check_time("now", now)
        with self._lock:
            account = self._pools.get(name) if type(name) is str else None
            if account is None:
                raise UnknownPool(name)
            return account.status(now)

    def pool_names(self, prefix: str = "") -> list[str]:
        """The names of the defined pools that start with ``prefix``, sorted."""
        with self._lock:
            return sorted(name for name in self._pools if name.startswith(prefix))

    def get_state(self, key: str) -> tuple[int, bytes] | None:
        """A policy's shared state: ``(version, data)``, or ``None`` when never written."""
        key = check_name("key", key)
        with self._lock:
            return self._states.get(key)

    def put_state(self, key: str, data: bytes, expected_version: int) -> int | None:
        """Write ``data`` if the version is still ``expected_version``; the new version or None."""
        key = check_state_write(key, data, expected_version)
        with self._lock:
            current = self._states.get(key, (0, b""))[0]
            if current != expected_version:
                return None
            self._states[key] = (current + 1, bytes(data))
            return current + 1
