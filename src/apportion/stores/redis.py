"""The Redis store: ledgers and shared pools in Redis, for many processes and many hosts.

Selected by URL, ``store="redis://[:password@]host:port/db"`` (needs the ``redis`` extra).
Every ledger operation is one Lua script (``stores/lua/*.lua``, package data) run with
``EVALSHA``: atomic, one round trip, and the script returns the full state after the
operation, so the controller and its policy read the new state without a second call.
Refusals come back as codes and are raised as the very errors, with the very fields, of
:class:`~apportion.ledger.Ledger`, in its order of validation; a refused operation changes
nothing (except expiring ended leases, as the ledger does).

Keys. A request's keys share one hash tag, its *bucket* ``{bN}`` (``N`` is a CRC-32 of the
request id modulo ``buckets``; for a child request, of its root's id, the part of its id
before the first ``::``), so that each request script touches one hash slot, and the
scripts of a request tree (opening children, closing a tree) the slot of its root:

* ``PREFIX:{bN}:r:ID``: the ledger, one flat JSON array (layout in ``lua/common.lua``);
* ``PREFIX:{bN}:e:ID``: the event list (each script appends to it in the same step);
* ``PREFIX:{bN}:o:ID``: the request's operation ids, a hash (id -> digest of the
  arguments and what the reply adds to the state), written by the script of each operation
  that carried an id, in the same step, with the TTL of the ledger's key (see "Operation
  ids" in ``lua/common.lua``);
* ``PREFIX:{bN}:open``: the bucket's open requests, scored at or before their next
  deadline (the earliest lease end, or the request's expiry): what ``reap`` scans;
* ``PREFIX:{bN}:d:DRAW``: set only when a pool draw of the request is settled without it
  (``void``: given back, never to be opened), or when a new open of the same id replaces a
  closed ledger that had drawn (that ledger, set aside for its draw's settlement).

The event feed is one stream per prefix, ``PREFIX:feed``: every request script declares it
last in ``KEYS`` and adds each event it records to it (``XADD ... MAXLEN ~ 100000``) in
the same step as the change, with the request's state after it; ``feed`` reads it with
``XREAD`` (``BLOCK`` while waiting), ``note`` adds a feed-only event (``note.lua``).
``open_requests`` reads the buckets' ``open`` indexes (one pipeline), never the keys.

A pool's keys share the tag ``{p:NAME}``: ``PREFIX:{p:NAME}:pool`` (its configuration, the
newest window drawn from and its count) and ``PREFIX:{p:NAME}:draws`` (one entry per draw
not settled yet: the window it was charged to, its tokens and its open deadline);
``PREFIX:pools`` lists the pools' names.

Time. Scripts use the ``now`` the caller passes (the controller's injected clock), never
Redis's clock, so leases, expiry and windows follow the same clock as in the memory store.
Keys also carry Redis TTLs in real seconds: an open request's keys live ``ttl + retention``
(no TTL when ``ttl`` is infinite, nor for a request that drew from a pool: its draw is
settled from its ledger, so that ledger is never lost while open), a closed request's
``retention_seconds``; after that it is gone and ``get`` raises ``UnknownRequest``. A child
request's keys live at least as long as its parent's (none while the parent's have none),
so a child left unreaped is still there when its parent closes and folds it back; should a
child's ledger be gone all the same (evicted, deleted), its parent charges the child's whole
draw as used when it closes (what the child used is not known: usage is never dropped, and
the draw is never handed out again). The
callers' clocks may disagree: pool windows never go back (:mod:`apportion.pools`), so no
skew lets a window grant more than its capacity.

Leases are reaped lazily, as in the ledger: every operation first releases its request's
grants whose lease ended at or before ``now``. ``reap(now)`` does it for every request and
closes the overdue ones, in one script over every bucket, and returns the unused tokens of
the requests it closed to their pools.

Pools cost one more round trip at open and at close: a pool lives in its own hash slot, so
drawing (at open) and giving back (at close) are scripts of their own. Each draw is
recorded and settled exactly once, so a failure between the two steps never returns tokens
twice, and ``reap`` (its reconcile step) settles what the failed step left:

* a closed request whose give-back never ran returns what it left unused;
* a draw whose request never opened (the connection cut after the draw, the process killed
  between the steps, the server restarting) carries an open deadline, ``now +
  open_grace_seconds`` on the drawing caller's clock. Once a reaper's ``now`` passes it by
  ``clock_skew_seconds`` (the stated bound on the skew between hosts), ``pool_void.lua``
  marks the draw void in the request's own slot and the draw is given back in full. The
  open script refuses a void draw, atomically (same slot), so an open that still comes
  later raises :class:`~apportion.errors.PoolDrawExpired` and nothing is counted twice,
  whatever the clocks say: skew beyond the bound can only refuse a slow open, never
  overspend. (Refusing any open past its deadline, on the open's own clock, would not do:
  a stalled caller's ``now`` is as old as its draw.)
* a draw whose request is open stays out until the request closes: the request's keys
  carry no TTL while it is open (``reap`` closes it once its ``ttl`` has passed). A closed
  ledger that a new open of the same id replaces is set aside under its draw's key, so its
  draw is still settled by what it used.

What is left to the operator: run ``reap`` at least once per ``retention_seconds`` (a closed
ledger whose give-back failed lives that long). A void mark lives that long too, so only a
caller stalled for longer than ``retention_seconds`` between its draw and its open could
still open on tokens already given back. Keep Redis from losing writes
(``maxmemory-policy noeviction``, AOF with ``appendfsync always``): a ledger Redis itself
loses (evicted, deleted, or among the last writes before a crash) cannot be told from a
request that never opened, and its draw comes back in full.

Durability. What survives a crash of the Redis server is what its append-only file (AOF)
holds, and that is set on the server, not here (``appendonly yes`` and ``appendfsync``);
an acknowledged operation is a grant or settlement the client believes happened:

* ``appendfsync always``: every script's effects are written and fsynced before its reply
  is sent, so a crash of the Redis process loses no acknowledged operation, nor does a
  crash of the host as long as the disk honours fsync. Slowest (one fsync per write,
  shared by the operations of one event-loop turn).
* ``appendfsync everysec`` (Redis's default): fsync once a second, so a crash can lose up
  to about the last second of acknowledged operations (two, when the disk is slow): tokens
  handed out again, since a grant is gone and its tokens are free, or usage forgotten, since
  a settlement is gone. On a crash of the host (power, kernel), and also on a crash of the
  Redis process alone while the disk is busy: Redis then holds writes back and still
  replies (measured: one SIGKILL lost 337 acknowledged finishes; with an idle disk, none).
* ``appendfsync no``: every write is handed to the OS before its reply (a crash of the
  Redis process alone loses nothing), but the OS decides when it reaches the disk
  (typically within 30 s on Linux), so a crash of the host can lose that much.
* No AOF: a restart keeps at most the last RDB snapshot.

Under every setting a script's effects are all or nothing (Redis writes a script's
writes to the AOF as one transaction and drops an incomplete one at load), so the state
after a restart is consistent: every ledger's invariants hold; only recent operations may
be missing. :meth:`RedisStore.durability` reads which setting the server runs with.

Failures. A connection failure raises :class:`~apportion.errors.StoreUnavailable` (with the
URL, never its password, and the reason): when it came after the operation was sent (the
connection dropped, or no reply in time), :class:`~apportion.errors.StoreOutcomeUnknown`,
since the operation may have been applied. Nothing is retried here; the caller retries
with the same operation id (the controller does), which the scripts answer with the first
outcome. A pooled ``open`` with an operation id draws under a key made from it, so its
retry finds the draw made (``pool_draw.lua``) instead of drawing again. That is fail-closed, the
default. With ``fail_open=True``, a request that cannot be opened in Redis is opened in a
local :class:`~apportion.stores.memory.MemoryStore` instead, with a ``RuntimeWarning``,
drawing its ceiling from a per-process emergency budget of ``emergency_cap`` tokens (what it
leaves unused returns to that budget at close); requests already in Redis still raise.

Speed. Each thread keeps one connection of its own (no pool checkout per call); with
``hiredis`` (in the extra) replies parse in C. ``round_trips`` counts the round trips made.

Redis Cluster. Every request script touches the keys of one slot and pool scripts the keys
of another, so the layout suits a cluster; but ``reap`` runs one script over every bucket's
index (cross-slot: fine on a standalone server, one call per bucket would be needed on a
cluster), and this class connects with a standalone client. Cluster is not supported yet.
The event feed is one stream outside every bucket's slot, so on a cluster each request
script would be cross-slot: a cluster needs one stream per bucket (``PREFIX:{bN}:feed``,
in the request's slot), a cursor per bucket, and readers that ``XREAD`` each node's
streams.
The scripts of a request tree (``children.lua``, and ``close`` / ``reap`` closing a tree
and folding a child back into its parent) stay in the tree's one slot and touch only keys
declared in ``KEYS``, as a cluster requires: ``close`` first declares the request's own
keys and its likely parent's (its id less the last ``::`` part: no read); when the script
finds the tree holds requests not declared (open children, or a tree that changed since it
was read), it writes nothing and names them, and the store reads the tree from them (its
ledgers, a level per round trip) and calls again. ``reap`` reads each bucket's due
requests and their trees first, then runs the script on those keys; a request due since,
or whose tree changed, is left for the next round. After ``_TREE_ATTEMPTS`` (16) attempts
in a row that met a changed tree, ``StoreUnavailable`` says so (nothing was changed by
them). A flat request's ``close`` stays one round trip.

Child budgets. ``open_children`` is one script (``children.lua``): it splits what the
parent can spare, records each draw in the parent's ledger and writes each child's ledger,
in one step, so children racing from many processes never draw more than the parent can
spare. A ledger document carries its tree section (parent, depth, priority rank, the
closed children's usage, the open children's draws: see ``lua/common.lua``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import secrets
import threading
import warnings
import zlib
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from apportion.errors import (
    ApportionError,
    BudgetExceeded,
    ChildBudgetExceeded,
    CostExceeded,
    DuplicateRequest,
    ForeignGrant,
    GrantExpired,
    GrantSettled,
    InvalidArgument,
    InvalidPrice,
    MissingExtra,
    OperationConflict,
    PoolDrawExpired,
    PoolExhausted,
    RequestClosed,
    StoreOutcomeUnknown,
    StoreUnavailable,
    TreeTooDeep,
    UnknownAgent,
    UnknownPool,
    UnknownRequest,
)
from apportion.ledger import (
    CHILD_SEP,
    MAX_TOKENS,
    NANO,
    OPEN,
    Event,
    Grant,
    Ledger,
    check_ceiling_usd,
    check_name,
    check_outcome,
    check_prices,
    check_seconds,
    check_status,
    check_time,
    check_tokens,
    check_wrap_up,
)
from apportion.limits import excerpt, is_text
from apportion.pools import (
    PRIORITY_RANKS,
    Pool,
    PoolStatus,
    check_pool_name,
    check_priority,
    current_window,
    pool_status,
)
from apportion.redaction import redact, scrub
from apportion.stores.base import (
    Digests,
    Reaped,
    Store,
    check_children,
    check_op_id,
    digest_operation,
)
from apportion.stores.feed import FeedEvent, FeedPage, check_feed_args, check_note
from apportion.stores.memory import MemoryStore, check_state_write

if TYPE_CHECKING:
    import redis as redis_sync
    import redis.asyncio as redis_async

T = TypeVar("T")

SCRIPTS = (
    "open",
    "children",
    "begin",
    "extend",
    "finish",
    "release",
    "close",
    "reap",
    "note",
    "pool_draw",
    "pool_return",
    "pool_void",
)
"""The Lua scripts, one per operation (request scripts start with ``common.lua``)."""

_PUT_STATE = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'v', v + 1, 'd', ARGV[2])
return v + 1
"""
"""Compare-and-set of a policy's state (small enough to stay inline)."""

_REQUEST_SCRIPTS = frozenset(
    {"open", "children", "begin", "extend", "finish", "release", "close", "reap", "note"}
)
_REAP_BATCH = 256
_CENTURY = 100 * 365.25 * 86_400.0  # seconds: a TTL beyond this is kept forever
_OK = (b"ok", "ok")
_TREE_ATTEMPTS = 16
"""Attempts of a ``close`` (rounds of a ``reap``) whose request tree changed since it was
read (children opened meanwhile) before giving up: each attempt reads the tree again."""
_EMERGENCY_POOL = "emergency"
_STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


def _script_source(name: str) -> str:
    folder = resources.files("apportion.stores") / "lua"
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    if name in _REQUEST_SCRIPTS:
        return (folder / "common.lua").read_text(encoding="utf-8") + "\n" + body
    return body


_SOURCES: dict[str, str] = {}
_SHAS: dict[str, str] = {}


def _load_sources() -> None:
    if not _SOURCES:
        for name in SCRIPTS:
            source = _script_source(name)
            _SHAS[name] = hashlib.sha1(source.encode("utf-8")).hexdigest()
            _SOURCES[name] = source


# ------------------------------------------------------------------ calls to carry out


class _Eval(NamedTuple):
    """Run one script: ``EVALSHA`` (loading it first if the server lost it)."""

    script: str
    keys: tuple[str, ...]
    args: tuple[str | int, ...]


class _Cmd(NamedTuple):
    """Run one plain command."""

    args: tuple[str | int, ...]


_Call = _Eval | _Cmd | list[_Eval | _Cmd]  # a list is one pipeline: one round trip
_Steps = Generator[_Call, Any, T]


# ------------------------------------------------------------------ encoding and decoding

_new_ledger = object.__new__
_decode = json.JSONDecoder().decode
_new = tuple.__new__  # builds a NamedTuple from a full tuple, skipping its slow __new__


def _text(value: float) -> str:
    """A float as the exact decimal text that reads back as the same float."""
    return repr(float(value))


def _tokens(field: str, value: object, pending: list[Exception]) -> str:
    """A token count as text, or ``!`` when invalid (its error kept in ``pending``)."""
    try:
        return str(check_tokens(field, value))
    except ApportionError as exc:
        if not pending:
            pending.append(exc)
        return "!"


def _grant_args(request_id: str, grant: object) -> tuple[str, str, str]:
    """``(ok, grant id, agent)`` of a grant handed to ``request_id``; ok is 0 if foreign."""
    if (
        isinstance(grant, Grant)
        and grant.request_id == request_id
        and isinstance(grant.agent, str)
        and isinstance(grant.grant_id, int)
    ):
        return "1", str(int(grant.grant_id)), grant.agent
    return "0", "", ""


def ledger_from_json(raw: bytes | str) -> Ledger:
    """Build a :class:`~apportion.ledger.Ledger` snapshot from a script's ledger document.

    The snapshot is a plain ledger object with the stored state (no validation: the store
    validated every change); it carries no events (read them with ``events``) and changing
    it changes nothing in the store. The document is the flat JSON array described in
    ``lua/common.lua``.
    """
    v = _decode(raw.decode() if isinstance(raw, bytes) else raw)
    n = v[12]
    agents = v[13 : 13 + n]
    request_id = v[0]
    ledger: Ledger = _new_ledger(Ledger)
    ledger.request_id = request_id
    ledger.status = v[1]
    ledger.outcome = float(v[2]) if v[2] else None
    ledger.expires_at = float(v[3])
    ledger.ceiling = v[4]
    ledger.consumed = v[5]
    ledger.reserved = v[6]
    ledger.free = v[7]
    ledger.overflow = int(v[8])
    ledger.next_grant_id = v[9]
    b = 13 + n
    ledger.ranks = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.allocation = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.reserve = {a: t for a, t in zip(agents, v[b : b + n], strict=False) if t}
    b += n
    ledger.consumed_by = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.reserved_by = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.overuse_by = {a: int(t) for a, t in zip(agents, v[b : b + n], strict=False)}
    b += n
    ledger.calls = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.truncated_calls = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.input_cut_calls = dict(zip(agents, v[b : b + n], strict=False))
    b += n
    ledger.cost_ceiling = int(v[b]) if v[b] != "" else None
    ledger.cost_reserved = int(v[b + 1])
    ledger.cost_consumed = int(v[b + 2])
    b += 3
    ledger.cost_by = {a: int(t) for a, t in zip(agents, v[b : b + n], strict=False)}
    b += n
    ledger.parent_id = v[b] or None
    ledger.depth = v[b + 1]
    ledger.rank = v[b + 2]
    ledger.children_consumed = v[b + 3]
    ledger.children_cost_consumed = int(v[b + 4])
    k = v[b + 5]
    b += 6
    ledger.children = {v[i]: (v[i + 1], int(v[i + 2])) for i in range(b, b + 3 * k, 3)}
    b += 3 * k
    grants: dict[int, Grant] = {}
    prices: dict[int, tuple[int, int]] = {}
    next_lease = math.inf
    for i in range(b, len(v), 8):
        grant_id, index, context, output, lease, model, pin, pout = v[i : i + 8]
        expires = float(lease)
        grants[grant_id] = _new(
            Grant,
            (request_id, agents[index - 1], grant_id, context, output, expires, model or None, 0),
        )
        if pin >= 0:
            prices[grant_id] = (pin, pout)
        if expires < next_lease:
            next_lease = expires
    ledger.grants = grants
    ledger.grant_prices = prices
    ledger._next_lease = next_lease
    ledger._settled = {}
    ledger.events = []
    return ledger


def _ledger_json(ledger: Ledger, pool: str, draw: str) -> str:
    agents = list(ledger.ranks)
    n = len(agents)
    head: list[Any] = [
        ledger.request_id,
        OPEN,
        "",
        _text(ledger.expires_at),
        ledger.ceiling,
        0,
        0,
        ledger.ceiling,
        "0",
        1,
        pool,
        draw,
        n,
    ]
    blocks: list[Any] = [
        *agents,
        *(ledger.ranks[a] for a in agents),
        *(ledger.allocation[a] for a in agents),
        *(ledger.reserve.get(a, 0) for a in agents),
        *[0] * (2 * n),
        *["0"] * n,
        *[0] * (3 * n),
        "" if ledger.cost_ceiling is None else str(ledger.cost_ceiling),
        "0",
        "0",
        *["0"] * n,
        "",  # the tree section: a root request with no children yet
        0,
        -1,
        0,
        "0",
        0,
    ]
    return json.dumps(head + blocks, separators=(",", ":"))


def _pool_debt(raw: bytes | str) -> tuple[str, str, int, str]:
    """``(pool, draw, free, overflow)`` of a closed ledger document."""
    v = json.loads(raw)
    return v[10], v[11], v[7], v[8]


def _event(raw: bytes | str) -> Event:
    kind, at, agent, grant_id, context, output, truncated, overuse, note, *asked = json.loads(raw)
    return Event(
        kind,
        float(at),
        agent or None,
        grant_id,
        context,
        output,
        truncated,
        overuse,
        note,
        asked[0] if asked else 0,
    )


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _refusal(
    request_id: str,
    reply: Sequence[Any],
    pending: list[Exception],
    *,
    agent: object = None,
    grant: object = None,
    plan: Sequence[object] = (),
    reason: str = "",
    op: tuple[str | None, str] = (None, ""),
) -> Exception:
    """The error a script's refusal stands for, with the ledger's fields.

    ``op`` is the operation's id and digest (a ``conflict`` reply names the first digest).
    """
    code = _str(reply[0])
    if code == "conflict":
        op_id, digest = op
        first = _str(reply[1]) if len(reply) > 1 else digest
        return OperationConflict(
            op_id or "", digest_operation(digest), digest_operation(first), request_id
        )
    if code == "unknown":
        return UnknownRequest(request_id)
    if code == "bad":
        return pending[0] if pending else ValueError("invalid input")
    if code == "agent":
        index = int(reply[1])
        known = [_str(name) for name in reply[2:]]
        return UnknownAgent(agent if index == 0 else plan[index - 1], known)
    if code == "closed":
        return RequestClosed(request_id, _str(reply[1]))
    if code == "budget":
        who: Any = grant.agent if isinstance(grant, Grant) else agent
        return BudgetExceeded(who, int(reply[1]), int(reply[2]), reason=reason)
    if code == "cost":
        who_c: Any = grant.agent if isinstance(grant, Grant) else agent
        model = grant.model if isinstance(grant, Grant) else None
        return CostExceeded(
            who_c, int(reply[1]) / NANO, int(reply[2]) / NANO, model=model or None, reason=reason
        )
    if code == "noprice":
        return InvalidPrice(
            "prices", None, f"agent {agent!r}: the request has a cost ceiling, no prices"
        )
    if code == "foreign":
        return ForeignGrant(getattr(grant, "request_id", None), request_id)
    if code == "settled":
        how = _str(reply[1])
        error = GrantExpired if how == "expire" else GrantSettled
        assert isinstance(grant, Grant)
        return error(grant.grant_id, grant.agent, how)
    if code == "dup":
        return DuplicateRequest(request_id)
    return RuntimeError(f"unexpected reply from the Redis store: {reply!r}")


def _draw_tag(op_id: str) -> str:
    """The tag of a pool draw made by an open of operation id ``op_id`` (a retry's too)."""
    return hashlib.blake2b(op_id.encode("ascii"), digest_size=6).hexdigest()


def _checked(
    check: Callable[[str, Any], T], field: str, value: Any, pending: list[Exception], fallback: T
) -> T:
    """``check(field, value)``, or ``fallback`` with its error kept in ``pending``."""
    try:
        return check(field, value)
    except ApportionError as exc:
        if not pending:
            pending.append(exc)
        return fallback


def _ttl_ms(seconds: float) -> str:
    """A key's TTL in milliseconds for ``PEXPIRE``; ``0`` (none) past a century."""
    if not seconds < _CENTURY:
        return "0"
    return str(max(1, math.ceil(seconds * 1000)))


def _time(now: object, pending: list[Exception]) -> float:
    """``now`` as a time, or 0 with its error kept in ``pending`` (see :func:`_tokens`)."""
    return _checked(check_time, "now", now, pending, 0.0)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _import_redis() -> Any:
    try:
        import redis
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise MissingExtra("redis", "redis") from exc
    return redis


# ------------------------------------------------------------------ the store


class RedisStore(Store):
    """Ledgers and shared pools in Redis; see the module docstring.

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

    replies_may_be_lost = True

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
        redis = _import_redis()
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
        self._raw_url = url
        self.prefix = prefix
        self.buckets = buckets
        self.retention_seconds = seconds["retention_seconds"]
        self._retention_ms = _ttl_ms(self.retention_seconds)
        self._options: dict[str, Any] = {
            "socket_timeout": seconds["socket_timeout"],
            "socket_connect_timeout": seconds["connect_timeout"],
            "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),
        }
        try:
            self._client: redis_sync.Redis = redis.Redis.from_url(url, **self._options)
            pool: Any = self._client.connection_pool
            pool.connection_class(**pool.connection_kwargs)  # reads its options; no I/O
        except (ValueError, TypeError) as exc:
            reason = f"redis-py cannot read it: {scrub(_reason(exc), url)}"
            raise InvalidArgument("url", self.url, reason) from None
        self._aclient: redis_async.Redis | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._acloser: AsyncGenerator[None, None] | None = None
        self._errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        )
        self._noscript: type[BaseException] = redis.exceptions.NoScriptError
        self._response_error: type[BaseException] = redis.exceptions.ResponseError
        self._held = threading.local()  # each thread's own connection: (pid, connection)
        self.fail_open = bool(fail_open)
        self.emergency_cap = check_tokens("emergency_cap", emergency_cap)
        self._local: MemoryStore | None = None
        self._local_ids: set[str] = set()
        self._local_lock = threading.Lock()
        self.round_trips = 0
        """Round trips to Redis so far (one per script call or pipeline)."""

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """A store for ``url`` (how ``store="redis://..."`` is built).

        The query may set ``prefix``, ``buckets``, ``retention_seconds``, ``fail_open``,
        ``emergency_cap``, ``open_grace_seconds`` and ``clock_skew_seconds``; the rest goes
        to redis-py. For example
        ``redis://cache:6379/0?fail_open=true&emergency_cap=20000``.
        """
        if not isinstance(url, str):
            raise InvalidArgument("url", url, "a Redis URL is a string")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise InvalidArgument("url", redact(url), scrub(str(exc), url)) from None
        ours: dict[str, Any] = {}
        rest = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            try:
                if key in ("prefix",):
                    ours[key] = value
                elif key in ("buckets", "emergency_cap"):
                    ours[key] = int(value)
                elif key in ("retention_seconds", "open_grace_seconds", "clock_skew_seconds"):
                    ours[key] = float(value)
                elif key == "fail_open":
                    ours[key] = value.lower() in ("1", "true", "yes", "on")
                else:
                    rest.append((key, value))
            except ValueError:
                raise InvalidArgument(
                    key, value, f"not a number (in {excerpt(redact(url), 200)})"
                ) from None
        plain = urlunsplit(parts._replace(query=urlencode(rest))) if ours else url
        try:
            return cls(plain, **ours)
        except InvalidArgument as exc:
            if exc.argument != "url":
                raise
            raise InvalidArgument("url", redact(url), scrub(exc.reason, url)) from None

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r})"

    def close_connections(self) -> None:
        """Close this thread's and the pool's connections (the store reconnects on use)."""
        held = getattr(self._held, "connection", None)
        if held is not None:
            held[1].disconnect()
            self._held.connection = None
        self._client.close()

    def durability(self) -> str:
        """What a crash of the Redis server can take back of what it acknowledged.

        Reads the server's ``appendonly`` and ``appendfsync`` (``CONFIG GET append*``, one
        round trip); see "Durability" in the module docstring for what each loses.

        Returns:
            ``"always"``, ``"everysec"`` or ``"no"``: the AOF is on with that
            ``appendfsync``; ``"off"``: no AOF (a restart keeps at most the last RDB
            snapshot); ``"unknown"``: the server refused ``CONFIG``, as managed services
            often do (ask its operator).

        Raises:
            StoreUnavailable: the server cannot be reached.
        """
        try:
            reply = self._call(_Cmd(("CONFIG", "GET", "append*")))
        except self._response_error:
            return "unknown"
        if isinstance(reply, dict):  # RESP3
            pairs = list(reply.items())
        else:
            pairs = list(zip(reply[::2], reply[1::2], strict=True))
        config = {_str(key): _str(value).lower() for key, value in pairs}
        if config.get("appendonly") == "no":
            return "off"
        fsync = config.get("appendfsync")
        return fsync if config.get("appendonly") == "yes" and fsync else "unknown"

    # ------------------------------------------------------------------ keys

    def _keys(self, request_id: str) -> tuple[str, str, str]:
        """The request's ledger, events and bucket index keys.

        Raises:
            UnknownRequest: ``request_id`` is no name a request can have.
        """
        if type(request_id) is not str or not is_text(request_id):
            raise UnknownRequest(request_id)
        root = request_id.split(CHILD_SEP, 1)[0]  # a tree's requests share its root's slot
        bucket = zlib.crc32(root.encode("utf-8", "surrogatepass")) % self.buckets
        base = f"{self.prefix}:{{b{bucket}}}:"
        return f"{base}r:{request_id}", f"{base}e:{request_id}", f"{base}open"

    def _ops_key(self, request_id: str) -> str:
        """The request's operation record (in its bucket: the same hash slot)."""
        return self._keys(request_id)[2][:-4] + "o:" + request_id

    def _own_keys(self, request_id: str) -> tuple[str, str, str, str]:
        """The request's ledger, events, index and operation record (a script's KEYS[1..4])."""
        return (*self._keys(request_id), self._ops_key(request_id))

    def _request_keys(self, request_id: str) -> tuple[str, str, str, str, str]:
        """The keys of a script on one request: its own four (:meth:`_own_keys`), the feed."""
        return (*self._own_keys(request_id), self._feed_key)

    @property
    def _feed_key(self) -> str:
        """The event feed's stream (one per prefix)."""
        return f"{self.prefix}:feed"

    def _marker_key(self, draw: str) -> str:
        """The key marking a pool draw void (in the bucket of the draw's request)."""
        return self._keys(draw.rsplit("#", 1)[0])[2][:-4] + "d:" + draw

    def _pool_keys(self, name: str) -> tuple[str, str]:
        base = f"{self.prefix}:{{p:{name}}}:"
        return f"{base}pool", f"{base}draws"

    @property
    def _registry(self) -> str:
        return f"{self.prefix}:pools"

    # ------------------------------------------------------------------ carrying out

    def _connection(self) -> Any:
        """This thread's own connection (no pool checkout per call: the hot path)."""
        held = getattr(self._held, "connection", None)
        if held is not None and held[0] == os.getpid():
            return held[1]
        pool: Any = self._client.connection_pool
        connection = pool.connection_class(**{**pool.connection_kwargs, "decode_responses": False})
        self._held.connection = (os.getpid(), connection)
        return connection

    def _command(self, *args: Any) -> Any:
        """Send one command on this thread's connection and read its reply."""
        connection = self._connection()
        if connection._sock is not None:
            try:
                stale = connection.can_read()  # data before we asked: closed or out of step
            except Exception:  # a broken socket: start afresh
                stale = True
            if stale:
                connection.disconnect()
        try:
            connection.send_command(*args)
            return connection.read_response()
        except self._response_error:
            raise  # a reply: the connection is in step
        except BaseException:
            connection.disconnect()
            raise

    def _call(self, call: _Call) -> Any:
        self.round_trips += 1
        try:
            if isinstance(call, list):
                return self._pipeline(call)
            if isinstance(call, _Cmd):
                return self._command(*call.args)
            sha = _SHAS[call.script]
            try:
                return self._command("EVALSHA", sha, len(call.keys), *call.keys, *call.args)
            except self._noscript:
                self.round_trips += 2
                self._command("SCRIPT", "LOAD", _SOURCES[call.script])
                return self._command("EVALSHA", sha, len(call.keys), *call.keys, *call.args)
        except self._errors as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        """The error of a failed call: its outcome is unknown unless it failed to connect."""
        reason = scrub(_reason(exc), self._raw_url)
        if "connecting to" in str(exc):  # nothing was sent
            return StoreUnavailable(self.url, reason)
        return StoreOutcomeUnknown(self.url, reason)

    def _pipeline(self, calls: list[_Eval | _Cmd]) -> list[Any]:
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            for i in todo:
                _queue(pipe, calls[i])
            replies = pipe.execute(raise_on_error=False)
            retry = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, self._noscript) and attempt == 0:
                    retry.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[i] = reply
            if not retry:
                break
            self.round_trips += 2
            self._load_all()
            todo = retry
        return results

    def _load_all(self) -> None:
        pipe: Any = self._client.pipeline(transaction=False)
        for name in SCRIPTS:
            pipe.execute_command("SCRIPT", "LOAD", _SOURCES[name])
        pipe.execute()

    def _run(self, steps: _Steps[T]) -> T:
        """Carry out an operation's calls with blocking I/O."""
        try:
            call = next(steps)
            while True:
                call = steps.send(self._call(call))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _async_client(self) -> redis_async.Redis:
        """The async client of the running event loop (a client is bound to its loop)."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aloop is not loop:
            redis = _import_redis()
            options = {
                **self._options,
                "retry": redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0),
            }
            client = redis.asyncio.Redis.from_url(self._raw_url, **options)
            # closed when the loop shuts its async generators down (asyncio.run does)
            self._acloser = _close_at_shutdown(client)
            await self._acloser.__anext__()
            self._aclient, self._aloop = client, loop
        assert self._aclient is not None
        return self._aclient

    async def _acall(self, call: _Call) -> Any:
        client: Any = await self._async_client()
        self.round_trips += 1
        try:
            if isinstance(call, list):
                return await self._apipeline(client, call)
            if isinstance(call, _Cmd):
                return await client.execute_command(*call.args)
            sha = _SHAS[call.script]
            try:
                return await client.execute_command(
                    "EVALSHA", sha, len(call.keys), *call.keys, *call.args
                )
            except self._noscript:
                self.round_trips += 2
                await client.execute_command("SCRIPT", "LOAD", _SOURCES[call.script])
                return await client.execute_command(
                    "EVALSHA", sha, len(call.keys), *call.keys, *call.args
                )
        except self._errors as exc:
            raise self._unavailable(exc) from None

    async def _apipeline(self, client: redis_async.Redis, calls: list[_Eval | _Cmd]) -> list[Any]:
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                _queue(pipe, calls[i])
            replies = await pipe.execute(raise_on_error=False)
            retry = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, self._noscript) and attempt == 0:
                    retry.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    results[i] = reply
            if not retry:
                break
            self.round_trips += 2
            loader = client.pipeline(transaction=False)
            for name in SCRIPTS:
                loader.execute_command("SCRIPT", "LOAD", _SOURCES[name])
            await loader.execute()
            todo = retry
        return results

    async def _arun(self, steps: _Steps[T]) -> T:
        """Carry out an operation's calls with awaited I/O."""
        try:
            call = next(steps)
            while True:
                call = steps.send(await self._acall(call))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ the operations,
    # each written once as the calls it makes (both shells carry them out)

    def _open_steps(
        self,
        request_id: str,
        ranks: Mapping[str, int],
        ceiling: int,
        now: float,
        allocation: Mapping[str, int] | None,
        reserve: Mapping[str, int] | None,
        ttl: float,
        pool: str | None,
        pool_priority: str,
        ceiling_usd: int | None = None,
        op_id: str | None = None,
    ) -> _Steps[Ledger]:
        op_id = check_op_id(op_id)
        now = check_time("now", now)
        ttl = check_seconds("ttl", ttl)
        ledger = Ledger(
            request_id,
            ranks,
            ceiling,
            now,
            allocation=allocation,
            reserve=reserve,
            expires_at=now + ttl,
            ceiling_usd=ceiling_usd,
        )
        digest = Digests.open(op_id, ledger.ranks, ledger.ceiling, pool, pool_priority, ceiling_usd)
        draw = ""
        fresh = False  # drawn by this call (not found drawn by the first call of its op id)
        keys: tuple[str, ...] = self._own_keys(request_id)
        if pool is not None:
            check_pool_name(pool)
            rank = PRIORITY_RANKS[check_priority(pool_priority)]
            tag = secrets.token_hex(6) if op_id is None else _draw_tag(op_id)
            draw = f"{request_id}#{tag}"
            pool_keys = self._pool_keys(pool)
            deadline = _text(now + self.open_grace_seconds)
            reply = yield _Eval(
                "pool_draw", pool_keys, (draw, ledger.ceiling, rank, _text(now), deadline)
            )
            code = _str(reply[0])
            if code == "unknown":
                raise UnknownPool(pool)
            if code == "exhausted":
                raise PoolExhausted(pool, ledger.ceiling, int(reply[1]), pool_priority)
            if code == "conflict":
                assert op_id is not None
                raise OperationConflict(op_id, "open", "open", request_id)
            fresh = code == "ok"
        blob = _ledger_json(ledger, pool or "", draw)
        opened = json.dumps(["open", _text(now), False, 0, ledger.ceiling, 0, False, 0, ""])
        key_ttl = "0"  # a pooled request keeps its keys while open: its draw is settled from them
        if pool is None and math.isfinite(ttl) and not math.isinf(self.retention_seconds):
            key_ttl = _ttl_ms(ttl + self.retention_seconds)
        if pool is not None:
            keys = (*keys, self._marker_key(draw))
        reply = yield _Eval(
            "open",
            (*keys, self._feed_key),
            (
                op_id or "",
                digest,
                blob,
                request_id,
                opened,
                _score(ledger.expires_at),
                key_ttl,
                self._retention_ms,
            ),
        )
        again = _str(reply[0]) == "ok" and len(reply) > 1  # a repeated operation id
        if _str(reply[0]) != "ok" or again:
            if _str(reply[0]) == "void" and pool is not None:  # given back already
                raise PoolDrawExpired(request_id, pool)
            if pool is not None and fresh:  # give the draw back: this open never happened
                yield _Eval(
                    "pool_return", self._pool_keys(pool), (draw, ledger.ceiling, 0, _text(now))
                )
            if again:
                return ledger_from_json(reply[1])
            raise _refusal(request_id, reply, [], op=(op_id, digest))
        return ledger_from_json(blob)

    def _children_steps(
        self,
        parent_id: str,
        request_ids: Sequence[str],
        ranks: Mapping[str, int],
        now: float,
        priorities: Sequence[str],
        ceiling: int | None,
        share: float | None,
        allocation: Mapping[str, int] | None,
        reserve: Mapping[str, int] | None,
        ttl: float,
        max_depth: int,
        op_id: str | None = None,
    ) -> _Steps[tuple[Ledger, list[Ledger]]]:
        op_id = check_op_id(op_id)
        args = check_children(
            parent_id, request_ids, now, priorities, ceiling, share, ttl, max_depth
        )
        digest = Digests.children(op_id, args, max_depth)
        now = args.now
        template = Ledger(
            args.request_ids[0],
            ranks,
            MAX_TOKENS,
            now,
            allocation=allocation,
            reserve=reserve,
            expires_at=now + args.ttl,
        )
        keys: list[str] = list(self._own_keys(args.parent_id))
        each: list[str | int] = []
        for request_id, rank in zip(args.request_ids, args.ranks, strict=True):
            keys += self._declared([request_id])[request_id]
            each += [request_id, rank]
        key_ttl = "0"
        if math.isfinite(args.ttl) and not math.isinf(self.retention_seconds):
            key_ttl = _ttl_ms(args.ttl + self.retention_seconds)
        reply = yield _Eval(
            "children",
            (*keys, self._feed_key),
            (
                op_id or "",
                digest,
                _text(now),
                args.max_depth,
                "" if args.ceiling is None else args.ceiling,
                "" if args.share is None else _text(args.share),
                _ledger_json(template, "", ""),
                key_ttl,
                _score(template.expires_at),
                *each,
            ),
        )
        code = _str(reply[0])
        if code == "ok":
            return ledger_from_json(reply[1]), [ledger_from_json(blob) for blob in reply[2:]]
        if code == "child":
            ids = args.request_ids
            label = ids[0] if len(ids) == 1 else f"{ids[0]} (+{len(ids) - 1})"
            raise ChildBudgetExceeded(
                args.parent_id, label, int(reply[1]), int(reply[2]), reason=_str(reply[3])
            )
        if code == "deep":
            raise TreeTooDeep(args.parent_id, int(reply[1]), args.max_depth)
        if code == "dup":
            raise DuplicateRequest(_str(reply[1]))
        raise _refusal(args.parent_id, reply, [], op=(op_id, digest))

    def _begin_steps(
        self,
        request_id: str,
        agent: str,
        context_tokens: int,
        output_tokens: int,
        now: float,
        lease_seconds: float,
        model: str | None = None,
        prices: tuple[int, int] | None = None,
        asked: int | None = None,
        wrap_up_tokens: int = 0,
        op_id: str | None = None,
    ) -> _Steps[tuple[Grant, Ledger]]:
        op_id = check_op_id(op_id)
        digest = Digests.begin(
            op_id, agent, context_tokens if asked is None else asked, wrap_up_tokens
        )
        pending: list[Exception] = []
        is_name = isinstance(agent, str) and is_text(agent)
        ctx = _tokens("context_tokens", context_tokens, pending)
        out = _tokens("output_tokens", output_tokens, pending)
        now = _time(now, pending)
        lease_seconds = _checked(check_seconds, "lease_seconds", lease_seconds, pending, 1.0)
        held = "" if asked is None else _tokens("input_tokens", asked, pending)
        reserve = 0  # inside the grant's output: the scripts account nothing for it
        if not pending and (type(wrap_up_tokens) is not int or wrap_up_tokens):
            try:
                reserve = check_wrap_up(agent, wrap_up_tokens, output_tokens)
            except ApportionError as exc:
                if not pending:
                    pending.append(exc)
        pin = pout = ""
        try:
            clean = check_prices(prices)
            if model is not None and (not isinstance(model, str) or not model):
                raise InvalidPrice("model", model, "a model is a non-empty name")
            if model is not None:
                check_name("model", model)
        except (InvalidPrice, InvalidArgument) as exc:
            if not pending:
                pending.append(exc)
            pin = pout = "!"
            model = None
        else:
            if clean is not None:
                pin, pout = str(clean[0]), str(clean[1])
        if pending:
            ctx = "!"
        lease = now + lease_seconds
        reply = yield _Eval(
            "begin",
            self._request_keys(request_id),
            (
                op_id or "",
                digest,
                agent if is_name else "",
                "1" if is_name else "0",
                ctx,
                out,
                _text(now),
                _text(lease),
                model if isinstance(model, str) else "",
                pin,
                pout,
                held,
            ),
        )
        if reply[0] not in _OK:
            if _str(reply[0]) == "cost":
                raise CostExceeded(
                    agent, int(reply[1]) / NANO, int(reply[2]) / NANO, model=model or None
                )
            raise _refusal(request_id, reply, pending, agent=agent, op=(op_id, digest))
        if len(reply) > 3:  # a repeated operation id: the first call's grant
            ctx, out, lease, model = reply[3], reply[4], float(_str(reply[5])), _str(reply[6])
        grant = Grant(
            request_id, agent, int(reply[2]), int(ctx), int(out), lease, model or None, reserve
        )
        return grant, ledger_from_json(reply[1])

    def _extend_steps(
        self,
        request_id: str,
        grant: Grant,
        output_tokens: int,
        context_tokens: int,
        now: float,
        lease_seconds: float,
        op_id: str | None = None,
    ) -> _Steps[tuple[Grant, Ledger]]:
        op_id = check_op_id(op_id)
        digest = Digests.extend(op_id, grant)
        pending: list[Exception] = []
        out = _tokens("output_tokens", output_tokens, pending)
        ctx = _tokens("context_tokens", context_tokens, pending)
        now = _time(now, pending)
        lease_seconds = _checked(check_seconds, "lease_seconds", lease_seconds, pending, 1.0)
        if pending:
            out = "!"
        ok, grant_id, agent = _grant_args(request_id, grant)
        reply = yield _Eval(
            "extend",
            self._request_keys(request_id),
            (
                op_id or "",
                digest,
                out,
                ctx,
                _text(now),
                _text(now + lease_seconds),
                ok,
                grant_id,
                agent,
            ),
        )
        if reply[0] not in _OK:
            raise _refusal(
                request_id, reply, pending, grant=grant, reason="extension", op=(op_id, digest)
            )
        state = ledger_from_json(reply[1])
        if len(reply) > 2:  # a repeated operation id: the grant as the first call grew it
            grown = Grant(
                request_id,
                grant.agent,
                int(grant_id),
                int(reply[2]),
                int(reply[3]),
                float(_str(reply[4])),
                grant.model,
            )
        else:
            grown = state.grants[int(grant_id)]
        if isinstance(grant, Grant) and grant.wrap_up_tokens:  # not in the state: carried over
            grown = grown._replace(wrap_up_tokens=grant.wrap_up_tokens)
        return grown, state

    def _finish_steps(
        self,
        request_id: str,
        grant: Grant,
        input_tokens: int,
        output_tokens: int,
        now: float,
        truncated: bool,
        allocation: Mapping[str, int] | None,
        op_id: str | None = None,
    ) -> _Steps[Ledger]:
        op_id = check_op_id(op_id)
        digest = Digests.finish(op_id, grant, input_tokens, output_tokens, truncated)
        pending: list[Exception] = []
        inp = _tokens("input_tokens", input_tokens, pending)
        out = _tokens("output_tokens", output_tokens, pending)
        if allocation is not None and not isinstance(allocation, Mapping) and not pending:
            pending.append(
                InvalidArgument("allocation", allocation, "a mapping of agent names to tokens")
            )
        now = _time(now, pending)
        if pending:
            inp = "!"
        ok, grant_id, agent = _grant_args(request_id, grant)
        args: list[str | int] = [
            op_id or "",
            digest,
            inp,
            out,
            _text(now),
            "1" if truncated else "0",
            ok,
            grant_id,
            agent,
        ]
        plan: list[object] = []
        if allocation and not pending:
            for name, tokens in allocation.items():
                plan.append(name)
                is_name = isinstance(name, str) and is_text(name)
                args += ["1" if is_name else "0", name if is_name else "", "0"]
                args[-1] = _tokens(f"allocation[{name}]", tokens, pending)
                if pending:
                    break
        reply = yield _Eval("finish", self._request_keys(request_id), tuple(args))
        if reply[0] not in _OK:
            raise _refusal(request_id, reply, pending, grant=grant, plan=plan, op=(op_id, digest))
        return ledger_from_json(reply[1])

    def _release_steps(
        self, request_id: str, grant: Grant, now: float, reason: str, op_id: str | None = None
    ) -> _Steps[Ledger]:
        op_id = check_op_id(op_id)
        digest = Digests.release(op_id, grant, reason)
        pending: list[Exception] = []
        now = _time(now, pending)
        reason = _checked(check_name, "reason", reason, pending, "")
        ok, grant_id, agent = _grant_args(request_id, grant)
        reply = yield _Eval(
            "release",
            self._request_keys(request_id),
            (op_id or "", digest, _text(now), reason, ok, grant_id, agent, "1" if pending else "0"),
        )
        if reply[0] not in _OK:
            raise _refusal(request_id, reply, pending, grant=grant, op=(op_id, digest))
        return ledger_from_json(reply[1])

    def _close_steps(
        self,
        request_id: str,
        now: float,
        status: str,
        outcome: float | None,
        op_id: str | None = None,
    ) -> _Steps[Ledger]:
        op_id = check_op_id(op_id)
        digest = Digests.close(op_id, status, outcome)
        pending: list[Exception] = []
        status = _checked(lambda _, value: check_status(value), "status", status, pending, "")
        outcome = _checked(lambda _, value: check_outcome(value), "outcome", outcome, pending, None)
        now = _time(now, pending)
        score = "" if outcome is None or pending else _text(outcome)
        args = (
            op_id or "",
            digest,
            _text(now),
            str(status),
            score,
            "1" if pending else "0",
            self._retention_ms,
        )
        own = self._own_keys(request_id)
        parent = request_id.rpartition(CHILD_SEP)[0]
        declared = self._declared([parent] if parent else [])  # its likely parent: no read
        for _ in range(_TREE_ATTEMPTS):
            ids = list(declared)
            keys = [*own, *(k for i in ids for k in declared[i])]
            reply = yield _Eval("close", (*keys, self._feed_key), (*args, *ids))
            if _str(reply[0]) != "tree":
                break
            # the tree holds requests not declared (opened since, or deeper): read them
            yield from self._read_tree([_str(i) for i in reply[1:]], declared)
        else:
            raise self._tree_changing(request_id, "close")
        if reply[0] not in _OK:
            raise _refusal(request_id, reply, pending, op=(op_id, digest))
        state = ledger_from_json(reply[1])
        pool, draw, free, overflow = _pool_debt(reply[1])
        if pool:
            yield self._give_back(pool, draw, free, overflow, now)
        return state

    def _give_back(self, pool: str, draw: str, free: int, overflow: str, now: float) -> _Eval:
        return _Eval("pool_return", self._pool_keys(pool), (draw, free, overflow, _text(now)))

    def _get_steps(self, request_id: str) -> _Steps[Ledger]:
        raw = yield _Cmd(("GET", self._keys(request_id)[0]))
        if raw is None:
            raise UnknownRequest(request_id)
        return ledger_from_json(raw)

    def _events_steps(self, request_id: str) -> _Steps[list[Event]]:
        raws = yield _Cmd(("LRANGE", self._keys(request_id)[1], 0, -1))
        if not raws:
            raise UnknownRequest(request_id)
        return [_event(raw) for raw in raws]

    def _feed_steps(
        self, after: object, prefix: object, limit: object, timeout: object
    ) -> _Steps[FeedPage]:
        start, prefix, limit, seconds = check_feed_args(after, prefix, limit, timeout)
        start = "0-0" if start is None else start
        if not _STREAM_ID.match(start):
            raise InvalidArgument("after", start, "a cursor this feed returned")
        args: tuple[str | int, ...] = ("XREAD", "COUNT", limit)
        if seconds > 0:  # a blocked read must end before the socket's timeout
            wait = min(seconds, self._options["socket_timeout"] * 0.8)
            args += ("BLOCK", max(1, int(wait * 1000)))
        reply = yield _Cmd((*args, "STREAMS", self._feed_key, start))
        events: list[FeedEvent] = []
        cursor = start
        for entry_id, fields in _stream_entries(reply):
            cursor = entry_id
            rid = _str(fields[b"r"])
            if rid.startswith(prefix):
                events.append(
                    FeedEvent(
                        entry_id,
                        rid,
                        _event(fields[b"e"]),
                        _str(fields[b"s"]),
                        int(fields[b"g"]),
                        int(fields[b"u"]),
                        int(fields[b"f"]),
                        int(fields[b"c"]),
                    )
                )
        return FeedPage(tuple(events), cursor)

    def _note_steps(self, request_id: str, event: object) -> _Steps[None]:
        note = check_note(event)
        agent = note.agent or ""
        args = (
            "",
            "",
            _text(note.at),
            agent,
            note.grant_id,
            note.context_tokens,
            note.output_tokens,
            note.kind,
            note.note,
        )
        reply = yield _Eval("note", self._request_keys(request_id), args)
        if reply[0] not in _OK:
            raise _refusal(request_id, reply, [], agent=agent)

    def note(self, request_id: str, event: Event) -> None:
        """Append a feed-only event of a request (one script: the request's state with it)."""
        if self._local_store(request_id) is not None:
            assert self._local is not None
            self._local.note(request_id, event)
            return
        self._run(self._note_steps(request_id, event))

    async def anote(self, request_id: str, event: Event) -> None:
        """Async :meth:`note`."""
        if self._local_store(request_id) is not None:
            self.note(request_id, event)
            return
        await self._arun(self._note_steps(request_id, event))

    def _cursor_steps(self) -> _Steps[str]:
        reply = yield _Cmd(("XREVRANGE", self._feed_key, "+", "-", "COUNT", 1))
        return _str(reply[0][0]) if reply else "0-0"

    def _open_requests_steps(self, prefix: object) -> _Steps[list[str]]:
        if not isinstance(prefix, str):
            raise InvalidArgument("prefix", prefix, "the start of the request ids to list")
        # the reap index of every bucket, in one round trip (no scan of the keys)
        replies = yield [
            _Cmd(("ZRANGE", f"{self.prefix}:{{b{b}}}:open", 0, -1)) for b in range(self.buckets)
        ]
        ids = {_str(rid) for reply in replies for rid in reply}
        if self._local is not None:
            ids.update(self._local.open_requests(prefix))
        return sorted(rid for rid in ids if rid.startswith(prefix))

    def feed(
        self,
        after: str | None = None,
        *,
        prefix: str = "",
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> FeedPage:
        """The feed's events after ``after`` (``XREAD``, blocking up to ``timeout``).

        A blocked read ends before the socket timeout (an empty page: read again).
        """
        return self._run(self._feed_steps(after, prefix, limit, timeout))

    async def afeed(
        self,
        after: str | None = None,
        *,
        prefix: str = "",
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> FeedPage:
        """Async :meth:`feed`."""
        return await self._arun(self._feed_steps(after, prefix, limit, timeout))

    def feed_cursor(self) -> str:
        """The newest event's cursor (its stream entry id; ``0-0`` for an empty feed)."""
        return self._run(self._cursor_steps())

    async def afeed_cursor(self) -> str:
        """Async :meth:`feed_cursor`."""
        return await self._arun(self._cursor_steps())

    def open_requests(self, prefix: str = "") -> list[str]:
        """The ids of the open requests that start with ``prefix``, sorted (from the indexes)."""
        return self._run(self._open_requests_steps(prefix))

    async def aopen_requests(self, prefix: str = "") -> list[str]:
        """Async :meth:`open_requests`."""
        return await self._arun(self._open_requests_steps(prefix))

    def _reap_steps(self, now: float) -> _Steps[Reaped]:
        now = check_time("now", now)
        now_s = _text(now)
        settled = 0
        expired: list[str] = []
        owed: list[_Eval | _Cmd] = []
        todo = [f"{self.prefix}:{{b{b}}}:open" for b in range(self.buckets)]
        wanting = 0  # rounds in a row that met requests not declared
        while todo:
            # The due requests of each bucket and their trees, read first: the script gets
            # every key it may touch declared (what Redis Cluster requires).
            dues = yield [_Cmd(("ZRANGEBYSCORE", ikey, "-inf", now_s, "LIMIT", 0, _REAP_BATCH))
                          for ikey in todo]  # fmt: skip
            todo = [ikey for ikey, due in zip(todo, dues, strict=True) if due]
            if not todo:
                break
            declared: dict[str, tuple[str, str, str]] = {}
            yield from self._read_tree([_str(rid) for due in dues for rid in due], declared)
            # One script over every bucket (a standalone server allows it); a cluster client
            # would send one call per bucket instead (the script loops over its KEYS).
            ids = list(declared)
            keys = [*todo, *(k for i in ids for k in declared[i])]
            args: tuple[str | int, ...] = (
                "",
                "",
                now_s,
                self._retention_ms,
                _REAP_BATCH,
                len(todo),
            )
            reply = yield _Eval("reap", (*keys, self._feed_key), (*args, *ids))
            settled += int(reply[0])
            full = int(reply[1])
            again = {int(k) - 1 for k in reply[2 : 2 + full]}
            at = 2 + full
            closed = int(reply[at])
            expired += (_str(rid) for rid in reply[at + 1 : at + 1 + closed])
            at += 1 + closed
            wanted = [_str(rid) for rid in reply[at + 1 : at + 1 + int(reply[at])]]
            for blob in reply[at + 1 + len(wanted) :]:
                owed.append(self._give_back(*_pool_debt(blob), now))
            if wanted:  # due since the read, or their trees changed: read them again
                wanting += 1
                if wanting >= _TREE_ATTEMPTS:
                    raise self._tree_changing(wanted[0], "reap")
                buckets = {self._keys(rid)[2] for rid in wanted}
                again |= {i for i, ikey in enumerate(todo) if ikey in buckets}
            else:
                wanting = 0
            todo = [todo[i] for i in sorted(again)]
        if owed:
            yield owed
        yield from self._reconcile_steps(now)
        return Reaped(settled, tuple(expired))

    def _declared(self, ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """The ledger, event and operation keys of requests ``ids``, by id (declared)."""
        return {rid: (*self._keys(rid)[:2], self._ops_key(rid)) for rid in ids}

    def _read_tree(
        self, ids: Sequence[str], declared: dict[str, tuple[str, str, str]]
    ) -> _Steps[None]:
        """Declare ``ids`` and the rest of their trees (parents, open children, theirs ...).

        Reads the ledgers a level at a time (one round trip each), adding to ``declared``
        every request a close or a reap of ``ids`` may reach.
        """
        level = [rid for rid in dict.fromkeys(ids) if rid not in declared]
        seen: set[str] = set()
        while level:
            declared.update(self._declared(level))
            raws = yield [_Cmd(("GET", declared[rid][0])) for rid in level]
            seen.update(level)
            found: list[str] = []
            for raw in raws:
                if raw is None:
                    continue
                ledger = ledger_from_json(raw)
                found += [r for r in (ledger.parent_id, *ledger.children) if r]
            level = [rid for rid in dict.fromkeys(found) if rid not in seen]

    def _tree_changing(self, request_id: str, what: str) -> StoreUnavailable:
        """The error of a tree that changed under every attempt of ``what`` (none applied)."""
        return StoreUnavailable(
            self.url,
            f"the request tree of {request_id!r} kept changing during {_TREE_ATTEMPTS} "
            f"attempts to {what} it (children opening all the while); nothing was changed",
        )

    def _reconcile_steps(self, now: float) -> _Steps[None]:
        """Settle the pool draws that their requests cannot settle themselves.

        * A closed request whose give-back never ran (a crash or a cut between the close and
          the give-back): what it left unused goes back, once (as at close).
        * A draw whose request never opened (the connection cut after the draw, the process
          killed between the two steps, the server restarted), once ``now`` passes its open
          deadline by ``clock_skew_seconds``: ``pool_void.lua`` marks it void in the
          request's own slot, atomically with respect to the open (which refuses a void
          draw), then it is given back in full. Its tokens were never used, and never will be.
        * A draw whose request is open stays out until the request closes.
        """
        names = sorted(_str(n) for n in (yield _Cmd(("SMEMBERS", self._registry))))
        if not names:
            return
        tables = yield [_Cmd(("HGETALL", self._pool_keys(name)[1])) for name in names]
        entries: list[tuple[str, str, int, float]] = []  # pool, draw, tokens, open deadline
        for name, table in zip(names, tables, strict=True):
            for draw, value in table.items():
                _, count, *due = _str(value).split("|")  # window charged|tokens|deadline
                deadline = float(due[0]) if due else -math.inf  # older records have none
                entries.append((name, _str(draw), int(count), deadline))
        if not entries:
            return
        states = yield [
            _Cmd(("GET", self._keys(draw.rsplit("#", 1)[0])[0])) for _, draw, _, _ in entries
        ]
        calls: list[_Eval | _Cmd] = []
        lapsed: list[tuple[str, str, int]] = []
        for (name, draw, tokens, deadline), raw in zip(entries, states, strict=True):
            if raw is not None and _pool_debt(raw)[1] == draw:
                if ledger_from_json(raw).status != OPEN:
                    calls.append(self._give_back(*_pool_debt(raw), now))
            elif now >= deadline + self.clock_skew_seconds:
                lapsed.append((name, draw, tokens))
        if lapsed:
            replies = yield [
                _Eval(
                    "pool_void",
                    (self._keys(draw.rsplit("#", 1)[0])[0], self._marker_key(draw)),
                    (draw, self._retention_ms),
                )
                for _, draw, _ in lapsed
            ]
            for (name, draw, tokens), reply in zip(lapsed, replies, strict=True):
                if _str(reply[0]) == "void":
                    calls.append(self._give_back(name, draw, tokens, "0", now))
                elif ledger_from_json(reply[1]).status != OPEN:
                    calls.append(self._give_back(*_pool_debt(reply[1]), now))
        if calls:
            yield calls

    # ------------------------------------------------------------------ pools

    def _define_steps(self, pool: Pool) -> _Steps[None]:
        if not isinstance(pool, Pool):
            raise TypeError(f"define_pool takes an apportion.pools.Pool, not {pool!r}")
        key = self._pool_keys(pool.name)[0]
        yield [
            _Cmd(
                (
                    "HSET",
                    key,
                    "name",
                    pool.name,
                    "capacity",
                    pool.capacity,
                    "window_seconds",
                    _text(pool.window_seconds),
                    "reserve",
                    json.dumps(dict(pool.reserve)),
                )
            ),
            _Cmd(("SADD", self._registry, pool.name)),
        ]

    def _pool_steps(self, name: str, now: float) -> _Steps[PoolStatus]:
        now = check_time("now", now)
        pool_key, draws_key = self._pool_keys(check_pool_name(name))
        fields, draws = yield [_Cmd(("HGETALL", pool_key)), _Cmd(("HVALS", draws_key))]
        if not fields:
            raise UnknownPool(name)
        f = {_str(k): _str(v) for k, v in fields.items()}
        pool = Pool(name, int(f["capacity"]), float(f["window_seconds"]), json.loads(f["reserve"]))
        window = int(f["window"]) if "window" in f else None
        current = current_window(pool, window, now)
        open_draws = sum(1 for d in draws if int(_str(d).split("|", 1)[0]) == current)
        return pool_status(
            pool, window, int(f.get("drawn", 0)), open_draws, int(f.get("overflow", 0)), now
        )

    def define_pool(self, pool: Pool) -> None:
        """Create a shared pool, or change its configuration (keeping what is drawn)."""
        self._run(self._define_steps(pool))

    def get_pool(self, name: str, now: float) -> PoolStatus:
        """A shared pool's status at ``now``."""
        return self._run(self._pool_steps(name, now))

    async def adefine_pool(self, pool: Pool) -> None:
        """Async :meth:`define_pool`."""
        await self._arun(self._define_steps(pool))

    def _names_steps(self, prefix: str) -> _Steps[list[str]]:
        names = yield _Cmd(("SMEMBERS", self._registry))
        return sorted(n for n in (_str(m) for m in names) if n.startswith(prefix))

    def pool_names(self, prefix: str = "") -> list[str]:
        """The names of the defined pools that start with ``prefix``, sorted."""
        return self._run(self._names_steps(prefix))

    async def apool_names(self, prefix: str = "") -> list[str]:
        """Async :meth:`pool_names`."""
        return await self._arun(self._names_steps(prefix))

    async def aget_pool(self, name: str, now: float) -> PoolStatus:
        """Async :meth:`get_pool`."""
        return await self._arun(self._pool_steps(name, now))

    # ------------------------------------------------------------------ policy state

    def _state_key(self, key: str) -> str:
        return f"{self.prefix}:state:{key}"

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
        op_id: str | None = None,
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
            op_id,
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
        op_id: str | None = None,
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
                op_id=op_id,
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
        local = self._local_store(request_id)
        if local is not None:
            return local.extend(
                request_id, grant, output_tokens, context_tokens, now, lease_seconds, op_id=op_id
            )
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
                op_id=op_id,
            )
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
        local = self._local_store(request_id)
        if local is not None:
            return local.release(request_id, grant, now, reason=reason, op_id=op_id)
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
        local = self._local_store(request_id)
        if local is not None:
            return local.close(request_id, now, status=status, outcome=outcome, op_id=op_id)
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
        op_id: str | None = None,
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
                op_id=op_id,
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
                op_id,
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
        op_id: str | None = None,
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
                op_id=op_id,
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
                op_id,
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
        op_id: str | None = None,
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
            op_id,
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
        op_id: str | None = None,
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
                op_id=op_id,
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
        if self._local_store(request_id) is not None:
            return self.extend(
                request_id, grant, output_tokens, context_tokens, now, lease_seconds, op_id=op_id
            )
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
        if self._local_store(request_id) is not None:
            return self.finish(
                request_id,
                grant,
                input_tokens,
                output_tokens,
                now,
                truncated=truncated,
                allocation=allocation,
                op_id=op_id,
            )
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
        if self._local_store(request_id) is not None:
            return self.release(request_id, grant, now, reason=reason, op_id=op_id)
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
        if self._local_store(request_id) is not None:
            return self.close(request_id, now, status=status, outcome=outcome, op_id=op_id)
        return await self._arun(self._close_steps(request_id, now, status, outcome, op_id))

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


async def _close_at_shutdown(client: Any) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await client.aclose()


def _queue(pipe: Any, call: _Eval | _Cmd) -> None:
    if isinstance(call, _Cmd):
        pipe.execute_command(*call.args)
    else:
        pipe.execute_command("EVALSHA", _SHAS[call.script], len(call.keys), *call.keys, *call.args)


def _stream_entries(reply: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """The entries of an ``XREAD`` reply of one stream: ``(id, fields)`` (any reply shape)."""
    if not reply:
        return []
    streams = list(reply.values()) if isinstance(reply, dict) else [s[1] for s in reply]
    entries: list[tuple[str, dict[bytes, bytes]]] = []
    for stream in streams:
        for entry in stream:
            entry_id, raw = entry[0], entry[1]
            if isinstance(raw, dict):
                fields = {_bytes(k): _bytes(v) for k, v in raw.items()}
            else:
                fields = {_bytes(k): _bytes(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}
            entries.append((_str(entry_id), fields))
    return entries


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _score(value: float) -> str:
    return "+inf" if value == math.inf else repr(float(value))
