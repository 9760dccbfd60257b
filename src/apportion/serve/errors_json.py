"""Errors as the gateway answers them: an HTTP status and ``{"error": {...}}``.

Every :class:`~apportion.errors.ApportionError` becomes::

    {"error": {"code": "budget_exceeded", "message": "...", "agent": "reasoner",
               "requested": 9000, "available": 4100}}

``code`` is stable per error class (:data:`CODES`; the nearest listed base class answers
for an unlisted subclass), ``message`` the error's message, and the error's fields follow
as they are (JSON-ready: anything else is shown by its ``repr``, cut short). A tenant sees
its own request ids only: the store's ``TENANT/`` prefix is taken off every id and message.
No key or secret reaches an error in the first place (the errors never quote one).
"""

from __future__ import annotations

import math
from typing import Any, Final

from apportion import errors as e
from apportion.limits import excerpt
from apportion.serve import errors as se

__all__ = ["CODES", "error_headers", "error_response", "json_ready"]

CODES: Final[dict[type[e.ApportionError], tuple[str, int]]] = {
    se.AuthenticationFailed: ("unauthenticated", 401),
    se.AuthenticationThrottled: ("too_many_auth_failures", 429),
    se.Forbidden: ("forbidden", 403),
    se.GrantInvalid: ("grant_invalid", 403),
    e.UnknownRequest: ("unknown_request", 404),
    se.UnknownGrant: ("unknown_grant", 404),
    se.UnknownPipeline: ("unknown_pipeline", 404),
    e.UnknownPool: ("unknown_pool", 404),
    se.DuplicatePool: ("duplicate_pool", 409),
    se.PoolDraining: ("pool_draining", 409),
    e.UnknownAgent: ("unknown_agent", 404),
    e.UnknownPolicy: ("unknown_policy", 422),
    e.UnknownModel: ("unknown_model", 422),
    e.UnknownStore: ("unknown_store", 422),
    e.UnknownSink: ("unknown_sink", 422),
    se.IdempotencyInProgress: ("in_progress", 409),
    se.IdempotencyKeyReused: ("idempotency_key_reused", 422),
    se.InvalidBody: ("invalid_body", 422),
    e.InvalidCeiling: ("invalid_ceiling", 422),
    e.InvalidTokenCount: ("invalid_token_count", 422),
    e.InvalidArgument: ("invalid_argument", 422),
    e.InvalidPrice: ("invalid_price", 422),
    e.SpecError: ("invalid_spec", 422),
    e.ForeignGrant: ("foreign_grant", 422),
    e.OperationConflict: ("operation_conflict", 422),
    e.TreeTooDeep: ("tree_too_deep", 422),
    e.InputTooLarge: ("input_too_large", 422),
    e.WrapUpTooLarge: ("wrap_up_too_large", 409),
    e.CostExceeded: ("cost_exceeded", 409),
    e.PoolExhausted: ("pool_exhausted", 429),
    e.ChildBudgetExceeded: ("child_budget_exceeded", 409),
    e.BudgetExceeded: ("budget_exceeded", 409),
    e.GrantExpired: ("grant_expired", 409),
    e.GrantSettled: ("grant_settled", 409),
    e.RequestClosed: ("request_closed", 409),
    e.DuplicateRequest: ("duplicate_request", 409),
    e.NoOpenRequest: ("no_open_request", 409),
    e.PoolDrawExpired: ("pool_draw_expired", 409),
    e.StoreUnavailable: ("store_unavailable", 503),
    e.DatabaseUnavailable: ("database_unavailable", 503),
    e.MissingExtra: ("missing_extra", 501),
    e.UnsupportedCall: ("unsupported_call", 501),
    e.UnsupportedVersion: ("unsupported_version", 501),
    e.ApportionError: ("apportion_error", 400),
}
"""Error class -> (stable code, HTTP status)."""

_IDS: Final = ("request_id", "parent_id", "grant_request_id", "pool")


def code_of(error: e.ApportionError) -> tuple[str, int]:
    """The stable code and HTTP status of ``error`` (its nearest listed class's)."""
    for cls in type(error).__mro__:
        found = CODES.get(cls)
        if found is not None:
            return found
    return CODES[e.ApportionError]


def json_ready(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can carry it (a long string or an odd object cut to an excerpt)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return value if len(value) <= 200 else excerpt(value, 200)
    if depth < 3 and isinstance(value, list | tuple | set | frozenset):
        return [json_ready(v, depth + 1) for v in list(value)[:50]]
    if depth < 3 and isinstance(value, dict):
        return {str(k): json_ready(v, depth + 1) for k, v in list(value.items())[:50]}
    return excerpt(value, 200)


def error_headers(error: e.ApportionError) -> dict[str, str]:
    """The HTTP headers an error answer carries (``Retry-After`` when it says when)."""
    retry = error.fields.get("retry_after")
    if type(retry) is int and retry > 0:
        return {"Retry-After": str(retry)}
    return {}


def error_response(error: e.ApportionError, tenant_prefix: str = "") -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of ``error`` as ``tenant_prefix``'s tenant sees it."""
    code, status = code_of(error)
    message = error.message
    fields: dict[str, Any] = {}
    for name, value in error.fields.items():
        if name in ("code", "message"):
            continue
        if tenant_prefix and name in _IDS and isinstance(value, str):
            value = value.removeprefix(tenant_prefix)
        fields[name] = json_ready(value)
    if tenant_prefix:
        message = message.replace(f"'{tenant_prefix}", "'").replace(
            f"pool {tenant_prefix}", "pool "
        )
        if isinstance(fields.get("agent"), str):  # a pool's refusal names it as its agent
            fields["agent"] = fields["agent"].replace(f"(pool {tenant_prefix}", "(pool ")
    return status, {"error": {"code": code, "message": message, **fields}}
