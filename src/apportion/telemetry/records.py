"""Usage records: what a closed request tells the telemetry sinks.

:func:`usage_from` turns a closed request's :class:`~apportion.policies.base.Observation`
and its ledger's event list into one :class:`RequestUsage` holding a :class:`CallUsage`
per grant. It is pure (no I/O, no clock). It runs in the telemetry worker threads, not the
caller's: a closed request is queued as a :class:`PendingUsage` (its observation and
events, which no longer change once it is closed), and the first worker that needs the
record builds it, once for all the sinks.

What a call record says:

- ``granted_context`` / ``granted_output``: the grant at settlement, extensions included
  (``None`` when unknown, as for calls ingested from logs without their caps);
- ``used_input`` / ``used_output``: the usage reported by ``finish`` (``None`` for a call
  released or expired without usage);
- ``truncated``: the output was cut at its cap (reported by ``finish``);
  ``input_cut``: the grant's context was smaller than the input the agent had in hand
  (``begin``'s ``input_tokens``), ``dropped_tokens`` by how much (or as many as an
  integration's fitting dropped); a call *hit the ceiling* (:attr:`CallUsage.ceiling_hit`)
  when either is true;
- ``settled``: ``finish``, ``release`` (released by the caller), ``expire`` (lease ran
  out) or ``close`` (still open when the request closed). A ``finish`` after the lease
  expired is late: all of its usage is ``overuse``.
- ``status``: how the call ended (:mod:`apportion.calls`): ``completed``, ``wrapped_up``
  (an extension was refused and the agent concluded within its wrap-up reserve), ``cut``,
  ``late``, ``released``, ``expired`` or ``closed``; from the call record, else from the
  events (which cannot tell ``wrapped_up``: such a call reads ``completed``); ``None``
  for calls ingested from logs. Begins that were refused made no grant: the request
  counts them per agent (:attr:`RequestUsage.refused`).

The rest comes from the request's :class:`~apportion.calls.CallRecord` (``obs.calls``),
when this process ran it: the model and cost of the call, and what its integration noted
(``finish_reason``, ``usage_estimated``, ``dropped_tokens``). A request reaped by another
process has only its events: those fields stay ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from apportion.calls import (
    CLOSED,
    EXPIRED,
    OPEN,
    RELEASED,
    CallRecord,
    records_of,
    refusals_of,
)
from apportion.ledger import CHILD_SEP, Event
from apportion.policies.rollout import Rollout, RolloutEvent
from apportion.stores.feed import NOTE_KINDS

__all__ = [
    "SCHEMA_VERSION",
    "CallUsage",
    "PendingUsage",
    "RequestUsage",
    "RolloutRecord",
    "child_name",
    "root_of",
    "usage_from",
]

SCHEMA_VERSION: Final = 5
"""Version of the telemetry records and tables this apportion writes and reads.

Version 2 added rollout decisions (:class:`RolloutRecord`, table
``apportion_rollout_events``); a version-1 database is read as it is (no rollouts) and
upgraded in place by the first writer (the table is added). Version 3 added each call's
``status`` and each request's ``refused`` begins (a column each); an older database is
read as it is (``None`` and none) and upgraded in place by the first writer. Version 3
also added each request's place in its request tree (``parent_id``, ``root_id``,
``depth``; see :class:`RequestUsage`); an older database reads as flat requests.
Version 4 added each call's agent ``kind`` (:attr:`CallUsage.kind`: the kind that budgeted
a name not listed in the pipeline) and each request's ``refused_kinds``; an older database
reads with no kinds and is upgraded in place by the first writer (a column each).
Version 5 added the daily rollups per agent (table ``apportion_daily``, see
:mod:`apportion.telemetry.rollups`), kept by every writer; the first writer of an older
database adds the table and builds the rollups from its raw rows, in the same
transaction."""

SETTLEMENTS: Final = ("finish", "release", "expire", "close")
"""How a call can be settled."""


@dataclass(frozen=True, slots=True)
class CallUsage:
    """One grant of a request: what was granted, what was used, how it ended.

    Attributes:
        request_id: the request.
        grant_id: the grant's number in the request (the call's number when ingested).
        agent: the agent.
        priority: the agent's priority class, when known.
        granted_context: context tokens granted (extensions included), or ``None``.
        granted_output: output tokens granted (extensions included), or ``None``.
        used_input: input tokens used, or ``None`` (settled without usage).
        used_output: output tokens used, or ``None``.
        truncated: the output was cut at its cap (``None``: unknown).
        input_cut: the input was cut to fit (``None``: unknown).
        dropped_tokens: input tokens cut away, when known.
        overuse: tokens used beyond the grant.
        extensions: how many times the grant was extended.
        settled: ``finish``, ``release``, ``expire`` or ``close``.
        model: the model called, when known.
        cost_usd: the call's cost, when known.
        estimated: the usage was estimated rather than reported by the provider.
        finish_reason: the provider's finish reason, when known.
        began_at: clock time the grant began, when known.
        at: clock time it was settled, when known.
        status: how the call ended (see the module docstring), or ``None``: unknown.
        kind: the agent kind that budgeted the call when ``agent`` is not listed in the
            pipeline, else ``None``.
    """

    request_id: str
    grant_id: int
    agent: str
    priority: str | None = None
    granted_context: int | None = None
    granted_output: int | None = None
    used_input: int | None = None
    used_output: int | None = None
    truncated: bool | None = None
    input_cut: bool | None = None
    dropped_tokens: int | None = None
    overuse: int = 0
    extensions: int = 0
    settled: str = "finish"
    model: str | None = None
    cost_usd: float | None = None
    estimated: bool | None = None
    finish_reason: str | None = None
    began_at: float | None = None
    at: float | None = None
    status: str | None = None
    kind: str | None = None

    @property
    def ceiling_hit(self) -> bool:
        """Whether the call hit its budget: output truncated or input cut."""
        return bool(self.truncated) or bool(self.input_cut)

    @property
    def granted(self) -> int | None:
        """Tokens granted (context plus output), or ``None`` when unknown."""
        if self.granted_context is None or self.granted_output is None:
            return None
        return self.granted_context + self.granted_output

    @property
    def ending(self) -> str:
        """How the call ended: its ``status``, else what its ``truncated`` flag tells.

        ``cut`` or ``completed`` for a call that finished with usage and says whether it
        was truncated, ``released`` for one released unused, else ``unknown``.
        """
        if self.status:
            return self.status
        if self.used_input is None or self.used_output is None:
            return "released" if self.settled == "release" else "unknown"
        if self.truncated is None:
            return "unknown"
        return "cut" if self.truncated else "completed"

    @property
    def used(self) -> int | None:
        """Tokens used (input plus output), or ``None`` when the call reported no usage."""
        if self.used_input is None or self.used_output is None:
            return None
        return self.used_input + self.used_output


@dataclass(frozen=True, slots=True)
class RequestUsage:
    """One closed request, its calls and its ledger's events.

    Attributes:
        request_id: the request's id.
        pipeline: the pipeline's name.
        ceiling: the request's token ceiling (``None`` when ingested without one).
        consumed: tokens consumed in total.
        overflow: over-use the pool could not cover.
        status: ``closed``, ``failed`` or ``expired``.
        outcome: the outcome score given with ``req.score``, or ``None``.
        features: the request's features.
        opened_at: clock time it opened, when known.
        closed_at: clock time it closed, when known.
        calls: one record per grant, in grant order.
        events: the ledger's events, in order.
        source: where the record comes from: ``apportion``, or the ingested file.
        schema_version: the version of the record's format.
        trace_context: the OpenTelemetry span context current when the request closed,
            if OpenTelemetry was in use (sinks parent their spans on it); not compared.
        refused: begins refused (no grant made: not enough budget or cost left), per
            agent; agents with none are left out.
        refused_kinds: the agent kind that budgeted each agent of ``refused`` not listed
            in the pipeline (as :attr:`CallUsage.kind`); listed agents are left out.
        parent_id: the request this one is a child of (``req.child``, ``fan_out``), or
            ``None`` for a root request (or one recorded without its tree).
        root_id: the root request of its tree (its own id for a root; ``None`` when not
            recorded: see :attr:`tree_root`).
        depth: how deep in its tree it is: 0 for a root, 1 for its children ...
        parent_local: the parent's record will be sent from this process too (it was not
            a handle on a request another process runs), so a sink may wait for it to
            nest the child under it; not stored, not compared.

    A child is a record of its own: its ``consumed`` is its own calls' (and its children's)
    usage, which its parent's ``consumed`` also holds (a closed child's usage folds back
    into its parent's). Its calls are its own: a tree's calls are those of its records.
    """

    request_id: str
    pipeline: str
    ceiling: int | None
    consumed: int
    overflow: int = 0
    status: str = "closed"
    outcome: float | None = None
    features: Mapping[str, Any] = field(default_factory=dict)
    opened_at: float | None = None
    closed_at: float | None = None
    calls: tuple[CallUsage, ...] = ()
    events: tuple[Event, ...] = ()
    source: str = "apportion"
    schema_version: int = SCHEMA_VERSION
    trace_context: Any = field(default=None, compare=False, repr=False)
    refused: Mapping[str, int] = field(default_factory=dict)
    refused_kinds: Mapping[str, str] = field(default_factory=dict)
    parent_id: str | None = None
    root_id: str | None = None
    depth: int = 0
    parent_local: bool = field(default=False, compare=False, repr=False)

    @property
    def tree_root(self) -> str:
        """The id of its tree's root: ``root_id``, else its own id (a flat request)."""
        return self.root_id or self.request_id


def root_of(request_id: str, depth: int) -> str:
    """The root id of a request ``depth`` levels down a tree (ids ``PARENT::name``)."""
    if depth <= 0:
        return request_id
    return request_id.rsplit(CHILD_SEP, depth)[0]


def child_name(request_id: str) -> str:
    """A child request's name: the last part of its id, without a ``#n`` suffix."""
    name = request_id.rsplit(CHILD_SEP, 1)[-1]
    base, hash_, suffix = name.rpartition("#")
    return base if hash_ and base and suffix.isdigit() else name


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """One decision of a progressive rollout (see :class:`~apportion.policies.rollout.Rollout`).

    Attributes:
        rollout: the rollout's name.
        candidate: the candidate policy's name.
        baseline: the baseline policy's name.
        kind: ``start``, ``promote``, ``hold``, ``complete`` or ``rollback``.
        share: the candidate's share of traffic after the decision.
        reason: why, in words.
        seen: scored requests so far (both sides, all steps).
        candidate_mean: the candidate's mean outcome per 1,000 tokens at the step.
        baseline_mean: the baseline's, likewise.
        lower: lower confidence bound of the difference (``None``: unbounded).
        upper: upper confidence bound of it.
        at: clock time of the decision.
        schema_version: the version of the record's format.
    """

    rollout: str
    candidate: str
    baseline: str
    kind: str
    share: float
    reason: str
    seen: int
    candidate_mean: float | None = None
    baseline_mean: float | None = None
    lower: float | None = None
    upper: float | None = None
    at: float | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def of(cls, rollout: Rollout, event: RolloutEvent) -> RolloutRecord:
        """The record of one decision of ``rollout`` (infinities and NaN as ``None``)."""

        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return cls(
            rollout=rollout.label,
            candidate=rollout.candidate.name,
            baseline=rollout.baseline.name,
            kind=event.kind,
            share=event.share,
            reason=event.reason,
            seen=event.seen,
            candidate_mean=finite(event.candidate),
            baseline_mean=finite(event.baseline),
            lower=finite(event.lower),
            upper=finite(event.upper),
            at=finite(event.at),
        )


class PendingUsage:
    """A closed request whose :class:`RequestUsage` is not built yet (see :func:`usage_from`).

    The caller's thread makes one and queues it for every sink; a telemetry worker calls
    :meth:`record`, which builds the record once and keeps it for the other sinks.

    Args:
        obs: the closed request's observation.
        events: its ledger's events.
        trace_context: an OpenTelemetry span context to attach, if any.
        parent_local: see :attr:`RequestUsage.parent_local`.
    """

    __slots__ = ("_record", "events", "obs", "parent_local", "trace_context")

    def __init__(
        self, obs: Any, events: Sequence[Event], trace_context: Any, parent_local: bool
    ) -> None:
        self.obs = obs
        self.events = events
        self.trace_context = trace_context
        self.parent_local = parent_local
        self._record: RequestUsage | None = None

    @property
    def request_id(self) -> str:
        """The request's id."""
        return str(getattr(self.obs, "request_id", "?"))

    def record(self) -> RequestUsage:
        """The usage record, built on the first call (from any thread), then kept.

        Raises:
            Exception: whatever :func:`usage_from` raises for a malformed observation.
        """
        built = self._record
        if built is None:
            built = usage_from(
                self.obs,
                self.events,
                trace_context=self.trace_context,
                parent_local=self.parent_local,
            )
            self._record = built  # two workers may both build it: the same record
        return built


def usage_from(
    obs: Any, events: Sequence[Event], *, trace_context: Any = None, parent_local: bool = False
) -> RequestUsage:
    """The usage record of a closed request.

    Args:
        obs: the request's :class:`~apportion.policies.base.Observation` (final state).
        events: the ledger's events of the request, with the store's notes among them
            (``Store.history``: its refused begins are counted; the record keeps the
            ledger's events alone).
        trace_context: an OpenTelemetry span context to attach, if any.
        parent_local: see :attr:`RequestUsage.parent_local`.

    Returns:
        The record, with one :class:`CallUsage` per grant.
    """
    state = obs.state
    pipeline = obs.pipeline
    priorities = {a.name: str(a.priority) for a in pipeline.agents}
    notes = [e for e in events if e.kind in NOTE_KINDS]
    if notes:
        events = [e for e in events if e.kind not in NOTE_KINDS]
    opened_at: float | None = None
    closed_at: float | None = None
    status = str(state.status)
    asked: dict[int, int] = {}  # per grant, the input in hand its begin recorded (0: unknown)
    for event in events:
        kind = event.kind
        if kind == "open":
            opened_at = float(event.at)
        elif kind == "close":
            closed_at = float(event.at)
            status = event.note or status
        elif kind == "begin":
            asked[event.grant_id] = event.asked
    calls = {
        grant_id: _from_ledger(told, asked[grant_id])
        for grant_id, told in records_of(events).items()
    }
    kept: Mapping[int, CallRecord] = getattr(obs, "calls", None) or {}
    records = []
    for grant_id, call in calls.items():
        agent = str(call.pop("agent"))
        record = kept.get(grant_id)
        if record is not None:
            call.update(_from_record(record))
            if record.kind is not None:  # the ledger counts it on its kind's line
                agent, call["kind"] = record.agent, record.kind
        records.append(
            CallUsage(
                request_id=str(obs.request_id),
                grant_id=int(grant_id),
                agent=agent,
                priority=priorities.get(call.get("kind") or agent),
                **call,
            )
        )
    refused, refused_kinds = _refusals(getattr(obs, "refused", None) or (), notes)
    outcome = state.outcome
    depth = int(getattr(state, "depth", 0) or 0)
    parent_id = getattr(state, "parent_id", None)
    return RequestUsage(
        request_id=str(obs.request_id),
        pipeline=str(pipeline.name),
        ceiling=int(obs.ceiling),
        consumed=int(state.consumed),
        overflow=int(getattr(state, "overflow", 0)),
        status=status,
        outcome=None if outcome is None else float(outcome),
        features=dict(obs.features),
        opened_at=opened_at,
        closed_at=closed_at,
        calls=tuple(records),
        events=tuple(events),
        trace_context=trace_context,
        refused=refused,
        refused_kinds=refused_kinds,
        parent_id=None if parent_id is None else str(parent_id),
        root_id=root_of(str(obs.request_id), depth),
        depth=depth,
        parent_local=parent_local and parent_id is not None,
    )


def _refusals(
    kept: Sequence[CallRecord], history: Sequence[Event]
) -> tuple[dict[str, int], dict[str, str]]:
    """Begins refused per agent, and the kind of each agent not listed (``refused_kinds``).

    ``kept``: the refusals this process recorded (by the caller's name, with its kind);
    those of other processes (a gateway's calls each take a handle of their own) come from
    the store's notes in ``history``, on the line each was budgeted on
    (:func:`~apportion.calls.refusals_of`).
    """
    refused: dict[str, int] = {}
    refused_kinds: dict[str, str] = {}
    for record in [*kept, *refusals_of(history, kept)]:
        agent = str(record.agent)
        refused[agent] = refused.get(agent, 0) + 1
        if record.kind is not None:
            refused_kinds[agent] = str(record.kind)
    return refused, refused_kinds


def _from_ledger(record: CallRecord, asked: int) -> dict[str, Any]:
    """A call's fields as the ledger's events tell them (:func:`~apportion.calls.records_of`).

    ``asked``: the input in hand its begin recorded (0: not known). A call still open at
    the end was settled by the close.
    """
    call: dict[str, Any] = {
        "agent": record.agent,
        "granted_context": record.context_granted + record.extension_context,
        "granted_output": record.output_cap,
        "extensions": record.extensions,
        "began_at": float(record.began_at),
        "status": CLOSED if record.status == OPEN else record.status,
        **_input_cut(asked, record.context_granted),
    }
    if record.finished:
        call["settled"] = "finish"
        call.update(
            used_input=record.input_used,
            used_output=record.output_used,
            truncated=record.truncated,
            overuse=record.overuse,
        )
    else:
        call["settled"] = {EXPIRED: "expire", RELEASED: "release"}.get(record.status, "close")
    if record.settled_at is not None:
        call["at"] = float(record.settled_at)
    return call


def _input_cut(asked: int, granted: int) -> dict[str, Any]:
    """``input_cut`` and ``dropped_tokens`` of a begin event (``asked`` 0: not known)."""
    if asked > granted:
        return {"input_cut": True, "dropped_tokens": asked - granted}
    return {"input_cut": False} if asked else {}


def _from_record(record: CallRecord) -> dict[str, Any]:
    """What a call's record adds to its events: model, cost and its integration's notes."""
    out: dict[str, Any] = {}
    if record.status != OPEN:
        out["status"] = record.status
    notes = record.notes
    model = notes.get("model", record.model)
    if model:
        out["model"] = model
    cost = record.cost_usd
    if cost is not None:
        out["cost_usd"] = cost
    if "finish_reason" in notes:
        out["finish_reason"] = notes["finish_reason"]
    if "usage_estimated" in notes:
        out["estimated"] = notes["usage_estimated"]
    dropped = notes.get("dropped_tokens")
    if dropped:
        out["input_cut"] = True
        out["dropped_tokens"] = dropped
    return out
