"""The call record: one typed record per grant, keyed by its grant id.

The controller keeps a :class:`CallRecord` for every grant a request begins, in
``Observation.calls``; policies learn from it, summaries count from it, telemetry writes
it. It says what the agent asked for (the input it had in hand), what it was granted (the
context and the output cap, extensions included), what it used, whether its input or its
output was cut, how it ended, on which model and at what cost, and when.

Statuses:

* ``open``: the grant is not settled yet;
* ``completed``: finished, its answer not cut, no extension refused: a success;
* ``cut``: finished with its answer cut at the cap (no extension was asked, the caller
  stopped asking, or an extension was refused and nothing concluded the answer): never
  a success, whatever came before;
* ``wrapped_up``: the policy refused an extension (``extend`` returned ``None``), or an
  integration noted ``wrapped_up`` (the call engine concluded a cut answer within the
  grant's wrap-up reserve, see :attr:`~apportion.ledger.Grant.wrap_up_tokens`), and the
  call then finished with an answer not cut: a partial result the agent concluded; not a
  success either;
* ``late``: finished after its lease expired (the usage is recorded as over-use);
* ``released``: released by the caller (the call failed before using tokens);
* ``expired``: its lease ran out and it was never finished;
* ``closed``: still open when the request closed (released by the close);
* ``refused``: ``begin`` was refused (not enough budget or cost left): no grant was made,
  its grant id is 0, and it is kept apart (``Observation.refused``, ``req.refused``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from apportion.ledger import STATUSES as LEDGER_STATUSES
from apportion.ledger import Event

OPEN: Final = "open"
COMPLETED: Final = "completed"
CUT: Final = "cut"
WRAPPED_UP: Final = "wrapped_up"
LATE: Final = "late"
RELEASED: Final = "released"
EXPIRED: Final = "expired"
CLOSED: Final = "closed"
REFUSED: Final = "refused"
STATUSES: Final = (OPEN, COMPLETED, CUT, WRAPPED_UP, LATE, RELEASED, EXPIRED, CLOSED, REFUSED)
FINISHED: Final = frozenset({COMPLETED, CUT, WRAPPED_UP, LATE})
"""Statuses of a call that reported its usage."""
OUTCOMES: Final = (COMPLETED, WRAPPED_UP, CUT, REFUSED)
"""How a call's answer ended, as summaries and reports count them (only ``completed`` is a
success)."""

NOTES: Final = {
    "model": str,
    "cost_usd": float,
    "usage_estimated": bool,
    "dropped_tokens": int,
    "finish_reason": str,
    "wrapped_up": bool,
}
"""What an integration may note on a call (``req.annotate``), and each note's type."""


@dataclass(slots=True)
class CallRecord:
    """One grant of a request, from its begin to its settlement.

    Attributes:
        agent: the agent that called.
        grant_id: the grant's id in the request.
        input_asked: input tokens the agent had in hand at ``begin``.
        context_granted: context tokens granted (extensions included).
        output_cap: output tokens granted (extensions included).
        began_at: clock time of ``begin``.
        lease_expires_at: when the grant's lease ends (renewals and extensions move it).
        model: the model of the grant (the caller's or a routing policy's), or ``None``.
        prices: the grant's ``(input, output)`` prices in nano-USD per token, or ``None``.
        predicted_output: the policy's predicted output need at ``begin``, if it made one.
        extensions: extensions granted (lease renewals not counted).
        extension_context: context tokens added by extensions (prompts resent to continue).
        wrap_up: the policy refused an extension: the agent had to wrap up.
        input_used: input tokens the provider billed, once finished.
        output_used: output tokens the provider billed, once finished.
        truncated: the caller reported the answer cut at its cap.
        overuse: tokens used beyond the grant (all of a late call's usage).
        status: see the module docstring.
        settled_at: clock time of the settlement, once settled.
        notes: what an integration noted (see :data:`NOTES`): ``finish_reason``,
            ``usage_estimated``, ``dropped_tokens``, ``model``, ``cost_usd``.
        wrap_up_reserve: the grant's wrap-up reserve (``begin(..., wrap_up_tokens=N)``).
        kind: the agent kind that budgeted the call when ``agent`` is not listed in the
            pipeline (the ledger counts the call on the kind's line), else ``None``.
    """

    agent: str
    grant_id: int
    input_asked: int
    context_granted: int
    output_cap: int
    began_at: float
    lease_expires_at: float = math.inf
    model: str | None = None
    prices: tuple[int, int] | None = None
    predicted_output: float | None = None
    extensions: int = 0
    extension_context: int = 0
    wrap_up: bool = False
    input_used: int | None = None
    output_used: int | None = None
    truncated: bool = False
    overuse: int = 0
    status: str = OPEN
    settled_at: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    wrap_up_reserve: int = 0
    kind: str | None = None

    @property
    def budgeted_as(self) -> str:
        """The pipeline line the call is budgeted on: its kind, else its agent."""
        return self.kind or self.agent

    @property
    def input_cut(self) -> bool:
        """Whether the grant gave less context than the input the agent had in hand."""
        return self.context_granted < self.input_asked

    @property
    def granted(self) -> int:
        """Tokens granted in all: context, extension context and output cap."""
        return self.context_granted + self.extension_context + self.output_cap

    @property
    def finished(self) -> bool:
        """Whether the call reported its usage (its status is in :data:`FINISHED`)."""
        return self.status in FINISHED

    @property
    def cost_usd(self) -> float | None:
        """The call's cost: as noted by its integration, else its usage at the grant's prices."""
        noted = self.notes.get("cost_usd")
        if noted is not None:
            return float(noted)
        if self.prices is None or self.input_used is None or self.output_used is None:
            return None
        return (self.input_used * self.prices[0] + self.output_used * self.prices[1]) / 1e9

    def note(self, fields: Mapping[str, Any]) -> None:
        """Keep the fields of :data:`NOTES` that have a usable value; ignore the rest."""
        for name, value in fields.items():
            kind = NOTES.get(name)
            if kind is None or isinstance(value, bool) is not (kind is bool):
                continue
            if kind is float:
                try:
                    usable = isinstance(value, int | float) and math.isfinite(value)
                except OverflowError:  # an integer beyond any float
                    usable = False
                value = float(value) if usable else value
            elif kind is int:
                usable = isinstance(value, int) and value >= 0
            else:
                usable = isinstance(value, kind) and value != ""
            if usable:
                self.notes[name] = value

    def finish(self, input_used: int, output_used: int, truncated: bool, at: float) -> None:
        """Record the reported usage; the status says how the call ended."""
        late = self.status == EXPIRED or self.lease_expires_at <= at
        over = input_used + output_used
        if not late:
            over -= self.context_granted + self.extension_context + self.output_cap
        self.input_used, self.output_used, self.truncated = input_used, output_used, truncated
        self.overuse = over if over > 0 else 0
        wrapped = self.wrap_up or self.notes.get("wrapped_up") is True
        self.status, self.settled_at = _ended(late, truncated, wrapped), at

    def catch_up(self, told: CallRecord) -> None:
        """Take what the ledger tells of this call that this record missed.

        ``told`` (from :func:`records_of`) has the extensions granted, the extension
        refused and the settlement made through other handles.
        """
        self.wrap_up = self.wrap_up or told.wrap_up
        if told.extensions > self.extensions:
            self.extensions, self.output_cap = told.extensions, told.output_cap
            self.extension_context = told.extension_context
        if self.status != OPEN or told.status == OPEN or told.settled_at is None:
            return
        if told.finished:
            used_in, used_out = told.input_used or 0, told.output_used or 0
            self.finish(used_in, used_out, told.truncated, told.settled_at)
        else:
            self.settle(told.status, told.settled_at)

    def settle(self, status: str, at: float) -> None:
        """Mark an open call settled without usage (``released``, ``expired``, ``closed``)."""
        if self.status == OPEN:
            self.status, self.settled_at = status, at


def _ended(late: bool, truncated: bool, wrapped: bool) -> str:
    """How a call that reported its usage ended (see the statuses above)."""
    return LATE if late else CUT if truncated else WRAPPED_UP if wrapped else COMPLETED


def records_of(events: Iterable[Event]) -> dict[int, CallRecord]:
    """The call records a request's history tells, by grant id (in grant order).

    What a handle on a request that other processes ran learns of their calls when it
    closes the request: from the ledger's events, each grant's line (a kind's agent is
    named by its kind), its model, the input it had in hand, its grant with extensions, and
    how it was settled; from the store's notes among them (``Store.history``), the
    extensions refused (the agent wrapped up). What the calling process alone knew (an
    integration's notes, the grant's prices, the policy's prediction) is in neither.
    """
    records: dict[int, CallRecord] = {}
    for event in events:
        kind = event.kind
        if kind == "begin":
            records[event.grant_id] = CallRecord(
                str(event.agent),
                event.grant_id,
                event.asked or event.context_tokens,
                event.context_tokens,
                event.output_tokens,
                event.at,
                model=event.note or None,
            )
            continue
        record = records.get(event.grant_id)
        if record is None or record.status not in (OPEN, EXPIRED):  # a late finish follows
            continue
        if kind == "refused" and event.note == "extend":
            record.wrap_up = True
        elif kind == "extend" and (event.context_tokens or event.output_tokens):
            record.extensions += 1
            record.extension_context += event.context_tokens
            record.output_cap += event.output_tokens
        elif kind == "finish":
            record.input_used, record.output_used = event.context_tokens, event.output_tokens
            record.truncated, record.overuse = bool(event.truncated), event.overuse
            late = event.note == "late"
            record.status = _ended(late, record.truncated, record.wrap_up)
            record.settled_at = event.at
        elif kind == "expire":
            record.settle(EXPIRED, event.at)
        elif kind == "release":
            record.settle(CLOSED if event.note in LEDGER_STATUSES else RELEASED, event.at)
    return records


def refusals_of(history: Iterable[Event], kept: Iterable[CallRecord]) -> list[CallRecord]:
    """The begins refused that a request's history tells and ``kept`` does not hold.

    ``history``: the request's events with the store's notes (``Store.history``): a
    ``refused`` note of a begin names the line it was budgeted on, whichever process made
    it. ``kept``: the refusals a process recorded itself (by the caller's name, with its
    kind). Each of the others is a record of status ``refused`` on its line.
    """
    own: dict[str, int] = {}
    for record in kept:
        own[record.budgeted_as] = own.get(record.budgeted_as, 0) + 1
    told = []
    for note in history:
        if note.kind != "refused" or note.note != "begin":
            continue
        agent, at = str(note.agent), note.at
        if own.get(agent, 0) > 0:
            own[agent] -= 1  # one this process recorded
            continue
        asked = note.context_tokens
        told.append(CallRecord(agent, 0, asked, 0, 0, at, status=REFUSED, settled_at=at))
    return told
