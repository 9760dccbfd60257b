"""The store contract: where ledgers live, and the only place they change.

A store keeps the ledger of every open request (and, later, shared pools) and carries out
each ledger operation atomically: the controller never reads, modifies and writes back.
Every store passes the same conformance suite, :mod:`apportion.testing.store_conformance`.

Contract (every implementation must keep it):

* ``open`` creates the ledger of a new request; a second ``open`` of the same id while the
  first is open raises :class:`~apportion.errors.DuplicateRequest`.
* ``begin``, ``extend``, ``finish``, ``release`` and ``close`` apply the operation of the
  same name of :class:`~apportion.ledger.Ledger` atomically, with exactly its validation,
  errors and events, and return the state after it. Before applying an operation, the
  store releases every grant of that request whose lease ended at or before ``now``.
* A refused operation raises an :class:`~apportion.errors.ApportionError` and changes
  nothing. An operation on an id the store does not hold raises
  :class:`~apportion.errors.UnknownRequest`; on a closed request still held,
  :class:`~apportion.errors.RequestClosed`.
* ``get`` returns the current state, also for a recently closed request (how long closed
  requests stay readable is the store's retention, at least until ``reap`` drops them).
* ``reap_expired(now)`` expires ended leases in every request, closes with status
  ``expired`` the requests whose time to live has passed, and returns a :class:`Reaped`:
  how many grants and requests it settled, and the ids of the requests it closed (so their
  usage can still reach telemetry). ``reap(now)`` returns only the count. A store never
  runs them from a background thread of its own: the controller runs them (lazily, on its
  own operations, and from :meth:`~apportion.controller.Controller.start_reaper`).
* ``finish`` of a grant whose lease expired (its tokens already returned) still records
  the usage, late: all of it as over-use, charged to the free pool and beyond it as
  ``overflow`` (event note ``late``), so usage is never dropped. Renewing a lease is
  ``extend`` by zero tokens.
* Operations are safe to call from many threads and asyncio tasks at once; the async
  variants (``abegin`` ...) have the same meaning as the sync ones.
* Shared pools (optional): ``define_pool`` creates a named pool of tokens per window,
  ``open(..., pool=NAME)`` draws the request's ceiling from it atomically (refusing with
  :class:`~apportion.pools.PoolExhausted` and changing nothing when the window cannot
  cover it), and ``close`` (or ``reap``, for an expired request) returns what the request
  left unused, exactly once. The pool's window never goes back: a draw whose ``now`` falls
  in an earlier window than the newest one drawn from is charged to that newest window,
  and unused tokens return only to the window their draw was charged to, while it is still
  the pool's current one; so no window grants more than its capacity, under any
  interleaving and any clock skew (see :mod:`apportion.pools` for what skew does). A store
  that draws and opens in separate steps gives back in full, from ``reap``, a draw whose
  request never opened once its open deadline has passed (plus its clock skew bound), and
  then refuses that request's open with :class:`~apportion.errors.PoolDrawExpired`: the
  same tokens are never used twice. :mod:`apportion.testing.pool_conformance` checks it.
* Wrap-up reserve: ``begin(..., wrap_up_tokens=N)`` returns a grant carrying
  ``wrap_up_tokens == N``, and every grant ``extend`` returns from it carries it too. The
  reserve is inside the grant's ``output_tokens`` (the working call is capped at
  ``output_tokens - N``; the rest is kept for handing back a partial result), so nothing
  in the accounting changes: a store need not keep ``N`` in its state (the state's view of
  open grants may show 0), only hand it back on the grants it returns. ``N`` that is not a
  token count raises :class:`~apportion.errors.InvalidTokenCount`; ``N`` above
  ``output_tokens`` raises :class:`~apportion.errors.WrapUpTooLarge` (as a bad count,
  checked before the request's state); either changes nothing. The keyword is passed only
  when used (``N > 0``), so a store without it keeps working for calls without a reserve.
* Cost: ``open(..., ceiling_usd=N)`` sets a cost ceiling in nano-USD and
  ``begin(..., model=M, prices=(IN, OUT))`` prices a grant (nano-USD per token); the store
  accounts and refuses exactly as :class:`~apportion.ledger.Ledger` does (see its module
  docstring). The keywords are passed only when used, so a store without cost support
  keeps working for requests without it.
* Features: ``open(..., features=F)`` and ``open_children(..., features=F)`` keep what
  is known of a request up front (names to numbers, strings, booleans or null; see
  :mod:`apportion.features`) with it, as the note of its ``open`` event, a JSON object
  (``Ledger(..., features=F)``). ``features(request_id)`` returns them (``{}`` for none),
  also for a closed request still held, and ``get_with_features(request_id)`` the state
  and the features together (what a handle on the request reads first: it plans with
  them). Features a store cannot keep raise :class:`~apportion.errors.InvalidArgument`
  and change nothing; they are not part of an operation's digest. The keyword is passed
  only when used, so a store without it keeps working for requests without features.
* Child budgets: ``open_children(parent_id, request_ids, ranks, now, priorities=...,
  ceiling=..., share=...)`` opens one child request per id (a ledger like ``open``'s, with
  ``parent_id``, ``depth`` and ``rank`` set) and draws their ceilings from the parent in
  the same atomic step (returning the parent's state and the children's), as
  :meth:`~apportion.ledger.Ledger.split` decides: with ``ceiling`` alone each child draws
  exactly that or all are refused
  (:class:`~apportion.errors.ChildBudgetExceeded`, nothing changed); with ``share`` the
  children split that fraction of what the parent can spare their lowest priority,
  weighted by priority. No read-modify-write by the caller: the split, the draws and the
  opens are one step, so concurrent callers never draw more than the parent can spare.
  ``max_depth`` bounds the tree (:class:`~apportion.errors.TreeTooDeep`). The children
  take the plan given (``allocation``, ``reserve``); a reserve larger than a child's drawn
  ceiling is dropped for that child. Closing a child (``close``, or ``reap`` when it
  expires) settles its draw into its parent exactly once: its usage (and overflow) is
  consumed by the parent, the rest returns to the parent's free pool at once. Closing a
  request first closes its open children, depth first, with the same status; a parent
  whose child ledger is gone returns that child's draw whole at its own close. All
  ledgers of one tree live together (the Redis store keeps them in one hash slot).
* Event feed (optional): every event a ledger records (``open``, ``begin``, ``extend``,
  ``finish``, ``release``, ``expire``, ``close``, ``child``, ``child_close``), in every
  request, whether by an operation, a refused operation's lease expiry, a tree's close or
  ``reap``, is appended to the store's feed in the same atomic step as the change, as a
  :class:`~apportion.stores.feed.FeedEvent` carrying the state after it. ``feed(after,
  prefix=..., limit=..., timeout=...)`` returns the events after cursor ``after`` (``None``:
  from the oldest kept) whose request id starts with ``prefix``, oldest first, and the
  cursor to read from next; with none yet it waits up to ``timeout`` seconds for one.
  Cursors increase with every event (whole numbers joined by ``-``, ordered by
  :func:`~apportion.stores.feed.cursor_key`); a reader passing back each page's cursor sees every
  later event once, in order, per request in the order of the request's own ``events``
  (unless the feed, bounded, dropped them first). ``feed_cursor()`` is the newest cursor
  (read from it to see only what comes next). ``note(request_id, event)`` appends a
  feed-only event, a note (kind ``refused``: a begin or an extension the controller
  refused, its note saying which; kind ``fitted``: messages of a call fitted away), with
  the request's state as it is, and changes no ledger; an unknown request or agent raises
  as ``begin`` would. The store keeps the note with the request (as long as its events)
  in the same step, and ``history(request_id)`` returns the request's events with its
  notes in their places (a page drawn later counts the refusals made before it). The feed
  is shared by every process on the store (on Redis, a stream), so a reader sees the
  changes made by every replica.
* Exactly-once operations: ``open``, ``begin``, ``extend``, ``finish``, ``release``,
  ``close`` and ``open_children`` (and their async twins) take an optional keyword
  ``op_id``, an operation id (1 to 255 printable ASCII characters, no spaces; see
  :func:`check_op_id`). The store records the outcome of an operation that carried one in
  the same atomic step as its change, under the request it applies to (for
  ``open_children``, the parent). A later call with the same id on the same request
  changes nothing (no lease expiry, no event) and returns the first outcome: the same
  grant (id, tokens, lease end) for ``begin``, the grown grant for ``extend``, and the
  request's state as it is now (for ``open_children``, the parent's and the children's).
  The same id with other arguments, or for another operation, raises
  :class:`~apportion.errors.OperationConflict` and changes nothing. The arguments compared
  (:func:`op_digest`) are what the caller asks for, not what a policy decided for it nor
  clock times, so a retry whose policy decides again still matches: ``open``: the agents,
  ceiling, pool, pool class and cost ceiling; ``begin``: the agent, the input in hand and
  the wrap-up reserve; ``extend``: the grant; ``finish``: the grant and its usage and
  truncation; ``release``: the grant and reason; ``close``: status and outcome;
  ``open_children``: the children's ids and classes, ceiling, share and depth bound. A
  refused operation changes nothing and records nothing: its id may be used again (a
  retry runs it anew). Ids expire with their request: they are kept as long as the
  request's state (its retention after close: ``keep_closed`` on memory, the keys' TTL on
  Redis) and forgotten when it is, or when a new request of the same id replaces a closed
  one. A pool draw made by a pooled ``open`` is recorded under the draw (its key derives
  from the open's id) and its give-back at ``close`` settles it once, so a repeated open or
  close neither draws nor gives back twice.
* Open requests (optional): ``open_requests(prefix)`` lists the ids of the open requests
  whose id starts with ``prefix``, sorted, from an index the store keeps (no scan of every
  key).
"""

from __future__ import annotations

import abc
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from apportion.errors import InvalidArgument
from apportion.features import features_from
from apportion.ledger import (
    Event,
    Grant,
    check_ceiling,
    check_name,
    check_seconds,
    check_share,
    check_time,
)
from apportion.ledger_view import LedgerView as LedgerView  # re-exported: its old home

if TYPE_CHECKING:
    from apportion.pools import Pool, PoolStatus
    from apportion.stores.feed import FeedPage


@dataclass(frozen=True, slots=True)
class Reaped:
    """What :meth:`Store.reap_expired` settled.

    Attributes:
        settled: grants and requests it settled.
        expired: ids of the requests it closed as ``expired``.
    """

    settled: int
    expired: tuple[str, ...] = ()

    def __add__(self, other: Reaped) -> Reaped:
        return Reaped(self.settled + other.settled, self.expired + other.expired)


MAX_DEPTH_LIMIT = 256
"""Deepest ``max_depth`` a store accepts for request trees."""


@dataclass(frozen=True, slots=True)
class ChildrenArgs:
    """The checked arguments of :meth:`Store.open_children` (see :func:`check_children`)."""

    parent_id: str
    request_ids: tuple[str, ...]
    ranks: tuple[int, ...]
    now: float
    ceiling: int | None
    share: float | None
    ttl: float
    max_depth: int


def check_children(
    parent_id: object,
    request_ids: object,
    now: object,
    priorities: object,
    ceiling: object,
    share: object,
    ttl: object,
    max_depth: object,
) -> ChildrenArgs:
    """Check the arguments of :meth:`Store.open_children`, in one order for every store.

    Raises:
        InvalidArgument: bad ids (none, repeated, not names), priorities, share, depth.
        InvalidCeiling: a ceiling that is not a positive token count.
    """
    from apportion.pools import PRIORITY_RANKS, check_priority

    parent = check_name("parent_id", parent_id)
    if isinstance(request_ids, str) or not isinstance(request_ids, Sequence) or not request_ids:
        raise InvalidArgument("request_ids", request_ids, "a non-empty list of request ids")
    ids = tuple(check_name("request_ids", r) for r in request_ids)
    if len(set(ids)) != len(ids) or parent in ids:
        raise InvalidArgument("request_ids", list(ids), "the ids must differ, and from the parent")
    if isinstance(priorities, str) or not isinstance(priorities, Sequence):
        raise InvalidArgument("priorities", priorities, "one priority class per child")
    if len(priorities) != len(ids):
        raise InvalidArgument(
            "priorities", priorities, f"one priority class per child ({len(ids)})"
        )
    ranks = tuple(PRIORITY_RANKS[check_priority(p)] for p in priorities)
    when = check_time("now", now)
    cap = None if ceiling is None else check_ceiling(ceiling)
    part = None if share is None else check_share(share)
    if cap is None and part is None:
        raise InvalidArgument("ceiling", None, "a child needs a ceiling or a share")
    seconds = check_seconds("ttl", ttl)
    if type(max_depth) is not int or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise InvalidArgument("max_depth", max_depth, f"an integer in [1, {MAX_DEPTH_LIMIT}]")
    return ChildrenArgs(parent, ids, ranks, when, cap, part, seconds, max_depth)


_OP_ID = re.compile(r"^[\x21-\x7e]{1,255}$")


def check_op_id(op_id: object) -> str | None:
    """An operation id as given (``None``: none), checked.

    Raises:
        InvalidArgument: not 1 to 255 printable ASCII characters without spaces.
    """
    if op_id is None:
        return None
    if not isinstance(op_id, str) or not _OP_ID.match(op_id):
        raise InvalidArgument(
            "op_id", op_id, "an operation id is 1 to 255 printable ASCII characters, no spaces"
        )
    return op_id


def op_digest(operation: str, *parts: object) -> str:
    """What a repeated operation id is compared on: ``OPERATION:HASH`` of ``parts``.

    ``parts`` are the arguments a retry must repeat (see the module docstring); the
    operation's name stays readable, so a conflict can say what the id was first used for.
    """
    try:
        text = repr(parts)
    except ValueError:  # an integer past 4,300 digits
        text = repr(_plain(parts))
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=10)
    return f"{operation}:{digest.hexdigest()}"


def _grant_key(grant: object) -> tuple[object, object]:
    """What identifies a grant in an operation's digest: its id and agent."""
    return getattr(grant, "grant_id", None), getattr(grant, "agent", None)


class Digests:
    """Each operation's :func:`op_digest`, one definition for every store.

    Each returns ``""`` when ``op_id`` is ``None`` (nothing is hashed then).
    """

    @staticmethod
    def open(
        op_id: str | None,
        ranks: Mapping[str, int],
        ceiling: int,
        pool: str | None,
        pool_priority: str,
        ceiling_usd: float | None,
    ) -> str:
        """Of ``open``: the agents, the ceilings and the pool."""
        if op_id is None:
            return ""
        return op_digest("open", sorted(ranks.items()), ceiling, pool, pool_priority, ceiling_usd)

    @staticmethod
    def children(op_id: str | None, args: ChildrenArgs, max_depth: int) -> str:
        """Of ``open_children``: the children and their shares."""
        if op_id is None:
            return ""
        return op_digest(
            "open_children", args.request_ids, args.ranks, args.ceiling, args.share, max_depth
        )

    @staticmethod
    def begin(op_id: str | None, agent: object, held: object, wrap_up_tokens: object) -> str:
        """Of ``begin``: the agent, the input it holds, the wrap-up reserve."""
        return "" if op_id is None else op_digest("begin", agent, held, wrap_up_tokens)

    @staticmethod
    def extend(op_id: str | None, grant: object) -> str:
        """Of ``extend``: the grant."""
        return "" if op_id is None else op_digest("extend", *_grant_key(grant))

    @staticmethod
    def finish(
        op_id: str | None,
        grant: object,
        input_tokens: object,
        output_tokens: object,
        truncated: bool,
    ) -> str:
        """Of ``finish``: the grant and its usage."""
        if op_id is None:
            return ""
        return op_digest("finish", *_grant_key(grant), input_tokens, output_tokens, bool(truncated))

    @staticmethod
    def release(op_id: str | None, grant: object, reason: str) -> str:
        """Of ``release``: the grant and the reason."""
        return "" if op_id is None else op_digest("release", *_grant_key(grant), reason)

    @staticmethod
    def close(op_id: str | None, status: object, outcome: object) -> str:
        """Of ``close``: the status and the outcome."""
        return "" if op_id is None else op_digest("close", status, outcome)


def _plain(value: object) -> object:
    """``value`` with its integers in hex (``repr`` refuses integers past 4,300 digits)."""
    if type(value) is int:
        return hex(value)
    if isinstance(value, tuple | list):
        return tuple(_plain(item) for item in value)
    return value


def digest_operation(digest: str) -> str:
    """The operation named by a digest of :func:`op_digest`."""
    return digest.partition(":")[0]


def used_keywords(**keywords: Any) -> dict[str, Any]:
    """The optional keywords a caller set (``None``: not used, so not passed on).

    A store without the feature a keyword belongs to (cost, pools, features, operation
    ids) keeps working for the calls that do not use it, as the contract asks.
    """
    return {key: value for key, value in keywords.items() if value is not None}


def _op(op_id: str | None, wrap_up_tokens: int = 0) -> dict[str, Any]:
    """The ``op_id`` and ``wrap_up_tokens`` keywords, passed on only when given.

    A store without them keeps working for calls without them.
    """
    given: dict[str, Any] = {} if op_id is None else {"op_id": op_id}
    if wrap_up_tokens != 0:
        given["wrap_up_tokens"] = wrap_up_tokens
    return given


class Store(abc.ABC):
    """Base class of every store; see the module docstring for the contract."""

    url: str = ""
    replies_may_be_lost: bool = False
    """Whether a call can end with its outcome unknown (a connection lost after the store
    ran it: :class:`~apportion.errors.StoreOutcomeUnknown`). The controller gives such a
    store an operation id on every call, so it can retry; an in-process store gets ids only
    from an :func:`~apportion.controller.operation_ids` key."""

    @abc.abstractmethod
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
        """Open the ledger of a new request and return its state.

        With ``pool``, the request's ceiling is first drawn from that shared pool's current
        window by a request of class ``pool_priority`` (see :mod:`apportion.pools`); at
        close, what the request left unused returns to the pool. ``features`` are kept with
        the request (see the module docstring).
        """

    @abc.abstractmethod
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
        """Reserve a grant (priced on ``model`` at ``prices``); return it and the state after.

        ``asked`` is the input the agent has in hand; a grant with less context is counted
        in the state's ``input_cut_calls`` (default: ``context_tokens``, no cut).
        ``wrap_up_tokens`` is the grant's wrap-up reserve (see the module docstring).
        """

    @abc.abstractmethod
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
        """Grow an open grant; return the grown grant and the state after."""

    @abc.abstractmethod
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
        """Settle a grant with its real usage; return the state after."""

    @abc.abstractmethod
    def release(
        self,
        request_id: str,
        grant: Grant,
        now: float,
        *,
        reason: str = "release",
        op_id: str | None = None,
    ) -> LedgerView:
        """Settle a grant as unused; return the state after."""

    @abc.abstractmethod
    def close(
        self,
        request_id: str,
        now: float,
        *,
        status: str = "closed",
        outcome: float | None = None,
        op_id: str | None = None,
    ) -> LedgerView:
        """Close a request (releasing its open grants); return its final state."""

    @abc.abstractmethod
    def get(self, request_id: str) -> LedgerView:
        """The current state of a request."""

    @abc.abstractmethod
    def events(self, request_id: str) -> list[Event]:
        """A copy of the request's event list, oldest first."""

    @abc.abstractmethod
    def reap_expired(self, now: float) -> Reaped:
        """Expire ended leases and overdue requests everywhere; say what was settled."""

    def reap(self, now: float) -> int:
        """Expire ended leases and overdue requests everywhere; return how many were settled."""
        return self.reap_expired(now).settled

    # Policy state (optional): versioned blobs, written by compare-and-set.

    def get_state(self, key: str) -> tuple[int, bytes] | None:
        """A policy's shared state: ``(version, data)``, or ``None`` when never written."""
        raise NotImplementedError(f"{type(self).__name__} keeps no policy state")

    def put_state(self, key: str, data: bytes, expected_version: int) -> int | None:
        """Write ``data`` if the state's version is still ``expected_version`` (0: absent).

        Returns the new version (``expected_version + 1``), or ``None`` when another writer
        got there first (nothing is written; read again, merge, retry).
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no policy state")

    # Shared pools (optional: a store without them raises NotImplementedError).

    def define_pool(self, pool: Pool) -> None:
        """Create a shared pool, or change its configuration (keeping what is drawn)."""
        raise NotImplementedError(f"{type(self).__name__} has no shared pools")

    def get_pool(self, name: str, now: float) -> PoolStatus:
        """A shared pool's status at ``now``; raises :class:`~apportion.pools.UnknownPool`."""
        raise NotImplementedError(f"{type(self).__name__} has no shared pools")

    def pool_names(self, prefix: str = "") -> list[str]:
        """The names of the defined pools that start with ``prefix``, sorted."""
        raise NotImplementedError(f"{type(self).__name__} has no shared pools")

    # Child budgets (optional: a store without them raises NotImplementedError).

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
        """Open child requests of ``parent_id``, their ceilings drawn from it atomically.

        Args:
            parent_id: the open parent request.
            request_ids: one new id per child.
            ranks: the agents' priority ranks (as for ``open``).
            now: clock time.
            priorities: each child's priority class (``critical``, ``standard``,
                ``peripheral``): what of the parent's reservations it may draw on.
            ceiling: tokens each child draws (refused if the parent cannot spare them all);
                with ``share``, the most each may draw.
            share: the fraction of what the parent can spare that the children split.
            allocation: the children's plan (advisory), as for ``open``.
            reserve: the children's reservations, as for ``open`` (dropped for a child
                whose ceiling they do not fit).
            ttl: how long each child may stay open before ``reap`` closes it.
            max_depth: the deepest a child may be (a root request is at depth 0).
            features: the children's features, as for ``open``.
            op_id: the operation's id (see the module docstring), recorded in the parent.

        Returns:
            The parent's state after the draws, and the children's, in the order of
            ``request_ids``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no child budgets")

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
            **used_keywords(features=features or None, op_id=op_id),
        )

    # Async variants. A store whose operations never wait (memory) keeps these defaults;
    # a networked store overrides them with real async I/O over the same operations.

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
        given = used_keywords(ceiling_usd=ceiling_usd, features=features or None, op_id=op_id)
        if pool is not None:
            given |= {"pool": pool, "pool_priority": pool_priority}
        return self.open(
            request_id,
            ranks,
            ceiling,
            now,
            allocation=allocation,
            reserve=reserve,
            ttl=ttl,
            **given,
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
    ) -> tuple[Grant, LedgerView]:
        """Async :meth:`begin`."""
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
            **_op(op_id, wrap_up_tokens=wrap_up_tokens),
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
        return self.extend(
            request_id, grant, output_tokens, context_tokens, now, lease_seconds, **_op(op_id)
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
        return self.finish(
            request_id,
            grant,
            input_tokens,
            output_tokens,
            now,
            truncated=truncated,
            allocation=allocation,
            **_op(op_id),
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
        return self.release(request_id, grant, now, reason=reason, **_op(op_id))

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
        return self.close(request_id, now, status=status, outcome=outcome, **_op(op_id))

    async def aget(self, request_id: str) -> LedgerView:
        """Async :meth:`get`."""
        return self.get(request_id)

    async def aevents(self, request_id: str) -> list[Event]:
        """Async :meth:`events`."""
        return self.events(request_id)

    async def areap_expired(self, now: float) -> Reaped:
        """Async :meth:`reap_expired`."""
        return self.reap_expired(now)

    async def areap(self, now: float) -> int:
        """Async :meth:`reap`."""
        return (await self.areap_expired(now)).settled

    # Event feed and open requests (optional: a store without them raises
    # NotImplementedError).

    def feed(
        self,
        after: str | None = None,
        *,
        prefix: str = "",
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> FeedPage:
        """The feed's events after cursor ``after`` (see the module docstring).

        Args:
            after: a cursor a page returned (or :meth:`feed_cursor`); ``None``: from the
                oldest event kept.
            prefix: only events of requests whose id starts with it (a gateway's
                ``TENANT/``).
            limit: the most events returned.
            timeout: seconds to wait when there is nothing new (0: answer at once).

        Raises:
            InvalidArgument: a bad cursor, prefix, limit or timeout.
        """
        raise NotImplementedError(f"{type(self).__name__} has no event feed")

    async def afeed(
        self,
        after: str | None = None,
        *,
        prefix: str = "",
        limit: int = 1000,
        timeout: float = 0.0,
    ) -> FeedPage:
        """Async :meth:`feed` (waits without blocking the event loop)."""
        raise NotImplementedError(f"{type(self).__name__} has no event feed")

    def note(self, request_id: str, event: Event) -> None:
        """Append a note (``refused``, ``fitted``) of a request to the feed; no ledger changes.

        A store without a feed ignores notes (this default).

        Raises:
            InvalidArgument: an event that is no note (see
                :func:`~apportion.stores.feed.check_note`).
            UnknownRequest, UnknownAgent: as for ``begin``.
        """
        del request_id, event  # nowhere to tell

    async def anote(self, request_id: str, event: Event) -> None:
        """Async :meth:`note`."""
        self.note(request_id, event)

    def feed_cursor(self) -> str:
        """The newest event's cursor: reading from it returns only later events."""
        raise NotImplementedError(f"{type(self).__name__} has no event feed")

    def history(self, request_id: str) -> list[Event]:
        """The request's events and its notes (``refused``, ``fitted``) in order, oldest first.

        A store without a feed keeps no notes: its :meth:`events` (this default).

        Raises:
            UnknownRequest: the store does not hold the request.
        """
        return self.events(request_id)

    async def ahistory(self, request_id: str) -> list[Event]:
        """Async :meth:`history`."""
        return self.history(request_id)

    def features(self, request_id: str) -> dict[str, Any]:
        """The features the request opened with (``{}`` for none; see the module docstring).

        This default reads the request's events; a store overrides it with a read of its
        ``open`` event alone.

        Raises:
            UnknownRequest: the store does not hold the request.
        """
        return features_from(self.events(request_id))

    async def afeatures(self, request_id: str) -> dict[str, Any]:
        """Async :meth:`features`."""
        return self.features(request_id)

    def get_with_features(self, request_id: str) -> tuple[LedgerView, dict[str, Any]]:
        """The request's state and its features (what a handle on it reads first).

        This default reads them one after the other; a networked store reads both in one
        round trip.

        Raises:
            UnknownRequest: the store does not hold the request.
        """
        return self.get(request_id), self.features(request_id)

    async def aget_with_features(self, request_id: str) -> tuple[LedgerView, dict[str, Any]]:
        """Async :meth:`get_with_features`."""
        return await self.aget(request_id), await self.afeatures(request_id)

    async def afeed_cursor(self) -> str:
        """Async :meth:`feed_cursor`."""
        return self.feed_cursor()

    def open_requests(self, prefix: str = "") -> list[str]:
        """The ids of the open requests that start with ``prefix``, sorted."""
        raise NotImplementedError(f"{type(self).__name__} lists no open requests")

    async def aopen_requests(self, prefix: str = "") -> list[str]:
        """Async :meth:`open_requests`."""
        return self.open_requests(prefix)

    async def adefine_pool(self, pool: Pool) -> None:
        """Async :meth:`define_pool`."""
        self.define_pool(pool)

    async def aget_pool(self, name: str, now: float) -> PoolStatus:
        """Async :meth:`get_pool`."""
        return self.get_pool(name, now)

    async def apool_names(self, prefix: str = "") -> list[str]:
        """Async :meth:`pool_names`."""
        return self.pool_names(prefix)
