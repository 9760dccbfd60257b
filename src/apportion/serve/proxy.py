"""The OpenAI-compatible proxy: ``POST /v1/chat/completions`` and ``POST /v1/responses``.

A client changes only its ``base_url`` (to the gateway's ``/v1``) and adds headers:

* ``Apportion-Request``: the request id (in the caller's tenant). The first call that
  also carries ``Apportion-Ceiling`` (tokens; optionally ``Apportion-Ceiling-USD``) opens
  it, in ``Apportion-Pipeline`` when the gateway has several; later calls may carry the
  ceiling too (they find the request open and use it).
* ``Apportion-Agent``: the agent making the call (a pipeline agent, or one of its kinds).
* ``Apportion-Parent`` (optional): with ``Apportion-Ceiling``, the request is opened as a
  child budget of that request, drawn from it.
* ``Apportion-Budget-Token`` (instead of ``Apportion-Request``): a token another service's
  response carried; it opens a child budget of that service's request
  (:mod:`apportion.serve.passes`); the response names the child in ``Apportion-Request``,
  which later calls send.
* ``Idempotency-Key`` (optional): a retry with the same key gets the first answer, and
  the call is made and settled once.

The call goes through the call engine (:func:`apportion.serve.forward.budgeted`): counted,
fitted into the grant, capped at it, sent through LiteLLM to the upstream the gateway's
config names for the model, extended when cut, settled with the provider's usage and
cost. The response is the provider's answer in the OpenAI wire format with the headers
``Apportion-Request``, ``Apportion-Granted`` (tokens the call's grant held, extensions
included), ``Apportion-Used`` (tokens the provider billed), ``Apportion-Remaining`` (the
request's free tokens after the call), ``Apportion-Status`` (``completed``,
``wrapped_up``, ``cut``) and ``Apportion-Budget-Token`` (when the gateway has a signing
key). A stream's headers leave before its end: they carry ``Apportion-Granted`` (the first
grant) and ``Apportion-Status: open``; the figures of the settled call come as the
stream's last event, an SSE comment (ignored by SSE clients)::

    : apportion {"granted": 120, "used": 95, "status": "completed", "remaining": 1905}

Errors are OpenAI-style JSON (``{"error": {"message", "type", "code", "param", ...}}``)
with the :class:`~apportion.errors.ApportionError` fields beside them:

======  ===========================================================================
status  when
======  ===========================================================================
400     bad JSON or field, missing ``Apportion-*`` header (``budget_headers_missing``),
        unknown agent, input that cannot fit its grant (``input_too_large``)
402     the budget refused the call (``budget_exceeded``, ``cost_exceeded``,
        ``child_budget_exceeded``, ``pool_exhausted``): not retried by OpenAI clients
403     a budget token tampered with, expired, replayed or widened
        (``budget_token_invalid`` / ``_expired`` / ``_replayed`` / ``_widened``)
404     unknown request (``unknown_request``); 409 closed request (``request_closed``)
413     body over the limit; 503 store unreachable (``store_unavailable``)
4xx/5xx the upstream's own status and message (``upstream_error``), the grant released
======  ===========================================================================

Calls without any ``Apportion-*`` header are refused (``budget_headers_missing``) unless
the gateway passes them through unbudgeted (``unbudgeted: pass``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from apportion.errors import (
    ApportionError,
    BudgetExceeded,
    DuplicateRequest,
    InputTooLarge,
    InvalidArgument,
    RequestClosed,
    StoreUnavailable,
    UnknownRequest,
)
from apportion.ledger import CHILD_SEP, check_ceiling
from apportion.serve import forward
from apportion.serve.forward import CHAT, RESPONSES, Body, Upstream
from apportion.serve.passes import (
    DEFAULT_TTL,
    BudgetTokenInvalid,
    BudgetTokenReplayed,
    claim_nonce,
    issue,
    narrowed,
    verify,
)
from apportion.serve.passes import (
    HEADER as TOKEN_HEADER,
)

AGENT = "Apportion-Agent"
CEILING = "Apportion-Ceiling"
CEILING_USD = "Apportion-Ceiling-USD"
PIPELINE = "Apportion-Pipeline"
PARENT = "Apportion-Parent"
IDEMPOTENCY = "Idempotency-Key"
UPSTREAM_KEY = "Apportion-Upstream-Key"

BUDGET_HEADERS = (forward.REQUEST, AGENT, CEILING, CEILING_USD, PIPELINE, PARENT, TOKEN_HEADER)
"""The request headers that make a call budgeted."""

MAX_BODY = 10 * 1024 * 1024
"""The largest request body taken, by default (10 MiB)."""

REJECT = "reject"
PASS = "pass"

_STATUS: tuple[tuple[type[ApportionError], int], ...] = (
    (BudgetTokenInvalid, 403),
    (BudgetExceeded, 402),
    (UnknownRequest, 404),
    (RequestClosed, 409),
    (DuplicateRequest, 409),
    (StoreUnavailable, 503),
    (InputTooLarge, 400),
)


class MissingBudgetHeaders(InvalidArgument):
    """A proxy call without ``Apportion-*`` headers, on a gateway that budgets every call.

    Attributes:
        code: ``budget_headers_missing``.
    """

    code = "budget_headers_missing"

    def __init__(self) -> None:
        super().__init__(
            "Apportion-Request",
            None,
            "this gateway budgets every call: send Apportion-Request and Apportion-Agent "
            "(and Apportion-Ceiling on the call that opens the request)",
        )


@dataclass
class Answer:
    """What the proxy answers: a status, headers, and a JSON body or a stream of events.

    Attributes:
        status: the HTTP status.
        headers: the response headers.
        body: the JSON body (bytes), or ``None`` for a stream.
        stream: the server-sent events, for a stream.
    """

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    stream: Any = None


def code_of(error: ApportionError) -> str:
    """The stable error code of ``error``: its ``code``, else its class name in snake case."""
    code = getattr(type(error), "code", None)
    if isinstance(code, str):
        return code
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


def status_of(error: ApportionError) -> int:
    """The HTTP status of a refused call (see the module docstring)."""
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 400


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)


def error_answer(error: ApportionError, headers: Mapping[str, str] | None = None) -> Answer:
    """The OpenAI-style error answer of a refused call, with the error's fields."""
    fields = {k: _jsonable(v) for k, v in error.fields.items()}
    param = fields.get("argument") or fields.get("field") or fields.get("header")
    body = {
        "error": {
            **fields,
            "message": error.message,
            "type": "budget_error" if isinstance(error, BudgetExceeded) else "apportion_error",
            "code": code_of(error),
            "param": param if isinstance(param, str) else None,
        }
    }
    return Answer(status_of(error), dict(headers or {}), _json(body))


def upstream_answer(error: BaseException, secrets: Iterable[str | None]) -> Answer:
    """The upstream's failure, as its status and message (keys scrubbed)."""
    status, message = forward.upstream_error(error, secrets)
    body = {"error": {"message": message, "type": "upstream_error", "code": "upstream_error"}}
    return Answer(status, {}, _json(body))


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode("utf-8")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not value:
        raise InvalidArgument(name, value, "empty")
    return value


def _ceiling(headers: Mapping[str, str]) -> int | None:
    raw = _header(headers, CEILING)
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidArgument(CEILING, raw, "a positive number of tokens")
    try:
        return check_ceiling(int(raw))
    except ApportionError:
        raise InvalidArgument(CEILING, raw, "a positive number of tokens") from None


def _ceiling_usd(headers: Mapping[str, str]) -> float | None:
    raw = _header(headers, CEILING_USD)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(CEILING_USD, raw, "a positive number of USD") from None
    if not 0 < value < float("inf"):
        raise InvalidArgument(CEILING_USD, raw, "a positive number of USD")
    return value


def caller_key(headers: Mapping[str, str]) -> str | None:
    """The caller's own provider key, for an upstream configured ``pass_key``.

    It travels in ``Apportion-Upstream-Key`` (``Authorization`` carries the gateway key).
    """
    return _header(headers, UPSTREAM_KEY)


@dataclass
class Budget:
    """The request a budgeted call draws on.

    Attributes:
        request: the open :class:`~apportion.controller.AsyncRequest`.
        request_id: its id as the tenant names it (the ``Apportion-Request`` header).
        tenant: the tenant.
    """

    request: Any
    request_id: str
    tenant: Any


class Host(Protocol):
    """What the proxy needs of the gateway (:class:`~apportion.serve.gateway.Gateway`).

    The gateway owns tenants, their namespaces and the store; the proxy calls only these.
    """

    async def authenticate(self, headers: Mapping[str, str]) -> Any:
        """The caller's tenant (raises an ``ApportionError`` when not authenticated)."""

    async def open(
        self,
        tenant: Any,
        pipeline: str | None,
        ceiling: int,
        *,
        request_id: str | None,
        ceiling_usd: float | None,
        parent: str | None,
    ) -> Any:
        """Open a request (a child of ``parent`` when given); the open AsyncRequest."""

    async def request(self, tenant: Any, request_id: str) -> Any:
        """The tenant's open request ``request_id`` (raises ``UnknownRequest``)."""

    def visible_id(self, tenant: Any, request: Any) -> str:
        """A request's id as its tenant names it."""

    def tenant_name(self, tenant: Any) -> str:
        """The tenant's name (signed into budget tokens)."""


class Proxy:
    """The proxy's logic over a gateway (HTTP-free: :func:`proxy_routes` wraps it).

    Args:
        host: the gateway (see :class:`Host`).
        upstreams: where each model's calls go (first match wins).
        unbudgeted: ``"reject"`` (default) or ``"pass"`` for calls without ``Apportion-*``
            headers.
        signing_key: the key that signs budget tokens; ``None``: no tokens issued or taken.
        store: the store that records redeemed token nonces (shared by the replicas).
        pass_ttl: seconds a budget token stays redeemable.
        clock: the time (Unix seconds), injected for tests.
        max_body: the largest body taken, in bytes.
    """

    def __init__(
        self,
        host: Any,
        upstreams: Sequence[Upstream],
        *,
        unbudgeted: str = REJECT,
        signing_key: str | bytes | None = None,
        store: Any = None,
        pass_ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
        max_body: int = MAX_BODY,
    ) -> None:
        if unbudgeted not in (REJECT, PASS):
            raise InvalidArgument("unbudgeted", unbudgeted, f"{REJECT} or {PASS}")
        if signing_key is not None and store is None:
            raise InvalidArgument("store", None, "budget tokens need the store (nonces)")
        self.host = host
        self.upstreams = tuple(upstreams)
        self.unbudgeted = unbudgeted
        self.signing_key = signing_key
        self.store = store
        self.pass_ttl = pass_ttl
        self.clock = clock
        self.max_body = max_body

    def _secrets(self) -> list[str | None]:
        return [u.api_key for u in self.upstreams]

    async def answer(self, protocol: str, headers: Mapping[str, str], raw: bytes) -> Answer:
        """Answer one proxy call (``protocol``: ``chat`` or ``responses``)."""
        if len(raw) > self.max_body:
            error = InvalidArgument("body", f"{len(raw)} bytes", f"at most {self.max_body} bytes")
            return Answer(413, {}, error_answer(error).body)
        try:
            tenant = await self.host.authenticate(headers)
            body = forward.read_body(protocol, raw)
            upstream = forward.upstream_for(self.upstreams, body.model)
            key = caller_key(headers) if upstream.pass_key else upstream.api_key
            send = forward.sender(protocol, upstream, key)
            if not any(name in headers for name in BUDGET_HEADERS):
                return await self._unbudgeted(body, send)
            agent = _header(headers, AGENT)
            if agent is None:
                raise InvalidArgument(AGENT, None, "the agent making the call is required")
            budget = await self._budget(tenant, headers)
        except ApportionError as error:
            return error_answer(error)
        return await self._call(budget, agent, body, send, key)

    async def _unbudgeted(self, body: Body, send: Callable[..., Awaitable[Any]]) -> Answer:
        if self.unbudgeted != PASS:
            raise MissingBudgetHeaders()
        params = {
            **body.params,
            "model": body.model,
            forward.MESSAGES[body.protocol]: body.messages,
        }
        try:
            response = await send(**params)
        except Exception as error:
            return upstream_answer(error, self._secrets())
        if body.stream:

            async def end() -> bytes:
                return b""

            return Answer(200, {}, None, forward.events(body.protocol, response, end))
        return Answer(200, {}, forward.wire(response))

    async def _budget(self, tenant: Any, headers: Mapping[str, str]) -> Budget:
        """The request the call draws on: opened, attached, or carved from a token."""
        token = headers.get(TOKEN_HEADER)
        request_id = _header(headers, forward.REQUEST)
        ceiling = _ceiling(headers)
        if token is not None:
            if request_id is not None:
                raise InvalidArgument(
                    forward.REQUEST, request_id, f"send either {TOKEN_HEADER} or a request id"
                )
            return await self._redeem(tenant, token, ceiling)
        if request_id is None:
            raise InvalidArgument(forward.REQUEST, None, "the request id is required")
        host = self.host
        parent = _header(headers, PARENT)
        known = request_id
        if parent is not None and not request_id.startswith(parent + CHILD_SEP):
            known = f"{parent}{CHILD_SEP}{request_id}"  # a child's id: PARENT::name
        try:
            request = await host.request(tenant, known)
        except UnknownRequest:
            if ceiling is None:
                raise
            try:
                request = await host.open(
                    tenant,
                    _header(headers, PIPELINE),
                    ceiling,
                    request_id=request_id if parent is None else known.rsplit(CHILD_SEP, 1)[1],
                    ceiling_usd=_ceiling_usd(headers),
                    parent=parent,
                )
            except DuplicateRequest:  # another call opened it first
                request = await host.request(tenant, known)
        return Budget(request, host.visible_id(tenant, request), tenant)

    async def _redeem(self, tenant: Any, token: str, ceiling: int | None) -> Budget:
        """Open the child budget a token carries (once per token)."""
        if self.signing_key is None:
            raise BudgetTokenInvalid("this gateway takes no budget tokens (no signing key)")
        host = self.host
        budget = verify(self.signing_key, token, now=self.clock(), tenant=host.tenant_name(tenant))
        wanted = narrowed(budget, ceiling)
        parent = await host.request(tenant, budget.request_id)
        child = parent.child(budget.child_name, ceiling=wanted, share=1.0)
        try:
            await child.open()
        except DuplicateRequest:
            raise BudgetTokenReplayed(budget.request_id) from None
        try:
            claim_nonce(self.store, budget, child.request_id)
        except BudgetTokenReplayed:
            await child.close()
            raise
        return Budget(child, host.visible_id(tenant, child), tenant)

    async def _call(
        self,
        budget: Budget,
        agent: str,
        body: Body,
        send: Callable[..., Awaitable[Any]],
        key: str | None,
    ) -> Answer:
        secrets = [*self._secrets(), key]
        try:
            result = await forward.budgeted(budget.request, agent, body, send)
        except ApportionError as error:
            return error_answer(error, {forward.REQUEST: budget.request_id})
        except Exception as error:
            answer = upstream_answer(error, secrets)
            answer.headers[forward.REQUEST] = budget.request_id
            return answer
        report = forward.report(result)
        if body.stream:
            headers = forward.report_headers(budget.request_id, report, None)
            headers[forward.STATUS] = "open"
            del headers[forward.USED]
            headers.update(self._pass(budget))

            async def end() -> bytes:
                figures = forward.figures(report, self._remaining(budget))
                return f": apportion {json.dumps(figures)}\n\n".encode()

            return Answer(200, headers, None, forward.events(body.protocol, result, end))
        remaining = self._remaining(budget)
        headers = forward.report_headers(budget.request_id, report, remaining)
        headers.update(self._pass(budget))
        return Answer(200, headers, forward.wire(result))

    def _remaining(self, budget: Budget) -> int | None:
        try:
            return int(budget.request.summary().free)
        except Exception:  # a summary is informative: never break an answered call
            return None

    def _pass(self, budget: Budget) -> dict[str, str]:
        """The ``Apportion-Budget-Token`` header: the request's remaining budget, signed."""
        if self.signing_key is None:
            return {}
        try:
            summary = budget.request.summary()
        except Exception:
            return {}
        usd = None
        if summary.ceiling_usd is not None:
            usd = max(0.0, summary.ceiling_usd - summary.cost_usd)
        token = issue(
            self.signing_key,
            request_id=budget.request_id,
            tenant=self.host.tenant_name(budget.tenant),
            tokens=max(0, int(summary.free)),
            usd=usd,
            now=self.clock(),
            ttl=self.pass_ttl,
        )
        return {TOKEN_HEADER: token}


def proxy_routes(proxy: Proxy) -> list[Any]:
    """Starlette routes of the proxy: ``POST /v1/chat/completions`` and ``/v1/responses``.

    Mount them in the gateway's app (``app.router.routes.extend(proxy_routes(proxy))``).
    """
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    def endpoint(protocol: str) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            raw = await request.body()
            answer = await proxy.answer(protocol, request.headers, raw)
            if answer.stream is not None:
                return StreamingResponse(
                    answer.stream,
                    status_code=answer.status,
                    headers=answer.headers,
                    media_type="text/event-stream",
                )
            return Response(
                answer.body, answer.status, answer.headers, media_type="application/json"
            )

        return handle

    return [
        Route("/v1/chat/completions", endpoint(CHAT), methods=["POST"]),
        Route("/v1/responses", endpoint(RESPONSES), methods=["POST"]),
    ]
