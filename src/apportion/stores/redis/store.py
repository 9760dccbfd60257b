"""The Redis store class: its options and its public API, sync and async.

:class:`RedisStore` puts together what the modules of :mod:`apportion.stores.redis` hold
(keys, transport, request operations, reap, pools, feed) and carries each operation out
with the sync or the async shell; see the package docstring for the design. With
``fail_open=True`` it is a :class:`~apportion.stores.fail_open.FailOpenStore` around
itself (:class:`FailOpenRedisStore`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

from apportion.errors import InvalidArgument
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
from apportion.redaction import redact, scrub
from apportion.stores.base import Reaped, Store
from apportion.stores.fail_open import FailOpenStore
from apportion.stores.memory import check_state_write
from apportion.stores.redis.calls import _Cmd
from apportion.stores.redis.codec import _ttl_ms
from apportion.stores.redis.feed import RedisFeed
from apportion.stores.redis.reap import RedisReaper
from apportion.stores.redis.scripts import _PUT_STATE, _load_sources
from apportion.stores.redis.transport import _import_redis
from apportion.stores.redis.url import split_url


class RedisStore(RedisReaper, RedisFeed, Store):
    """Ledgers and shared pools in Redis; see :mod:`apportion.stores.redis`.

    Args:
        url: ``redis://[[user]:password@]host:port/db`` (``rediss://`` for TLS), or
            ``redis+cluster://host:port`` (``rediss+cluster://``) for a Redis Cluster
            reached from that seed node, or
            ``redis+sentinel://host:port[,host:port...]/service[/db]`` for the primary
            that Redis Sentinel names.
        prefix: the first part of every key (no braces).
        buckets: how many hash-tag buckets requests are spread over (fixed for a deployment:
            changing it hides the requests already stored).
        retention_seconds: how long a closed request stays readable (real seconds;
            ``math.inf``: until deleted).
        socket_timeout: seconds to wait for a reply before ``StoreUnavailable``.
        connect_timeout: seconds to wait for a connection before ``StoreUnavailable``.
        fail_open: when Redis cannot be reached, open new requests in a local memory store
            (with a warning) instead of raising ``StoreUnavailable``: the store is then a
            :class:`FailOpenRedisStore` (see :mod:`apportion.stores.fail_open`).
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

    replies_may_be_lost = True

    def __new__(cls, *args: Any, fail_open: bool = False, **options: Any) -> RedisStore:
        """A :class:`FailOpenRedisStore` when ``fail_open`` is set, else a plain store."""
        if fail_open and cls is RedisStore:
            cls = FailOpenRedisStore
        return super().__new__(cls)

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
        if self.fail_open and not isinstance(self, FailOpenStore):  # a subclass's own store
            raise InvalidArgument(
                "fail_open",
                fail_open,
                f"wrap it instead: FailOpenStore({type(self).__name__}(...), emergency_cap=N)",
            )

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
            _Cmd(("EVAL", _PUT_STATE, 1, self._state_key(key), int(expected_version), data))
        )
        return None if int(reply) < 0 else int(reply)

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
        features: Mapping[str, Any] | None = None,
        op_id: str | None = None,
    ) -> Ledger:
        """Open the ledger of a new request (drawing its ceiling from ``pool``)."""
        return self._run(
            self._open_steps(
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
                features,
                op_id,
            )
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
        op_id: str | None = None,
    ) -> tuple[Grant, Ledger]:
        """Reserve a grant; return it and the state after."""
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
                op_id,
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
        *,
        op_id: str | None = None,
    ) -> tuple[Grant, Ledger]:
        """Grow an open grant; return it and the state after."""
        return self._run(
            self._extend_steps(
                request_id, grant, output_tokens, context_tokens, now, lease_seconds, op_id
            )
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
    ) -> Ledger:
        """Settle a grant with its real usage; return the state after."""
        return self._run(
            self._finish_steps(
                request_id, grant, input_tokens, output_tokens, now, truncated, allocation, op_id
            )
        )

    def release(
        self,
        request_id: str,
        grant: Grant,
        now: float,
        *,
        reason: str = "release",
        op_id: str | None = None,
    ) -> Ledger:
        """Settle a grant as unused; return the state after."""
        return self._run(self._release_steps(request_id, grant, now, reason, op_id))

    def close(
        self,
        request_id: str,
        now: float,
        *,
        status: str = "closed",
        outcome: float | None = None,
        op_id: str | None = None,
    ) -> Ledger:
        """Close a request (its unused tokens return to its pool); return its final state."""
        return self._run(self._close_steps(request_id, now, status, outcome, op_id))

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
        """Open child requests of ``parent_id``, drawing their ceilings from it (one script)."""
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
                features,
                op_id,
            )
        )

    def get(self, request_id: str) -> Ledger:
        """The current state of a request (open, or closed within the retention)."""
        return self._run(self._get_steps(request_id))

    def events(self, request_id: str) -> list[Event]:
        """The request's events, oldest first."""
        return self._run(self._events_steps(request_id))

    def get_with_features(self, request_id: str) -> tuple[Ledger, dict[str, Any]]:
        """The state and the features of a request (one round trip)."""
        return self._run(self._get_with_features_steps(request_id))

    def features(self, request_id: str) -> dict[str, Any]:
        """The features the request opened with (one read: its ``open`` event)."""
        return self._run(self._features_steps(request_id))

    def history(self, request_id: str) -> list[Event]:
        """The request's events with its notes in their places (one read: they share a list)."""
        return self._run(self._events_steps(request_id, notes=True))

    def reap_expired(self, now: float) -> Reaped:
        """Expire ended leases and overdue requests in every bucket (see :class:`Store`)."""
        return self._run(self._reap_steps(now))

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
        features: Mapping[str, Any] | None = None,
        op_id: str | None = None,
    ) -> Ledger:
        """Async :meth:`open`."""
        return await self._arun(
            self._open_steps(
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
                features,
                op_id,
            )
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
        op_id: str | None = None,
    ) -> tuple[Grant, Ledger]:
        """Async :meth:`begin`."""
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
                op_id,
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
        *,
        op_id: str | None = None,
    ) -> tuple[Grant, Ledger]:
        """Async :meth:`extend`."""
        return await self._arun(
            self._extend_steps(
                request_id, grant, output_tokens, context_tokens, now, lease_seconds, op_id
            )
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
    ) -> Ledger:
        """Async :meth:`finish`."""
        return await self._arun(
            self._finish_steps(
                request_id, grant, input_tokens, output_tokens, now, truncated, allocation, op_id
            )
        )

    async def arelease(
        self,
        request_id: str,
        grant: Grant,
        now: float,
        *,
        reason: str = "release",
        op_id: str | None = None,
    ) -> Ledger:
        """Async :meth:`release`."""
        return await self._arun(self._release_steps(request_id, grant, now, reason, op_id))

    async def aclose(
        self,
        request_id: str,
        now: float,
        *,
        status: str = "closed",
        outcome: float | None = None,
        op_id: str | None = None,
    ) -> Ledger:
        """Async :meth:`close`."""
        return await self._arun(self._close_steps(request_id, now, status, outcome, op_id))

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
    ) -> tuple[Ledger, list[Ledger]]:
        """Async :meth:`open_children`."""
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
                features,
                op_id,
            )
        )

    async def aget(self, request_id: str) -> Ledger:
        """Async :meth:`get`."""
        return await self._arun(self._get_steps(request_id))

    async def aevents(self, request_id: str) -> list[Event]:
        """Async :meth:`events`."""
        return await self._arun(self._events_steps(request_id))

    async def aget_with_features(self, request_id: str) -> tuple[Ledger, dict[str, Any]]:
        """Async :meth:`get_with_features`."""
        return await self._arun(self._get_with_features_steps(request_id))

    async def afeatures(self, request_id: str) -> dict[str, Any]:
        """Async :meth:`features`."""
        return await self._arun(self._features_steps(request_id))

    async def ahistory(self, request_id: str) -> list[Event]:
        """Async :meth:`history`."""
        return await self._arun(self._events_steps(request_id, notes=True))

    async def areap_expired(self, now: float) -> Reaped:
        """Async :meth:`reap_expired`."""
        return await self._arun(self._reap_steps(now))


# Its operations return LedgerView (as FailOpenStore's, for any store) where RedisStore's
# say Ledger: both of its stores (Redis, and memory for the fallback) return Ledger objects.
class FailOpenRedisStore(FailOpenStore, RedisStore):  # type: ignore[misc]
    """A Redis store that opens new requests locally while Redis is unreachable.

    What ``RedisStore(url, fail_open=True)`` (or ``?fail_open=true``) builds: the
    store-agnostic :class:`~apportion.stores.fail_open.FailOpenStore` around the Redis
    store, as one object. Its primary is the object itself seen as a plain
    :class:`RedisStore` (``super(FailOpenStore, self)``: the Redis operations, one class
    further along the method resolution order), so it keeps every attribute of the store
    it wraps (``url``, ``prefix``, ``round_trips`` ...) and is an instance of both.

    Args:
        *args: as for :class:`RedisStore`.
        **options: as for :class:`RedisStore` (``emergency_cap`` among them).
    """

    def __init__(self, *args: Any, **options: Any) -> None:
        RedisStore.__init__(self, *args, **options)
        self._start_fail_open(None, self.emergency_cap)

    @property
    def primary(self) -> Store:
        """This store's plain Redis operations (fail-closed)."""
        return cast(Store, super(FailOpenStore, self))

    __repr__ = RedisStore.__repr__
