"""The pure ledger of one request: state plus operation gives new state plus events.

A :class:`Ledger` holds one request's ceiling, the planned allocation per agent, the
reservations protecting agents that have not started, the open grants, what was consumed,
and an append-only list of :class:`Event`. It performs no I/O and reads no clock: every
operation is handed ``now`` by its caller. Every operation validates all of its input
before it changes anything, so a refused operation leaves the ledger exactly as it was.

Invariants kept after every operation (the store conformance suite checks them):

1. Conservation: ``free + reserved + consumed == ceiling``.
2. Hard cap: ``consumed <= ceiling``; a grant larger than the agent may draw is refused.
3. A grant is settled exactly once: by ``finish``, ``release``, lease expiry or ``close``.
4. Reclaim: what a finished grant did not use returns to the free pool at once.
5. Priority: an agent that has not started keeps its reservation; an agent may only draw
   on another's reservation when its own priority is strictly higher (so peripheral and
   standard agents can never drain a critical agent's reservation).
6. Over-use (usage above the grant) is recorded per agent; it is charged to the free pool,
   so the next grant sees it, and any part the pool cannot cover is recorded as
   ``overflow`` instead of letting ``consumed`` pass the ceiling.

7. Child budgets: a child request's ceiling is drawn from its parent's free tokens and
   counted in the parent's ``reserved`` (``children`` holds the open draws) until the child
   closes; its usage then moves to the parent's ``consumed`` (``children_consumed``) and
   the rest returns to ``free``, exactly once. So ``reserved`` is the open grants plus the
   open children, ``consumed`` the agents' usage plus the closed children's, and no child
   ever holds more than its parent could spare (see :meth:`Ledger.split`).

Cost. A grant may carry the model it runs on and that model's prices, as integers of
nano-USD (1e-9 USD) per input and per output token (:func:`nano_prices` converts USD per
million tokens, rounding up). The ledger then accounts cost in integer nano-USD:
``cost_reserved`` (open grants at full size), ``cost_consumed`` and ``cost_by`` agent (real
usage, input and output priced separately). With a cost ceiling (``ceiling_usd``, in
nano-USD), a grant or extension whose full-size cost exceeds
``ceiling_usd - cost_consumed - cost_reserved`` is refused with
:class:`~apportion.errors.CostExceeded`, and a grant without prices is refused with
:class:`~apportion.errors.InvalidPrice`. Without a cost ceiling nothing is checked; cost is
still accounted for the grants that carry prices. Over-use is charged at its real cost and
never hidden (``cost_consumed`` may then pass the ceiling; every later grant is refused).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from apportion.errors import (
    BudgetExceeded,
    ChildBudgetExceeded,
    CostExceeded,
    ForeignGrant,
    GrantExpired,
    GrantSettled,
    InvalidArgument,
    InvalidCeiling,
    InvalidPrice,
    InvalidTokenCount,
    RequestClosed,
    TreeTooDeep,
    UnknownAgent,
    WrapUpTooLarge,
)
from apportion.features import features_note
from apportion.limits import MAX_TOKENS as MAX_TOKENS  # largest token count (re-exported)
from apportion.limits import excerpt, is_text

CHILD_SEP = "::"
"""Between a parent's id and its child's name in a child request's id (``root::a::b``).

A store may keep a tree together by the part of an id before the first ``::`` (its root's).
"""

NANO = 10**9
"""nano-USD per USD: the ledger accounts cost in integers of 1e-9 USD."""

MAX_PRICE = 10**9
"""Largest price accepted, in nano-USD per token (1 USD per token)."""

MAX_COST = 10**15
"""Largest cost ceiling accepted, in nano-USD (a million USD); costs stay exact below 2**53."""

OPEN = "open"
CLOSED = "closed"
FAILED = "failed"
EXPIRED = "expired"
STATUSES = (OPEN, CLOSED, FAILED, EXPIRED)


class Grant(NamedTuple):
    """What an agent may use for one model call; a reservation until settled.

    Attributes:
        request_id: the request the grant belongs to.
        agent: the agent it was granted to.
        grant_id: its number inside the request (1, 2, ...).
        context_tokens: input tokens the call may read.
        output_tokens: output tokens the call may write (``max_tokens``).
        lease_expires_at: clock time after which an unsettled grant is reclaimed.
        model: the model the call runs on, when the policy chose one (``None``: the
            caller's own model).
        wrap_up_tokens: the wrap-up reserve (``begin(..., wrap_up_tokens=N)``): tokens of
            ``output_tokens`` the working call leaves unspent, so that once the grant is
            spent and an extension is refused the agent can still hand back a partial
            result (the call engine spends them on one "wrap up now" follow-up, its prompt
            and its answer). The reserve is inside the grant, not beside it: the ledger
            accounts the grant as before, and every extension keeps the reserve.
    """

    request_id: str
    agent: str
    grant_id: int
    context_tokens: int
    output_tokens: int
    lease_expires_at: float
    model: str | None = None
    wrap_up_tokens: int = 0

    @property
    def total(self) -> int:
        """Tokens reserved by the grant: context plus output (the wrap-up reserve included)."""
        return self.context_tokens + self.output_tokens

    @property
    def working_tokens(self) -> int:
        """The output cap of the working call: ``output_tokens`` less the wrap-up reserve."""
        return self.output_tokens - self.wrap_up_tokens


class Event(NamedTuple):
    """One entry of a ledger's append-only event list.

    Attributes:
        kind: ``open``, ``begin``, ``extend``, ``finish``, ``release``, ``expire``, ``close``;
            in a parent, ``child`` (a child's draw: its id in ``note``, its tokens in
            ``output_tokens``) and ``child_close`` (its fold-back: the tokens it used in
            ``context_tokens``, its draw in ``output_tokens``, usage beyond it in
            ``overuse``).
        at: clock time of the operation.
        agent: the agent concerned (``None`` for ``open`` and ``close``).
        grant_id: the grant concerned (0 when none).
        context_tokens: granted (begin, extend: the increment), used (finish) or returned
            (release, expire) context tokens; the ceiling for ``open``.
        output_tokens: the same for output tokens.
        truncated: for ``finish``, whether the caller reported the output cut.
        overuse: for ``finish``, tokens used beyond the grant.
        note: free text: the release reason, the close status; ``late`` for a ``finish``
            that came after the grant's lease expired; the model of a ``begin`` that named
            one; the request's features for ``open`` (a JSON object, or empty).
        asked: for ``begin``, the input tokens the agent had in hand (when the grant's
            context is smaller, the call's input was cut).
    """

    kind: str
    at: float
    agent: str | None
    grant_id: int
    context_tokens: int
    output_tokens: int
    truncated: bool = False
    overuse: int = 0
    note: str = ""
    asked: int = 0


_new = tuple.__new__  # builds a NamedTuple from a full tuple, skipping its slow __new__


def check_tokens(field: str, value: object) -> int:
    """Return ``value`` as a token count, or raise :class:`InvalidTokenCount`.

    A token count is an ``int`` (not ``bool``, not ``float``, not NaN) in
    ``[0, MAX_TOKENS]``. Integral types such as ``numpy.int64`` are accepted.
    """
    if type(value) is int:
        if 0 <= value <= MAX_TOKENS:
            return value
    elif isinstance(value, bool) or not hasattr(value, "__index__"):
        if isinstance(value, float) and math.isnan(value):
            raise InvalidTokenCount(field, value, "NaN is not a token count")
        raise InvalidTokenCount(field, value, "token counts are integers")
    else:
        return check_tokens(field, value.__index__())
    if value < 0:
        raise InvalidTokenCount(field, value, "token counts cannot be negative")
    raise InvalidTokenCount(field, value, f"above the limit of {MAX_TOKENS} tokens")


def check_time(field: str, value: object, *, infinite: bool = False) -> float:
    """Return ``value`` (a clock time or seconds) as a float, or raise :class:`InvalidArgument`.

    A time is a real number (not ``bool``), finite unless ``infinite`` allows ``+inf``.
    """
    if type(value) is float and value - value == 0.0:  # the common case: finite float
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgument(field, value, "a time is a number of seconds")
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        raise InvalidArgument(field, value, "a number too large for a clock") from None
    if math.isnan(number) or number == -math.inf or (number == math.inf and not infinite):
        raise InvalidArgument(field, value, "a time is a finite number of seconds")
    return number


def check_wrap_up(agent: str, wrap_up_tokens: object, output_tokens: int) -> int:
    """Return ``wrap_up_tokens`` as a reserve that fits ``output_tokens``.

    Raises:
        InvalidTokenCount: not a token count.
        WrapUpTooLarge: above ``output_tokens``.
    """
    reserve = check_tokens("wrap_up_tokens", wrap_up_tokens)
    if reserve > output_tokens:
        raise WrapUpTooLarge(agent, reserve, output_tokens)
    return reserve


def check_seconds(field: str, value: object, *, infinite: bool = True) -> float:
    """Return ``value`` as a positive number of seconds (``+inf`` allowed when ``infinite``)."""
    seconds = check_time(field, value, infinite=infinite)
    if seconds <= 0:
        raise InvalidArgument(field, value, "a positive number of seconds")
    return seconds


def check_name(field: str, value: object) -> str:
    """Return ``value`` as a name (an id, an agent ...), or raise :class:`InvalidArgument`.

    A name is a string that can be stored anywhere: valid Unicode (no lone surrogate).
    """
    if type(value) is not str:
        if not isinstance(value, str):
            raise InvalidArgument(field, value, "a name is a string")
        value = str(value)
    if not is_text(value):
        raise InvalidArgument(field, value, "not valid text: it holds a lone surrogate")
    return value


def check_status(status: object) -> str:
    """Return a closing status (``closed``, ``failed`` or ``expired``)."""
    if type(status) is not str or status not in STATUSES or status == OPEN:
        raise InvalidArgument("status", status, "one of closed, failed, expired")
    return status


def check_ranks(ranks: object) -> Mapping[str, int]:
    """Return ``ranks`` (agent name -> priority rank), or raise :class:`InvalidArgument`."""
    if not isinstance(ranks, Mapping) or not ranks:
        raise InvalidArgument("ranks", ranks, "a non-empty mapping of agent names to ranks")
    for agent, rank in ranks.items():
        check_name("ranks", agent)
        if type(rank) is not int or not -1000 <= rank <= 1000:
            reason = "a rank is an integer in [-1000, 1000]"
            raise InvalidArgument(f"ranks[{excerpt(agent)}]", rank, reason)
    return ranks


def check_outcome(value: object) -> float | None:
    """Return an outcome score as a float (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgument("outcome", value, "an outcome score is a finite number")
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        number = math.nan
    if not math.isfinite(number):
        raise InvalidArgument("outcome", value, "an outcome score is a finite number")
    return number


def nano_prices(input_price: float, output_price: float) -> tuple[int, int]:
    """Prices in USD per million tokens as integer nano-USD per token, rounded up.

    Raises:
        InvalidPrice: a price is not a finite non-negative number, or is absurdly large.
    """
    clean = []
    for field, value in (("input_price", input_price), ("output_price", output_price)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise InvalidPrice(field, value, "a price is a finite non-negative number")
        nano = math.ceil(round(value * 1000, 6))
        if nano > MAX_PRICE:
            raise InvalidPrice(field, value, "above 1 USD per token")
        clean.append(nano)
    return clean[0], clean[1]


def check_prices(value: object) -> tuple[int, int] | None:
    """``value`` as ``(input, output)`` integer nano-USD per token, or ``None``.

    Raises:
        InvalidPrice: not a pair of integers in ``[0, MAX_PRICE]``.
    """
    if value is None:
        return None
    if isinstance(value, tuple | list) and len(value) == 2:
        pair = []
        for price in value:
            if isinstance(price, bool) or not hasattr(price, "__index__"):
                break
            price = price.__index__()
            if not 0 <= price <= MAX_PRICE:
                break
            pair.append(price)
        else:
            return pair[0], pair[1]
    raise InvalidPrice(
        "prices", value, f"prices are two integers of nano-USD per token in [0, {MAX_PRICE}]"
    )


def check_ceiling_usd(value: object) -> int | None:
    """A cost ceiling in nano-USD (a positive integer up to ``MAX_COST``), or ``None``."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not hasattr(value, "__index__")
        or not 0 < value.__index__() <= MAX_COST
    ):
        raise InvalidPrice(
            "ceiling_usd", value, f"a cost ceiling is an integer of nano-USD in [1, {MAX_COST}]"
        )
    return int(value.__index__())


def check_share(value: object) -> float:
    """Return ``value`` as a child's share of what its parent can spare (``0 < share <= 1``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgument("share", value, "a share is a number in (0, 1]")
    try:
        share = float(value)
    except (OverflowError, ValueError, TypeError):
        share = math.nan
    if not 0.0 < share <= 1.0:
        raise InvalidArgument("share", value, "a share is a number in (0, 1]")
    return share


def check_ceiling(value: object) -> int:
    """Return ``value`` as a request ceiling (a positive token count)."""
    try:
        ceiling = check_tokens("ceiling", value)
    except InvalidTokenCount as exc:
        raise InvalidCeiling("ceiling", value, str(exc.message).split(": ", 1)[-1]) from None
    if ceiling == 0:
        raise InvalidCeiling("ceiling", value, "a ceiling must be at least 1 token")
    return ceiling


class Ledger:
    """The budget state machine of one request (pure: no I/O, no clock reads).

    Args:
        request_id: the request's id.
        ranks: each agent's priority rank (higher draws first), in execution order.
        ceiling: tokens the whole request may consume (input plus output).
        now: clock time of opening.
        allocation: the policy's planned tokens per agent (advisory; shown in summaries).
        reserve: tokens held for agents that have not started (see invariant 5).
        expires_at: clock time after which an unclosed request may be reaped.
        ceiling_usd: the request's cost ceiling in nano-USD, or ``None`` for none.
        features: what is known of the request up front, kept as the note of its ``open``
            event (:func:`~apportion.features.features_note`).

    Raises:
        InvalidCeiling: ``ceiling`` is not a positive token count.
        InvalidTokenCount: an allocation or reservation is not a token count.
        UnknownAgent: an allocation or reservation names an agent not in ``ranks``.
        BudgetExceeded: the reservations add up to more than the ceiling.
        InvalidArgument: features a store cannot keep.
    """

    __slots__ = (
        "_next_lease",
        "_settled",
        "allocation",
        "calls",
        "ceiling",
        "children",
        "children_consumed",
        "children_cost_consumed",
        "consumed",
        "consumed_by",
        "cost_by",
        "cost_ceiling",
        "cost_consumed",
        "cost_reserved",
        "depth",
        "events",
        "expires_at",
        "free",
        "grant_prices",
        "grants",
        "input_cut_calls",
        "next_grant_id",
        "outcome",
        "overflow",
        "overuse_by",
        "parent_id",
        "rank",
        "ranks",
        "request_id",
        "reserve",
        "reserved",
        "reserved_by",
        "status",
        "truncated_calls",
    )

    def __init__(
        self,
        request_id: str,
        ranks: Mapping[str, int],
        ceiling: int,
        now: float,
        *,
        allocation: Mapping[str, int] | None = None,
        reserve: Mapping[str, int] | None = None,
        expires_at: float = math.inf,
        ceiling_usd: int | None = None,
        features: Mapping[str, Any] | None = None,
    ) -> None:
        request_id = check_name("request_id", request_id)
        ranks = check_ranks(ranks)
        ceiling = check_ceiling(ceiling)
        now = check_time("now", now)
        expires_at = check_time("expires_at", expires_at, infinite=True)
        cost_ceiling = check_ceiling_usd(ceiling_usd)
        clean_alloc = _check_plan("allocation", allocation, ranks)
        clean_reserve = {a: t for a, t in _check_plan("reserve", reserve, ranks).items() if t}
        note = features_note(features)
        total_reserve = sum(clean_reserve.values())
        if total_reserve > ceiling:
            raise BudgetExceeded(
                "(reservations)", total_reserve, ceiling, reason="reservations exceed the ceiling"
            )
        self.request_id = request_id
        self.ranks: Mapping[str, int] = ranks
        self.ceiling = ceiling
        self.status = OPEN
        self.outcome: float | None = None
        self.expires_at = expires_at
        self.allocation: dict[str, int] = dict.fromkeys(ranks, 0) | clean_alloc
        self.reserve: dict[str, int] = clean_reserve
        self.consumed = 0
        self.reserved = 0
        self.free = ceiling  # kept, not derived: one read gives a consistent pool
        self.overflow = 0
        self.consumed_by: dict[str, int] = dict.fromkeys(ranks, 0)
        self.reserved_by: dict[str, int] = dict.fromkeys(ranks, 0)
        self.overuse_by: dict[str, int] = dict.fromkeys(ranks, 0)
        self.calls: dict[str, int] = dict.fromkeys(ranks, 0)
        self.truncated_calls: dict[str, int] = dict.fromkeys(ranks, 0)
        self.input_cut_calls: dict[str, int] = dict.fromkeys(ranks, 0)
        self.grants: dict[int, Grant] = {}
        self.cost_ceiling = cost_ceiling
        self.cost_reserved = 0
        self.cost_consumed = 0
        self.cost_by: dict[str, int] = dict.fromkeys(ranks, 0)
        self.grant_prices: dict[int, tuple[int, int]] = {}  # open grants that carry prices
        self._next_lease = math.inf  # no open grant's lease ends before this
        self._settled: dict[int, tuple[str, str]] = {}
        self.next_grant_id = 1
        self.parent_id: str | None = None  # set by adopt(): a child request's parent
        self.depth = 0
        self.rank = -1  # a child's priority rank (-1: a root request)
        self.children: dict[str, tuple[int, int]] = {}  # open child -> (tokens, nano-USD)
        self.children_consumed = 0
        self.children_cost_consumed = 0
        self.events: list[Event] = [
            _new(Event, ("open", now, None, 0, ceiling, 0, False, 0, note, 0))
        ]

    @classmethod
    def restore(
        cls,
        *,
        request_id: str,
        ranks: Mapping[str, int],
        ceiling: int,
        status: str,
        outcome: float | None,
        expires_at: float,
        consumed: int,
        reserved: int,
        free: int,
        overflow: int,
        next_grant_id: int,
        allocation: dict[str, int],
        reserve: dict[str, int],
        consumed_by: dict[str, int],
        reserved_by: dict[str, int],
        overuse_by: dict[str, int],
        calls: dict[str, int],
        truncated_calls: dict[str, int],
        input_cut_calls: dict[str, int],
        grants: dict[int, Grant],
        cost_ceiling: int | None,
        cost_reserved: int,
        cost_consumed: int,
        cost_by: dict[str, int],
        grant_prices: dict[int, tuple[int, int]],
        parent_id: str | None,
        depth: int,
        rank: int,
        children: dict[str, tuple[int, int]],
        children_consumed: int,
        children_cost_consumed: int,
        events: Sequence[Event] = (),
        into: Ledger | None = None,
    ) -> Ledger:
        """A ledger in the state a store kept of it (each argument sets the attribute so named).

        For stores that keep a ledger's fields rather than the object (the Redis store reads
        them from its scripts' replies). The fields are taken as they are, without the checks
        of :class:`Ledger` (the store validated every operation that led to them; on the
        hot path of every operation, checking them again would cost more than the read) and
        without copying the mappings. Which grants were settled, and how, is not among them:
        the restored ledger is a snapshot to read, and an operation on it refuses a settled
        grant as foreign rather than as settled.

        Args:
            request_id: the request's id.
            ranks: each agent's priority rank, in execution order (every mapping by agent
                below holds every agent of ``ranks``, except ``reserve``).
            ceiling: the request's token ceiling.
            status: ``open``, ``closed``, ``failed`` or ``expired``.
            outcome: the outcome score given at close, if any.
            expires_at: clock time after which the open request may be reaped.
            consumed: tokens used (the agents' and the closed children's).
            reserved: tokens held by open grants and open children.
            free: tokens neither consumed nor reserved.
            overflow: usage recorded beyond the ceiling.
            next_grant_id: the id the next grant gets.
            allocation: the planned tokens by agent.
            reserve: the reservations of the agents that have not started (only those).
            consumed_by: tokens used by agent.
            reserved_by: tokens held by agent in open grants.
            overuse_by: usage above its grants by agent.
            calls: grants by agent.
            truncated_calls: calls reported cut at their cap, by agent.
            input_cut_calls: grants with less context than asked, by agent.
            grants: the open grants by id.
            cost_ceiling: the cost ceiling in nano-USD, or ``None``.
            cost_reserved: nano-USD held by open grants and children at full size.
            cost_consumed: nano-USD used.
            cost_by: nano-USD used by agent.
            grant_prices: the ``(input, output)`` prices of the open grants that carry them.
            parent_id: a child request's parent, or ``None`` for a root.
            depth: the depth in its tree (0 for a root).
            rank: a child's priority rank (-1 for a root).
            children: the open children's draws: ``(tokens, nano-USD)`` by child id.
            children_consumed: tokens the closed children used.
            children_cost_consumed: nano-USD the closed children used.
            events: the request's events so far (default: none, as a snapshot needs).
            into: an instance of this class whose fields are not set yet, to restore in
                place (a snapshot that decodes its stored form on first read); default: a
                new one.

        Returns:
            The ledger, its next lease end derived from ``grants``.
        """
        ledger = object.__new__(cls) if into is None else into
        ledger.request_id = request_id
        ledger.ranks = ranks
        ledger.ceiling = ceiling
        ledger.status = status
        ledger.outcome = outcome
        ledger.expires_at = expires_at
        ledger.consumed = consumed
        ledger.reserved = reserved
        ledger.free = free
        ledger.overflow = overflow
        ledger.next_grant_id = next_grant_id
        ledger.allocation = allocation
        ledger.reserve = reserve
        ledger.consumed_by = consumed_by
        ledger.reserved_by = reserved_by
        ledger.overuse_by = overuse_by
        ledger.calls = calls
        ledger.truncated_calls = truncated_calls
        ledger.input_cut_calls = input_cut_calls
        ledger.grants = grants
        ledger.cost_ceiling = cost_ceiling
        ledger.cost_reserved = cost_reserved
        ledger.cost_consumed = cost_consumed
        ledger.cost_by = cost_by
        ledger.grant_prices = grant_prices
        ledger.parent_id = parent_id
        ledger.depth = depth
        ledger.rank = rank
        ledger.children = children
        ledger.children_consumed = children_consumed
        ledger.children_cost_consumed = children_cost_consumed
        ledger.events = list(events)
        ledger._next_lease = min(
            [grant.lease_expires_at for grant in grants.values()], default=math.inf
        )
        ledger._settled = {}
        return ledger

    # ------------------------------------------------------------------ reading

    @property
    def started(self) -> frozenset[str]:
        """Agents that have begun at least one grant."""
        return frozenset(a for a, n in self.calls.items() if n)

    def protected_from(self, agent: str) -> int:
        """Reserved tokens of other unstarted agents that ``agent`` may not draw on."""
        rank = self.ranks[agent]
        ranks = self.ranks
        return sum(t for b, t in self.reserve.items() if b != agent and ranks[b] >= rank)

    def available_for(self, agent: str) -> int:
        """Tokens ``agent`` could be granted right now."""
        if agent not in self.ranks:
            raise UnknownAgent(agent, self.ranks)
        free = self.free
        if not self.reserve:
            return free
        return max(0, free - self.protected_from(agent))

    def cost_available(self) -> int | None:
        """nano-USD a new grant may still cost at full size (``None``: no cost ceiling)."""
        if self.cost_ceiling is None:
            return None
        return max(0, self.cost_ceiling - self.cost_consumed - self.cost_reserved)

    def grant_cost(self, grant_id: int) -> int:
        """Full-size cost of an open grant in nano-USD (0 when it carries no prices)."""
        prices = self.grant_prices.get(grant_id)
        if prices is None:
            return 0
        grant = self.grants[grant_id]
        return grant.context_tokens * prices[0] + grant.output_tokens * prices[1]

    def settled_by(self, grant_id: int) -> str | None:
        """How a grant was settled (``finish``, ``release``, ``expire``, ``close``), or None."""
        entry = self._settled.get(grant_id)
        return entry[1] if entry else None

    # --------------------------------------------------------------- operations

    def begin(
        self,
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
    ) -> Grant:
        """Reserve a grant for one model call of ``agent``.

        Args:
            agent: the agent calling.
            context_tokens: input tokens granted.
            output_tokens: output tokens granted.
            now: clock time.
            lease_seconds: how long the grant may stay unsettled.
            model: the model the call runs on (recorded on the grant).
            prices: the model's ``(input, output)`` prices in nano-USD per token.
            asked: the input tokens the agent has in hand (default ``context_tokens``); a
                grant with less context cuts the call's input, counted in
                ``input_cut_calls``.
            wrap_up_tokens: of ``output_tokens``, the wrap-up reserve the grant carries
                (:attr:`Grant.wrap_up_tokens`); at most ``output_tokens``.

        Raises:
            RequestClosed: the request is closed.
            UnknownAgent: ``agent`` is not in the pipeline.
            InvalidTokenCount: a count is not a non-negative integer.
            WrapUpTooLarge: ``wrap_up_tokens`` is above ``output_tokens``.
            InvalidPrice: bad prices, or none while the request has a cost ceiling.
            BudgetExceeded: the grant is larger than ``available_for(agent)``.
            CostExceeded: the grant's full-size cost is above what the cost ceiling leaves.
        """
        if type(agent) is not str or agent not in self.ranks:
            raise UnknownAgent(agent, self.ranks)
        context_tokens = check_tokens("context_tokens", context_tokens)
        output_tokens = check_tokens("output_tokens", output_tokens)
        now = check_time("now", now)
        lease_seconds = check_seconds("lease_seconds", lease_seconds)
        asked = context_tokens if asked is None else check_tokens("input_tokens", asked)
        if type(wrap_up_tokens) is not int or wrap_up_tokens:
            wrap_up_tokens = check_wrap_up(agent, wrap_up_tokens, output_tokens)
        prices = check_prices(prices)
        if model is not None and (not isinstance(model, str) or not model):
            raise InvalidPrice("model", model, "a model is a non-empty name")
        if model is not None:
            model = check_name("model", model)
        self._check_open(now)
        if prices is None and self.cost_ceiling is not None:
            raise InvalidPrice(
                "prices", None, f"agent {agent!r}: the request has a cost ceiling, no prices"
            )
        total = context_tokens + output_tokens
        available = self.available_for(agent)
        if total > available:
            raise BudgetExceeded(agent, total, available)
        cost = 0
        if prices is not None:
            cost = context_tokens * prices[0] + output_tokens * prices[1]
            left = self.cost_available()
            if left is not None and cost > left:
                raise CostExceeded(agent, cost / NANO, left / NANO, model=model)
        grant_id = self.next_grant_id
        grant: Grant = _new(
            Grant,
            (
                self.request_id,
                agent,
                grant_id,
                context_tokens,
                output_tokens,
                now + lease_seconds,
                model,
                wrap_up_tokens,
            ),
        )
        if prices is not None:
            self.grant_prices[grant_id] = prices
            self.cost_reserved += cost
        self.next_grant_id = grant_id + 1
        self.grants[grant_id] = grant
        if grant.lease_expires_at < self._next_lease:
            self._next_lease = grant.lease_expires_at
        # Readers outside the store's lock may see this half done: drop the reservation
        # before the pool shrinks, so a torn read can only overstate what is available
        # (the store then refuses), never understate it. The reservations are replaced,
        # never changed in place, so a reader never iterates a dict being changed.
        if agent in self.reserve:
            self.reserve = {b: t for b, t in self.reserve.items() if b != agent}
        self.free -= total
        self.reserved += total
        self.reserved_by[agent] += total
        self.calls[agent] += 1
        if context_tokens < asked:
            self.input_cut_calls[agent] += 1
        self.events.append(
            _new(
                Event,
                (
                    "begin",
                    now,
                    agent,
                    grant_id,
                    context_tokens,
                    output_tokens,
                    False,
                    0,
                    model or "",  # the call's model, when it names one
                    asked,
                ),
            )
        )
        return grant

    def extend(
        self,
        grant: Grant,
        output_tokens: int,
        now: float,
        lease_seconds: float,
        context_tokens: int = 0,
    ) -> Grant:
        """Grow an open grant by ``output_tokens`` (and ``context_tokens``), renewing its lease.

        Raises:
            RequestClosed, ForeignGrant, GrantSettled, GrantExpired, InvalidTokenCount,
            BudgetExceeded: as for :meth:`begin` and :meth:`finish`.
        """
        output_tokens = check_tokens("output_tokens", output_tokens)
        context_tokens = check_tokens("context_tokens", context_tokens)
        now = check_time("now", now)
        lease_seconds = check_seconds("lease_seconds", lease_seconds)
        self._check_open(now)
        current = self._open_grant(grant)
        extra = output_tokens + context_tokens
        available = self.available_for(current.agent)
        if extra > available:
            raise BudgetExceeded(current.agent, extra, available, reason="extension")
        prices = self.grant_prices.get(current.grant_id)
        if prices is not None:
            cost = context_tokens * prices[0] + output_tokens * prices[1]
            left = self.cost_available()
            if left is not None and cost > left:
                raise CostExceeded(
                    current.agent, cost / NANO, left / NANO, model=current.model, reason="extension"
                )
            self.cost_reserved += cost
        grown = current._replace(
            context_tokens=current.context_tokens + context_tokens,
            output_tokens=current.output_tokens + output_tokens,
            lease_expires_at=now + lease_seconds,
        )
        self.grants[current.grant_id] = grown
        self.free -= extra
        self.reserved += extra
        self.reserved_by[current.agent] += extra
        self.events.append(
            Event("extend", now, current.agent, current.grant_id, context_tokens, output_tokens)
        )
        return grown

    def finish(
        self,
        grant: Grant,
        input_tokens: int,
        output_tokens: int,
        now: float,
        *,
        truncated: bool = False,
        allocation: Mapping[str, int] | None = None,
    ) -> None:
        """Settle a grant with the real usage; the unused part returns to the free pool.

        A grant whose lease expired before this call (its tokens were reclaimed) is settled
        late: the whole usage is recorded as over-use, charged to what the free pool still
        holds, and any part beyond it as overflow; the event's note is ``late``. Usage is
        never dropped. (A late call's cost is not priced: its prices left with the grant.)

        Args:
            grant: the grant (any version of it: extensions keep its id).
            input_tokens: input tokens the provider billed.
            output_tokens: output tokens the provider billed.
            now: clock time.
            truncated: the output was cut at the cap.
            allocation: the policy's new plan for agents (advisory), applied after settling.

        Raises:
            RequestClosed, ForeignGrant, GrantSettled, InvalidTokenCount, UnknownAgent:
            nothing is changed.
        """
        input_tokens = check_tokens("input_tokens", input_tokens)
        output_tokens = check_tokens("output_tokens", output_tokens)
        new_plan = _check_plan("allocation", allocation, self.ranks) if allocation else None
        now = check_time("now", now)
        self._check_open(now)
        late = getattr(grant, "grant_id", None) not in self.grants and self._expired(grant)
        current = grant if late else self._open_grant(grant)
        agent = current.agent
        granted = 0 if late else current.context_tokens + current.output_tokens
        used = input_tokens + output_tokens
        if not late:
            prices = self.grant_prices.pop(current.grant_id, None)
            if prices is not None:
                self.cost_reserved -= (
                    current.context_tokens * prices[0] + current.output_tokens * prices[1]
                )
                cost = input_tokens * prices[0] + output_tokens * prices[1]
                self.cost_consumed += cost
                self.cost_by[agent] += cost
            del self.grants[current.grant_id]
        self._settled[current.grant_id] = (agent, "finish")
        self.reserved -= granted
        self.reserved_by[agent] -= granted
        overuse = used - granted if used > granted else 0
        room = self.free + granted
        charge = used
        if overuse:
            self.overuse_by[agent] += overuse
            if used > room:
                charge = room
                self.overflow += used - room
        self.free = room - charge
        self.consumed += charge
        self.consumed_by[agent] += charge
        if truncated:
            self.truncated_calls[agent] += 1
        if new_plan:
            self.allocation.update(new_plan)
        self.events.append(
            _new(
                Event,
                (
                    "finish",
                    now,
                    agent,
                    current.grant_id,
                    input_tokens,
                    output_tokens,
                    bool(truncated),
                    overuse,
                    "late" if late else "",
                    0,
                ),
            )
        )

    def renew(self, grant: Grant, now: float, lease_seconds: float) -> Grant:
        """Renew an open grant's lease from ``now`` (a long call is still running).

        Raises:
            RequestClosed, ForeignGrant, GrantSettled, GrantExpired: nothing is changed.
        """
        return self.extend(grant, 0, now, lease_seconds)

    def release(self, grant: Grant, now: float, *, reason: str = "release") -> None:
        """Settle a grant as unused (an error before the call): all its tokens return.

        Raises:
            RequestClosed, ForeignGrant, GrantSettled, GrantExpired: nothing is changed.
        """
        now = check_time("now", now)
        reason = check_name("reason", reason)
        self._check_open(now)
        self._release(self._open_grant(grant), now, "release", reason)

    def close(self, now: float, *, status: str = CLOSED, outcome: float | None = None) -> None:
        """Close the request; open grants are released.

        Args:
            now: clock time.
            status: ``closed`` (normal end), ``failed`` (an error ended it) or ``expired``.
            outcome: the request's outcome score, when known.

        Raises:
            RequestClosed: it was already closed.
            InvalidArgument: unknown status, a non-finite outcome, a bad time.
        """
        if self.status != OPEN:
            raise RequestClosed(self.request_id, self.status)
        status = check_status(status)
        outcome = check_outcome(outcome)
        now = check_time("now", now)
        self.reap(now)
        for grant in list(self.grants.values()):
            self._release(grant, now, "close", status)
        if self.children:
            self._drop_children(now)
        self.status = status
        if outcome is not None:
            self.outcome = float(outcome)
        self.events.append(_new(Event, ("close", now, None, 0, 0, 0, False, 0, status, 0)))

    def reap(self, now: float) -> int:
        """Release every grant whose lease ended at or before ``now``; return how many."""
        now = check_time("now", now, infinite=True)
        if not self.grants or now < self._next_lease:
            return 0
        expired = [g for g in self.grants.values() if g.lease_expires_at <= now]
        for grant in expired:
            self._release(grant, now, "expire", "lease expired")
        self._next_lease = min((g.lease_expires_at for g in self.grants.values()), default=math.inf)
        return len(expired)

    # ------------------------------------------------------------ child budgets

    def spare(self, rank: int) -> int:
        """Tokens a child of priority rank ``rank`` could draw right now.

        The free pool, less what it holds for unstarted agents of a strictly higher rank
        (the rule of shared pools): a critical child (rank 2) may draw on every free
        token, a standard child (1) not on what is held for critical agents, a peripheral
        child (0) not on what is held for standard or critical agents.
        """
        if not self.reserve:
            return self.free
        ranks = self.ranks
        held = sum(t for b, t in self.reserve.items() if ranks[b] > rank)
        return max(0, self.free - held)

    def split(
        self,
        names: Sequence[str],
        ranks: Sequence[int],
        now: float,
        *,
        ceiling: int | None = None,
        share: float | None = None,
        max_depth: int = 16,
    ) -> list[tuple[int, int | None]]:
        """What children opened together would draw, as ``(tokens, nano-USD)``; no change.

        With ``ceiling`` alone, each child draws exactly ``ceiling`` tokens, or all are
        refused. With ``share`` (``0 < share <= 1``), ``floor(S * share)`` tokens are split
        among them by weight ``2 ** rank`` (critical 4, standard 2, peripheral 1), each
        rounded down and capped at ``ceiling`` when given, where ``S`` is
        :meth:`spare` for the lowest rank among them: so together they never draw more
        than any of them could alone. With a cost ceiling, each child draws the same
        fraction of what the cost ceiling leaves (:meth:`cost_available`) as of ``S``,
        rounded down (``None`` without one).

        Raises:
            RequestClosed: the request is closed.
            TreeTooDeep: a child would be deeper than ``max_depth``.
            ChildBudgetExceeded: more than the parent can spare, or a child would get
                nothing.
        """
        self._check_open(check_time("now", now))
        if self.depth + 1 > max_depth:
            raise TreeTooDeep(self.request_id, self.depth + 1, max_depth)
        label = names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1})"
        spare = self.spare(min(ranks))
        if share is None:
            assert ceiling is not None
            tokens = [ceiling] * len(names)
            if ceiling * len(names) > spare:
                raise ChildBudgetExceeded(self.request_id, label, ceiling * len(names), spare)
        else:
            total = math.floor(spare * share)
            weights = [2**r for r in ranks]
            whole = sum(weights)
            tokens = [total * w // whole for w in weights]
            if ceiling is not None:
                tokens = [min(t, ceiling) for t in tokens]
            if min(tokens) == 0:
                raise ChildBudgetExceeded(
                    self.request_id, label, len(names), spare, reason="nothing left to spare"
                )
        if self.cost_ceiling is None:
            return [(t, None) for t in tokens]
        whole_cost = left = self.cost_available() or 0
        draws: list[tuple[int, int | None]] = []
        for t in tokens:  # never past what is left, however the floats round
            cost = min(left, math.floor(whole_cost * (t / spare)))
            left -= cost
            draws.append((t, cost))
        return draws

    def adopt(self, parent: Ledger, rank: int, cost_ceiling: int | None) -> None:
        """Make this new ledger a child of ``parent`` (the store calls it before :meth:`draw`)."""
        self.parent_id = parent.request_id
        self.depth = parent.depth + 1
        self.rank = rank
        self.cost_ceiling = cost_ceiling

    def draw(self, child_id: str, tokens: int, cost: int | None, now: float) -> None:
        """Record a child's draw (from :meth:`split`): held in ``reserved`` until it closes."""
        self.free -= tokens
        self.reserved += tokens
        self.children[child_id] = (tokens, cost or 0)
        self.cost_reserved += cost or 0
        self.events.append(_new(Event, ("child", now, None, 0, 0, tokens, False, 0, child_id, 0)))

    def settle_child(self, child: Ledger, now: float) -> None:
        """Fold a closed child back: its usage is consumed here, the rest returns to ``free``.

        Usage the child recorded beyond its ceiling (its ``overflow``) is charged here too,
        like a grant's over-use: to the free pool, and beyond it as ``overflow``. A child
        not (or no longer) drawn from here is ignored: a draw is settled exactly once.
        """
        draw = self.children.pop(child.request_id, None)
        if draw is None:
            return
        tokens, cost = draw
        used = child.consumed + child.overflow
        self.reserved -= tokens
        self.cost_reserved -= cost
        self.cost_consumed += child.cost_consumed
        self.children_cost_consumed += child.cost_consumed
        room = self.free + tokens
        charge = min(used, room)
        self.overflow += used - charge
        self.free = room - charge
        self.consumed += charge
        self.children_consumed += charge
        overuse = used - tokens if used > tokens else 0
        self.events.append(
            _new(
                Event,
                ("child_close", now, None, 0, used, tokens, False, overuse, child.request_id, 0),
            )
        )

    def _drop_children(self, now: float) -> None:
        """At close: draws of children that never settled are charged whole (a lost child).

        A child whose ledger is gone (a store lost it) used an unknown part of its draw:
        the whole draw (tokens and cost) counts as used by this request, so its usage is
        never dropped and its tokens are never handed out again (DESIGN invariant 9).
        """
        for child_id, (tokens, cost) in list(self.children.items()):
            del self.children[child_id]
            self.reserved -= tokens
            self.consumed += tokens
            self.children_consumed += tokens
            self.cost_reserved -= cost
            self.cost_consumed += cost
            self.children_cost_consumed += cost
            self.events.append(
                _new(Event, ("child_close", now, None, 0, tokens, tokens, False, 0, child_id, 0))
            )

    # ---------------------------------------------------------------- internals

    def _check_open(self, now: float) -> None:
        if self.status != OPEN:
            raise RequestClosed(self.request_id, self.status)
        if now >= self._next_lease:
            self.reap(now)

    def _expired(self, grant: Grant) -> bool:
        """Whether ``grant`` is this request's and its lease expired before it was settled."""
        if not isinstance(grant, Grant) or grant.request_id != self.request_id:
            return False
        return self._settled.get(grant.grant_id) == (grant.agent, "expire")

    def _open_grant(self, grant: Grant) -> Grant:
        if not isinstance(grant, Grant):
            raise ForeignGrant(getattr(grant, "request_id", None), self.request_id)
        if grant.request_id != self.request_id:
            raise ForeignGrant(grant.request_id, self.request_id)
        current = self.grants.get(grant.grant_id)
        if current is not None and current.agent == grant.agent:
            return current
        settled = self._settled.get(grant.grant_id)
        if settled is None or settled[0] != grant.agent:
            raise ForeignGrant(grant.request_id, self.request_id)
        error = GrantExpired if settled[1] == "expire" else GrantSettled
        raise error(grant.grant_id, grant.agent, settled[1])

    def _release(self, grant: Grant, now: float, how: str, note: str) -> None:
        total = grant.context_tokens + grant.output_tokens
        prices = self.grant_prices.pop(grant.grant_id, None)
        if prices is not None:
            self.cost_reserved -= grant.context_tokens * prices[0] + grant.output_tokens * prices[1]
        del self.grants[grant.grant_id]
        self._settled[grant.grant_id] = (grant.agent, how)
        self.reserved -= total
        self.free += total
        self.reserved_by[grant.agent] -= total
        kind = "expire" if how == "expire" else "release"
        self.events.append(
            _new(
                Event,
                (
                    kind,
                    now,
                    grant.agent,
                    grant.grant_id,
                    grant.context_tokens,
                    grant.output_tokens,
                    False,
                    0,
                    note,
                    0,
                ),
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the state (no events)."""
        return {
            "request_id": self.request_id,
            "status": self.status,
            "ceiling": self.ceiling,
            "consumed": self.consumed,
            "reserved": self.reserved,
            "free": self.free,
            "overflow": self.overflow,
            "outcome": self.outcome,
            "ceiling_usd": None if self.cost_ceiling is None else self.cost_ceiling / NANO,
            "cost_reserved_usd": self.cost_reserved / NANO,
            "cost_consumed_usd": self.cost_consumed / NANO,
            "parent_id": self.parent_id,
            "depth": self.depth,
            "children": {c: tokens for c, (tokens, _) in self.children.items()},
            "children_consumed": self.children_consumed,
            "agents": {
                a: {
                    "allocated": self.allocation[a],
                    "reserved": self.reserved_by[a],
                    "consumed": self.consumed_by[a],
                    "reserve": self.reserve.get(a, 0),
                    "calls": self.calls[a],
                    "truncated_calls": self.truncated_calls[a],
                    "input_cut_calls": self.input_cut_calls[a],
                    "overuse": self.overuse_by[a],
                    "cost_usd": self.cost_by[a] / NANO,
                }
                for a in self.ranks
            },
        }


def _check_plan(
    field: str, plan: Mapping[str, int] | None, ranks: Mapping[str, int]
) -> dict[str, int]:
    if plan is None:
        return {}
    if not isinstance(plan, Mapping):
        raise InvalidArgument(field, plan, "a mapping of agent names to token counts")
    clean = {}
    for agent, tokens in plan.items():
        if type(agent) is not str or agent not in ranks:
            raise UnknownAgent(agent, ranks)
        if type(tokens) is not int or not 0 <= tokens <= MAX_TOKENS:
            tokens = check_tokens(f"{field}[{agent}]", tokens)
        clean[agent] = tokens
    return clean
