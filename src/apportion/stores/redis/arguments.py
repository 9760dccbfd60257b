"""Script arguments from the caller's input, checked the way the ledger checks it.

A request script validates against the ledger's state; what can be checked before it (token
counts, times, names) is checked here. An invalid value does not raise at once: it is sent
as ``!`` (or a neutral value) and its error is kept in ``pending``, so that the script can
refuse first what the ledger would refuse first (an unknown or closed request), in the
ledger's order of validation; a script that meets ``!`` replies ``bad`` and the first
pending error is raised (see :mod:`apportion.stores.redis.refusals`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from apportion.errors import ApportionError
from apportion.ledger import Grant, check_time, check_tokens

T = TypeVar("T")


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


def _time(now: object, pending: list[Exception]) -> float:
    """``now`` as a time, or 0 with its error kept in ``pending`` (see :func:`_tokens`)."""
    return _checked(check_time, "now", now, pending, 0.0)
