"""``GET /v1/requests``: the open requests a key may see, for dashboards and scripts.

A tenant's key lists its own open requests; an admin key lists every tenant's. The list
comes from the store's index of open requests (:meth:`Store.open_requests
<apportion.stores.base.Store.open_requests>`: the reap index on Redis, no scan of every
key), each row the request's totals and per-agent state.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel

from apportion.errors import InvalidArgument
from apportion.serve import schemas as s
from apportion.serve.gateway import Gateway, Tenant
from apportion.serve.routes import tenant_dependency
from apportion.stores import LedgerView

__all__ = ["AgentRow", "RequestRow", "RequestsOut", "listing_routes", "request_row"]


class AgentRow(BaseModel):
    """One agent of an open request: its plan, what it holds and what it consumed."""

    allocation: int
    reserved: int
    consumed: int
    overuse: int
    calls: int
    truncated_calls: int


class RequestRow(BaseModel):
    """One open request."""

    request_id: str
    tenant: str
    parent_id: str | None
    depth: int
    status: str
    ceiling: int
    consumed: int
    reserved: int
    free: int
    expires_at: float | None
    agents: dict[str, AgentRow]


class RequestsOut(BaseModel):
    """The open requests a key may see, sorted by tenant and id."""

    requests: list[RequestRow]


def request_row(state: LedgerView) -> dict[str, Any]:
    """A request's row: its id without the tenant's prefix, the tenant, its totals."""
    tenant, _, public = state.request_id.partition("/")
    parent = state.parent_id.partition("/")[2] if state.parent_id else None
    expires = getattr(state, "expires_at", math.inf)
    return {
        "request_id": public,
        "tenant": tenant,
        "parent_id": parent,
        "depth": state.depth,
        "status": state.status,
        "ceiling": state.ceiling,
        "consumed": state.consumed,
        "reserved": state.reserved,
        "free": state.free,
        "expires_at": expires if math.isfinite(expires) else None,
        "agents": {
            agent: {
                "allocation": state.allocation.get(agent, 0),
                "reserved": state.reserved_by.get(agent, 0),
                "consumed": state.consumed_by.get(agent, 0),
                "overuse": state.overuse_by.get(agent, 0),
                "calls": state.calls.get(agent, 0),
                "truncated_calls": state.truncated_calls.get(agent, 0),
            }
            for agent in state.ranks
        },
    }


def listing_routes(app: FastAPI, gateway: Gateway) -> None:
    """Add ``GET /v1/requests`` to ``app``."""
    tenant_of = tenant_dependency(gateway)

    @app.get(
        "/v1/requests",
        tags=["budget"],
        response_model=RequestsOut,
        responses=s.error_responses(401, 422, 503),
    )
    async def list_requests(
        request: Request,
        tenant: Tenant = Depends(tenant_of),  # noqa: B008
        limit: int = Query(1000, ge=1, le=10_000, description="the most requests listed"),
    ) -> Any:
        """The open requests this key may see (an admin key: every tenant's)."""
        for name in request.query_params:
            if name != "limit":
                raise InvalidArgument(name, request.query_params[name], "no such parameter")
        states = await gateway.open_requests(tenant, limit)
        return {"requests": [request_row(state) for state in states]}
