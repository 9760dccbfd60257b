"""Controller and AsyncController: a policy and a store around the ledger.

All decisions of a request live once, in :class:`_Steps`: each operation is a generator
that asks the policy, then yields the store operation to carry out and receives its
result (or its error). The sync :class:`Request` and the async :class:`AsyncRequest` are
thin shells that only carry those store operations out, with blocking or awaited calls,
so there is no second copy of the logic.

Exactly once. Every mutating store call (open, begin, extend, finish, release, close, a
child's draw) carries an operation id the controller makes for the operation (a random
one, or one derived from an :func:`operation_ids` key), the same for every store call of
one operation (a ``begin`` looked again after a race reuses it: the refused call recorded
nothing). A call whose outcome is unknown (:class:`~apportion.errors.StoreOutcomeUnknown`:
the connection dropped after sending) is made again with the same id, up to
``store_retry.attempts`` calls with backoff (:class:`~apportion.retry.StoreRetry`); the
store answers a repeated id with the first outcome, so a retry never grants or settles
twice. After the last attempt the error is raised (a ``StoreUnavailable``).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import itertools
import math
import os
import secrets
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar

from apportion import ambient
from apportion.calls import CLOSED as CLOSED_CALL
from apportion.calls import (
    EXPIRED,
    OPEN,
    REFUSED,
    RELEASED,
    CallRecord,
    records_of,
    refusals_of,
)
from apportion.errors import (
    ApportionError,
    BudgetExceeded,
    CostExceeded,
    ForeignGrant,
    InvalidArgument,
    InvalidPrice,
    InvalidTokenCount,
    RequestClosed,
    StoreOutcomeUnknown,
    TreeTooDeep,
    UnknownModel,
    UnknownRequest,
    UsageWarning,
    WrapUpTooLarge,
)
from apportion.features import check_request_features, features_from, storable
from apportion.ledger import (
    CHILD_SEP,
    CLOSED,
    FAILED,
    MAX_COST,
    NANO,
    Event,
    Grant,
    check_ceiling,
    check_name,
    check_outcome,
    check_seconds,
    check_share,
    check_time,
    check_tokens,
)
from apportion.policies import Policy, resolve_policy
from apportion.policies.base import Observation
from apportion.pools import PRIORITY_RANKS, check_pool_name, check_priority
from apportion.reaper import Reaper
from apportion.retry import StoreRetry
from apportion.spec import Agent, Pipeline
from apportion.stores import LedgerView, Store, open_store
from apportion.stores.base import MAX_DEPTH_LIMIT, Reaped, check_op_id
from apportion.summary import Summary

StoreCall = tuple[str, tuple[Any, ...], dict[str, Any]]
T = TypeVar("T")
Steps = Generator[StoreCall, Any, T]

_NO_KWARGS: dict[str, Any] = {}
_READS = frozenset({"get", "events", "history", "get_with_features"})
"""Store calls retried like the calls with an operation id (reading twice changes nothing)."""
_OP_KEY: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "apportion_op_key", default=None
)


@contextlib.contextmanager
def operation_ids(key: str) -> Iterator[None]:
    """Derive the operation ids of the controller's operations in this block from ``key``.

    The n-th operation started in the block (in this thread or task) gets the id
    ``KEY.n``, so a caller that runs the same operations again with the same key (a retried
    HTTP call with its ``Idempotency-Key``: the gateway does this) repeats their ids, and
    the store answers them with their first outcomes instead of carrying them out twice.

    Args:
        key: 1 to 240 printable ASCII characters without spaces (a digest of the caller's
            key, say).

    Raises:
        InvalidArgument: a bad key.
    """
    if check_op_id(key) is None or len(key) > 240:
        raise InvalidArgument("key", key, "1 to 240 printable ASCII characters, no spaces")
    token = _OP_KEY.set([key, 0])
    try:
        yield
    finally:
        _OP_KEY.reset(token)


_op_prefix = secrets.token_hex(8)  # this process's: ids stay unique across processes
_op_counter = itertools.count(1)


def _fresh_op_prefix() -> None:
    """A forked child draws a prefix of its own (its parent's counter goes on in both)."""
    global _op_prefix
    _op_prefix = secrets.token_hex(8)


os.register_at_fork(after_in_child=_fresh_op_prefix)


def _new_op_id() -> str:
    """The next operation id: derived from the :func:`operation_ids` key in force.

    Without one, unique: the process's random prefix and a counter.
    """
    keyed = _OP_KEY.get()
    if keyed is None:
        return f"{_op_prefix}-{next(_op_counter)}"
    keyed[1] += 1
    return f"{keyed[0]}.{keyed[1]}"


def _takes_op_ids(store: Store) -> bool:
    """Whether the store's operations take ``op_id`` (a store of the older contract not)."""
    try:
        parameters = inspect.signature(store.begin).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - a builtin or odd callable
        return False
    return any(p.name == "op_id" or p.kind is p.VAR_KEYWORD for p in parameters)


class _Config:
    """What every request of a controller shares."""

    def __init__(
        self,
        pipeline: Pipeline,
        policy: str | Policy,
        store: str | Store,
        clock: Callable[[], float],
        lease_seconds: float,
        request_ttl: float,
        telemetry: Any = None,
        catalog: Any = None,
        reap_every: float = 30.0,
        wrap_up_tokens: int = 0,
        show_budget: bool = False,
        max_depth: int = 16,
        store_retry: StoreRetry | None = None,
    ) -> None:
        if not isinstance(pipeline, Pipeline):
            raise InvalidArgument("pipeline", pipeline, "an apportion.Pipeline")
        lease_seconds = check_seconds("lease_seconds", lease_seconds)
        request_ttl = check_seconds("request_ttl", request_ttl)
        reap_every = check_seconds("reap_every", reap_every)
        self.wrap_up_tokens = check_tokens("wrap_up_tokens", wrap_up_tokens)
        if not isinstance(show_budget, bool):
            raise InvalidArgument("show_budget", show_budget, "True or False")
        self.show_budget = show_budget
        if type(max_depth) is not int or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
            raise InvalidArgument("max_depth", max_depth, f"an integer in [1, {MAX_DEPTH_LIMIT}]")
        self.max_depth = max_depth
        self.pipeline = pipeline
        self.policy = resolve_policy(policy)
        self.policy.check_pipeline(pipeline)
        self.store = open_store(store)
        if store_retry is not None and not isinstance(store_retry, StoreRetry):
            raise InvalidArgument("store_retry", store_retry, "an apportion.StoreRetry")
        self.retry = StoreRetry() if store_retry is None else store_retry
        self.op_ids = _takes_op_ids(self.store)
        self.fresh_op_ids = self.op_ids and self.store.replies_may_be_lost
        self.clock = _checked_clock(clock)
        self.lease_seconds = lease_seconds
        self.request_ttl = request_ttl
        self.reap_every = reap_every
        self.next_reap = -math.inf
        self.ranks = {a.name: a.priority.rank for a in pipeline.agents}
        self.peers: tuple[_Config, ...] = ()  # see Controller.reaps_for
        self.sinks: list[Any] = []
        if telemetry is not None:
            from apportion.telemetry import DecisionRecorder, open_sinks

            self.sinks = open_sinks(telemetry)
            if self.sinks:  # the policy's own decisions (a rollout's) go there too
                self.policy.attach_telemetry(DecisionRecorder(self.sinks))
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        if isinstance(catalog, str) and ("\x00" in catalog or not catalog.strip()):
            raise InvalidArgument("catalog", catalog, "a catalog file's path")
        if isinstance(catalog, str):
            check_name("catalog", catalog)
        self._catalog = catalog
        self._cheapest: tuple[int, str] | None = None

    @property
    def catalog(self) -> Any:
        """The model catalog (LiteLLM's bundled map unless one was given), built on first use."""
        if self._catalog is None or isinstance(self._catalog, str):
            from apportion.catalog import Catalog

            path = self._catalog
            self._catalog = Catalog() if path is None else Catalog.from_yaml(path)
        return self._catalog

    @property
    def routes(self) -> bool:
        return self.policy.routes

    def cheapest_call(self) -> tuple[int, str] | None:
        """nano-USD of the cheapest call any agent could make, and its model (known models)."""
        if self._cheapest is None:
            catalog = self.catalog
            names = {a.model for a in self.pipeline.agents if a.model}
            if self.routes:
                names |= {m.name for m in catalog.routable()}
            best: tuple[int, str] | None = None
            least_out = min(max(1, a.min_output) for a in self.pipeline.agents)
            for name in sorted(names):
                model = catalog.find(name)
                if model is None or not model.priced:
                    continue
                pin, pout = model.nano_prices()
                cost = pin + pout * least_out
                if best is None or cost < best[0]:
                    best = (cost, name)
            self._cheapest = best or (0, "")
        return self._cheapest if self._cheapest[1] else None

    def prices_for(
        self, agent: str, model: str | None, ceiling_usd: float | None
    ) -> dict[str, Any]:
        """The ``model=``/``prices=`` keywords of a store's ``begin`` for one call.

        Raises:
            UnknownModel: a cost ceiling is set and the model is in no catalog.
            InvalidPrice: a cost ceiling is set and the call has no model or no prices.
        """
        if model is None:
            if ceiling_usd is not None:
                raise InvalidPrice(
                    "model", None, f"agent {agent!r}: a cost ceiling needs the call's model"
                )
            return _NO_KWARGS
        try:
            info = self.catalog.get(model)
        except UnknownModel:
            if ceiling_usd is not None:
                raise
            return {"model": model}
        if not info.priced:
            if ceiling_usd is not None:
                info.nano_prices()  # raises InvalidPrice naming the model
            return {"model": model}
        return {"model": model, "prices": info.nano_prices()}

    def reap_due(self) -> bool:
        """Whether a lazy reap is due; if so, the next one is scheduled (one caller wins)."""
        now = self.clock()
        if now < self.next_reap:
            return False
        self.next_reap = now + self.reap_every
        return True

    def new_id(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"

    def op(self) -> dict[str, Any]:
        """The ``op_id`` keyword of one operation's store calls (none for an older store)."""
        if self.fresh_op_ids or (self.op_ids and _OP_KEY.get() is not None):
            return {"op_id": _new_op_id()}
        return _NO_KWARGS


class _Tree:
    """A request's place in its tree: its parent, how it draws from it, its children."""

    __slots__ = (
        "attached",
        "ceiling",
        "children",
        "depth",
        "handle",
        "ids",
        "lock",
        "name",
        "parent",
        "priority",
        "share",
    )

    def __init__(
        self,
        parent: _Steps | None = None,
        name: str = "",
        ceiling: int | None = None,
        share: float | None = None,
        priority: str = "standard",
    ) -> None:
        self.parent = parent
        self.name = name
        self.ceiling = ceiling
        self.share = share
        self.priority = priority
        self.depth: int = 0 if parent is None else parent.tree.depth + 1
        self.children: list[Any] = []  # the child requests (Request or AsyncRequest) made
        self.ids: set[str] = set()  # the ids given to children
        self.lock = threading.Lock()  # threads making children of one request at once
        self.attached = False  # opened already for ``with``: by a fan-out, or elsewhere
        self.handle = False  # a handle on a request another process runs (``attach``)


class _Steps:
    """The logic of one request, written once; its shells carry out the store calls."""

    __slots__ = ("ceiling_usd", "closed", "config", "obs", "outcome", "pool", "tree")

    def __init__(
        self,
        config: _Config,
        ceiling: int,
        features: Mapping[str, Any] | None,
        request_id: str | None,
        pool: str | None = None,
        pool_priority: str = "standard",
        ceiling_usd: float | None = None,
        tree: _Tree | None = None,
    ) -> None:
        ceiling = check_ceiling(ceiling)
        clean = check_request_features(features)
        self.tree = _Tree() if tree is None else tree
        self.ceiling_usd: int | None = None
        if ceiling_usd is not None:
            self.ceiling_usd = _check_ceiling_usd(config, ceiling_usd)
        self.pool: dict[str, str] = {}
        if pool is not None:
            self.pool = {
                "pool": check_pool_name(pool),
                "pool_priority": check_priority(pool_priority),
            }
        self.config = config
        self.obs = Observation(request_id or config.new_id(), config.pipeline, ceiling, clean)
        self.obs.ceiling_usd = None if ceiling_usd is None else float(ceiling_usd)
        if self.ceiling_usd is not None or config.routes:
            self.obs.catalog = config.catalog
        self.closed = False
        self.outcome: float | None = None

    @property
    def opened(self) -> bool:
        return self.obs.state is not None

    def _usable(self) -> None:
        if self.closed is False and self.obs.state is not None:
            return
        if self.closed:
            raise RequestClosed(self.obs.request_id, self.obs.state.status)
        if self.obs.state is None:
            raise RuntimeError("the request is not open: use it in a `with` block or call open()")

    def _own(self, grant: Grant) -> Grant:
        """``grant`` as the store knows it (a kind's member on its kind's line)."""
        if not isinstance(grant, Grant) or grant.request_id != self.obs.request_id:
            raise ForeignGrant(getattr(grant, "request_id", None), self.obs.request_id)
        record = self.obs.calls.get(grant.grant_id)
        if record is not None and record.kind is not None and grant.agent == record.agent:
            return grant._replace(agent=record.kind)
        return grant

    def open(self) -> Steps[None]:
        if self.obs.state is not None:
            raise RuntimeError(f"request {self.obs.request_id!r} is already open")
        obs, config = self.obs, self.config
        if config.reap_due():
            with contextlib.suppress(ApportionError):  # the open itself will say what is wrong
                yield from _reap(config)
        if self.tree.parent is not None:
            yield from self.tree.parent.draw_children([self])
            return
        plan = config.policy.plan(obs)
        obs.state = yield (
            "open",
            (obs.request_id, config.ranks, obs.ceiling, config.clock()),
            {
                "allocation": plan.allocation,
                "reserve": plan.reserve,
                "ttl": config.request_ttl,
                **self.pool,
                **({"ceiling_usd": self.ceiling_usd} if self.ceiling_usd is not None else {}),
                **_stored(obs.features),
                **config.op(),
            },
        )

    def new_child(
        self,
        name: object,
        ceiling: object,
        share: object,
        priority: object,
        features: Mapping[str, Any] | None,
    ) -> _Steps:
        """The steps of a new child request (not opened yet: its draw happens at open)."""
        self._usable()
        name = check_name("name", name)
        if not name or CHILD_SEP in name:
            raise InvalidArgument(
                "name", name, f"a child's name is not empty, without {CHILD_SEP!r}"
            )
        cap = None if ceiling is None else check_ceiling(ceiling)
        part = None if share is None else check_share(share)
        if cap is None and part is None:
            raise InvalidArgument("ceiling", None, "a child needs ceiling= or share=")
        tree = _Tree(self, name, cap, part, check_priority(priority))
        if tree.depth > self.config.max_depth:
            raise TreeTooDeep(self.obs.request_id, tree.depth, self.config.max_depth)
        child_id = base = f"{self.obs.request_id}{CHILD_SEP}{name}"
        with self.tree.lock:
            suffix = len(self.tree.ids)
            while child_id in self.tree.ids:
                suffix += 1
                child_id = f"{base}#{suffix}"
            self.tree.ids.add(child_id)
        features = self.obs.features if features is None else features
        return _Steps(self.config, cap or 1, features, child_id, tree=tree)

    def draw_children(self, kids: list[_Steps]) -> Steps[None]:
        """Open ``kids`` (children of this request) in one store step, drawing from it.

        Their plan is the policy's for the ceiling the first is expected to draw (from this
        request's state as just read); the store's atomic draw decides the real ceilings.
        """
        self._usable()
        obs, config = self.obs, self.config
        first = kids[0].tree
        ceiling, share = first.ceiling, first.share
        ranks = [PRIORITY_RANKS[k.tree.priority] for k in kids]
        expected = ceiling or 1
        if share is not None:  # what the first is expected to get, from the state now
            obs.state = yield ("get", (obs.request_id,), _NO_KWARGS)
            total = math.floor(obs.state.spare(min(ranks)) * share)
            expected = total * 2 ** ranks[0] // sum(2**r for r in ranks)
            expected = max(1, expected if ceiling is None else min(expected, ceiling))
        kids[0].obs.ceiling = expected
        plan = config.policy.plan(kids[0].obs)
        obs.state, states = yield (
            "open_children",
            (obs.request_id, [k.obs.request_id for k in kids], config.ranks, config.clock()),
            {
                "priorities": [k.tree.priority for k in kids],
                "ceiling": ceiling,
                "share": share,
                "allocation": plan.allocation,
                "reserve": plan.reserve,
                "ttl": config.request_ttl,
                "max_depth": config.max_depth,
                **_stored(kids[0].obs.features),  # a fan-out's children share theirs
                **config.op(),
            },
        )
        for kid, state in zip(kids, states, strict=True):
            kid.obs.state = state
            kid.obs.ceiling = state.ceiling
            if state.cost_ceiling is not None:
                kid.ceiling_usd = state.cost_ceiling
                kid.obs.ceiling_usd = state.cost_ceiling / NANO
                kid.obs.catalog = config.catalog

    def _closed_tree(self) -> Steps[None]:
        """After this request closed: its open children closed with it (the store did)."""
        for kid in self.tree.children:
            steps = kid._steps
            if steps.opened and not steps.closed:
                steps.closed = True
                with contextlib.suppress(ApportionError):
                    steps.obs.state = yield ("get", (steps.obs.request_id,), _NO_KWARGS)
                _settle_open_calls(steps.obs, self.config.clock())
                yield from steps._closed_tree()
                yield from steps._record()
        parent = self.tree.parent
        if parent is not None and not parent.closed:
            with contextlib.suppress(ApportionError):  # its usage rolled up there
                parent.obs.state = yield ("get", (parent.obs.request_id,), _NO_KWARGS)

    def begin(
        self,
        agent: str,
        input_tokens: int,
        output_tokens: int | None,
        model: str | None = None,
        min_context: int = 0,
        wrap_up: int | None = None,
    ) -> Steps[Grant]:
        self._usable()
        spec = self.config.pipeline.resolve(agent)  # a listed agent, else its kind's template
        input_tokens = check_tokens("input_tokens", input_tokens)
        if output_tokens is not None:
            output_tokens = check_tokens("output_tokens", output_tokens)
        min_context = check_tokens("min_context_tokens", min_context)
        if min_context > input_tokens:
            raise InvalidTokenCount(
                "min_context_tokens",
                min_context,
                f"more than the input in hand ({input_tokens} tokens)",
            )
        if wrap_up is None:
            wrap_up = self.config.wrap_up_tokens
        wrap_up = check_tokens("wrap_up_tokens", wrap_up)
        try:
            grant = yield from self._grant(
                spec, input_tokens, output_tokens, model, min_context, wrap_up
            )
        except (BudgetExceeded, CostExceeded):
            now = self.config.clock()
            kind = None if agent == spec.name else spec.name
            self.obs.refused.append(
                CallRecord(
                    agent, 0, input_tokens, 0, 0, now, status=REFUSED, settled_at=now, kind=kind
                )
            )
            asked = (input_tokens, output_tokens or 0)
            yield from self._note(Event("refused", now, spec.name, 0, *asked, note="begin"))
            raise
        if agent == spec.name:
            return grant
        record = self.obs.calls.get(grant.grant_id)
        if record is not None:
            record.agent, record.kind = agent, spec.name
        return grant._replace(agent=agent)  # the caller's name; the store knows its kind's

    def _grant(
        self,
        spec: Agent,
        input_tokens: int,
        output_tokens: int | None,
        model: str | None,
        min_context: int = 0,
        wrap_up: int = 0,
    ) -> Steps[Grant]:
        """Ask the policy, then the store, for a grant (looking again once after a race).

        A policy's context below ``min_context`` is raised to it when what the agent may
        draw (and the cost ceiling) covers it with the policy's output; else it stands.
        A wrap-up reserve is added to the policy's output (the grant's output holds both);
        when the agent cannot draw both, the policy's output shrinks to make room, and
        when that leaves less than the agent's least output the begin is refused
        (``WrapUpTooLarge``).
        """
        obs, config = self.obs, self.config
        agent = spec.name
        op = config.op()  # one id for both attempts: a refused call records none
        for attempt in range(2):
            decision = config.policy.route(obs, spec, input_tokens, output_tokens)
            ctx, out, chosen = decision[0], decision[1], decision[2]
            if out < spec.min_output or ctx < 0 or (ctx == 0 and input_tokens > 0):
                if attempt == 0:  # the state may have moved under the policy: look again
                    obs.state = yield ("get", (obs.request_id,), _NO_KWARGS)
                    continue
                raise BudgetExceeded(
                    agent,
                    min(input_tokens, 1) + spec.min_output,
                    obs.state.available_for(agent),
                    reason="not enough left for this agent to run",
                )
            priced = _NO_KWARGS
            use = model or spec.model
            if chosen is not None or use is not None:
                use = (chosen if config.routes else None) or use
                priced = config.prices_for(agent, use, obs.ceiling_usd)
            elif self.ceiling_usd is not None:
                priced = config.prices_for(agent, None, obs.ceiling_usd)
            if ctx < min_context and _affords(obs, agent, min_context, out + wrap_up, priced):
                ctx = min_context
            out = _cost_fitted(obs, ctx, out, wrap_up, priced, max(1, spec.min_output))
            reserve = _NO_KWARGS
            if wrap_up:
                room = obs.state.available_for(agent) - ctx  # the store has the last word
                if out + wrap_up > room:
                    out = room - wrap_up
                    if out < max(1, spec.min_output):
                        raise WrapUpTooLarge(agent, wrap_up, max(0, room))
                out += wrap_up
                reserve = {"wrap_up_tokens": wrap_up}
            now = config.clock()
            try:
                grant, obs.state = yield (
                    "begin",
                    (obs.request_id, agent, ctx, out, now, config.lease_seconds),
                    {**priced, "asked": input_tokens, **reserve, **op},
                )
            except BudgetExceeded:
                if attempt:
                    raise
                obs.state = yield ("get", (obs.request_id,), _NO_KWARGS)  # raced: look again
            else:
                obs.calls[grant.grant_id] = CallRecord(
                    agent,
                    grant.grant_id,
                    input_tokens,
                    grant.context_tokens,
                    grant.output_tokens,
                    now,
                    grant.lease_expires_at,
                    model=priced.get("model", use),
                    prices=priced.get("prices"),
                    predicted_output=decision[3] if len(decision) > 3 else None,
                    wrap_up_reserve=grant.wrap_up_tokens,
                )
                return grant  # type: ignore[no-any-return]
        raise AssertionError("unreachable")  # pragma: no cover

    def extend(self, grant: Grant, output_tokens: int, context_tokens: int) -> Steps[Grant | None]:
        self._usable()
        stored = self._own(grant)
        name, grant = grant.agent, stored
        output_tokens = check_tokens("output_tokens", output_tokens)
        context_tokens = check_tokens("context_tokens", context_tokens)
        obs, config = self.obs, self.config
        record = obs.calls.get(grant.grant_id)
        if grant.grant_id not in obs.state.grants:
            obs.state = yield ("get", (obs.request_id,), _NO_KWARGS)
        extra = 0  # a settled grant goes to the store, which says how it was settled
        if grant.grant_id in obs.state.grants:
            extra = min(
                output_tokens, config.policy.extend(obs, grant, output_tokens, context_tokens)
            )
            if extra <= 0:
                if record is not None:
                    record.wrap_up = True
                yield from self._note_wrap_up(grant, output_tokens, context_tokens)
                return None
        try:
            grown = yield from self._grow(grant, extra, context_tokens)
        except BudgetExceeded:
            if record is not None:
                record.wrap_up = True
            yield from self._note_wrap_up(grant, output_tokens, context_tokens)
            return None  # raced: nothing left to spare
        if record is not None:
            record.extensions += 1
            record.extension_context += context_tokens
            record.output_cap = grown.output_tokens
        return grown if grown.agent == name else grown._replace(agent=name)

    def _note(self, event: Event) -> Steps[None]:
        """Tell the store's event feed (live dashboards) what the ledger does not record.

        A note never breaks the request: a store that cannot take it is left alone.
        """
        with contextlib.suppress(ApportionError):
            yield ("note", (self.obs.request_id, event), _NO_KWARGS)

    def _note_wrap_up(self, grant: Grant, output_tokens: int, context_tokens: int) -> Steps[None]:
        """Note an extension refused: the agent must wrap up."""
        now = self.config.clock()
        event = Event(
            "refused",
            now,
            grant.agent,
            grant.grant_id,
            context_tokens,
            output_tokens,
            note="extend",
        )
        yield from self._note(event)

    def note_fitted(self, grant: Grant, messages: int, tokens: int) -> Steps[None]:
        """Note that fitting dropped or shortened messages of ``grant``'s call."""
        stored = self._own(grant)
        messages = check_tokens("messages", messages)
        tokens = check_tokens("tokens", tokens)
        now = self.config.clock()
        event = Event("fitted", now, stored.agent, stored.grant_id, tokens, 0, note=str(messages))
        yield from self._note(event)

    def renew(self, grant: Grant) -> Steps[Grant]:
        self._usable()
        stored = self._own(grant)
        name, grant = grant.agent, stored
        grown = yield from self._grow(grant, 0, 0)
        return grown if grown.agent == name else grown._replace(agent=name)

    def _grow(self, grant: Grant, output_tokens: int, context_tokens: int) -> Steps[Grant]:
        """Extend ``grant`` in the store (a renewal when both are 0), renewing its lease."""
        obs, config = self.obs, self.config
        grown, obs.state = yield (
            "extend",
            (
                obs.request_id,
                grant,
                output_tokens,
                context_tokens,
                config.clock(),
                config.lease_seconds,
            ),
            config.op(),
        )
        record = obs.calls.get(grant.grant_id)
        if record is not None:
            record.lease_expires_at = grown.lease_expires_at
        return grown  # type: ignore[no-any-return]

    def finish(
        self,
        grant: Grant,
        input_tokens: int | None,
        output_tokens: int | None,
        truncated: bool,
        text: str | None = None,
        usage_estimated: bool = False,
    ) -> Steps[UsageWarning | None]:
        """Settle ``grant``; returns the warning to give when the usage had to be guessed."""
        self._usable()
        stored = self._own(grant)
        name, grant = grant.agent, stored
        if input_tokens is not None:
            input_tokens = check_tokens("input_tokens", input_tokens)
        if output_tokens is not None:
            output_tokens = check_tokens("output_tokens", output_tokens)
        if text is not None and not isinstance(text, str):
            raise InvalidArgument("text", text, "the answer's text is a string")
        if not isinstance(usage_estimated, bool):
            raise InvalidArgument("usage_estimated", usage_estimated, "True or False")
        obs, config = self.obs, self.config
        record = obs.calls.get(grant.grant_id)
        current = obs.state.grants.get(grant.grant_id, grant)
        used_input, used_output, guessed = _settled_usage(
            current, record, input_tokens, output_tokens, text
        )
        allocation = None
        if grant.grant_id in obs.state.grants:
            allocation = config.policy.on_finish(obs, grant, used_input, used_output, truncated)
        now = config.clock()
        obs.state = yield (
            "finish",
            (obs.request_id, grant, used_input, used_output, now),
            {"truncated": bool(truncated), "allocation": allocation, **config.op()},
        )
        if record is not None:
            record.finish(used_input, used_output, bool(truncated), now)
            if guessed or usage_estimated:
                record.note({"usage_estimated": True})
        if not guessed:
            return None
        said = "no usage" if output_tokens is None else f"{output_tokens} output tokens"
        return UsageWarning(
            f"grant {grant.grant_id} of {name!r} was finished with {said}: settled "
            f"{used_input} input and {used_output} output tokens, estimated",
            agent=name,
            grant_id=grant.grant_id,
            reported=output_tokens,
            input_tokens=used_input,
            output_tokens=used_output,
        )

    def release(self, grant: Grant) -> Steps[None]:
        self._usable()
        grant = self._own(grant)
        obs = self.obs
        now = self.config.clock()
        obs.state = yield ("release", (obs.request_id, grant, now), self.config.op())
        record = obs.calls.get(grant.grant_id)
        if record is not None:
            record.settle(RELEASED, now)

    def close(self, status: str) -> Steps[None]:
        self._usable()
        if self.config.sinks:
            yield from self._close_others_children(status)
        obs = self.obs
        now = self.config.clock()
        try:
            obs.state = yield (
                "close",
                (obs.request_id, now),
                {"status": status, "outcome": self.outcome, **self.config.op()},
            )
        except RequestClosed:
            self.closed = True  # the store closed it already (``reap``: expired)
            obs.state = yield ("get", (obs.request_id,), _NO_KWARGS)
            _settle_open_calls(obs, now)
            yield from self._closed_tree()
            raise
        self.closed = True
        history = (yield from self._adopt_history()) if self.tree.handle else None
        _settle_open_calls(obs, now)
        yield from self._closed_tree()
        _learn(self.config, obs, self.outcome)
        yield from self._record(history)

    def _adopt_history(self) -> Steps[list[Event] | None]:
        """A handle closing its request: what was done through other handles, from the store.

        The calls made through other handles (in the gateway, each call takes one) and the
        begins they had refused, as the ledger's events and the store's notes tell them,
        join this handle's records, so that the policy learns from every call of the
        request and telemetry records them all (a call's cost at its model's prices in the
        catalog). Returns the history read (``None`` when the store could not give it).
        """
        try:
            history: list[Event] = yield ("history", (self.obs.request_id,), _NO_KWARGS)
        except ApportionError:
            return None
        _adopt(self.config, self.obs, history)
        return history

    def _close_others_children(self, status: str) -> Steps[None]:
        """Before this request closes: close its open children opened elsewhere, each first.

        The store would close them with this request, but a child reaches telemetry from
        the process that holds its steps: one opened through another handle (a gateway
        call, another worker's ``attach``) and left open would reach no sink. Each is
        closed here through a handle of its own (with ``status``), after its own children
        opened elsewhere; one closed meanwhile was recorded by whoever closed it. Children
        this process opened are closed with this request, as always (:meth:`_closed_tree`).
        """
        obs = self.obs
        with contextlib.suppress(ApportionError):
            obs.state = yield ("get", (obs.request_id,), _NO_KWARGS)
        mine = {k._steps.obs.request_id: k._steps for k in self.tree.children}
        for child_id in list(obs.state.children):
            steps = mine.get(child_id)
            if steps is None:
                steps = _attached(self.config, child_id)
                try:
                    steps.obs.state = yield from _get_open(steps)
                    yield from steps.close(status)
                except (RequestClosed, UnknownRequest):
                    continue  # closed meanwhile
            elif steps.opened and not steps.closed:
                yield from steps._close_others_children(status)

    def _record(self, history: list[Event] | None = None) -> Steps[None]:
        """Send the closed request to telemetry (a child closed with its parent too).

        ``history``: the request's events and notes, when read already.
        """
        if not self.config.sinks:
            return
        events = history
        if events is None:
            try:  # the ledger's events and the notes (refused begins, from any process)
                events = yield ("history", (self.obs.request_id,), _NO_KWARGS)
            except ApportionError:
                return  # gone already (retention): nothing left to record
        try:
            from apportion.telemetry import emit

            parent = self.tree.parent  # its record follows from here, unless a handle's
            emit(
                self.config.sinks,
                self.obs,
                events,
                parent_local=parent is not None and not parent.tree.handle,
            )
        except Exception as exc:  # telemetry must never break the request
            warnings.warn(f"telemetry failed: {exc!r}", stacklevel=5)

    def annotate(self, grant: Grant, fields: Mapping[str, Any]) -> None:
        self._own(grant)
        record = self.obs.calls.get(grant.grant_id)
        if record is not None:
            record.note(fields)

    def score(self, value: float) -> None:
        if value is None:
            raise InvalidArgument("outcome", value, "an outcome score is a finite number")
        outcome = check_outcome(value)
        if self.closed:
            raise RequestClosed(self.obs.request_id, self.obs.state.status)
        self.outcome = outcome


def _settled_usage(
    grant: Grant,
    record: CallRecord | None,
    input_tokens: int | None,
    output_tokens: int | None,
    text: str | None,
) -> tuple[int, int, bool]:
    """The usage to settle ``finish`` with, and whether it was guessed (see Request.finish).

    ``grant`` is the grant as the ledger holds it (extensions included).
    """
    guessed = input_tokens is None or output_tokens is None
    used_input = grant.context_tokens if input_tokens is None else input_tokens
    if text is not None and (output_tokens is None or output_tokens == 0 < len(text.strip())):
        return used_input, _count_text(record, grant, text), True  # none, or 0 beside text
    used_output = grant.output_tokens if output_tokens is None else output_tokens
    return used_input, used_output, guessed


def _count_text(record: CallRecord | None, grant: Grant, text: str) -> int:
    """Tokens of an answer's ``text`` by its model's tokenizer (else about 4 characters each)."""
    from apportion.tokens.counting import counter_for

    model = grant.model or (record.model if record is not None else None)
    if model:
        with contextlib.suppress(ApportionError):
            return counter_for(model).count_text(text)
    return counter_for(model or "unknown", "approximate").count_text(text)


def _adopt(config: _Config, obs: Observation, history: list[Event]) -> None:
    """The calls and refused begins of ``history`` (a request's, from the store) join ``obs``.

    Each call is priced from the catalog, as it was; the records ``obs`` holds already
    (made by this process) are kept, caught up with what the store tells of them.
    """
    calls = records_of(history)
    for record in calls.values():
        if record.model is not None:
            with contextlib.suppress(ApportionError):
                record.prices = config.prices_for(record.agent, record.model, None).get("prices")
    for grant_id, record in obs.calls.items():  # this process's own know more
        told = calls.get(grant_id)
        if told is not None:
            record.catch_up(told)
        calls[grant_id] = record
    obs.calls.clear()
    obs.calls.update(sorted(calls.items()))
    obs.refused.extend(refusals_of(history, obs.refused))


def _learn(config: _Config, obs: Observation, outcome: float | None) -> None:
    """The policy learns from a request that ended; a failure is a warning, never an error."""
    try:
        config.policy.learn(obs, outcome)
    except Exception as exc:  # learning must never break the request
        warnings.warn(f"policy {config.policy.name!r} failed to learn: {exc!r}", stacklevel=5)


def _reap(config: _Config) -> Steps[int]:
    """Expire ended leases and overdue requests store-wide; learn from and record the expired.

    An expired request is rebuilt from its stored state, events and notes, with the
    features it opened with (integration notes stayed with the process that ran it, which
    may be gone); its policy learns from its calls (``Policy.learn`` with no outcome) and
    its record goes to telemetry. Requests of another pipeline sharing the store are left
    to their own controllers, unless one is a peer (``Controller.reaps_for``).
    """
    reaped: Reaped = yield ("reap_expired", (config.clock(),), _NO_KWARGS)
    owners = {frozenset(c.ranks): c for c in (*config.peers, config)}
    for request_id in reaped.expired:
        try:
            state = yield ("get", (request_id,), _NO_KWARGS)
            history = yield ("history", (request_id,), _NO_KWARGS)
        except ApportionError:
            continue  # gone already (retention): nothing left to learn or record
        owner = owners.get(frozenset(state.ranks))
        if owner is None:
            continue
        features = features_from(history)
        obs = Observation(request_id, owner.pipeline, state.ceiling, features, state)
        _adopt(owner, obs, history)
        _learn(owner, obs, None)
        if owner.sinks:
            from apportion.telemetry import emit

            emit(owner.sinks, obs, history)
    return reaped.settled


def _affords(obs: Observation, agent: str, ctx: int, out: int, priced: Mapping[str, Any]) -> bool:
    """Whether a grant of ``ctx`` + ``out`` fits what ``agent`` may draw, in tokens and cost."""
    state = obs.state
    if ctx + out > state.available_for(agent):
        return False
    prices = priced.get("prices")
    left = state.cost_available()
    return prices is None or left is None or ctx * prices[0] + out * prices[1] <= left


def _cost_fitted(
    obs: Observation, ctx: int, out: int, wrap_up: int, priced: Mapping[str, Any], least: int
) -> int:
    """The output cap ``out``, lowered so that the grant's full-size cost fits the cost left.

    A policy grants tokens without the call's prices (a non-routing one does not know the
    model), and the ledger charges an open grant at its full size: a generous cap on a
    dear model would have the call refused although its answer costs a fraction of it (on
    the ``routing`` workload, ``uniform``'s formatter was refused in every request with
    a third of the cost ceiling left). A cap costs only what the answer writes, so it is
    the cap that gives way, never below ``least``: when even that does not fit (the input
    alone costs too much), ``out`` is returned as is and the store refuses the grant,
    naming its full cost.
    """
    prices = priced.get("prices")
    if prices is None:
        return out
    left = obs.state.cost_available()
    if left is None:
        return out
    over = ctx * prices[0] + (out + wrap_up) * prices[1] - left
    if over <= 0 or prices[1] <= 0:
        return out
    fitted = out - -(-over // prices[1])  # the fewest output tokens whose cost covers ``over``
    return fitted if fitted >= least else out


def _settle_open_calls(obs: Observation, now: float) -> None:
    """At close: calls whose lease ran out expired; the others were released by the close."""
    for record in obs.calls.values():
        if record.status == OPEN:
            record.settle(EXPIRED if record.lease_expires_at <= now else CLOSED_CALL, now)


def _check_ceiling_usd(config: _Config, value: object) -> int:
    """A cost ceiling in USD as nano-USD, refused below the cheapest possible call."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_COST / NANO
        or math.isnan(value)
    ):
        raise InvalidPrice(
            "ceiling_usd",
            value,
            f"a cost ceiling is a positive number of USD up to {MAX_COST // NANO}",
        )
    nano = math.floor(value * NANO)
    cheapest = config.cheapest_call()
    if cheapest is not None and nano < cheapest[0]:
        raise InvalidPrice(
            "ceiling_usd",
            value,
            f"below the cheapest possible call, {cheapest[0] / NANO:.9f} USD "
            f"(one input token and the least output on {cheapest[1]!r})",
        )
    return nano


def _stored(features: Mapping[str, Any]) -> dict[str, Any]:
    """The ``features`` keyword of a store's open: what it keeps of them, passed when any."""
    kept = storable(features)
    return {"features": kept} if kept else _NO_KWARGS


def _checked_clock(clock: Callable[[], float]) -> Callable[[], float]:
    """``clock``, with every reading checked to be a finite time (the standard ones as is)."""
    if clock in (time.time, time.monotonic, time.perf_counter):
        return clock
    if not callable(clock):
        raise InvalidArgument("clock", clock, "a function returning the time in seconds")

    def now() -> float:
        return check_time("clock()", clock())

    return now


def _attached(config: _Config, request_id: object) -> _Steps:
    """The steps of a handle on an open request of the store (see ``Controller.attach``)."""
    request_id = check_name("request_id", request_id)
    steps = _Steps(config, 1, None, request_id)
    steps.tree.attached = steps.tree.handle = True
    return steps


def _get_open(steps: _Steps) -> Steps[Any]:
    """The state of an attached request, refused when closed; its features as it opened."""
    state, features = yield ("get_with_features", (steps.obs.request_id,), _NO_KWARGS)
    if state.status != "open":
        raise RequestClosed(steps.obs.request_id, state.status)
    steps.obs.ceiling = state.ceiling
    if state.cost_ceiling is not None:
        steps.ceiling_usd = state.cost_ceiling
        steps.obs.ceiling_usd = state.cost_ceiling / NANO
    steps.tree.depth = state.depth
    steps.obs.features = features
    return state


def _retried(name: str, kwargs: Mapping[str, Any], attempt: int, retry: StoreRetry) -> bool:
    """Whether a call whose outcome is unknown is made again (an id, or a read; calls left)."""
    return attempt < retry.attempts and ("op_id" in kwargs or name in _READS)


def _gave_up(error: StoreOutcomeUnknown, attempts: int) -> StoreOutcomeUnknown:
    if attempts == 1:
        return error
    return StoreOutcomeUnknown(error.url, f"{error.reason} (after {attempts} attempts)")


def _call(config: _Config, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One store call, made again with the same arguments while its outcome is unknown."""
    method, retry = getattr(config.store, name), config.retry
    attempt = 1
    while True:
        try:
            return method(*args, **kwargs)
        except StoreOutcomeUnknown as exc:
            if not _retried(name, kwargs, attempt, retry):
                raise _gave_up(exc, attempt) from None
        retry.sleep(retry.delay(attempt))
        attempt += 1


async def _acall(config: _Config, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Async :func:`_call`."""
    method, retry = getattr(config.store, "a" + name), config.retry
    attempt = 1
    while True:
        try:
            return await method(*args, **kwargs)
        except StoreOutcomeUnknown as exc:
            if not _retried(name, kwargs, attempt, retry):
                raise _gave_up(exc, attempt) from None
        await retry.asleep(retry.delay(attempt))
        attempt += 1


def _run(config: _Config, steps: Steps[T]) -> T:
    """Carry out a request's store calls with blocking calls."""
    try:
        name, args, kwargs = next(steps)
        while True:
            try:
                result = _call(config, name, args, kwargs)
            except ApportionError as exc:
                name, args, kwargs = steps.throw(exc)
            else:
                name, args, kwargs = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def _arun(config: _Config, steps: Steps[T]) -> T:
    """Carry out a request's store calls with awaited calls."""
    try:
        name, args, kwargs = next(steps)
        while True:
            try:
                result = await _acall(config, name, args, kwargs)
            except ApportionError as exc:
                name, args, kwargs = steps.throw(exc)
            else:
                name, args, kwargs = steps.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class _RequestBase:
    """What the sync and async requests share: identity, scoring and the summary."""

    def __init__(self, steps: _Steps) -> None:
        self._steps = steps
        self._ambient: ambient.Tokens | None = None

    @property
    def request_id(self) -> str:
        """The request's id in the store."""
        return self._steps.obs.request_id

    @property
    def ceiling(self) -> int:
        """The request's token ceiling."""
        return self._steps.obs.ceiling

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline of the request's controller."""
        return self._steps.config.pipeline

    @property
    def state(self) -> LedgerView:
        """The request's ledger as last read from the store (after its latest operation).

        A handle from :meth:`Controller.attach` holds the state read when it attached.

        Raises:
            RuntimeError: the request was never opened.
        """
        state = self._steps.obs.state
        if state is None:
            raise RuntimeError("the request was never opened")
        return state

    @property
    def closed(self) -> bool:
        """Whether the request has closed."""
        return self._steps.closed

    @property
    def parent_id(self) -> str | None:
        """The id of the request this one is a child of (``None`` for a root request)."""
        parent = self._steps.tree.parent
        return None if parent is None else parent.obs.request_id

    @property
    def name(self) -> str | None:
        """A child's name (``req.child(name)``, ``fan_out``), ``None`` for a root request."""
        if self._steps.tree.parent is None:
            return None
        return self.request_id.rsplit(CHILD_SEP, 1)[-1]

    @property
    def depth(self) -> int:
        """How deep in its tree the request is: 0 for a root, 1 for its children ..."""
        return self._steps.tree.depth

    @property
    def children(self) -> tuple[Any, ...]:
        """The child requests opened from this one (:meth:`Request.child`, ``fan_out``)."""
        return tuple(kid for kid in self._steps.tree.children if kid._steps.opened)

    def _new_child(
        self,
        name: str,
        ceiling: int | None,
        share: float | None,
        priority: str,
        features: Mapping[str, Any] | None,
    ) -> _Steps:
        return self._steps.new_child(name, ceiling, share, priority, features)

    def _new_children(
        self,
        names_or_n: int | Sequence[str],
        ceiling: int | None,
        share: float | None,
        priority: str | Sequence[str],
        features: Mapping[str, Any] | None,
    ) -> list[_Steps]:
        """The steps of a fan-out's children (checked, not opened)."""
        if isinstance(names_or_n, int) and not isinstance(names_or_n, bool):
            if not 1 <= names_or_n <= 10_000:
                raise InvalidArgument("names_or_n", names_or_n, "between 1 and 10000 children")
            names: list[str] = [str(i) for i in range(1, names_or_n + 1)]
        elif isinstance(names_or_n, Sequence) and not isinstance(names_or_n, str) and names_or_n:
            names = list(names_or_n)
        else:
            raise InvalidArgument("names_or_n", names_or_n, "a number of children or their names")
        if isinstance(priority, str) or not isinstance(priority, Sequence):
            priorities: list[Any] = [priority] * len(names)
        elif len(priority) == len(names):
            priorities = list(priority)
        else:
            raise InvalidArgument(
                "priority", priority, f"one priority class per child ({len(names)})"
            )
        kids: list[_Steps] = []
        for name, prio in zip(names, priorities, strict=True):
            kids.append(self._new_child(name, ceiling, share, prio, features))
        return kids

    @property
    def calls(self) -> Mapping[int, CallRecord]:
        """One record per grant of this request, by grant id (see :mod:`apportion.calls`)."""
        return MappingProxyType(self._steps.obs.calls)

    @property
    def refused(self) -> tuple[CallRecord, ...]:
        """The calls whose ``begin`` was refused (not enough budget or cost left), in order.

        Each has status ``refused`` and grant id 0: no grant was made.
        """
        return tuple(self._steps.obs.refused)

    @property
    def routes(self) -> bool:
        """Whether the policy chooses the model of each call (``grant.model`` then rules)."""
        return self._steps.config.routes

    @property
    def catalog(self) -> Any:
        """The controller's model catalog (:class:`~apportion.catalog.Catalog`)."""
        return self._steps.config.catalog

    def agent(self, name: str) -> ambient.AgentScope:
        """A block in which this request is current and ``name`` is the current agent.

        ``with req.agent("reasoner"): ...`` tells adapters that cannot pass an agent's name
        (see :func:`apportion.current_agent`) which agent is calling; blocks nest, and the
        outer agent is current again after the inner one. It also makes ``req`` current
        (:func:`apportion.current_request`), in any thread: see :mod:`apportion.ambient`.

        Raises:
            UnknownAgent: ``name`` is not an agent of the pipeline, nor of one of its kinds.
            RequestClosed: the request is closed.
        """
        self._steps.config.pipeline.resolve(name)  # raises UnknownAgent
        if self._steps.closed:
            raise RequestClosed(self._steps.obs.request_id, self._steps.obs.state.status)
        return ambient.AgentScope(self, name)

    def _leave(self) -> None:
        """End the ``with`` block's time as the current request."""
        if self._ambient is not None:
            ambient.leave(self._ambient)
            self._ambient = None

    def renewal_due(self, grant: Grant) -> bool:
        """Whether half of ``grant``'s lease has run: a long call should :meth:`renew` now.

        The integrations ask this as a stream's chunks arrive.
        """
        self._steps._own(grant)
        config = self._steps.config
        record = self._steps.obs.calls.get(grant.grant_id)
        ends = grant.lease_expires_at if record is None else record.lease_expires_at
        return config.clock() >= ends - config.lease_seconds / 2

    def score(self, value: float) -> None:
        """Record the request's outcome score (0..1 by convention), told to the policy at close."""
        self._steps.score(value)

    def annotate(self, grant: Grant, **fields: Any) -> None:
        """Attach details of a call to its grant for telemetry (``model=``, ``cost_usd=`` ...).

        Integrations call this; the fields travel with the grant's events to the sinks.
        """
        self._steps.annotate(grant, fields)

    def call_options(self) -> dict[str, Any]:
        """The controller's settings the integrations read for each call.

        ``show_budget``: add the budget line to the prompt (see :class:`Controller`).
        """
        return {"show_budget": self._steps.config.show_budget}

    def summary(self) -> Summary:
        """Allocated, reserved, consumed and free tokens, per agent and in total."""
        state = self._steps.obs.state
        if state is None:
            raise RuntimeError("the request was never opened")
        obs = self._steps.obs
        calls = [*obs.calls.values(), *obs.refused]
        members = {
            c.agent: c.kind for c in sorted(calls, key=lambda c: c.began_at) if c.kind is not None
        }
        kids = tuple(kid.summary() for kid in self.children)
        names = self._steps.config.pipeline.names
        return Summary.of(state, names, calls, children=kids, members=members)

    async def acompletion(self, agent: str, **kwargs: Any) -> Any:
        """A budgeted ``litellm.acompletion`` for ``agent`` (needs the ``litellm`` extra).

        Same arguments as :meth:`Request.completion`; see
        :mod:`apportion.integrations.litellm`.
        """
        from apportion.integrations.litellm import acompletion

        return await acompletion(self, agent, **kwargs)

    def openai(
        self,
        client: Any,
        agent: str | None = None,
        *,
        wrap_up_tokens: int | None = None,
        show_budget: bool | None = None,
    ) -> Any:
        """A drop-in OpenAI client whose model calls are budgeted in this request.

        ``client`` is an ``openai.OpenAI`` or ``AsyncOpenAI``; the budgeted client's
        ``chat.completions.create`` / ``parse``, ``beta.chat.completions.parse`` and
        ``responses.create`` / ``parse`` are budgeted for ``agent`` (or the ``agent=``
        given per call); ``with_options``, ``copy``, ``with_raw_response`` and
        ``with_streaming_response`` stay budgeted; a model call it cannot budget raises
        ``UnsupportedCall``. ``wrap_up_tokens`` and ``show_budget`` apply to every call
        (``None``: the controller's; a call's own keyword wins). See
        :mod:`apportion.integrations.openai`.
        """
        from apportion.integrations.openai import budgeted

        return budgeted(client, self, agent, wrap_up_tokens=wrap_up_tokens, show_budget=show_budget)


class Request(_RequestBase):
    """One request's budget, used as a context manager (see :meth:`Controller.request`).

    Attributes:
        is_async: ``False``: its methods are called, not awaited (the integrations ask).
    """

    is_async = False

    def open(self) -> Request:
        """Open the request in the store (``with`` does this for you)."""
        _run(self._steps.config, self._steps.open())
        return self

    def __enter__(self) -> Request:
        if not (self._steps.opened and self._steps.tree.attached):  # fan_out's, attach's
            self.open()
        self._ambient = ambient.enter(self)  # current inside the block (apportion.ambient)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._steps.opened and not self._steps.closed:
                with contextlib.suppress(RequestClosed):  # already closed by the store
                    self.close(FAILED if exc_type is not None else CLOSED)
        finally:
            self._leave()

    def child(
        self,
        name: str,
        *,
        ceiling: int | None = None,
        share: float | None = None,
        priority: str = "standard",
        features: Mapping[str, Any] | None = None,
    ) -> Request:
        """A child request: a sub-request whose ceiling is drawn from this one when it opens.

        Use it exactly like a request (``with``, ``begin``, ``finish``, ``openai``, ``call``,
        the ambient request inside its block), and make children of it in turn, up to the
        controller's ``max_depth``. It opens (and draws) at ``with`` or ``open()``, in one
        atomic store step: concurrent children never draw more than this request can
        spare. Closing it returns what it did not use to this request at once (its usage
        is consumed here); closing this request first closes its open children.

        Args:
            name: the child's name (its id is ``PARENT_ID::name``, made unique).
            ceiling: tokens it draws; refused with
                :class:`~apportion.errors.ChildBudgetExceeded` (nothing changes) when this
                request cannot spare them. With ``share``, the most it may draw.
            share: instead, draw this fraction (``0 < share <= 1``) of what this request can
                spare right now: it gets what is available.
            priority: what of this request's reservations it may draw on: ``critical`` all
                of them, ``standard`` all but those held for critical agents,
                ``peripheral`` none held for standard or critical agents (the rule of
                shared pools). In a fan-out, also its weight (4, 2, 1).
            features: the child's request features (default: this request's).

        With a cost ceiling here, the child draws the same fraction of what it leaves as
        of the spare tokens (its own cost ceiling).

        Raises:
            InvalidArgument: a bad name, share or priority, or neither ceiling nor share.
            TreeTooDeep: the child would be deeper than ``max_depth``.
            RequestClosed: this request is closed.
        """
        kid = Request(self._new_child(name, ceiling, share, priority, features))
        self._steps.tree.children.append(kid)
        return kid

    def fan_out(
        self,
        names_or_n: int | Sequence[str],
        *,
        share: float = 1.0,
        ceiling: int | None = None,
        priority: str | Sequence[str] = "standard",
        features: Mapping[str, Any] | None = None,
    ) -> list[Request]:
        """Open several children at once, splitting what this request can spare fairly.

        One atomic store step: ``floor(S * share)`` tokens are split among the children by
        priority weight (critical 4, standard 2, peripheral 1), where ``S`` is what this
        request can spare the lowest priority among them, so the sum never exceeds it
        under any interleaving; children opened later get what earlier ones returned.
        The children come back open; use each in ``with`` (or close it) as usual.

        Args:
            names_or_n: the children's names, or how many (named ``1`` .. ``n``).
            share: the fraction of what this request can spare that they split.
            ceiling: the most each child may draw.
            priority: one priority class for all, or one per child (see :meth:`child`).
            features: the children's request features (default: this request's).

        Raises:
            ChildBudgetExceeded: a child would get nothing (nothing changes).
            InvalidArgument, TreeTooDeep, RequestClosed: as for :meth:`child`.
        """
        steps = self._new_children(names_or_n, ceiling, share, priority, features)
        _run(self._steps.config, self._steps.draw_children(steps))
        for k in steps:
            k.tree.attached = True  # open already: ``with`` only enters
        kids = [Request(k) for k in steps]
        self._steps.tree.children.extend(kids)
        return kids

    def begin(
        self,
        agent: str,
        input_tokens: int,
        output_tokens: int | None = None,
        *,
        model: str | None = None,
        min_context_tokens: int = 0,
        wrap_up_tokens: int | None = None,
    ) -> Grant:
        """Reserve a grant for one model call of ``agent``.

        Args:
            agent: the agent about to call its model.
            input_tokens: the input it has in hand, counted.
            output_tokens: the most output it wants (the policy may grant less).
            model: the model the caller means to call (priced from the catalog; a routing
                policy may choose another, named by ``grant.model``). Default: the agent's.
            min_context_tokens: the least context worth granting: the part of the input
                that cannot be dropped (the integrations pass
                :func:`~apportion.tokens.fitting.irreducible_tokens`). When the policy
                grants less context, the grant's context is raised to it if what the agent
                may draw (reservations of others kept, and the cost ceiling) covers it with
                the policy's output; otherwise the policy's grant stands, and fitting
                shortens the input into it. At most ``input_tokens``.
            wrap_up_tokens: the wrap-up reserve, added to the output the policy grants
                (``grant.output_tokens`` holds both; the working call is capped at
                ``grant.working_tokens``, the policy's output): tokens kept for handing
                back a partial result once the grant is spent and ``extend`` refuses more
                (the call engine spends them on a "wrap up now" follow-up). When the agent
                cannot draw both, the working output shrinks to make room. Default: the
                controller's ``wrap_up_tokens`` (0: none).

        Returns:
            The grant: read at most ``context_tokens``, write at most ``output_tokens``
            (``working_tokens`` before wrapping up, when it carries a reserve).

        Raises:
            UnknownAgent, InvalidTokenCount, RequestClosed: bad input; nothing changes.
            WrapUpTooLarge: the agent cannot draw the reserve beside its least output;
                nothing changes.
            BudgetExceeded: not enough is left for this agent to run.
        """
        return _run(
            self._steps.config,
            self._steps.begin(
                agent, input_tokens, output_tokens, model, min_context_tokens, wrap_up_tokens
            ),
        )

    def extend(self, grant: Grant, output_tokens: int, *, context_tokens: int = 0) -> Grant | None:
        """Ask for ``output_tokens`` more for a cut call.

        Args:
            grant: the open grant.
            output_tokens: extra output wanted.
            context_tokens: extra input the continuation will read (prompt resent).

        Returns:
            The enlarged grant, or ``None``: nothing can be spared, wrap up now.
        """
        return _run(self._steps.config, self._steps.extend(grant, output_tokens, context_tokens))

    def finish(
        self,
        grant: Grant,
        *,
        input_tokens: int | None,
        output_tokens: int | None,
        truncated: bool = False,
        text: str | None = None,
        usage_estimated: bool = False,
    ) -> None:
        """Settle a grant with the real usage; the unused part returns to the pool.

        Usage is never settled silently as 0 for an answer that was written: say when the
        provider reported none, and pass the answer's text if you have it.

        Args:
            grant: the open grant (as last extended).
            input_tokens: prompt tokens billed over the grant's calls; ``None``: not
                reported, the grant's ``context_tokens`` are settled (the most it could read).
            output_tokens: completion tokens billed; ``None``: not reported, ``text`` is
                counted with the model's tokenizer (about 4 characters a token for a model
                without one), or without ``text`` the grant's whole ``output_tokens`` are
                settled (the most a capped call could write).
            truncated: the answer was cut at its cap.
            text: the answer's text (and tool-call arguments), if at hand: counted when
                ``output_tokens`` is ``None``, or 0 beside a non-blank text (a stream that
                sent no usage, read as 0).
            usage_estimated: the numbers are the caller's own estimate, not the
                provider's report: settled as given and flagged, without a warning.

        Every estimated settlement is flagged ``usage_estimated`` on its call record
        (``req.calls``) and ``estimated`` in telemetry; the ones apportion had to guess
        (``None``, or 0 beside text) also warn with :class:`~apportion.UsageWarning`.

        Raises:
            InvalidTokenCount, InvalidArgument, GrantSettled, ForeignGrant, RequestClosed:
                nothing changes.
        """
        warning = _run(
            self._steps.config,
            self._steps.finish(
                grant, input_tokens, output_tokens, truncated, text, usage_estimated
            ),
        )
        if warning is not None:
            warnings.warn(warning, stacklevel=2)

    def release(self, grant: Grant) -> None:
        """Settle a grant as unused (the call failed before using tokens)."""
        _run(self._steps.config, self._steps.release(grant))

    def renew(self, grant: Grant) -> Grant:
        """Renew the lease of a call still running (a long stream), from now.

        Returns:
            The grant with its new ``lease_expires_at``.

        Raises:
            GrantExpired: the lease already ran out (``finish`` still records the usage).
            GrantSettled, ForeignGrant, RequestClosed: nothing changes.
        """
        return _run(self._steps.config, self._steps.renew(grant))

    def note_fitted(self, grant: Grant, messages: int, tokens: int) -> None:
        """Tell the store that fitting dropped or shortened messages of ``grant``'s call.

        A note (kind ``fitted``: the tokens removed in ``context_tokens``, the messages in
        ``note``) in the store's feed and the request's history (:meth:`Store.history
        <apportion.stores.base.Store.history>`), for the dashboard; no ledger changes, and a
        store that cannot take it is left alone. The integrations call this.

        Raises:
            ForeignGrant: ``grant`` is not this request's.
            InvalidTokenCount: ``messages`` or ``tokens`` is no count.
        """
        _run(self._steps.config, self._steps.note_fitted(grant, messages, tokens))

    def completion(self, agent: str, **kwargs: Any) -> Any:
        """A budgeted ``litellm.completion`` for ``agent`` (needs the ``litellm`` extra).

        Counts the messages, begins a grant, fits the messages into it, caps the output at
        it, extends a cut answer when the policy allows, and finishes with the real usage.

        Args:
            agent: the agent calling.
            **kwargs: ``model=``, ``messages=``, apportion's ``counter=``, ``fit=`` and
                ``max_extensions=``, and any ``litellm.completion`` parameter.

        Returns:
            LiteLLM's response, with a ``CallReport`` as ``response.apportion`` (a
            ``BudgetedStream`` when ``stream=True``). See
            :mod:`apportion.integrations.litellm`.
        """
        from apportion.integrations.litellm import completion

        return completion(self, agent, **kwargs)

    def call(
        self, agent: str, messages: Any, *, send: Callable[..., Any], model: str, **params: Any
    ) -> Any:
        """One budgeted model call of ``agent``, made by ``send`` (the public call engine).

        Counts ``messages``, begins a grant, fits the messages into it, caps the output at
        it, calls ``send(model=..., messages=<fitted>, max_tokens=<cap>, **params)`` (one
        provider call, keywords only), extends a cut answer, and finishes with the usage.

        Args:
            agent: the agent calling.
            messages: the chat messages (the Responses API's ``input``).
            send: makes one provider call, e.g. ``client.chat.completions.create``.
            model: the model to call.
            **params: apportion's ``protocol=`` (``"chat"``, ``"responses"``),
                ``counter=``, ``fit=``, ``max_extensions=``, ``cost=``,
                ``wrap_up_tokens=``, ``show_budget=``; the rest is passed to ``send``
                (``max_tokens`` ... are the most output wanted).

        Returns:
            ``send``'s response with a ``CallReport`` as ``response.apportion`` (a
            ``BudgetedStream`` when ``stream=True``). See
            :mod:`apportion.integrations.engine`.
        """
        from apportion.integrations.engine import call

        return call(self, agent, messages, send=send, model=model, **params)

    def close(self, status: str = CLOSED) -> None:
        """Close the request (``with`` does this for you); open grants are released."""
        _run(self._steps.config, self._steps.close(status))


class AsyncRequest(_RequestBase):
    """The async twin of :class:`Request` (see :meth:`Controller.arequest`).

    Attributes:
        is_async: ``True``: its methods are awaited (the integrations ask).
    """

    is_async = True

    async def open(self) -> AsyncRequest:
        """Open the request in the store (``async with`` does this for you)."""
        await _arun(self._steps.config, self._steps.open())
        return self

    async def __aenter__(self) -> AsyncRequest:
        if not (self._steps.opened and self._steps.tree.attached):  # fan_out's, attach's
            await self.open()
        self._ambient = ambient.enter(self)  # current inside the block (apportion.ambient)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._steps.opened and not self._steps.closed:
                with contextlib.suppress(RequestClosed):  # already closed by the store
                    await self.close(FAILED if exc_type is not None else CLOSED)
        finally:
            self._leave()

    def child(
        self,
        name: str,
        *,
        ceiling: int | None = None,
        share: float | None = None,
        priority: str = "standard",
        features: Mapping[str, Any] | None = None,
    ) -> AsyncRequest:
        """Async :meth:`Request.child` (not awaited: ``async with req.child(...)`` opens it)."""
        kid = AsyncRequest(self._new_child(name, ceiling, share, priority, features))
        self._steps.tree.children.append(kid)
        return kid

    async def fan_out(
        self,
        names_or_n: int | Sequence[str],
        *,
        share: float = 1.0,
        ceiling: int | None = None,
        priority: str | Sequence[str] = "standard",
        features: Mapping[str, Any] | None = None,
    ) -> list[AsyncRequest]:
        """Async :meth:`Request.fan_out`."""
        steps = self._new_children(names_or_n, ceiling, share, priority, features)
        await _arun(self._steps.config, self._steps.draw_children(steps))
        for k in steps:
            k.tree.attached = True  # open already: ``async with`` only enters
        kids = [AsyncRequest(k) for k in steps]
        self._steps.tree.children.extend(kids)
        return kids

    async def begin(
        self,
        agent: str,
        input_tokens: int,
        output_tokens: int | None = None,
        *,
        model: str | None = None,
        min_context_tokens: int = 0,
        wrap_up_tokens: int | None = None,
    ) -> Grant:
        """Async :meth:`Request.begin`."""
        return await _arun(
            self._steps.config,
            self._steps.begin(
                agent, input_tokens, output_tokens, model, min_context_tokens, wrap_up_tokens
            ),
        )

    async def extend(
        self, grant: Grant, output_tokens: int, *, context_tokens: int = 0
    ) -> Grant | None:
        """Async :meth:`Request.extend`."""
        return await _arun(
            self._steps.config, self._steps.extend(grant, output_tokens, context_tokens)
        )

    async def finish(
        self,
        grant: Grant,
        *,
        input_tokens: int | None,
        output_tokens: int | None,
        truncated: bool = False,
        text: str | None = None,
        usage_estimated: bool = False,
    ) -> None:
        """Async :meth:`Request.finish`."""
        warning = await _arun(
            self._steps.config,
            self._steps.finish(
                grant, input_tokens, output_tokens, truncated, text, usage_estimated
            ),
        )
        if warning is not None:
            warnings.warn(warning, stacklevel=2)

    async def release(self, grant: Grant) -> None:
        """Async :meth:`Request.release`."""
        await _arun(self._steps.config, self._steps.release(grant))

    async def renew(self, grant: Grant) -> Grant:
        """Async :meth:`Request.renew`."""
        return await _arun(self._steps.config, self._steps.renew(grant))

    async def note_fitted(self, grant: Grant, messages: int, tokens: int) -> None:
        """Async :meth:`Request.note_fitted`."""
        await _arun(self._steps.config, self._steps.note_fitted(grant, messages, tokens))

    async def call(
        self,
        agent: str,
        messages: Any,
        *,
        send: Callable[..., Awaitable[Any]],
        model: str,
        **params: Any,
    ) -> Any:
        """The async :meth:`Request.call`: ``send`` is awaited (e.g. ``AsyncOpenAI``'s)."""
        from apportion.integrations.engine import acall

        return await acall(self, agent, messages, send=send, model=model, **params)

    async def close(self, status: str = CLOSED) -> None:
        """Async :meth:`Request.close`."""
        await _arun(self._steps.config, self._steps.close(status))


class Controller:
    """Budgets for the requests of one pipeline.

    Args:
        pipeline: the agents.
        policy: a policy object, or a registered name (``uniform``, ``static:FILE``,
            ``estimate``, ``elastic``, ``iterative``).
        store: a store object or URL (``memory://``).
        clock: seconds as a float; injected so tests control time (default ``time.time``).
        lease_seconds: how long a grant may stay unsettled before its tokens are reclaimed.
        request_ttl: how long a request may stay open before ``reap`` closes it.
        telemetry: where usage events go: a URL (``sqlite:///apportion.db``,
            ``postgresql://...``), a sink object, or a list of them; ``None`` for none.
            Writing telemetry never blocks or breaks a request.
        catalog: the model catalog (:class:`~apportion.catalog.Catalog`, or the path of a
            YAML catalog file); default LiteLLM's bundled model cost map, read on first use.
        reap_every: at most how often (seconds) opening a request first reaps the store:
            grants whose lease ended and requests past their time to live are settled, their
            tokens (and pool draws) returned, and expired requests sent to telemetry,
            without anyone calling :meth:`reap`.
        wrap_up_tokens: the wrap-up reserve every ``begin`` keeps unless it passes its
            own (see :meth:`Request.begin`); 0: none.
        show_budget: the integrations add a line to each call's prompt telling the agent
            what its grant lets it read and write (and set the provider's own budget
            field where it has one); see :mod:`apportion.integrations.budget_line`.
        max_depth: the deepest a child request may be (:meth:`Request.child`; a root
            request is at depth 0), at most 256.
        store_retry: how a store call whose outcome is unknown (the connection dropped
            after it was sent) is made again with the same operation id
            (:class:`~apportion.retry.StoreRetry`; default 3 attempts, backoff from 20 ms);
            after the last, :class:`~apportion.errors.StoreUnavailable` is raised.

    Raises:
        UnknownPolicy, UnknownStore: the name or URL is not registered.
        InvalidTokenCount, InvalidArgument: a bad ``wrap_up_tokens`` or ``show_budget``.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        policy: str | Policy = "elastic",
        store: str | Store = "memory://",
        *,
        clock: Callable[[], float] = time.time,
        lease_seconds: float = 600.0,
        request_ttl: float = 3600.0,
        telemetry: Any = None,
        catalog: Any = None,
        reap_every: float = 30.0,
        wrap_up_tokens: int = 0,
        show_budget: bool = False,
        max_depth: int = 16,
        store_retry: StoreRetry | None = None,
    ) -> None:
        self._config = _Config(
            pipeline,
            policy,
            store,
            clock,
            lease_seconds,
            request_ttl,
            telemetry,
            catalog,
            reap_every,
            wrap_up_tokens,
            show_budget,
            max_depth,
            store_retry,
        )

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline."""
        return self._config.pipeline

    @property
    def policy(self) -> Policy:
        """The policy object."""
        return self._config.policy

    @property
    def store(self) -> Store:
        """The store object."""
        return self._config.store

    @property
    def sinks(self) -> list[Any]:
        """The telemetry channels, one per sink (:class:`~apportion.telemetry.channel.Channel`).

        Each counts, in records, what its sink was given: ``delivered``, and ``dropped``
        (never reached the sink: ``dropped_full``, the oldest, dropped past the buffer's
        bound while the sink was down or slow; ``dropped_failed``, refused by the sink).
        """
        return list(self._config.sinks)

    def request(
        self,
        ceiling: int,
        features: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        pool: str | None = None,
        pool_priority: str = "standard",
        ceiling_usd: float | None = None,
    ) -> Request:
        """A new request with a token ceiling; open it with ``with``.

        Args:
            ceiling: tokens (input plus output) the whole request may consume.
            features: what is known of the request up front (message count, ...).
            request_id: an id of your own (default: generated, unique per controller).
            pool: a shared pool of the store to draw the ceiling from at open (what the
                request leaves unused returns to it at close); see :mod:`apportion.pools`.
            pool_priority: the request's class in the pool: ``critical``, ``standard`` or
                ``peripheral``.
            ceiling_usd: a cost ceiling in USD as well (grants are priced from the catalog
                on the model of the call; a grant's output cap is lowered to what the cost left
                pays for at full size, and the grant is refused with ``CostExceeded`` when
                even its least output does not fit beside its input).

        Raises:
            InvalidCeiling: the ceiling is not a positive integer.
            InvalidPrice: the cost ceiling is not a positive number, or is below the
                cheapest possible call of the pipeline's known models.
            ValueError: a bad pool name or class.
        """
        return Request(
            _Steps(self._config, ceiling, features, request_id, pool, pool_priority, ceiling_usd)
        )

    def arequest(
        self,
        ceiling: int,
        features: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        pool: str | None = None,
        pool_priority: str = "standard",
        ceiling_usd: float | None = None,
    ) -> AsyncRequest:
        """The async twin of :meth:`request`; open it with ``async with``."""
        return AsyncRequest(
            _Steps(self._config, ceiling, features, request_id, pool, pool_priority, ceiling_usd)
        )

    def attach(self, request_id: str) -> Request:
        """A handle on a request already open in the store (opened by another process).

        For a shared store (Redis): a worker process draws children from a parent another
        process opened, ``ctl.attach(parent_id).child(...)`` or ``.fan_out(...)``, with the
        same atomic draws as in the process that opened it. The handle can also ``begin``
        and ``finish`` calls of the request; closing it (``close()``, or leaving a ``with``
        block on it) closes the request for every process.

        Raises:
            UnknownRequest: the store holds no such request.
            RequestClosed: it is closed.
        """
        steps = _attached(self._config, request_id)
        steps.obs.state = _run(self._config, _get_open(steps))
        return Request(steps)

    async def aattach(self, request_id: str) -> AsyncRequest:
        """The async :meth:`attach`: an :class:`AsyncRequest` handle."""
        steps = _attached(self._config, request_id)
        steps.obs.state = await _arun(self._config, _get_open(steps))
        return AsyncRequest(steps)

    def reaps_for(self, controllers: Iterable[Controller]) -> None:
        """Have the requests of ``controllers``' pipelines this controller reaps go to them.

        A reap is store-wide: an expired request of another pipeline on the same store is
        learned from and recorded by the controller of its pipeline among ``controllers``
        (the gateway's controllers, one per pipeline, are each other's), not passed over.
        The pipelines are told apart by their agents.

        Raises:
            InvalidArgument: not an iterable of controllers.
        """
        if isinstance(controllers, str | bytes) or not isinstance(controllers, Iterable):
            raise InvalidArgument("controllers", controllers, "an iterable of controllers")
        given = list(controllers)
        for controller in given:
            if not isinstance(controller, Controller):
                raise InvalidArgument("controllers", controller, "an apportion.Controller")
        self._config.peers = tuple(c._config for c in given if c is not self)

    def reap(self) -> int:
        """Reclaim grants whose lease ended and close overdue requests, store-wide.

        Requests closed as expired teach the policy their calls and reach the telemetry
        sinks. The controller also does this by itself when a request opens, at most every
        ``reap_every`` seconds, and :meth:`start_reaper` does it on a timer while no
        request opens.

        Returns:
            How many grants and requests were settled.
        """
        return _run(self._config, _reap(self._config))

    async def areap(self) -> int:
        """Async :meth:`reap`."""
        return await _arun(self._config, _reap(self._config))

    def start_reaper(self, every: float | None = None) -> Reaper:
        """Reap on a timer in a daemon thread, until the returned reaper is stopped.

        Args:
            every: seconds between reaps (default: the controller's ``reap_every``).

        Returns:
            The running :class:`~apportion.reaper.Reaper` (``stop()``, or use it in
            ``with``).
        """
        return Reaper(self.reap, self._config.reap_every if every is None else every).start()


class AsyncController(Controller):
    """A controller for async code: :meth:`request` returns an :class:`AsyncRequest`.

    Same arguments and behaviour as :class:`Controller`, whose ``arequest`` it also has.
    """

    def request(  # type: ignore[override]
        self,
        ceiling: int,
        features: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        pool: str | None = None,
        pool_priority: str = "standard",
        ceiling_usd: float | None = None,
    ) -> AsyncRequest:
        """A new async request; open it with ``async with``."""
        return self.arequest(
            ceiling,
            features,
            request_id=request_id,
            pool=pool,
            pool_priority=pool_priority,
            ceiling_usd=ceiling_usd,
        )
