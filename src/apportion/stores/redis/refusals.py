"""The errors a request script's refusal stands for, with the ledger's very fields.

A script refuses with a code (``unknown``, ``closed``, ``budget`` ...) and the numbers the
error needs; :func:`_refusal` raises what :class:`~apportion.ledger.Ledger` would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from apportion.errors import (
    BudgetExceeded,
    CostExceeded,
    DuplicateRequest,
    ForeignGrant,
    GrantExpired,
    GrantSettled,
    InvalidPrice,
    OperationConflict,
    RequestClosed,
    UnknownAgent,
    UnknownRequest,
)
from apportion.ledger import NANO, Grant
from apportion.stores.base import digest_operation
from apportion.stores.redis.codec import _str


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
