"""The OpenAI-compatible proxy: ``POST /v1/chat/completions`` and ``POST /v1/responses``.

A client changes only its ``base_url`` (to the gateway's ``/v1``) and adds headers:

* ``Apportion-Request``: the request id (in the caller's tenant). The first call that
  also carries ``Apportion-Ceiling`` (tokens; optionally ``Apportion-Ceiling-USD``) opens
  it, in ``Apportion-Pipeline`` when the gateway has several; later calls may carry the
  ceiling too (they find the request open and use it).
* ``Apportion-Agent``: the agent making the call (a pipeline agent, or one of its kinds).
* ``Apportion-Parent`` (optional): with ``Apportion-Ceiling``, the request is opened as a
  child budget of that request, drawn from it.
* ``Apportion-Features`` (optional): with ``Apportion-Ceiling``, what is known of the
  request up front, as ``name=number`` pairs separated by commas (``messages=40,
  doc_tokens=1200``): its policy predicts every call's budget from them (they are kept
  with the request: ``Store.features``).
* ``Apportion-Budget-Token`` (instead of ``Apportion-Request``): a token another service's
  response carried; it opens a child budget of that service's request
  (:mod:`apportion.serve.passes`); the response names the child in ``Apportion-Request``,
  which later calls send.
* ``Idempotency-Key`` (optional): a retry with the same key gets the first answer, and
  the call is made and settled once.
* ``Apportion-Upstream-Key`` (optional): the caller's own provider key, sent on for an
  upstream configured ``pass_through_key`` (in open mode, ``Authorization`` serves too).

The call goes through the call engine (:func:`apportion.serve.forward.budgeted`): counted,
fitted into the grant, capped at it, sent through LiteLLM to the upstream the gateway's
config names for the model, extended when cut, settled with the provider's usage and
cost. The response is the provider's answer in the OpenAI wire format with the headers
``Apportion-Request``, ``Apportion-Granted`` (tokens the call's grant held, extensions
included), ``Apportion-Used`` (tokens the provider billed), ``Apportion-Remaining`` (the
request's free tokens after the call), ``Apportion-Status`` (``completed``,
``wrapped_up``, ``cut``) and ``Apportion-Budget-Token`` (the request's remaining budget,
signed with the gateway's key). A stream's headers leave before its end: they carry
``Apportion-Granted`` (the first grant) and ``Apportion-Status: open``; the figures of the
settled call come as the stream's last event, an SSE comment (ignored by SSE clients)::

    : apportion {"granted": 120, "used": 95, "status": "completed", "remaining": 1905}

Errors are OpenAI-style JSON, ``{"error": {"message", "type", "code", "param", ...}}``,
with the gateway's stable ``code`` (:mod:`apportion.serve.errors_json`) and the
:class:`~apportion.errors.ApportionError` fields beside them. The status is the gateway's,
made OpenAI-like (:func:`status_of`): a bad request is 400 (not 422); a budget refusal
(``budget_exceeded``, ``cost_exceeded``, ``child_budget_exceeded``) is 402, which OpenAI
clients do not retry (a shared pool's window, ``pool_exhausted``, stays 429: retry later);
a budget token's refusal is 403 (``budget_token_invalid`` / ``_expired`` / ``_replayed`` /
``_widened``); a call without ``Apportion-*`` headers is 400 ``budget_headers_missing``
unless the config says ``unbudgeted: pass`` (then it is forwarded as it is). An upstream
failure answers the provider's status and message (``upstream_error``, keys scrubbed), once
the grant is released. Nothing changes in any ledger on a refusal. See ``docs/serve.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apportion.errors import (
    ApportionError,
    BudgetExceeded,
    DuplicateRequest,
    InvalidArgument,
    PoolExhausted,
    UnknownRequest,
)
from apportion.ledger import CHILD_SEP, check_ceiling
from apportion.serve import forward
from apportion.serve.config import UpstreamConfig
from apportion.serve.errors_json import code_of, error_headers, error_response
from apportion.serve.forward import CHAT, RESPONSES, Body
from apportion.serve.gateway import Gateway, Tenant
from apportion.serve.idempotency import Outcome
from apportion.serve.ops import note
from apportion.serve.passes import (
    HEADER as TOKEN_HEADER,
)
from apportion.serve.passes import (
    BudgetTokenInvalid,
    BudgetTokenReplayed,
    claim_nonce,
    issue,
    narrowed,
    verify,
)

AGENT = "Apportion-Agent"
CEILING = "Apportion-Ceiling"
CEILING_USD = "Apportion-Ceiling-USD"
PIPELINE = "Apportion-Pipeline"
PARENT = "Apportion-Parent"
IDEMPOTENCY = "Idempotency-Key"
UPSTREAM_KEY = "Apportion-Upstream-Key"
FEATURES = "Apportion-Features"
MAX_HEADER_FEATURES = 64
"""Most features ``Apportion-Features`` may name."""

BUDGET_HEADERS = (
    forward.REQUEST,
    AGENT,
    CEILING,
    CEILING_USD,
    FEATURES,
    PIPELINE,
    PARENT,
    TOKEN_HEADER,
)
"""The request headers that make a call budgeted."""

PASS = "pass"

SENDERS_KEPT = 256
"""How many senders (protocol, upstream, key) a proxy keeps made."""

if TYPE_CHECKING:
    from fastapi import FastAPI


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


class UpstreamFailed(Exception):
    """The upstream answered an error (carried as the proxy's answer; not recorded)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


@dataclass
class Answer:
    """What the proxy answers: a status, headers, and a JSON body or a stream of events.

    Attributes:
        status: the HTTP status.
        headers: the response headers.
        body: the body (bytes), or ``None`` for a stream.
        stream: the server-sent events, for a stream.
        media_type: the body's type.
    """

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    stream: Any = None
    media_type: str = "application/json"


def status_of(error: ApportionError, status: int) -> int:
    """The proxy's HTTP status for ``error`` (the gateway's, made OpenAI-like).

    A budget refusal is 402 (OpenAI clients do not retry it; a pool's window, 429, they
    retry later), a budget token's refusal 403, a bad request 400 (not 422).
    """
    if isinstance(error, BudgetTokenInvalid):
        return 403
    if isinstance(error, BudgetExceeded) and not isinstance(error, PoolExhausted):
        return 402
    return 400 if status == 422 else status


def error_answer(
    error: ApportionError, tenant: Tenant | None, headers: Mapping[str, str] | None = None
) -> Answer:
    """The OpenAI-style error answer of a refused call, with the error's fields.

    ``{"error": {"message", "type", "code", "param", <fields>}}``: the gateway's stable
    code and fields (ids as the tenant knows them), plus OpenAI's ``type`` and ``param``.
    """
    status, body = error_response(error, tenant.prefix if tenant is not None else "")
    inner = body["error"]
    own = getattr(type(error), "code", None)
    if isinstance(own, str):
        inner["code"] = own
    param = inner.get("argument") or inner.get("field") or inner.get("header")
    inner["type"] = "budget_error" if isinstance(error, BudgetExceeded) else "apportion_error"
    inner["param"] = param if isinstance(param, str) else None
    return Answer(
        status_of(error, status), {**error_headers(error), **(headers or {})}, _json(body)
    )


def upstream_answer(error: BaseException, secrets: Iterable[str | None]) -> Answer:
    """The upstream's failure, as its status and message (keys scrubbed)."""
    status, message = forward.upstream_error(error, secrets)
    body = {
        "error": {
            "message": message,
            "type": "upstream_error",
            "code": "upstream_error",
            "param": None,
        }
    }
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
    if not (raw.isascii() and raw.isdigit()):  # "²" is a digit to isdigit, not to int
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


def _features(headers: Mapping[str, str]) -> dict[str, float] | None:
    """The ``Apportion-Features`` header's features: ``name=number`` pairs, comma-separated."""
    raw = _header(headers, FEATURES)
    if raw is None:
        return None
    features: dict[str, float] = {}
    for part in raw.split(","):
        name, equals, value = (text.strip() for text in part.partition("="))
        try:
            number = float(value) if equals and name and len(name) <= 256 else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or name in features:
            reason = "name=number pairs separated by commas, each name once, finite numbers"
            raise InvalidArgument(FEATURES, part.strip(), reason)
        features[name] = number
    if len(features) > MAX_HEADER_FEATURES:
        raise InvalidArgument(
            FEATURES, f"{len(features)} features", f"at most {MAX_HEADER_FEATURES}"
        )
    return features


def caller_key(headers: Mapping[str, str], open_mode: bool) -> str | None:
    """The caller's own provider key, for an upstream configured ``pass_through_key``.

    ``Apportion-Upstream-Key``; in open mode (no tenants, so ``Authorization`` carries no
    gateway key) the ``Authorization: Bearer`` key when that header is absent.
    """
    key = _header(headers, UPSTREAM_KEY)
    if key is None and open_mode:
        scheme, _, value = (headers.get("authorization") or "").strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            key = value.strip()
    return key


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
    tenant: Tenant


class Proxy:
    """The proxy's logic over a :class:`~apportion.serve.gateway.Gateway` (no HTTP here).

    Its config gives the upstreams, ``unbudgeted`` (``reject`` or ``pass``), the signing
    key of budget tokens and the body limit; the gateway's idempotency records keep the
    redeemed tokens' nonces (shared by the replicas).

    Args:
        gateway: the gateway.
        clock: the time (Unix seconds) budget tokens are issued and checked at (default:
            the gateway's clock).
        pass_ttl: seconds a budget token stays redeemable (default: the config's
            ``budget_token_ttl``).
        direct: send the call's JSON straight to the upstream instead of through LiteLLM
            (:func:`~apportion.serve.forward.direct_sender`), for every upstream (an
            upstream whose config says ``direct: true`` is sent so anyway): for upstreams
            that speak OpenAI's protocol, at a fraction of the CPU per call.
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        clock: Callable[[], float] | None = None,
        pass_ttl: float | None = None,
        direct: bool = False,
    ) -> None:
        self.gateway = gateway
        self.clock: Callable[[], float] = clock or gateway.clock
        self._pass_ttl = pass_ttl
        self.direct = direct
        self._senders: dict[tuple[str, UpstreamConfig, str | None, bool], Any] = {}

    # the gateway's config is read per call: an admin's reload takes effect at once
    @property
    def upstreams(self) -> tuple[UpstreamConfig, ...]:
        """The configured upstreams (their keys are scrubbed from upstream errors)."""
        return tuple(self.gateway.config.upstreams)

    @property
    def unbudgeted(self) -> str:
        """What a call without budget headers gets: ``reject`` or ``pass``."""
        return self.gateway.config.unbudgeted

    @property
    def signing_key(self) -> bytes:
        """The key budget tokens are signed with."""
        return self.gateway.config.signing_key

    @property
    def max_body(self) -> int:
        """The largest body taken."""
        return self.gateway.config.max_body_bytes

    @property
    def pass_ttl(self) -> float:
        """Seconds a budget token this proxy issues stays redeemable."""
        ttl = self._pass_ttl
        return ttl if ttl is not None else self.gateway.config.budget_token_ttl

    def _sender(
        self, protocol: str, upstream: UpstreamConfig, key: str | None
    ) -> Callable[..., Awaitable[Any]]:
        """The engine's ``send`` to ``upstream`` with ``key`` (made once, then reused)."""
        direct = self.direct or upstream.direct
        place = (protocol, upstream, key, direct)
        send = self._senders.get(place)
        if send is None:
            if len(self._senders) >= SENDERS_KEPT:  # callers' own keys: keep a bounded few
                self._senders.clear()
            make = forward.direct_sender if direct else forward.sender
            send = self._senders[place] = make(protocol, upstream, key)
        return send

    def _routing(
        self,
        protocol: str,
        headers: Mapping[str, str],
        body: Body,
        send: Callable[..., Awaitable[Any]],
    ) -> Callable[..., Awaitable[Any]]:
        """``send``; with a model catalog, a send that follows a routing policy's choice.

        A routing policy may name another catalog model for the call (``grant.model``):
        that call goes to the upstream serving it, with that upstream's key (or the
        caller's, when it passes keys through) and its configured model.
        """
        config = self.gateway.config
        if config.models is None:
            return send
        asked = body.upstream_model or body.model

        async def routed(**params: Any) -> Any:
            model = params.get("model")
            if model in (asked, body.model) or not isinstance(model, str):
                return await send(**params)
            upstream = forward.upstream_for(config, model)
            note(routed_model=model)
            key = (
                caller_key(headers, config.open_mode)
                if upstream.pass_through_key
                else upstream.api_key
            )
            if upstream.model:
                params["model"] = upstream.model
            return await self._sender(protocol, upstream, key)(**params)

        return routed

    def _secrets(self, key: str | None = None) -> list[str | None]:
        return [*(u.api_key for u in self.upstreams), key]

    async def answer(
        self, protocol: str, headers: Mapping[str, str], raw: bytes, client: str | None = None
    ) -> Answer:
        """Answer one proxy call (``protocol``: ``chat`` or ``responses``; ``client``: address)."""
        tenant: Tenant | None = None
        try:
            tenant = self.gateway.authenticate(headers, client)
            note(tenant=tenant.name)
            if len(raw) > self.max_body:
                error = InvalidArgument("body", f"{len(raw)} bytes", f"at most {self.max_body}")
                _, data = error_response(error)
                data["error"]["code"] = "body_too_large"  # as the gateway's body limit says
                return Answer(413, {}, _json(data))
            body = forward.read_body(protocol, raw)
            note(model=body.model)
            upstream = forward.upstream_for(self.gateway.config, body.model)
            body.upstream_model = upstream.model
            key = (
                caller_key(headers, self.gateway.config.open_mode)
                if upstream.pass_through_key
                else upstream.api_key
            )
            send = self._routing(protocol, headers, body, self._sender(protocol, upstream, key))
            if not any(name in headers for name in BUDGET_HEADERS):
                if self.unbudgeted != PASS:
                    raise MissingBudgetHeaders()
                return await self._unbudgeted(body, send, key)
            agent = _header(headers, AGENT)
            if agent is None:
                raise InvalidArgument(AGENT, None, "the agent making the call is required")
            idempotency = headers.get(IDEMPOTENCY)
            if idempotency is None:
                budget = await self._budget(tenant, headers, agent)
                return await self._call(budget, agent, body, send, key)
            return await self._once(tenant, headers, raw, protocol, agent, body, send, key)
        except ApportionError as error:
            note(error_code=code_of(error)[0])
            return error_answer(error, tenant)

    async def _once(
        self,
        tenant: Tenant,
        headers: Mapping[str, str],
        raw: bytes,
        protocol: str,
        agent: str,
        body: Body,
        send: Callable[..., Awaitable[Any]],
        key: str | None,
    ) -> Answer:
        """The call run once per ``Idempotency-Key``: a retry gets the first answer.

        The record keeps the answer's status, ``Apportion-*`` headers and body; a stream is
        run to its end first and kept (and answered) whole. An upstream failure is not
        kept: the retry runs again (its grant was released).
        """
        shown = {k: headers[k] for k in sorted(BUDGET_HEADERS) if k in headers}
        text = json.dumps([protocol, shown, raw.decode("utf-8", "replace")], sort_keys=True)
        fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()

        async def run() -> Outcome:
            try:
                budget = await self._budget(tenant, headers, agent)
            except ApportionError as error:  # kept as the proxy answers it (a retry: the same)
                answer = error_answer(error, tenant)
            else:
                answer = await self._call(budget, agent, body, send, key)
            if answer.status >= 500 or answer.status == 429:
                raise UpstreamFailed(answer)
            if answer.stream is not None:
                answer.body = b"".join([chunk async for chunk in answer.stream])
            kept = {
                "status": answer.status,
                "headers": answer.headers,
                "body": (answer.body or b"").decode("utf-8"),
                "media_type": "text/event-stream" if answer.stream is not None else JSON,
            }
            return Outcome(answer.status, _json({PROXY_RECORD: kept}))

        try:
            outcome = await self.gateway.idempotent(
                tenant, headers[IDEMPOTENCY], f"proxy:{protocol}", run, fingerprint=fingerprint
            )
        except UpstreamFailed as failed:
            return failed.answer
        data = json.loads(outcome.body)
        kept = data.get(PROXY_RECORD) if isinstance(data, dict) else None
        if not isinstance(kept, dict):  # not the proxy's record: answered as it was kept
            return Answer(outcome.status, {}, outcome.body)
        return Answer(
            int(kept["status"]),
            dict(kept["headers"]),
            str(kept["body"]).encode("utf-8"),
            media_type=str(kept["media_type"]),
        )

    async def _unbudgeted(
        self, body: Body, send: Callable[..., Awaitable[Any]], key: str | None
    ) -> Answer:
        params = {
            **body.params,
            "model": body.model,
            forward.MESSAGES[body.protocol]: body.messages,
        }
        try:
            response = await send(**params)
        except Exception as error:
            return upstream_answer(error, self._secrets(key))
        if body.stream:

            async def end() -> bytes:
                return b""

            return Answer(200, {}, None, forward.events(body.protocol, response, end))
        return Answer(200, {}, forward.wire(response))

    async def _budget(self, tenant: Tenant, headers: Mapping[str, str], agent: str) -> Budget:
        """The request the call draws on: opened, attached, or carved from a token.

        ``agent`` is checked against the pipeline before anything is opened or redeemed.
        """
        token = headers.get(TOKEN_HEADER)
        request_id = _header(headers, forward.REQUEST)
        ceiling = _ceiling(headers)
        features = _features(headers)
        if token is not None:
            if request_id is not None:
                raise InvalidArgument(
                    forward.REQUEST, request_id, f"send either {TOKEN_HEADER} or a request id"
                )
            return await self._redeem(tenant, token, ceiling, agent, features)
        if request_id is None:
            raise InvalidArgument(forward.REQUEST, None, "the request id is required")
        gateway = self.gateway
        parent = _header(headers, PARENT)
        known = request_id
        if parent is not None and not request_id.startswith(parent + CHILD_SEP):
            known = f"{parent}{CHILD_SEP}{request_id}"  # a child's id: PARENT::name
        try:
            request = await gateway.request(tenant, known)
        except UnknownRequest:
            if ceiling is None:
                raise
            pipeline = _header(headers, PIPELINE)
            if parent is None:
                gateway.controller(pipeline)[1].pipeline.resolve(agent)
            else:
                (await gateway.request(tenant, parent)).pipeline.resolve(agent)
            try:
                if parent is None:
                    request = await gateway.open(
                        tenant,
                        pipeline,
                        ceiling,
                        _ceiling_usd(headers),
                        features,
                        request_id=request_id,
                    )
                else:
                    request = await gateway.open(
                        tenant,
                        pipeline,
                        ceiling,
                        features=features,
                        parent=parent,
                        name=known.rsplit(CHILD_SEP, 1)[1],
                    )
            except DuplicateRequest:  # another call opened it first
                request = await gateway.request(tenant, known)
        return Budget(request, gateway.public_id(tenant, request.request_id), tenant)

    async def _redeem(
        self,
        tenant: Tenant,
        token: str,
        ceiling: int | None,
        agent: str,
        features: Mapping[str, float] | None,
    ) -> Budget:
        """Open the child budget a token carries (once per token)."""
        gateway = self.gateway
        budget = verify(self.signing_key, token, now=self.clock(), tenant=tenant.name)
        wanted = narrowed(budget, ceiling)
        parent = await gateway.request(tenant, budget.request_id)
        parent.pipeline.resolve(agent)  # an unknown agent leaves the token unspent
        child = parent.child(budget.child_name, ceiling=wanted, share=1.0, features=features)
        try:
            await child.open()
        except DuplicateRequest:
            raise BudgetTokenReplayed(budget.request_id) from None
        try:
            await claim_nonce(gateway.records, budget, child.request_id, self.clock())
        except BaseException:  # replayed (or the records unreachable): no child stays open
            with suppress(ApportionError):
                await child.close()
            raise
        return Budget(child, gateway.public_id(tenant, child.request_id), tenant)

    async def _call(
        self,
        budget: Budget,
        agent: str,
        body: Body,
        send: Callable[..., Awaitable[Any]],
        key: str | None,
    ) -> Answer:
        try:
            result = await forward.budgeted(budget.request, agent, body, send)
        except ApportionError as error:
            note(error_code=code_of(error)[0])
            headers = {forward.REQUEST: budget.request_id}
            if isinstance(error, BudgetExceeded):  # the call was refused: say so, and what is left
                headers.update(
                    forward.report_headers(budget.request_id, None, self._remaining(budget))
                )
            return error_answer(error, budget.tenant, headers)
        except Exception as error:
            answer = upstream_answer(error, self._secrets(key))
            answer.headers[forward.REQUEST] = budget.request_id
            return answer
        report = forward.report(result)
        if report is not None and not body.stream:
            note(input_tokens=report.input_tokens, output_tokens=report.output_tokens)
        if body.stream:
            headers = forward.report_headers(budget.request_id, report, None)
            headers[forward.STATUS] = "open"
            del headers[forward.USED]
            headers.update(self._pass(budget))

            async def end() -> bytes:
                figures = forward.figures(report, self._remaining(budget))
                if report is not None:  # the settled stream's figures, for the span and log
                    note(
                        input_tokens=report.input_tokens,
                        output_tokens=report.output_tokens,
                        call_status=figures["status"],
                        granted=figures["granted"],
                        used=figures["used"],
                    )
                return f": apportion {json.dumps(figures)}\n\n".encode()

            stream = forward.events(body.protocol, result, end)
            return Answer(200, headers, None, stream, media_type="text/event-stream")
        remaining = self._remaining(budget)
        headers = forward.report_headers(budget.request_id, report, remaining)
        headers.update(self._pass(budget))
        return Answer(200, headers, forward.wire(result))

    def _remaining(self, budget: Budget) -> int | None:
        try:
            return int(budget.request.state.free)
        except Exception:  # informative: never break an answered call
            return None

    def _pass(self, budget: Budget) -> dict[str, str]:
        """The ``Apportion-Budget-Token`` header: the request's remaining budget, signed."""
        try:
            state = budget.request.state
        except Exception:
            return {}
        usd = None
        if state.cost_ceiling is not None:  # nano-USD in the ledger
            usd = max(0.0, (state.cost_ceiling - state.cost_consumed) / 1e9)
        token = issue(
            self.signing_key,
            request_id=budget.request_id,
            tenant=budget.tenant.name,
            tokens=max(0, int(state.free)),
            usd=usd,
            now=self.clock(),
            ttl=self.pass_ttl,
        )
        return {TOKEN_HEADER: token}


JSON = "application/json"
PROXY_RECORD = "apportion_proxy_answer"
"""The key an idempotency record of a proxy answer is kept under (status, headers, body)."""


class CallHeaders(dict[str, str]):
    """A call's request headers: names lower-case, looked up whatever their case.

    The first of repeated headers counts (as Starlette's ``Headers`` reads them).
    """

    @classmethod
    def of(cls, raw: Iterable[tuple[bytes, bytes]]) -> CallHeaders:
        """The headers of an ASGI scope (``[(name, value), ...]``, names lower-case)."""
        return cls(
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in reversed(list(raw))
        )

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        """The header's value, or ``default``."""
        return super().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class ProxyEndpoint:
    """The bare ASGI app of one proxy route (``chat`` or ``responses``).

    Reads the body, answers through :meth:`Proxy.answer`, sends the answer (a stream as
    Starlette's ``StreamingResponse``, which stops it when the client hangs up). The
    app's router holds it as the route's app, and :class:`FastPath` calls it directly.
    """

    def __init__(self, proxy: Proxy, protocol: str) -> None:
        self.proxy = proxy
        self.protocol = protocol

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Answer one proxied call."""
        chunks: list[bytes] = []
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "http.disconnect":
                return  # the client is gone before its body arrived: nothing to answer
            if kind == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        peer = scope.get("client")
        client = peer[0] if peer else None
        headers = CallHeaders.of(scope.get("headers", ()))
        answer = await self.proxy.answer(self.protocol, headers, raw, client)
        if answer.stream is not None:
            from starlette.responses import StreamingResponse

            response = StreamingResponse(
                answer.stream,
                status_code=answer.status,
                headers=answer.headers,
                media_type=answer.media_type,
            )
            await response(scope, receive, send)
            return
        body = answer.body or b""
        out = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()
        ]
        out.append((b"content-length", b"%d" % len(body)))
        out.append((b"content-type", answer.media_type.encode("latin-1")))
        await send({"type": "http.response.start", "status": answer.status, "headers": out})
        await send({"type": "http.response.body", "body": body})


INTERNAL_ERROR = (
    b'{"error": {"code": "internal_error", "message": "internal error (%s); please report it"}}'
)
"""The answer to a proxied call that failed unexpectedly (as the app's other routes say it)."""


class FastPath:
    """The proxy's routes ahead of the app (an ASGI app around it: :func:`fast_app`).

    ``POST`` to a proxy path goes to its :class:`ProxyEndpoint` through only what a proxied
    call needs: the operations middleware (:class:`~apportion.serve.ops.Observed`: call
    id, log line, metrics, span, calls in flight) and the body limit
    (:class:`~apportion.serve.routes.BodyLimit`); an unexpected error is answered 500 as
    the app does, then raised (the server logs it). Everything else (the lifespan, every
    other route and method) goes to the app's whole stack.

    Args:
        app: the app.
        endpoints: path -> the proxy route's ASGI app.
        ops: the app's operations state.
        limit: the largest body taken (bytes).
    """

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        endpoints: Mapping[str, Callable[..., Awaitable[None]]],
        ops: Any,
        limit: int,
    ) -> None:
        from apportion.serve.ops import Observed
        from apportion.serve.routes import BodyLimit

        self.app = app
        self.routes = {
            path: Observed(BodyLimit(endpoint, limit), ops) for path, endpoint in endpoints.items()
        }

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one ASGI call."""
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            route = self.routes.get(path)
            if route is not None:
                await self._guarded(route, scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _guarded(route: Any, scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await route(scope, receive, sending)
        except Exception as error:
            if not started:
                body = INTERNAL_ERROR % type(error).__name__.encode("ascii", "replace")
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-length", b"%d" % len(body)),
                            (b"content-type", JSON.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
            raise


def fast_app(ops: Any, limit: int, **options: Any) -> FastAPI:
    """A FastAPI app whose proxy routes are called ahead of FastAPI itself (:class:`FastPath`).

    The proxy routes in ``app.router`` when the app first serves (their
    :class:`ProxyEndpoint`) are called directly for ``POST``, without FastAPI's and
    Starlette's own steps (the proxy's span, log line and metrics are
    :class:`~apportion.serve.ops.Observed`'s); FastAPI serves the rest. ``options`` go to
    ``FastAPI``.
    """
    from fastapi import FastAPI

    class GatewayApp(FastAPI):
        fast_path: FastPath | None = None

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            fast = self.fast_path
            if fast is None:  # on the first call: the routes as they are then
                routes: list[Any] = self.router.routes
                endpoints = {
                    route.path: route.app
                    for route in routes
                    if isinstance(getattr(route, "app", None), ProxyEndpoint)
                }
                fast = self.fast_path = FastPath(super().__call__, endpoints, ops, limit)
            await fast(scope, receive, send)

    return GatewayApp(**options)


def proxy_routes(gateway: Gateway, *, warm: bool = True, **options: Any) -> list[Any]:
    """Starlette routes of the proxy: ``POST /v1/chat/completions`` and ``/v1/responses``.

    Mount them in the gateway's app (``app.router.routes.extend(proxy_routes(gateway))``);
    ``options`` go to :class:`Proxy`. With ``warm`` (the default), LiteLLM is imported and
    the default model's tokenizer loaded in a background thread, started now (seconds of
    CPU, once per process: :func:`~apportion.serve.forward.warm_in_background`), so the
    app serves at once and its first proxied call seldom waits; without, LiteLLM is
    imported by the first call that needs it. Each route's app is a :class:`ProxyEndpoint`
    (:func:`fast_app` calls them ahead of the app).
    """
    from starlette.routing import Route

    proxy = Proxy(gateway, **options)
    if warm:
        forward.warm_in_background()
    return [
        Route("/v1/chat/completions", ProxyEndpoint(proxy, CHAT), methods=["POST"]),
        Route("/v1/responses", ProxyEndpoint(proxy, RESPONSES), methods=["POST"]),
    ]
