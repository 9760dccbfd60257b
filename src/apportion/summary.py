"""The budget summary of one request: allocated, reserved, consumed and free, per agent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from apportion.stores.base import LedgerView


@dataclass(frozen=True, slots=True)
class AgentUsage:
    """One agent's line of a summary.

    Attributes:
        allocated: tokens the policy planned for it.
        reserved: tokens held by its open grants.
        consumed: tokens its settled calls used (charged to the ceiling).
        free: what is left of its allocation (allocated - reserved - consumed, at least 0).
        calls: grants it began.
        truncated_calls: calls settled as cut.
        overuse: tokens its calls used beyond their grants.
        cost_usd: USD its settled calls cost (0 when its grants carried no prices).
    """

    allocated: int
    reserved: int
    consumed: int
    free: int
    calls: int
    truncated_calls: int
    overuse: int
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Summary:
    """A request's budget at one moment.

    Attributes:
        request_id: the request.
        status: ``open``, ``closed``, ``failed`` or ``expired``.
        ceiling: the token ceiling.
        reserved: tokens held by open grants.
        consumed: tokens charged to the ceiling.
        free: ``ceiling - reserved - consumed``.
        overflow: tokens providers reported beyond the ceiling (not charged to it).
        outcome: the outcome score, if one was given.
        agents: one :class:`AgentUsage` per agent, in execution order.
        cost_usd: USD the settled calls cost.
        ceiling_usd: the cost ceiling in USD, or ``None``.
    """

    request_id: str
    status: str
    ceiling: int
    reserved: int
    consumed: int
    free: int
    overflow: int
    outcome: float | None
    agents: dict[str, AgentUsage]
    cost_usd: float = 0.0
    ceiling_usd: float | None = None

    @classmethod
    def of(cls, state: LedgerView, names: Iterable[str]) -> Summary:
        """Summarise a ledger's state."""
        agents = {}
        for name in names:
            allocated = state.allocation[name]
            reserved = state.reserved_by[name]
            consumed = state.consumed_by[name]
            agents[name] = AgentUsage(
                allocated,
                reserved,
                consumed,
                max(0, allocated - reserved - consumed),
                state.calls[name],
                state.truncated_calls[name],
                state.overuse_by[name],
                state.cost_by[name] / 1e9,
            )
        return cls(
            state.request_id,
            state.status,
            state.ceiling,
            state.reserved,
            state.consumed,
            state.free,
            state.overflow,
            state.outcome,
            agents,
            state.cost_consumed / 1e9,
            None if state.cost_ceiling is None else state.cost_ceiling / 1e9,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def __str__(self) -> str:
        header = ("agent", "allocated", "reserved", "consumed", "free", "calls", "cut", "overuse")
        rows: list[tuple[str, ...]] = [header]
        for name, u in self.agents.items():
            rows.append(
                (
                    name,
                    *map(
                        str,
                        (
                            u.allocated,
                            u.reserved,
                            u.consumed,
                            u.free,
                            u.calls,
                            u.truncated_calls,
                            u.overuse,
                        ),
                    ),
                )
            )
        rows.append(
            (
                "total",
                str(self.ceiling),
                str(self.reserved),
                str(self.consumed),
                str(self.free),
                "",
                "",
                str(self.overflow) if self.overflow else "",
            )
        )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [f"request {self.request_id} ({self.status}), ceiling {self.ceiling}"]
        for i, row in enumerate(rows):
            cells = [row[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
            ]
            lines.append("  ".join(cells).rstrip())
            if i == 0 or i == len(rows) - 2:
                lines.append("  ".join("-" * w for w in widths))
        if self.cost_usd or self.ceiling_usd is not None:
            per_agent = ", ".join(f"{n} {u.cost_usd:.6f}" for n, u in self.agents.items())
            cap = f" of {self.ceiling_usd:.6f}" if self.ceiling_usd is not None else ""
            lines.append(f"cost {self.cost_usd:.6f}{cap} USD: {per_agent}")
        return "\n".join(lines)
