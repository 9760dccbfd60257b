"""The gateway's routes and error handlers (imported once FastAPI is known to be there).

:func:`install_errors` makes every failure a JSON error with a stable code
(:mod:`apportion.serve.errors_json`); :func:`budget_routes` adds ``/healthz``, ``/readyz``
and the budget API under ``/v1/budget/requests``; :class:`BodyLimit` refuses bodies over
the configured size with 413.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from apportion.controller import AsyncRequest
from apportion.errors import ApportionError, InvalidArgument, StoreUnavailable, UnknownRequest
from apportion.ledger import Grant
from apportion.serve import schemas as s
from apportion.serve.errors import Forbidden, InvalidBody
from apportion.serve.errors_json import error_headers, error_response, json_ready
from apportion.serve.gateway import Gateway, Tenant
from apportion.serve.idempotency import Outcome

__all__ = ["BodyLimit", "budget_routes", "install_errors"]

JSON = "application/json"


# ---------------------------------------------------------------------- errors


def _error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status_code=status, media_type=JSON, headers=headers)


def install_errors(app: FastAPI) -> None:
    """Answer every failure with a JSON error (never a traceback)."""

    async def apportion_error(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, ApportionError)
        tenant = getattr(request.state, "tenant", None)
        status, body = error_response(exc, tenant.prefix if tenant is not None else "")
        return _error(status, body, error_headers(exc))

    async def validation_error(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, RequestValidationError)
        problems = list(exc.errors())
        first = problems[0] if problems else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(where) or "body"
        kind = str(first.get("type", ""))
        bad_json = kind == "json_invalid" or (
            field == "body" and isinstance(first.get("input"), bytes | str)
        )
        if bad_json:
            field, reason = (
                "body",
                "not valid JSON (send a JSON object, Content-Type: application/json)",
            )
        elif kind == "missing":
            reason = "a required field is missing"
        else:
            reason = str(first.get("msg", "invalid"))
        error = InvalidBody(field, "..." if bad_json else first.get("input"), reason)
        status, body = error_response(error)
        if bad_json:
            body["error"]["code"] = "invalid_json"
        body["error"]["problems"] = [
            {
                "field": ".".join(str(p) for p in p.get("loc", ()) if p != "body") or "body",
                "reason": str(p.get("msg", "")),
            }
            for p in problems[:20]
        ]
        return _error(400 if bad_json else status, body)

    async def http_error(request: Request, exc: Exception) -> Any:
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        code = codes.get(exc.status_code, "http_error")
        body = {"error": {"code": code, "message": str(exc.detail), "path": request.url.path}}
        return _error(exc.status_code, body, dict(exc.headers or {}))

    async def internal_error(request: Request, exc: Exception) -> Any:
        body = {
            "error": {
                "code": "internal_error",
                "message": f"internal error ({type(exc).__name__}); please report it",
            }
        }
        return _error(500, body)

    app.add_exception_handler(ApportionError, apportion_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


class BodyLimit:
    """Refuses a body over ``limit`` bytes with 413 (by its Content-Length, or as it streams).

    It also reads a budget API body sent without a JSON content type (``curl -d``) as JSON.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = list(scope.get("headers", ()))
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))  # when mounted
        if path.startswith("/v1/budget"):
            kinds = [v for n, v in headers if n == b"content-type"]
            if not kinds or kinds[0].startswith(b"application/x-www-form-urlencoded"):
                # the budget API speaks JSON only: `curl -d '{...}'` means JSON too
                headers = [(n, v) for n, v in headers if n != b"content-type"]
                headers.append((b"content-type", JSON.encode()))
                scope = {**scope, "headers": headers}
        for name, value in headers:
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    size = -1
                if size > self.limit or size < 0:
                    await self._refuse(send, size)
                    return
        seen = 0
        started = False

        async def counted() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(self.limit)
            return message

        async def watched(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await self._refuse(send, seen)

    async def _refuse(self, send: Any, size: int) -> None:
        reason = f"at most {self.limit} bytes" if size >= 0 else "a bad Content-Length"
        error = InvalidBody("body", f"{size} bytes" if size >= 0 else "?", reason)
        _, body = error_response(error)
        body["error"]["code"] = "body_too_large" if size >= 0 else "invalid_body"
        data = json.dumps(body).encode()
        status = 413 if size >= 0 else 400
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", JSON.encode()),
                    (b"content-length", b"%d" % len(data)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})


class _TooLarge(HTTPException):
    """A body that grew past the limit as it streamed (FastAPI passes HTTP errors on)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than {limit} bytes")


# ---------------------------------------------------------------------- the budget API


def _client(request: Request) -> str | None:
    """The caller's address (uvicorn's ``--proxy-headers`` make it the client's behind a proxy)."""
    return request.client.host if request.client is not None else None


def _public(value: Any, prefix: str) -> Any:
    """A summary (or any JSON) with the tenant's prefix taken off its request ids."""
    if isinstance(value, dict):
        return {
            k: (
                v.removeprefix(prefix)
                if k in ("request_id", "parent_id") and isinstance(v, str)
                else _public(v, prefix)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_public(v, prefix) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _grant_json(gateway: Gateway, grant: Grant, tenant: Tenant) -> dict[str, Any]:
    prefix = tenant.prefix
    return {
        "grant": gateway.grant_handle(tenant, grant),
        "request_id": grant.request_id.removeprefix(prefix),
        "grant_id": grant.grant_id,
        "agent": grant.agent,
        "context_tokens": grant.context_tokens,
        "output_tokens": grant.output_tokens,
        "working_tokens": grant.working_tokens,
        "wrap_up_tokens": grant.wrap_up_tokens,
        "lease_expires_at": grant.lease_expires_at,
        "model": grant.model,
    }


def _ok(status: int, body: Any) -> Outcome:
    return Outcome(status, json.dumps(body).encode("utf-8"))


def tenant_dependency(gateway: Gateway) -> Callable[..., Awaitable[Tenant]]:
    """The FastAPI dependency that authenticates a call (the key in the schema, if any)."""
    bearer = HTTPBearer(auto_error=False, description="A tenant's API key")

    async def keyed_tenant(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> Tenant:
        tenant = gateway.authenticate(request.headers, _client(request))
        request.state.tenant = tenant
        return tenant

    async def open_tenant(request: Request) -> Tenant:  # no tenants: no key, none in the schema
        tenant = gateway.authenticate(request.headers, _client(request))
        request.state.tenant = tenant
        return tenant

    return open_tenant if gateway.config.open_mode else keyed_tenant


def acting_as(gateway: Gateway, caller: Tenant, tenant: str | None, operation: str) -> Tenant:
    """The tenant a call acts for: the caller's own, or (an admin's key only) ``tenant``.

    Raises:
        Forbidden: a tenant's key names another tenant.
        InvalidArgument: no such tenant.
    """
    if tenant is None or tenant == caller.name:
        return caller
    if not caller.admin:
        raise Forbidden(caller.name, operation)
    if tenant not in gateway.config.tenants:
        raise InvalidArgument("tenant", tenant, "a configured tenant")
    return Tenant(tenant, gateway.config.tenants[tenant].admin)


def budget_routes(app: FastAPI, gateway: Gateway) -> None:
    """Add ``/healthz``, ``/readyz`` and the budget API to ``app``."""
    tenant_of = tenant_dependency(gateway)

    async def run(
        request: Request,
        tenant: Tenant,
        op_name: str,
        body: Any,
        fn: Callable[[], Awaitable[Outcome]],
    ) -> Response:
        data = body.model_dump(mode="json") if body is not None else None
        text = json.dumps(
            [request.method, request.url.path, data], sort_keys=True, default=json_ready
        )
        fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()
        key = request.headers.get("idempotency-key")
        outcome = await gateway.idempotent(
            tenant, key, op_name, fn, fingerprint=fingerprint, store_ids=True
        )
        return Response(outcome.body, status_code=outcome.status, media_type=JSON)

    errors = s.error_responses
    TenantDep = Depends(tenant_of)
    idem = Header(
        default=None,
        alias="Idempotency-Key",
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="A retry with the same key (1 to 255 printable ASCII characters) "
        "returns the first outcome.",
    )

    @app.get("/healthz", tags=["operations"], response_model=s.Health)
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        response_model=s.Health,
        responses=errors(503),
    )
    async def readyz() -> Any:
        """The store answers (503 while it cannot be reached)."""
        try:
            await gateway.store.aget("\x00readyz")
        except UnknownRequest:
            pass
        except StoreUnavailable as exc:
            return _error(*error_response(exc))
        return {"status": "ok"}

    @app.post(
        "/v1/budget/requests",
        tags=["budget"],
        status_code=201,
        response_model=s.RequestOut,
        responses=errors(401, 404, 409, 422, 429, 503),
    )
    async def open_request(
        request: Request,
        body: s.OpenBody,
        tenant: Tenant = TenantDep,
        idempotency_key: str | None = idem,
    ) -> Response:
        """Open a request (or, with `parent`, a child budget carved from an open request)."""

        async def op() -> Outcome:
            req = await gateway.open(
                tenant,
                body.pipeline,
                body.ceiling,
                body.cost_ceiling,
                body.features,
                body.pool,
                body.parent,
                request_id=body.request_id,
                pool_priority=body.pool_priority,
                name=body.name,
                share=body.share,
                priority=body.priority,
            )
            return _ok(201, _request_json(req, tenant))

        return await run(request, tenant, "open", body, op)

    @app.get(
        "/v1/budget/requests/{request_id}",
        tags=["budget"],
        response_model=s.SummaryOut,
        responses=errors(401, 403, 404, 503),
    )
    async def summary(
        request_id: str,
        tenant: Tenant = TenantDep,
        of: str | None = Query(
            None, alias="tenant", description="an admin key: the tenant whose request it is"
        ),
    ) -> Any:
        """The request's summary: allocated, reserved, consumed and free, per agent."""
        owner = acting_as(gateway, tenant, of, "read another tenant's requests")
        result = await gateway.summary(owner, request_id)
        return _public(result.to_dict(), owner.prefix)

    @app.post(
        "/v1/budget/requests/{request_id}/begin",
        tags=["budget"],
        response_model=s.GrantOut,
        responses=errors(401, 404, 409, 422, 503),
    )
    async def begin(
        request: Request,
        request_id: str,
        body: s.BeginBody,
        tenant: Tenant = TenantDep,
        idempotency_key: str | None = idem,
    ) -> Response:
        """Reserve a grant for one model call of `agent`."""

        async def op() -> Outcome:
            req = await gateway.request(tenant, request_id)
            grant = await req.begin(
                body.agent,
                body.input_tokens,
                body.output_tokens,
                model=body.model,
                min_context_tokens=body.min_context_tokens,
                wrap_up_tokens=body.wrap_up_tokens,
            )
            return _ok(200, _grant_json(gateway, grant, tenant))

        return await run(request, tenant, "begin", body, op)

    @app.post(
        "/v1/budget/requests/{request_id}/extend",
        tags=["budget"],
        response_model=s.ExtendOut,
        responses=errors(401, 403, 404, 409, 422, 503),
    )
    async def extend(
        request: Request,
        request_id: str,
        body: s.ExtendBody,
        tenant: Tenant = TenantDep,
        idempotency_key: str | None = idem,
    ) -> Response:
        """Grow an open grant (`grant` null: no more for this agent, wrap up now)."""

        async def op() -> Outcome:
            req = await gateway.request(tenant, request_id)
            grant = gateway.grant(tenant, req, body.grant)
            grown = await req.extend(grant, body.output_tokens, context_tokens=body.context_tokens)
            out = None if grown is None else _grant_json(gateway, grown, tenant)
            return _ok(200, {"grant": out})

        return await run(request, tenant, "extend", body, op)

    @app.post(
        "/v1/budget/requests/{request_id}/renew",
        tags=["budget"],
        response_model=s.GrantOut,
        responses=errors(401, 403, 404, 409, 422, 503),
    )
    async def renew(
        request: Request,
        request_id: str,
        body: s.GrantRef,
        tenant: Tenant = TenantDep,
        idempotency_key: str | None = idem,
    ) -> Response:
        """Renew an open grant's lease (a long call)."""

        async def op() -> Outcome:
            req = await gateway.request(tenant, request_id)
            grant = await req.renew(gateway.grant(tenant, req, body.grant))
            return _ok(200, _grant_json(gateway, grant, tenant))

        return await run(request, tenant, "renew", body, op)

    @app.post(
        "/v1/budget/requests/{request_id}/finish",
        tags=["budget"],
        response_model=s.SettledOut,
        responses=errors(401, 403, 404, 409, 422, 503),
    )
    async def finish(
        request: Request,
        request_id: str,
        body: s.FinishBody,
        tenant: Tenant = TenantDep,
        idempotency_key: str | None = idem,
    ) -> Response:
        """Settle a grant with the call's real usage (unused tokens return at once)."""

        async def op() -> Outcome:
            req = await gateway.request(tenant, request_id)
            grant = gateway.grant(tenant, req, body.grant)
            await req.finish(
                grant,
                input_tokens=body.input_tokens,
                output_tokens=body.output_tokens,
                truncated=body.truncated,
                text=body.text,
                usage_estimated=body.usage_estimated,
            )
            return _ok(200, _settled_json(req, grant, tenant))

        return await run(request, tenant, "finish", body, op)

    @app.post(
        "/v1/budget/requests/{request_id}/release",
        tags=["budget"],
        response_model=s.SettledOut,
        responses=errors(401, 403, 404, 409, 422, 503),
    )
    async def release(
        request: Request,
        request_id: str,
        body: s.GrantRef,
        tenant: Tenant = TenantDep,
        idempotency_key: str | None = idem,
    ) -> Response:
        """Settle a grant as unused (the call failed or was not made)."""

        async def op() -> Outcome:
            req = await gateway.request(tenant, request_id)
            grant = gateway.grant(tenant, req, body.grant)
            await req.release(grant)
            return _ok(200, _settled_json(req, grant, tenant))

        return await run(request, tenant, "release", body, op)

    @app.post(
        "/v1/budget/requests/{request_id}/fitted",
        tags=["budget"],
        response_model=s.FittedOut,
        responses=errors(401, 403, 404, 409, 422, 503),
    )
    async def fitted(
        request: Request,
        request_id: str,
        body: s.FittedBody,
        tenant: Tenant = TenantDep,
        idempotency_key: str | None = idem,
    ) -> Response:
        """Say that fitting dropped or shortened messages of a grant's call (counts only).

        A note the store keeps with the request, for the dashboard (the request page's
        "Messages fitted away" and its timeline); the ledger does not change. The proxy
        notes its own calls; a client that fits its messages itself says so here.
        """

        async def op() -> Outcome:
            req = await gateway.request(tenant, request_id)
            grant = gateway.grant(tenant, req, body.grant)
            await req.note_fitted(grant, body.messages, body.tokens)
            kept = {"request_id": request_id, "messages": body.messages, "tokens": body.tokens}
            return _ok(200, kept)

        return await run(request, tenant, "fitted", body, op)

    @app.post(
        "/v1/budget/requests/{request_id}/score",
        tags=["budget"],
        response_model=s.ScoreOut,
        responses=errors(401, 404, 409, 422, 503),
    )
    async def score(
        request: Request,
        request_id: str,
        body: s.ScoreBody,
        tenant: Tenant = TenantDep,
        idempotency_key: str | None = idem,
    ) -> Response:
        """Record the request's outcome score (told to the policy when it closes)."""

        async def op() -> Outcome:
            await gateway.score(tenant, request_id, body.outcome)
            return _ok(200, {"request_id": request_id, "outcome": body.outcome})

        return await run(request, tenant, "score", body, op)

    @app.post(
        "/v1/budget/requests/{request_id}/close",
        tags=["budget"],
        response_model=s.SummaryOut,
        responses=errors(401, 404, 409, 422, 503),
    )
    async def close(
        request: Request,
        request_id: str,
        body: s.CloseBody | None = None,
        tenant: Tenant = TenantDep,
        idempotency_key: str | None = idem,
    ) -> Response:
        """Close the request: open grants are released, its children close, it is final."""
        status: Literal["closed", "failed"] = "closed" if body is None else body.status

        async def op() -> Outcome:
            result = await gateway.close(tenant, request_id, status)
            return _ok(200, _public(result.to_dict(), tenant.prefix))

        return await run(request, tenant, "close", body, op)


def _request_json(req: AsyncRequest, tenant: Tenant) -> dict[str, Any]:
    summary = req.summary().to_dict()
    return {
        "request_id": req.request_id.removeprefix(tenant.prefix),
        "parent_id": None if req.parent_id is None else req.parent_id.removeprefix(tenant.prefix),
        "ceiling": req.ceiling,
        "cost_ceiling": summary.get("ceiling_usd"),
        "summary": _public(summary, tenant.prefix),
    }


def _settled_json(req: AsyncRequest, grant: Grant, tenant: Tenant) -> dict[str, Any]:
    """The settled grant and the request's totals after (read from its state: no summary)."""
    state = req.state
    stored = req.pipeline.resolve(grant.agent).name
    return {
        "request_id": req.request_id.removeprefix(tenant.prefix),
        "grant_id": grant.grant_id,
        "agent": grant.agent,
        "summary": {
            "request_id": req.request_id.removeprefix(tenant.prefix),
            "status": state.status,
            "ceiling": state.ceiling,
            "consumed": state.consumed,
            "reserved": state.reserved,
            "free": state.free,
            "overflow": state.overflow,
            "agent": {
                "consumed": state.consumed_by[stored],
                "reserved": state.reserved_by[stored],
                "overuse": state.overuse_by[stored],
                "available": state.available_for(stored),
            },
        },
    }
