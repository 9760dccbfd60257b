"""The Redis store class: options, the public API, and fail-open.

:class:`RedisStore` puts together what the modules of :mod:`apportion.stores.redis` hold
(keys, transport, request operations, reap, pools, feed) and carries each operation out
with the sync or the async shell; see the package docstring for the design.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Mapping, Sequence

from apportion.errors import InvalidArgument, PoolExhausted, StoreUnavailable
from apportion.ledger import (
    Event,
    Grant,
    Ledger,
    check_ceiling_usd,
    check_name,
    check_time,
    check_tokens,
)
from apportion.limits import is_text
from apportion.pools import Pool
from apportion.redaction import redact, scrub
from apportion.stores.base import Reaped, Store
from apportion.stores.memory import MemoryStore, check_state_write
from apportion.stores.redis.calls import _Cmd
from apportion.stores.redis.codec import _ttl_ms
from apportion.stores.redis.feed import RedisFeed
from apportion.stores.redis.reap import RedisReaper
from apportion.stores.redis.scripts import _PUT_STATE, _load_sources
from apportion.stores.redis.transport import _import_redis
from apportion.stores.redis.url import split_url

_EMERGENCY_POOL = "emergency"


class RedisStore(RedisReaper, RedisFeed, Store):
    """Ledgers and shared pools in Redis; see :mod:`apportion.stores.redis`.

    Args:
        url: ``redis://[[user]:password@]host:port/db`` (``rediss://`` for TLS).
        prefix: the first part of every key (no braces).
        buckets: how many hash-tag buckets requests are spread over (fixed for a deployment:
            changing it hides the requests already stored).
        retention_seconds: how long a closed request stays readable (real seconds;
            ``math.inf``: until deleted).
        socket_timeout: seconds to wait for a reply before ``StoreUnavailable``.
        connect_timeout: seconds to wait for a connection before ``StoreUnavailable``.
        fail_open: when Redis cannot be reached, open new requests in a local memory store
            (with a warning) instead of raising ``StoreUnavailable``.
        emergency_cap: tokens the local fallback may hand out in this process at once
            (ceilings of open fallback requests plus what closed ones consumed).
        open_grace_seconds: how long after its draw a pooled request may still open (the
            draw's deadline, on the drawing caller's clock).
        clock_skew_seconds: the bound on the skew between the callers' clocks: ``reap``
            gives back a draw whose request never opened once its own ``now`` passes the
            draw's deadline by this much.

    Raises:
        MissingExtra: redis-py is not installed (``pip install "apportion[redis]"``).
        InvalidArgument: a bad option, or a URL redis-py cannot read.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "apportion",
        buckets: int = 256,
        retention_seconds: float = 86_400.0,
        socket_timeout: float = 5.0,
        connect_timeout: float = 1.0,
        fail_open: bool = False,
        emergency_cap: int = 0,
        open_grace_seconds: float = 10.0,
        clock_skew_seconds: float = 1.0,
    ) -> None:
        _import_redis()
        _load_sources()
        if not isinstance(url, str) or "://" not in url:
            raise InvalidArgument("url", redact(url), "a Redis URL is redis://host:port/db")
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise InvalidArgument("prefix", prefix, "a non-empty string without braces")
        if not is_text(prefix):
            raise InvalidArgument("prefix", prefix, "not valid text (a lone surrogate?)")
        if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= 2**20:
            raise InvalidArgument("buckets", buckets, "an integer from 1 to 1048576")
        seconds: dict[str, float] = {}
        for name, value, least in (
            ("retention_seconds", retention_seconds, 0.001),
            ("socket_timeout", socket_timeout, 0.001),
            ("connect_timeout", connect_timeout, 0.001),
            ("open_grace_seconds", open_grace_seconds, 0.0),
            ("clock_skew_seconds", clock_skew_seconds, 0.0),
        ):
            seconds[name] = check_time(name, value, infinite=name == "retention_seconds")
            if seconds[name] < least:
                raise InvalidArgument(name, value, f"a number of seconds, at least {least}")
        self.open_grace_seconds = seconds["open_grace_seconds"]
        self.clock_skew_seconds = seconds["clock_skew_seconds"]
        self.url = redact(url)
        self.prefix = prefix
        self.buckets = buckets
        self.retention_seconds = seconds["retention_seconds"]
        self._retention_ms = _ttl_ms(self.retention_seconds)
        self._connect(url, seconds["socket_timeout"], seconds["connect_timeout"])
        self.fail_open = bool(fail_open)
        self.emergency_cap = check_tokens("emergency_cap", emergency_cap)
        self._local: MemoryStore | None = None
        self._local_ids: set[str] = set()
        self._local_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """A store for ``url`` (how ``store="redis://..."`` is built).

        The query may set ``prefix``, ``buckets``, ``retention_seconds``, ``fail_open``,
        ``emergency_cap``, ``open_grace_seconds`` and ``clock_skew_seconds``; the rest goes
        to redis-py. For example
        ``redis://cache:6379/0?fail_open=true&emergency_cap=20000``.
        """
        plain, ours = split_url(url)
        try:
            return cls(plain, **ours)
        except InvalidArgument as exc:
            if exc.argument != "url":
                raise
            raise InvalidArgument("url", redact(url), scrub(exc.reason, url)) from None

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r})"

    # ------------------------------------------------------------------ policy state

    def get_state(self, key: str) -> tuple[int, bytes] | None:
        """A policy's shared state: ``(version, data)``, or ``None`` when never written."""
        key = check_name("key", key)
        version, data = self._call(_Cmd(("HMGET", self._state_key(key), "v", "d")))
        if version is None:
            return None
        return int(version), bytes(data or b"")

    def put_state(self, key: str, data: bytes, expected_version: int) -> int | None:
        """Write ``data`` if the version is still ``expected_version``; the new version or None."""
        key = check_state_write(key, data, expected_version)
        reply = self._call(
            _Cmd(("EVAL", _PUT_STATE, 1, self._state_key(key), int(expected_version), data))  # type: ignore[arg-type]
        )
        return None if int(reply) < 0 else int(reply)

    # ------------------------------------------------------------------ fail-open

    def _fallback(
        self,
        error: StoreUnavailable,
        request_id: str,
        ranks: Mapping[str, int],
        ceiling: int,
        now: float,
        allocation: Mapping[str, int] | None,
        reserve: Mapping[str, int] | None,
        ttl: float,
        ceiling_usd: int | None = None,
    ) -> Ledger:
        """Open the request locally on the emergency budget, or re-raise ``error``."""
        if not self.fail_open:
            raise error
        if self.emergency_cap == 0:
            raise StoreUnavailable(
                self.url, f"{error.reason}; no local emergency budget (emergency_cap=0)"
            ) from error
        with self._local_lock:
            if self._local is None:
                local = MemoryStore()
                local.define_pool(Pool(_EMERGENCY_POOL, self.emergency_cap, math.inf))
                self._local = local
        try:
            ledger = self._local.open(
                request_id,
                ranks,
                ceiling,
                now,
                allocation=allocation,
                reserve=reserve,
                ttl=ttl,
                pool=_EMERGENCY_POOL,
                pool_priority="critical",
                ceiling_usd=ceiling_usd,
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

    def _local_store(self, request_id: str) -> MemoryStore | None:
        if self._local is not None and request_id in self._local_ids:
            return self._local
        return None

    # ------------------------------------------------------------------ Store API (sync)

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
    ) -> Ledger:
        """Open the ledger of a new request (drawing its ceiling from ``pool``)."""
        steps = self._open_steps(
            request_id,
            ranks,
            ceiling,
            now,
            allocation,
            reserve,
            ttl,
            pool,
            pool_priority,
            check_ceiling_usd(ceiling_usd),
        )
        try:
            return self._run(steps)
        except StoreUnavailable as error:
            return self._fallback(
                error, request_id, ranks, ceiling, now, allocation, reserve, ttl, ceiling_usd
            )

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
    ) -> tuple[Grant, Ledger]:
        """Reserve a grant; return it and the state after."""
        local = self._local_store(request_id)
        if local is not None:
            return local.begin(
                request_id,
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
        return self._run(
            self._begin_steps(
                request_id,
                agent,
                context_tokens,
                output_tokens,
                now,
                lease_seconds,
                model,
                prices,
                asked,
                wrap_up_tokens,
            )
        )

    def extend(
        self,
        request_id: str,
        grant: Grant,
        output_tokens: int,
        context_tokens: int,
        now: float,
        lease_seconds: float,
    ) -> tuple[Grant, Ledger]:
        """Grow an open grant; return it and the state after."""
        local = self._local_store(request_id)
        if local is not None:
            return local.extend(
                request_id, grant, output_tokens, context_tokens, now, lease_seconds
            )
        return self._run(
            self._extend_steps(request_id, grant, output_tokens, context_tokens, now, lease_seconds)
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
    ) -> Ledger:
        """Settle a grant with its real usage; return the state after."""
        local = self._local_store(request_id)
        if local is not None:
            return local.finish(
                request_id,
                grant,
                input_tokens,
                output_tokens,
                now,
                truncated=truncated,
                allocation=allocation,
            )
        return self._run(
            self._finish_steps(
                request_id, grant, input_tokens, output_tokens, now, truncated, allocation
            )
        )

    def release(
        self, request_id: str, grant: Grant, now: float, *, reason: str = "release"
    ) -> Ledger:
        """Settle a grant as unused; return the state after."""
        local = self._local_store(request_id)
        if local is not None:
            return local.release(request_id, grant, now, reason=reason)
        return self._run(self._release_steps(request_id, grant, now, reason))

    def close(
        self, request_id: str, now: float, *, status: str = "closed", outcome: float | None = None
    ) -> Ledger:
        """Close a request (its unused tokens return to its pool); return its final state."""
        local = self._local_store(request_id)
        if local is not None:
            return local.close(request_id, now, status=status, outcome=outcome)
        return self._run(self._close_steps(request_id, now, status, outcome))

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
    ) -> tuple[Ledger, list[Ledger]]:
        """Open child requests of ``parent_id``, drawing their ceilings from it (one script)."""
        local = self._local_store(parent_id) if isinstance(parent_id, str) else None
        if local is not None:
            parent, children = local.open_children(
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
            )
            self._local_ids.update(child.request_id for child in children)
            return parent, children
        return self._run(
            self._children_steps(
                parent_id,
                request_ids,
                ranks,
                now,
                priorities,
                ceiling,
                share,
                allocation,
                reserve,
                ttl,
                max_depth,
            )
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
    ) -> tuple[Ledger, list[Ledger]]:
        """Async :meth:`open_children`."""
        if isinstance(parent_id, str) and self._local_store(parent_id) is not None:
            return self.open_children(
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
            )
        return await self._arun(
            self._children_steps(
                parent_id,
                request_ids,
                ranks,
                now,
                priorities,
                ceiling,
                share,
                allocation,
                reserve,
                ttl,
                max_depth,
            )
        )

    def get(self, request_id: str) -> Ledger:
        """The current state of a request (open, or closed within the retention)."""
        local = self._local_store(request_id)
        if local is not None:
            return local.get(request_id)
        return self._run(self._get_steps(request_id))

    def events(self, request_id: str) -> list[Event]:
        """The request's events, oldest first."""
        local = self._local_store(request_id)
        if local is not None:
            return local.events(request_id)
        return self._run(self._events_steps(request_id))

    def reap_expired(self, now: float) -> Reaped:
        """Expire ended leases and overdue requests in every bucket (see :class:`Store`)."""
        local = self._local.reap_expired(now) if self._local is not None else Reaped(0)
        try:
            return local + self._run(self._reap_steps(now))
        except StoreUnavailable:
            if self._local is None:
                raise
            return local

    def note(self, request_id: str, event: Event) -> None:
        """Append a feed-only event of a request (one script: the request's state with it)."""
        if self._local_store(request_id) is not None:
            assert self._local is not None
            self._local.note(request_id, event)
            return
        super().note(request_id, event)

    async def anote(self, request_id: str, event: Event) -> None:
        """Async :meth:`note`."""
        if self._local_store(request_id) is not None:
            self.note(request_id, event)
            return
        await super().anote(request_id, event)

    def open_requests(self, prefix: str = "") -> list[str]:
        """The ids of the open requests that start with ``prefix``, sorted (from the indexes)."""
        ids = super().open_requests(prefix)
        if self._local is not None:
            ids = sorted({*ids, *self._local.open_requests(prefix)})
        return ids

    async def aopen_requests(self, prefix: str = "") -> list[str]:
        """Async :meth:`open_requests`."""
        ids = await super().aopen_requests(prefix)
        if self._local is not None:
            ids = sorted({*ids, *self._local.open_requests(prefix)})
        return ids

    # ------------------------------------------------------------------ Store API (async)

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
    ) -> Ledger:
        """Async :meth:`open`."""
        steps = self._open_steps(
            request_id,
            ranks,
            ceiling,
            now,
            allocation,
            reserve,
            ttl,
            pool,
            pool_priority,
            check_ceiling_usd(ceiling_usd),
        )
        try:
            return await self._arun(steps)
        except StoreUnavailable as error:
            return self._fallback(
                error, request_id, ranks, ceiling, now, allocation, reserve, ttl, ceiling_usd
            )

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
    ) -> tuple[Grant, Ledger]:
        """Async :meth:`begin`."""
        if self._local_store(request_id) is not None:
            return self.begin(
                request_id,
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
        return await self._arun(
            self._begin_steps(
                request_id,
                agent,
                context_tokens,
                output_tokens,
                now,
                lease_seconds,
                model,
                prices,
                asked,
                wrap_up_tokens,
            )
        )

    async def aextend(
        self,
        request_id: str,
        grant: Grant,
        output_tokens: int,
        context_tokens: int,
        now: float,
        lease_seconds: float,
    ) -> tuple[Grant, Ledger]:
        """Async :meth:`extend`."""
        if self._local_store(request_id) is not None:
            return self.extend(request_id, grant, output_tokens, context_tokens, now, lease_seconds)
        return await self._arun(
            self._extend_steps(request_id, grant, output_tokens, context_tokens, now, lease_seconds)
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
    ) -> Ledger:
        """Async :meth:`finish`."""
        if self._local_store(request_id) is not None:
            return self.finish(
                request_id,
                grant,
                input_tokens,
                output_tokens,
                now,
                truncated=truncated,
                allocation=allocation,
            )
        return await self._arun(
            self._finish_steps(
                request_id, grant, input_tokens, output_tokens, now, truncated, allocation
            )
        )

    async def arelease(
        self, request_id: str, grant: Grant, now: float, *, reason: str = "release"
    ) -> Ledger:
        """Async :meth:`release`."""
        if self._local_store(request_id) is not None:
            return self.release(request_id, grant, now, reason=reason)
        return await self._arun(self._release_steps(request_id, grant, now, reason))

    async def aclose(
        self, request_id: str, now: float, *, status: str = "closed", outcome: float | None = None
    ) -> Ledger:
        """Async :meth:`close`."""
        if self._local_store(request_id) is not None:
            return self.close(request_id, now, status=status, outcome=outcome)
        return await self._arun(self._close_steps(request_id, now, status, outcome))

    async def aget(self, request_id: str) -> Ledger:
        """Async :meth:`get`."""
        if self._local_store(request_id) is not None:
            return self.get(request_id)
        return await self._arun(self._get_steps(request_id))

    async def aevents(self, request_id: str) -> list[Event]:
        """Async :meth:`events`."""
        if self._local_store(request_id) is not None:
            return self.events(request_id)
        return await self._arun(self._events_steps(request_id))

    async def areap_expired(self, now: float) -> Reaped:
        """Async :meth:`reap_expired`."""
        local = self._local.reap_expired(now) if self._local is not None else Reaped(0)
        try:
            return local + await self._arun(self._reap_steps(now))
        except StoreUnavailable:
            if self._local is None:
                raise
            return local
