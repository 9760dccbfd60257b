"""Idempotency records: a retried call gets the first call's outcome, never a second effect.

Every mutating call of the gateway may carry an ``Idempotency-Key`` header. The first call
with a key *claims* it (a record ``running``, with the operation's name and a fingerprint
of the call: method, path and body), runs, then *completes* the record with its outcome
(HTTP status and body, refusals included). A later call with the same key and tenant:

* same fingerprint, record ``done``: gets the stored outcome, byte for byte; nothing runs;
* same fingerprint, record ``running`` (a concurrent duplicate): 409 ``in_progress``;
* another fingerprint: 422 ``idempotency_key_reused``.

Records live where the ledgers do, so replicas share them: a dict for ``memory://`` (one
process), and for ``redis://`` one key per record, claimed with ``SET NX`` and kept for the
request TTL (``PX``). An outcome that is the store being unreachable (503) is not
recorded: the claim is dropped, so the retry runs the operation again. When the store
went down while a claim, an outcome or a drop was being written (Redis stopped mid-call),
the gateway writes it once the store answers again, before its next keyed call (a
claim whose answer was lost is dropped only while it is still that call's ``running``
claim: :meth:`IdempotencyRecords.forget_claim`), so a retry does not meet ``in_progress``
for the whole TTL.

Store-level operation ids close most of the gap between the record and the ledger change
(two writes): a keyed call runs its store operations under ids derived from the tenant and
the key (:mod:`apportion.serve.gateway`), each recorded by the store in the same atomic
step as its change. When a reply is lost (503 after the controller's own retries), the
claim is dropped and the client's retry repeats the same ids: the store answers them with
the first outcomes, so nothing is granted or settled twice. What is left: if the gateway
dies (SIGKILL, host loss) after the store applied an operation and before the outcome was
written, the record stays ``running`` until its TTL ends and a retry meanwhile gets 409
``in_progress``. After that TTL a retry runs again, with the same ids, and the store
still answers them with the first outcomes as long as it keeps the request (on Redis its
keys live the request's TTL plus the store's retention).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from apportion.errors import StoreUnavailable
from apportion.redaction import redact, scrub

__all__ = [
    "Claim",
    "IdempotencyRecords",
    "MemoryRecords",
    "Outcome",
    "RedisRecords",
    "open_records",
]


@dataclass(frozen=True)
class Outcome:
    """A finished call's HTTP status and JSON body (bytes, as sent)."""

    status: int
    body: bytes


@dataclass(frozen=True)
class Claim:
    """What claiming a key found.

    Attributes:
        state: ``new`` (the caller runs the operation), ``done`` (``outcome`` is the
            first call's), ``running`` (the first call has not finished) or ``mismatch``
            (the key was used for another call).
        operation: the operation the key was first used for.
        outcome: the first outcome when ``done``.
    """

    state: Literal["new", "done", "running", "mismatch"]
    operation: str
    outcome: Outcome | None = None


def _running(fingerprint: str, operation: str) -> dict[str, Any]:
    """The record of a claimed key whose call is running."""
    return {"state": "running", "fp": fingerprint, "op": operation}


_FORGET_CLAIM: Final = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


def _judge(record: dict[str, Any], fingerprint: str) -> Claim:
    operation = str(record.get("op", ""))
    if record.get("fp") != fingerprint:
        return Claim("mismatch", operation)
    if record.get("state") == "done":
        return Claim(
            "done", operation, Outcome(int(record["status"]), record["body"].encode("utf-8"))
        )
    return Claim("running", operation)


class IdempotencyRecords(abc.ABC):
    """Where idempotency records (and a request's pending score) are kept."""

    @abc.abstractmethod
    async def claim(self, key: str, fingerprint: str, operation: str, ttl: float) -> Claim:
        """Claim ``key`` for a call, or say what an earlier call with it left."""

    @abc.abstractmethod
    async def complete(
        self, key: str, fingerprint: str, operation: str, outcome: Outcome, ttl: float
    ) -> None:
        """Record the outcome of the call that claimed ``key``."""

    @abc.abstractmethod
    async def forget(self, key: str) -> None:
        """Drop a claim (its call failed in a way a retry should run again)."""

    @abc.abstractmethod
    async def forget_claim(self, key: str, fingerprint: str, operation: str) -> None:
        """Drop ``key`` only while it is still the ``running`` claim of this call.

        For a claim whose answer was lost (the store went down as it was written): a
        record completed meanwhile stays.
        """

    @abc.abstractmethod
    async def put_value(self, key: str, value: str, ttl: float) -> None:
        """Keep a small value (a request's score until its close) for ``ttl`` seconds."""

    @abc.abstractmethod
    async def get_value(self, key: str) -> str | None:
        """A value kept by :meth:`put_value`, or ``None``."""

    async def aclose(self) -> None:  # noqa: B027 - nothing to close by default
        """Release connections."""


class MemoryRecords(IdempotencyRecords):
    """Records in a dict of this process (the memory store's companion)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, tuple[float, dict[str, Any]]] = {}
        self._values: dict[str, tuple[float, str]] = {}
        self._next_sweep = -math.inf

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60.0
        for table in (self._records, self._values):
            for key in [k for k, (ends, _) in table.items() if ends <= now]:
                del table[key]

    async def claim(self, key: str, fingerprint: str, operation: str, ttl: float) -> Claim:
        """See :meth:`IdempotencyRecords.claim`."""
        now = self._clock()
        with self._lock:
            self._sweep(now)
            found = self._records.get(key)
            if found is not None and found[0] > now:
                return _judge(found[1], fingerprint)
            self._records[key] = (
                now + ttl,
                {"state": "running", "fp": fingerprint, "op": operation},
            )
        return Claim("new", operation)

    async def complete(
        self, key: str, fingerprint: str, operation: str, outcome: Outcome, ttl: float
    ) -> None:
        """See :meth:`IdempotencyRecords.complete`."""
        record = _done(fingerprint, operation, outcome)
        with self._lock:
            self._records[key] = (self._clock() + ttl, record)

    async def forget(self, key: str) -> None:
        """See :meth:`IdempotencyRecords.forget`."""
        with self._lock:
            self._records.pop(key, None)

    async def forget_claim(self, key: str, fingerprint: str, operation: str) -> None:
        """See :meth:`IdempotencyRecords.forget_claim`."""
        with self._lock:
            found = self._records.get(key)
            if found is not None and found[1] == _running(fingerprint, operation):
                del self._records[key]

    async def put_value(self, key: str, value: str, ttl: float) -> None:
        """See :meth:`IdempotencyRecords.put_value`."""
        with self._lock:
            self._values[key] = (self._clock() + ttl, value)

    async def get_value(self, key: str) -> str | None:
        """See :meth:`IdempotencyRecords.get_value`."""
        with self._lock:
            found = self._values.get(key)
        if found is None or found[0] <= self._clock():
            return None
        return found[1]


_STORE_OPTIONS: Final = frozenset(
    {
        "prefix",
        "buckets",
        "retention_seconds",
        "fail_open",
        "emergency_cap",
        "open_grace_seconds",
        "clock_skew_seconds",
    }
)


def _ms(seconds: float) -> int:
    return max(1, min(int(seconds * 1000), 2**62))


class RedisRecords(IdempotencyRecords):
    """Records in Redis beside the ledgers: ``SET NX PX`` claims, one key per record.

    Args:
        url: the store's URL (its apportion options, such as ``?prefix=``, are read
            and left out of the connection's).
        prefix: the key prefix (default: the store URL's ``prefix``, else ``apportion``).
    """

    def __init__(self, url: str, prefix: str | None = None) -> None:
        from apportion.stores.redis.transport import _import_redis

        self._redis = _import_redis()
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in query if k in _STORE_OPTIONS}
        rest = [(k, v) for k, v in query if k not in _STORE_OPTIONS]
        from apportion.stores.redis.url import topology_of

        topology, plain = topology_of(urlunsplit(parts._replace(query=urlencode(rest))))
        self._url = plain
        self._topology = topology  # a cluster: one key per command, any node serves it
        self._raw = url
        self.url = redact(url)
        self.prefix = f"{prefix or ours.get('prefix') or 'apportion'}:gw"
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._errors = (
            self._redis.exceptions.ConnectionError,
            self._redis.exceptions.TimeoutError,
            self._redis.exceptions.ClusterError,
        )

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}:{kind}:{key}"

    async def _call(self, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            timeouts = {"socket_timeout": 5.0, "socket_connect_timeout": 1.0}
            if self._topology == "sentinel":
                from apportion.stores.redis.url import sentinel_parts

                sentinels, service, primary = sentinel_parts(self._raw)
                sentinel = self._redis.asyncio.sentinel.Sentinel(sentinels, **timeouts)
                self._client = sentinel.master_for(service, **timeouts, **primary)
            elif self._topology == "cluster":
                cluster = self._redis.asyncio.cluster.RedisCluster
                self._client = cluster.from_url(self._url, **timeouts)
            else:
                self._client = self._redis.asyncio.Redis.from_url(self._url, **timeouts)
            self._loop = loop
        try:
            return await self._client.execute_command(*args)
        except self._errors as exc:
            reason = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "", self._raw)
            raise StoreUnavailable(self.url, reason or type(exc).__name__) from None

    async def claim(self, key: str, fingerprint: str, operation: str, ttl: float) -> Claim:
        """See :meth:`IdempotencyRecords.claim` (``SET NX PX``, then ``GET`` if taken)."""
        name = self._key("idem", key)
        record = json.dumps(_running(fingerprint, operation))
        for _ in range(3):  # the record may expire between SET NX and GET: claim again
            if await self._call("SET", name, record, "NX", "PX", _ms(ttl)):
                return Claim("new", operation)
            found = await self._call("GET", name)
            if found is not None:
                return _judge(json.loads(found), fingerprint)
        return Claim("running", operation)

    async def complete(
        self, key: str, fingerprint: str, operation: str, outcome: Outcome, ttl: float
    ) -> None:
        """See :meth:`IdempotencyRecords.complete`."""
        record = _done(fingerprint, operation, outcome)
        await self._call("SET", self._key("idem", key), json.dumps(record), "PX", _ms(ttl))

    async def forget(self, key: str) -> None:
        """See :meth:`IdempotencyRecords.forget`."""
        await self._call("DEL", self._key("idem", key))

    async def forget_claim(self, key: str, fingerprint: str, operation: str) -> None:
        """See :meth:`IdempotencyRecords.forget_claim` (one script: compare, delete)."""
        record = json.dumps(_running(fingerprint, operation))
        await self._call("EVAL", _FORGET_CLAIM, 1, self._key("idem", key), record)

    async def put_value(self, key: str, value: str, ttl: float) -> None:
        """See :meth:`IdempotencyRecords.put_value`."""
        await self._call("SET", self._key("val", key), value, "PX", _ms(ttl))

    async def get_value(self, key: str) -> str | None:
        """See :meth:`IdempotencyRecords.get_value`."""
        found = await self._call("GET", self._key("val", key))
        return None if found is None else bytes(found).decode("utf-8")

    async def aclose(self) -> None:
        """Close the connection pool (if this loop opened it)."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RuntimeError):  # its loop is gone already
                await client.aclose()


def open_records(store_url: str, prefix: str | None = None) -> IdempotencyRecords:
    """The records beside the store at ``store_url`` (memory or Redis)."""
    if store_url.startswith("memory:"):
        return MemoryRecords()
    return RedisRecords(store_url, prefix)


def _done(fingerprint: str, operation: str, outcome: Outcome) -> dict[str, Any]:
    """The record of a finished call: what a retry with the same key is answered."""
    return {
        "state": "done",
        "fp": fingerprint,
        "op": operation,
        "status": outcome.status,
        "body": outcome.body.decode("utf-8"),
    }
