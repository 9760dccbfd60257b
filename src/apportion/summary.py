"""The budget summary of one request: allocated, reserved, consumed and free, per agent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from apportion.calls import (
    CLOSED,
    COMPLETED,
    CUT,
    EXPIRED,
    LATE,
    OPEN,
    REFUSED,
    RELEASED,
    WRAPPED_UP,
    CallRecord,
)
from apportion.ledger_view import LedgerView

STATUS_ORDER = (COMPLETED, WRAPPED_UP, CUT, LATE, OPEN, RELEASED, EXPIRED, CLOSED, REFUSED)
"""The order statuses are listed in (see :mod:`apportion.calls`)."""


@dataclass(frozen=True, slots=True)
class AgentUsage:
    """One agent's line of a summary.

    ``reserved`` and ``consumed`` add up, over the agents, to the request's totals, and
    ``held`` to what the free pool keeps for agents not started; ``allocated`` is the
    policy's plan, advisory: it is not a share of the ceiling and need not add up to it.

    Attributes:
        allocated: tokens the policy plans for the agent (its latest plan; advisory).
        reserved: tokens held by its open grants.
        consumed: tokens its settled calls used, charged to the ceiling.
        held: tokens of the free pool reserved for it until it starts (0 once started).
        calls: grants it began.
        input_cut_calls: calls granted less context than the input it had in hand.
        truncated_calls: calls whose answer was cut at the output cap.
        overuse: tokens its calls used beyond their grants (a late call: all its usage).
        cost_usd: USD its settled calls cost (0 when its grants carried no prices).
        statuses: its calls counted by status (``completed``, ``wrapped_up``, ``cut``,
            ``refused`` ...; see :mod:`apportion.calls`), the statuses it had only.
    """

    allocated: int
    reserved: int
    consumed: int
    held: int
    calls: int
    input_cut_calls: int
    truncated_calls: int
    overuse: int
    cost_usd: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def remaining(self) -> int:
        """What is left of its plan: ``allocated - reserved - consumed``, at least 0."""
        return max(0, self.allocated - self.reserved - self.consumed)


@dataclass(frozen=True, slots=True)
class Summary:
    """A request's budget at one moment: ``consumed + reserved + free == ceiling``.

    Attributes:
        request_id: the request.
        status: ``open``, ``closed``, ``failed`` or ``expired``.
        ceiling: the token ceiling.
        reserved: tokens held by open grants (the sum of the agents' ``reserved``) and
            open children.
        consumed: tokens charged to the ceiling (the sum of the agents' ``consumed``, and
            of the closed children's usage).
        free: ``ceiling - reserved - consumed``; ``held`` of it is kept for agents not
            started.
        held: tokens of ``free`` reserved for agents not started (the sum of their ``held``).
        overflow: tokens providers reported beyond the ceiling (not charged to it).
        outcome: the outcome score, if one was given.
        agents: one :class:`AgentUsage` per agent, in execution order.
        cost_usd: USD the settled calls cost (closed children's included).
        ceiling_usd: the cost ceiling in USD, or ``None``.
        statuses: the request's calls counted by status, refused begins included (only
            ``completed`` is a success: ``wrapped_up`` handed back a partial result, ``cut``
            an answer cut at its cap); the statuses it had only.
        parent_id: the request this one is a child of, or ``None``.
        children_reserved: tokens drawn by its open children (part of ``reserved``).
        children_consumed: tokens its closed children used (part of ``consumed``).
        children: one summary per child request it opened, in order (each with its own).

    A request with children rolls them up: ``reserved`` and ``consumed`` include their
    draws and usage, so ``consumed + reserved + free == ceiling`` still holds, while the
    agents' lines are this request's own calls.
        members: the agents that called under an agent kind (names not listed in the
            pipeline), each with its kind, in the order they first called; their usage is
            on their kind's line of ``agents``.
    """

    request_id: str
    status: str
    ceiling: int
    reserved: int
    consumed: int
    free: int
    held: int
    overflow: int
    outcome: float | None
    agents: dict[str, AgentUsage]
    cost_usd: float = 0.0
    ceiling_usd: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    parent_id: str | None = None
    children_reserved: int = 0
    children_consumed: int = 0
    children: tuple[Summary, ...] = ()
    members: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        state: LedgerView,
        names: Iterable[str],
        calls: Iterable[CallRecord] = (),
        children: tuple[Summary, ...] = (),
        members: Mapping[str, str] | None = None,
    ) -> Summary:
        """Summarise a ledger's state, its ``calls`` (by status), its children and members.

        ``members``: agent name to kind (see the attribute); a member's calls count on its
        kind's line.
        """
        by_agent: dict[str, Counter[str]] = {}
        for record in calls:
            by_agent.setdefault(record.budgeted_as, Counter())[record.status] += 1
        agents = {
            name: AgentUsage(
                state.allocation[name],
                state.reserved_by[name],
                state.consumed_by[name],
                state.reserve.get(name, 0),
                state.calls[name],
                state.input_cut_calls[name],
                state.truncated_calls[name],
                state.overuse_by[name],
                state.cost_by[name] / 1e9,
                _ordered(by_agent.get(name, Counter())),
            )
            for name in names
        }
        return cls(
            state.request_id,
            state.status,
            state.ceiling,
            state.reserved,
            state.consumed,
            state.free,
            sum(state.reserve.values()),
            state.overflow,
            state.outcome,
            agents,
            state.cost_consumed / 1e9,
            None if state.cost_ceiling is None else state.cost_ceiling / 1e9,
            _ordered(sum(by_agent.values(), Counter())),
            getattr(state, "parent_id", None),
            sum(tokens for tokens, _ in getattr(state, "children", {}).values()),
            getattr(state, "children_consumed", 0),
            children,
            dict(members or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def __str__(self) -> str:
        header = (
            "agent",
            "planned",
            "held",
            "open",
            "consumed",
            "calls",
            "input cut",
            "output cut",
            "overuse",
        )
        rows: list[tuple[str, ...]] = [header]  # the summary's columns, as text
        counts = [_counts(u) for u in self.agents.values()]
        for name, numbers in zip(self.agents, counts, strict=True):
            rows.append((name, *map(str, numbers)))
        summed = [sum(column) for column in zip(*counts, strict=True)] if counts else [0] * 8
        rows.append(("total", "", *map(str, summed[1:])))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [
            f"request {self.request_id} ({self.status}): ceiling {self.ceiling} = consumed "
            f"{self.consumed} + open {self.reserved} + free {self.free}"
            + (f" (held for agents not started: {self.held})" if self.held else "")
        ]
        for i, row in enumerate(rows):
            line = [row[0].ljust(widths[0])]
            line += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
            lines.append("  ".join(line).rstrip())
            if i == 0 or i == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(
            "planned: the policy's plan (advisory, not summed); held: kept in the free pool for "
            "an agent until it starts; open: held by open grants; input cut: calls granted "
            "less context than they had in hand; output cut: answers cut at the cap"
        )
        if self.statuses:
            counted = ", ".join(f"{status} {n}" for status, n in self.statuses.items())
            lines.append(f"calls: {counted} (only completed answers are whole)")
        by_kind: dict[str, list[str]] = {}
        for member, kind in self.members.items():
            by_kind.setdefault(kind, []).append(member)
        for kind, names in by_kind.items():
            lines.append(f"kind {kind}: {', '.join(names)}")
        if self.overflow:
            lines.append(f"overflow {self.overflow}: used beyond the ceiling, not charged to it")
        if self.cost_usd or self.ceiling_usd is not None:
            per_agent = ", ".join(f"{n} {u.cost_usd:.6f}" for n, u in self.agents.items())
            cap = f" of {self.ceiling_usd:.6f}" if self.ceiling_usd is not None else ""
            lines.append(f"cost {self.cost_usd:.6f}{cap} USD: {per_agent}")
        if self.children:
            lines.append(
                f"children: {len(self.children)}, consumed {self.children_consumed} "
                f"(in consumed above), open {self.children_reserved} (in open above)"
            )
            lines.extend(_child_lines(self))
        return "\n".join(lines)

    def tree(self) -> str:
        """One line per request of the tree under this one, indented by depth."""
        return "\n".join(_child_lines(self, with_self=True))


def _child_lines(summary: Summary, indent: str = "  ", with_self: bool = False) -> list[str]:
    """Lines of a request tree: each request's status, ceiling, usage and what is open."""
    lines = []
    if with_self:
        lines.append(_tree_line(summary, ""))
    for child in summary.children:
        lines.append(_tree_line(child, indent))
        lines += _child_lines(child, indent + "  ")
    return lines


def _tree_line(summary: Summary, indent: str) -> str:
    return (
        f"{indent}{summary.request_id} ({summary.status}): ceiling {summary.ceiling}, "
        f"consumed {summary.consumed}, open {summary.reserved}, free {summary.free}"
    )


def _counts(u: AgentUsage) -> tuple[int, ...]:
    """An agent's numbers, in the order of the printed columns."""
    return (
        u.allocated,
        u.held,
        u.reserved,
        u.consumed,
        u.calls,
        u.input_cut_calls,
        u.truncated_calls,
        u.overuse,
    )


def _ordered(counts: Counter[str]) -> dict[str, int]:
    """Counts by status, in :data:`STATUS_ORDER` (unknown statuses last), zeros left out."""
    rank = {status: i for i, status in enumerate(STATUS_ORDER)}
    return {s: counts[s] for s in sorted(counts, key=lambda s: rank.get(s, len(rank))) if counts[s]}
