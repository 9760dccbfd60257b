"""What policies and summaries may read of one request's ledger: :class:`LedgerView`.

:class:`~apportion.ledger.Ledger` is one; so is what a store returns after each operation
(its state object, whatever it keeps inside). The view is read-only: only the ledger's
operations change a state, and only through the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from apportion.ledger import Grant

__all__ = ["LedgerView"]


class LedgerView(Protocol):
    """Read-only view of one request's ledger, as policies and summaries see it."""

    @property
    def request_id(self) -> str: ...  # noqa: D102
    @property
    def ceiling(self) -> int: ...  # noqa: D102
    @property
    def status(self) -> str: ...  # noqa: D102
    @property
    def outcome(self) -> float | None: ...  # noqa: D102
    @property
    def consumed(self) -> int: ...  # noqa: D102
    @property
    def reserved(self) -> int: ...  # noqa: D102
    @property
    def free(self) -> int: ...  # noqa: D102
    @property
    def overflow(self) -> int: ...  # noqa: D102
    @property
    def ranks(self) -> Mapping[str, int]: ...  # noqa: D102
    @property
    def allocation(self) -> Mapping[str, int]: ...  # noqa: D102
    @property
    def reserve(self) -> Mapping[str, int]: ...  # noqa: D102
    @property
    def consumed_by(self) -> Mapping[str, int]: ...  # noqa: D102
    @property
    def reserved_by(self) -> Mapping[str, int]: ...  # noqa: D102
    @property
    def overuse_by(self) -> Mapping[str, int]: ...  # noqa: D102
    @property
    def calls(self) -> Mapping[str, int]: ...  # noqa: D102
    @property
    def truncated_calls(self) -> Mapping[str, int]: ...  # noqa: D102
    @property
    def input_cut_calls(self) -> Mapping[str, int]: ...  # noqa: D102
    @property
    def grants(self) -> Mapping[int, Grant]: ...  # noqa: D102
    @property
    def cost_ceiling(self) -> int | None: ...  # noqa: D102
    @property
    def cost_reserved(self) -> int: ...  # noqa: D102
    @property
    def cost_consumed(self) -> int: ...  # noqa: D102
    @property
    def cost_by(self) -> Mapping[str, int]: ...  # noqa: D102
    @property
    def parent_id(self) -> str | None: ...  # noqa: D102
    @property
    def depth(self) -> int: ...  # noqa: D102
    @property
    def children(self) -> Mapping[str, tuple[int, int]]: ...  # noqa: D102
    @property
    def children_consumed(self) -> int: ...  # noqa: D102
    @property
    def children_cost_consumed(self) -> int: ...  # noqa: D102

    def cost_available(self) -> int | None:
        """nano-USD a new grant may still cost at full size (``None``: no cost ceiling)."""
        ...

    def grant_cost(self, grant_id: int) -> int:
        """Full-size cost of an open grant in nano-USD."""
        ...

    def spare(self, rank: int) -> int:
        """Tokens a child request of priority rank ``rank`` could draw right now."""
        ...

    def available_for(self, agent: str) -> int:
        """Tokens ``agent`` could be granted right now."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the state (no events)."""
        ...
