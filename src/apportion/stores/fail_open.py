"""Fail-open: any store, with new requests opened locally while it cannot be reached.

:class:`FailOpenStore` wraps a store, its *primary*. A request that cannot be opened there
because the primary is unreachable (:class:`~apportion.errors.StoreUnavailable`) is opened
in a local *fallback* store instead (a :class:`~apportion.stores.memory.MemoryStore` unless
one is given), with a ``RuntimeWarning``. Its ceiling is drawn from an emergency budget of
``emergency_cap`` tokens, a pool of the fallback that no window renews: the ceilings of the
open fallback requests plus what the closed ones consumed never pass it, and what a request
leaves unused returns to it at close. Fail-closed stays the rule for everything else: a
request already in the primary still raises (its ledger cannot be read, so nothing is
guessed), and so does an open the emergency budget cannot cover.

Where each operation goes:

* ``open``: the primary; when it raises ``StoreUnavailable``, the fallback (drawing from
  the emergency budget, at priority ``critical``, instead of the request's own pool).
* ``begin``, ``extend``, ``finish``, ``release``, ``close``, ``get``, ``events``, ``note``
  and ``open_children``: the fallback for a request opened there, else the primary. The
  children of a fallback request open in the fallback too, and stay there.
* ``reap_expired``: both; while the primary is unreachable, what the fallback reaped.
* ``open_requests``: both, merged.
* The event feed, shared pools and policy state: the primary only.

``RedisStore(url, fail_open=True)`` (or ``?fail_open=true`` in its URL) is this wrapper
around the Redis store.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from apportion.errors import InvalidArgument, PoolExhausted, StoreUnavailable
from apportion.ledger import Event, Grant, check_tokens
from apportion.pools import Pool
from apportion.stores.base import LedgerView, Reaped, Store, used_keywords
from apportion.stores.memory import MemoryStore

if TYPE_CHECKING:
    from apportion.pools import PoolStatus
    from apportion.stores.feed import FeedPage

EMERGENCY_POOL = "emergency"
"""The fallback's pool that holds the emergency budget."""


def _open_options(
    allocation: Mapping[str, int] | None,
    reserve: Mapping[str, int] | None,
    ttl: float,
    ceiling_usd: int | None,
    features: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The keywords of an open, but for the pool and the operation id (those used)."""
    return {
        "allocation": allocation,
        "reserve": reserve,
        "ttl": ttl,
        **used_keywords(ceiling_usd=ceiling_usd, features=features or None),
    }


_NO_KEYWORDS: dict[str, Any] = {}


def _wrap_up(wrap_up_tokens: object) -> dict[str, Any]:
    """``wrap_up_tokens`` as a keyword, left out when it is the default (no reserve).

    The store contract passes it only when used, as :meth:`Store.abegin
    <apportion.stores.base.Store.abegin>` does (with ``model``, ``prices`` and ``asked``
    always).
    """
    if type(wrap_up_tokens) is int and wrap_up_tokens == 0:
        return _NO_KEYWORDS
    return {"wrap_up_tokens": wrap_up_tokens}


class FailOpenStore(Store):
    """A store whose new requests open in a local fallback while it is unreachable.

    See the module docstring for which operation goes where.

    Args:
        primary: the store requests live in (Redis, typically).
        fallback: the local store that fallback requests live in (default: a new
            :class:`~apportion.stores.memory.MemoryStore`, made on the first fallback). It
            needs shared pools: the emergency budget is its pool ``emergency``.
        emergency_cap: tokens the fallback may hand out at once in this process (ceilings
            of open fallback requests plus what closed ones consumed); 0 never falls back.

    Raises:
        InvalidArgument: ``primary`` or ``fallback`` is not a store.
        InvalidTokenCount: ``emergency_cap`` is not a token count.
    """

    def __init__(
        self, primary: Store, fallback: Store | None = None, *, emergency_cap: int
    ) -> None:
        if not isinstance(primary, Store):
            raise InvalidArgument("primary", primary, "a store to wrap")
        self._primary = primary
        self.url = primary.url
        # the controller gives every call an operation id when the primary may lose replies
        # (read from its class: an unreachable store may refuse even its attributes)
        self.replies_may_be_lost = type(primary).replies_may_be_lost
        self._start_fail_open(fallback, emergency_cap)

    def _start_fail_open(self, fallback: Store | None, emergency_cap: int) -> None:
        """Set up the fallback's state (none of it used until the first fallback)."""
        if fallback is not None and not isinstance(fallback, Store):
            raise InvalidArgument("fallback", fallback, "a local store, or None for memory")
        self.emergency_cap = check_tokens("emergency_cap", emergency_cap)
        self._fallback = fallback
        self._local: Store | None = None  # the fallback, once a request opened there
        self._local_ids: set[str] = set()
        self._local_lock = threading.Lock()

    @property
    def primary(self) -> Store:
        """The wrapped store."""
        return self._primary

    def __repr__(self) -> str:
        return f"FailOpenStore({self.primary!r}, emergency_cap={self.emergency_cap})"

    # ------------------------------------------------------------------ routing

    def _route(self, request_id: object) -> Store:
        """The store that holds ``request_id``: the fallback if it opened there."""
        local = self._local
        if local is not None and isinstance(request_id, str) and request_id in self._local_ids:
            return local
        return self.primary

    def _open_locally(
        self,
        error: StoreUnavailable,
        request_id: str,
        ranks: Mapping[str, int],
        ceiling: int,
        now: float,
        options: Mapping[str, Any],
    ) -> LedgerView:
        """Open the request in the fallback on the emergency budget, or raise ``error``.

        ``options``: the open's keywords, but for the pool and the operation id.
        """
        if self.emergency_cap == 0:
            raise StoreUnavailable(
                self.url, f"{error.reason}; no local emergency budget (emergency_cap=0)"
            ) from error
        with self._local_lock:
            if self._local is None:
                local = self._fallback if self._fallback is not None else MemoryStore()
                local.define_pool(Pool(EMERGENCY_POOL, self.emergency_cap, math.inf))
                self._local = local
        try:
            ledger = self._local.open(
                request_id,
                ranks,
                ceiling,
                now,
                pool=EMERGENCY_POOL,
                pool_priority="critical",
                **options,
            )
        except PoolExhausted as exc:
            raise StoreUnavailable(
                self.url,
                f"{error.reason}; the local emergency budget has {exc.available} tokens left, "
                f"{exc.requested} asked",
            ) from error
        self._local_ids.add(request_id)
        warnings.warn(
            f"store {self.url} unavailable ({error.reason}): request {request_id!r} runs on "
            f"the local emergency budget of {self.emergency_cap} tokens",
            RuntimeWarning,
            stacklevel=3,
        )
        return ledger

    def _adopt(self, store: Store, children: Sequence[LedgerView]) -> None:
        """Keep the children of a fallback request in the fallback."""
        if store is self._local:
            self._local_ids.update(child.request_id for child in children)

    # ------------------------------------------------------------------ requests (sync)

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
    ) -> LedgerView:
        """Open in the primary; in the fallback when the primary is unreachable."""
        options = _open_options(allocation, reserve, ttl, ceiling_usd, features)
        pooled: dict[str, Any] = {}
        if pool is not None:
            pooled = {"pool": pool, "pool_priority": pool_priority}
        try:
            return self.primary.open(
                request_id, ranks, ceiling, now, **options, **pooled, **used_keywords(op_id=op_id)
            )
        except StoreUnavailable as error:
            return self._open_locally(error, request_id, ranks, ceiling, now, options)

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
    ) -> tuple[Grant, LedgerView]:
        """Reserve a grant where the request lives."""
        return self._route(request_id).begin(
            request_id,
            agent,
            context_tokens,
            output_tokens,
            now,
            lease_seconds,
            model=model,
            prices=prices,
            asked=asked,
            **_wrap_up(wrap_up_tokens),
            **used_keywords(op_id=op_id),
        )

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
    ) -> tuple[Grant, LedgerView]:
        """Grow a grant where the request lives."""
        return self._route(request_id).extend(
            request_id,
            grant,
            output_tokens,
            context_tokens,
            now,
            lease_seconds,
            **used_keywords(op_id=op_id),
        )

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
    ) -> LedgerView:
        """Settle a grant where the request lives."""
        return self._route(request_id).finish(
            request_id,
            grant,
            input_tokens,
            output_tokens,
            now,
            truncated=truncated,
            allocation=allocation,
            **used_keywords(op_id=op_id),
        )

    def release(
        self,
        request_id: str,
        grant: Grant,
        now: float,
        *,
        reason: str = "release",
        op_id: str | None = None,
    ) -> LedgerView:
        """Release a grant where the request lives."""
        return self._route(request_id).release(
            request_id, grant, now, reason=reason, **used_keywords(op_id=op_id)
        )

    def close(
        self,
        request_id: str,
        now: float,
        *,
        status: str = "closed",
        outcome: float | None = None,
        op_id: str | None = None,
    ) -> LedgerView:
        """Close the request where it lives."""
        return self._route(request_id).close(
            request_id, now, status=status, outcome=outcome, **used_keywords(op_id=op_id)
        )

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
    ) -> tuple[LedgerView, Sequence[LedgerView]]:
        """Open children where their parent lives (they stay there)."""
        store = self._route(parent_id)
        parent, children = store.open_children(
            parent_id,
            request_ids,
            ranks,
            now,
            priorities=priorities,
            ceiling=ceiling,
            share=share,
            allocation=allocation,
            reserve=reserve,
            ttl=ttl,
            max_depth=max_depth,
            **used_keywords(features=features or None, op_id=op_id),
        )
        self._adopt(store, children)
        return parent, children

    def get(self, request_id: str) -> LedgerView:
        """The request's state, from where it lives."""
        return self._route(request_id).get(request_id)

    def events(self, request_id: str) -> list[Event]:
        """The request's events, from where it lives."""
        return self._route(request_id).events(request_id)

    def history(self, request_id: str) -> list[Event]:
        """The request's events and notes, from where it lives."""
        return self._route(request_id).history(request_id)

    def features(self, request_id: str) -> dict[str, Any]:
        """The request's features, from where it lives."""
        return self._route(request_id).features(request_id)

    def get_with_features(self, request_id: str) -> tuple[LedgerView, dict[str, Any]]:
        """The request's state and features, from where it lives."""
        return self._route(request_id).get_with_features(request_id)

    def note(self, request_id: str, event: Event) -> None:
        """Append a feed-only event where the request lives."""
        self._route(request_id).note(request_id, event)

    def reap_expired(self, now: float) -> Reaped:
        """Reap both stores; only the fallback while the primary is unreachable."""
        local = self._local.reap_expired(now) if self._local is not None else Reaped(0)
        try:
            return local + self.primary.reap_expired(now)
        except StoreUnavailable:
            if self._local is None:
                raise
            return local

    def open_requests(self, prefix: str = "") -> list[str]:
        """The open requests of both stores, sorted."""
        ids = self.primary.open_requests(prefix)
        if self._local is not None:
            ids = sorted({*ids, *self._local.open_requests(prefix)})
        return ids

    # ------------------------------------------------------------------ requests (async)

    async def aopen(
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
    ) -> LedgerView:
        """Async :meth:`open`."""
        options = _open_options(allocation, reserve, ttl, ceiling_usd, features)
        pooled: dict[str, Any] = {}
        if pool is not None:
            pooled = {"pool": pool, "pool_priority": pool_priority}
        try:
            return await self.primary.aopen(
                request_id, ranks, ceiling, now, **options, **pooled, **used_keywords(op_id=op_id)
            )
        except StoreUnavailable as error:
            return self._open_locally(error, request_id, ranks, ceiling, now, options)

    async def abegin(
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
    ) -> tuple[Grant, LedgerView]:
        """Async :meth:`begin`."""
        return await self._route(request_id).abegin(
            request_id,
            agent,
            context_tokens,
            output_tokens,
            now,
            lease_seconds,
            model=model,
            prices=prices,
            asked=asked,
            **_wrap_up(wrap_up_tokens),
            **used_keywords(op_id=op_id),
        )

    async def aextend(
        self,
        request_id: str,
        grant: Grant,
        output_tokens: int,
        context_tokens: int,
        now: float,
        lease_seconds: float,
        *,
        op_id: str | None = None,
    ) -> tuple[Grant, LedgerView]:
        """Async :meth:`extend`."""
        return await self._route(request_id).aextend(
            request_id,
            grant,
            output_tokens,
            context_tokens,
            now,
            lease_seconds,
            **used_keywords(op_id=op_id),
        )

    async def afinish(
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
    ) -> LedgerView:
        """Async :meth:`finish`."""
        return await self._route(request_id).afinish(
            request_id,
            grant,
            input_tokens,
            output_tokens,
            now,
            truncated=truncated,
            allocation=allocation,
            **used_keywords(op_id=op_id),
        )

    async def arelease(
        self,
        request_id: str,
        grant: Grant,
        now: float,
        *,
        reason: str = "release",
        op_id: str | None = None,
    ) -> LedgerView:
        """Async :meth:`release`."""
        return await self._route(request_id).arelease(
            request_id, grant, now, reason=reason, **used_keywords(op_id=op_id)
        )

    async def aclose(
        self,
        request_id: str,
        now: float,
        *,
        status: str = "closed",
        outcome: float | None = None,
        op_id: str | None = None,
    ) -> LedgerView:
        """Async :meth:`close`."""
        return await self._route(request_id).aclose(
            request_id, now, status=status, outcome=outcome, **used_keywords(op_id=op_id)
        )

    async def aopen_children(
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
    ) -> tuple[LedgerView, Sequence[LedgerView]]:
        """Async :meth:`open_children`."""
        store = self._route(parent_id)
        parent, children = await store.aopen_children(
            parent_id,
            request_ids,
            ranks,
            now,
            priorities=priorities,
            ceiling=ceiling,
            share=share,
            allocation=allocation,
            reserve=reserve,
            ttl=ttl,
            max_depth=max_depth,
            **used_keywords(features=features or None, op_id=op_id),
        )
        self._adopt(store, children)
        return parent, children

    async def aget(self, request_id: str) -> LedgerView:
        """Async :meth:`get`."""
        return await self._route(request_id).aget(request_id)

    async def aevents(self, request_id: str) -> list[Event]:
        """Async :meth:`events`."""
        return await self._route(request_id).aevents(request_id)

    async def ahistory(self, request_id: str) -> list[Event]:
        """Async :meth:`history`."""
        return await self._route(request_id).ahistory(request_id)

    async def afeatures(self, request_id: str) -> dict[str, Any]:
        """Async :meth:`features`."""
        return await self._route(request_id).afeatures(request_id)

    async def aget_with_features(self, request_id: str) -> tuple[LedgerView, dict[str, Any]]:
        """Async :meth:`get_with_features`."""
        return await self._route(request_id).aget_with_features(request_id)

    async def anote(self, request_id: str, event: Event) -> None:
        """Async :meth:`note`."""
        await self._route(request_id).anote(request_id, event)

    async def areap_expired(self, now: float) -> Reaped:
        """Async :meth:`reap_expired`."""
        local = await self._local.areap_expired(now) if self._local is not None else Reaped(0)
        try:
            return local + await self.primary.areap_expired(now)
        except StoreUnavailable:
            if self._local is None:
                raise
            return local

    async def aopen_requests(self, prefix: str = "") -> list[str]:
        """Async :meth:`open_requests`."""
        ids = await self.primary.aopen_requests(prefix)
        if self._local is not None:
            ids = sorted({*ids, *await self._local.aopen_requests(prefix)})
        return ids

    # ------------------------------------------------------------------ the primary's only

    def feed(
        self,
        after: str | None = None,
        *,
        prefix: str = "",
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> FeedPage:
        """The primary's event feed."""
        return self.primary.feed(after, prefix=prefix, limit=limit, timeout=timeout)

    async def afeed(
        self,
        after: str | None = None,
        *,
        prefix: str = "",
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> FeedPage:
        """Async :meth:`feed`."""
        return await self.primary.afeed(after, prefix=prefix, limit=limit, timeout=timeout)

    def feed_cursor(self) -> str:
        """The primary's newest feed cursor."""
        return self.primary.feed_cursor()

    async def afeed_cursor(self) -> str:
        """Async :meth:`feed_cursor`."""
        return await self.primary.afeed_cursor()

    def define_pool(self, pool: Pool) -> None:
        """Define a shared pool in the primary."""
        self.primary.define_pool(pool)

    async def adefine_pool(self, pool: Pool) -> None:
        """Async :meth:`define_pool`."""
        await self.primary.adefine_pool(pool)

    def get_pool(self, name: str, now: float) -> PoolStatus:
        """A shared pool's status, from the primary."""
        return self.primary.get_pool(name, now)

    async def aget_pool(self, name: str, now: float) -> PoolStatus:
        """Async :meth:`get_pool`."""
        return await self.primary.aget_pool(name, now)

    def pool_names(self, prefix: str = "") -> list[str]:
        """The primary's pool names."""
        return self.primary.pool_names(prefix)

    async def apool_names(self, prefix: str = "") -> list[str]:
        """Async :meth:`pool_names`."""
        return await self.primary.apool_names(prefix)

    def get_state(self, key: str) -> tuple[int, bytes] | None:
        """A policy's shared state, from the primary."""
        return self.primary.get_state(key)

    def put_state(self, key: str, data: bytes, expected_version: int) -> int | None:
        """Write a policy's shared state to the primary (compare-and-set)."""
        return self.primary.put_state(key, data, expected_version)
