"""One proxied model call: the client's JSON body, budgeted by the call engine, sent by LiteLLM.

The proxy (:mod:`apportion.serve.proxy`) reads the HTTP request; this module does the call:

* :func:`read_body` checks the body of ``POST /v1/chat/completions`` or ``POST
  /v1/responses`` (a JSON object with a ``model``, and ``messages`` or ``input``) and
  splits it into the model, the messages and the other parameters;
* :func:`sender` is the engine's ``send``: one LiteLLM call (``litellm.acompletion`` or
  ``litellm.aresponses``) to the upstream the gateway's config names for the model
  (:class:`~apportion.serve.config.UpstreamConfig`: ``api_base``, ``api_key``, the
  LiteLLM ``model``), with no retries of LiteLLM's own (the client retries);
  :func:`direct_sender` is the same call through the OpenAI SDK, for upstreams that speak
  OpenAI's protocol (opt-in: about half the CPU per call); LiteLLM is imported on the
  first call or price lookup that needs it, and :func:`warm_in_background` imports it
  (and a tokenizer) in a thread once the gateway serves, so start-up does not wait for
  it and the first call seldom does;
* :func:`budgeted` runs the call engine (``await areq.call(...)``,
  :mod:`apportion.integrations.engine`): count, fit into the grant, cap, call, extend a cut
  answer, settle with the provider's usage and cost; no second loop here;
* :func:`wire` and :func:`sse` turn the provider's answer back into the OpenAI wire format
  (a JSON body; server-sent events for a stream), and :func:`report_headers` gives the
  ``Apportion-*`` headers of the settled call;
* :func:`upstream_error` reads an upstream failure (HTTP status and message) so the client
  gets the provider's status and message, with any key scrubbed from the message.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from apportion.errors import (
    ApportionError,
    InvalidArgument,
    MissingExtra,
    NoTokenizer,
    UnknownModel,
)
from apportion.integrations.chat import CallReport, report_of
from apportion.integrations.litellm import cost as litellm_cost
from apportion.integrations.litellm import import_litellm
from apportion.serve.config import ServeConfig, UpstreamConfig
from apportion.tokens import counter_for

CHAT = "chat"
RESPONSES = "responses"

MESSAGES = {CHAT: "messages", RESPONSES: "input"}

GRANTED = "Apportion-Granted"
USED = "Apportion-Used"
REMAINING = "Apportion-Remaining"
STATUS = "Apportion-Status"
REQUEST = "Apportion-Request"


DEFAULT_UPSTREAM = UpstreamConfig("default")
"""Where calls go when the config names no upstream: LiteLLM's own route for the model."""


def upstream_for(config: ServeConfig, model: str) -> UpstreamConfig:
    """The upstream that serves ``model``; LiteLLM's own route when the config names none.

    The first whose ``prefix`` starts the model (:meth:`ServeConfig.upstream_for`).

    Raises:
        InvalidArgument: upstreams are configured and none serves the model (names the
            ``model`` field).
    """
    if not config.upstreams:
        return DEFAULT_UPSTREAM
    found = config.upstream_for(model)
    if found is None:
        raise InvalidArgument(
            "model", model, "no upstream provider of the gateway serves this model"
        )
    return found


@dataclass
class Body:
    """A checked proxy request body.

    Attributes:
        protocol: ``chat`` or ``responses``.
        model: the model asked for.
        messages: ``messages`` (chat) or ``input`` (responses).
        params: every other field, passed on (``stream``, ``max_tokens``, ``tools`` ...).
        upstream_model: the model the upstream is sent instead (its config's ``model``),
            which the call is then counted and priced as.
    """

    protocol: str
    model: str
    messages: Any
    params: dict[str, Any]
    upstream_model: str | None = None

    @property
    def stream(self) -> bool:
        """Whether the client asked for a stream."""
        return self.params.get("stream") is True


def read_body(protocol: str, raw: bytes) -> Body:
    """Check a proxy request's JSON body (nothing is reserved yet).

    Raises:
        InvalidArgument: not a JSON object, or a missing or bad ``model``, ``messages`` /
            ``input`` or ``stream`` (the error names the field).
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("body", "<not JSON>", "the body is a JSON object") from None
    if not isinstance(data, dict):
        raise InvalidArgument("body", type(data).__name__, "the body is a JSON object")
    key = MESSAGES[protocol]
    model = data.pop("model", None)
    if not isinstance(model, str) or not model.strip():
        raise InvalidArgument("model", model, "the model to call, a name")
    if key not in data:
        raise InvalidArgument(key, None, f"{key} is required")
    messages = data.pop(key)
    if protocol == CHAT and not (isinstance(messages, list) and messages):
        raise InvalidArgument(key, messages, "a list of chat messages")
    if protocol == RESPONSES and not (isinstance(messages, str | list) and messages):
        raise InvalidArgument(key, messages, "a text or a list of input items")
    if isinstance(messages, list) and not all(isinstance(m, dict) for m in messages):
        raise InvalidArgument(key, messages, "each message (item) is a JSON object")
    if "stream" in data and not isinstance(data["stream"], bool):
        raise InvalidArgument("stream", data["stream"], "true or false")
    return Body(protocol, model, messages, data)


def sender(
    protocol: str, upstream: UpstreamConfig, key: str | None
) -> Callable[..., Awaitable[Any]]:
    """The engine's ``send``: one LiteLLM call to ``upstream`` with ``key``.

    The model sent is the upstream's ``model`` when it names one (a LiteLLM model such as
    ``openai/gpt-4o-mini``), else the client's; LiteLLM's own retries are off
    (``max_retries=0``): the client decides. LiteLLM is imported on the first send, not
    here: a call refused before it is sent (no budget headers ...) does not wait for it.

    Raises:
        MissingExtra: LiteLLM is not installed.
    """
    if importlib.util.find_spec("litellm") is None:
        raise MissingExtra("litellm", "litellm")
    extra: dict[str, Any] = {"max_retries": 0}
    if upstream.api_base is not None:
        extra["api_base"] = upstream.api_base
    if key is not None:
        extra["api_key"] = key
    model = upstream.model
    calls: list[Callable[..., Awaitable[Any]]] = []

    async def send(**params: Any) -> Any:
        if not calls:
            litellm = await loaded_litellm()
            calls.append(litellm.acompletion if protocol == CHAT else litellm.aresponses)
        if model is not None:
            params["model"] = model
        return await calls[0](**params, **extra)

    return send


PATHS = {CHAT: "/chat/completions", RESPONSES: "/responses"}
"""The upstream's path of each protocol, under its base URL."""


def direct_sender(
    protocol: str, upstream: UpstreamConfig, key: str | None
) -> Callable[..., Awaitable[Any]]:
    """The engine's ``send`` straight to an upstream speaking OpenAI's protocol.

    The same call as :func:`sender` without LiteLLM's translation layer or the OpenAI
    SDK's models: the parameters go as JSON bytes through one pooled HTTP client of the
    process, and the answer is read once (:mod:`apportion.serve.upstream_http`): for
    OpenAI itself, or a server of the same protocol at ``api_base`` (vLLM, a local model
    server, a fake upstream). The model sent is the upstream's ``model`` (its ``openai/``
    prefix taken off) or the client's; every other parameter goes as the client sent it.
    """
    from apportion.serve import upstream_http

    model = upstream.model.removeprefix("openai/") if upstream.model else None
    url = upstream_http.base_url(upstream.api_base) + PATHS[protocol]
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"

    async def send(**params: Any) -> Any:
        if model is not None:
            params["model"] = model
        return await upstream_http.post(url, headers, params, stream=params.get("stream") is True)

    return send


_LITELLM: list[Any] = []
"""LiteLLM once this module has imported it (an import under way is not in it)."""


def _litellm() -> Any:
    if not _LITELLM:
        _LITELLM.append(import_litellm())
    return _LITELLM[0]


async def loaded_litellm() -> Any:
    """LiteLLM, imported in a worker thread if it is not yet.

    The event loop serves other calls meanwhile: a call that comes while the warming
    thread (:func:`warm_in_background`) imports LiteLLM waits for it without stalling
    the gateway's other calls.

    Raises:
        MissingExtra: LiteLLM is not installed.
    """
    if _LITELLM:
        return _LITELLM[0]
    return await asyncio.to_thread(_litellm)


def warm(models: Iterable[str] = ("gpt-4o-mini",)) -> None:
    """Import LiteLLM and load the models' tokenizers now, not on the first call."""
    _litellm()
    for model in models:
        counter(model)


_WARMING: list[threading.Thread] = []
"""The process's warming thread, once started (one per process)."""

_WARMING_LOCK = threading.Lock()


def warm_in_background(models: Iterable[str] = ("gpt-4o-mini",)) -> threading.Thread:
    """:func:`warm` in a daemon thread, started once per process; the thread.

    Importing LiteLLM takes seconds of CPU: a gateway that did it before serving would
    answer ``/healthz`` seconds later. Started as it begins to serve, the import runs
    while the gateway answers; a proxied call that comes before it is done waits for it
    (Python's import lock), the others do not. A failure (LiteLLM not installed) is left
    to the first call that needs LiteLLM, which raises it.
    """
    names = tuple(models)

    def run() -> None:
        with suppress(Exception):
            warm(names)

    with _WARMING_LOCK:
        if not _WARMING:
            thread = threading.Thread(target=run, name="apportion-warm", daemon=True)
            thread.start()
            _WARMING.append(thread)
        return _WARMING[0]


def counter(model: str) -> Any:
    """The model's tokenizer, or the approximate counter for a model none is known for.

    The gateway serves any model its upstreams do; the provider's usage settles the call.
    """
    try:
        return counter_for(model)
    except (NoTokenizer, UnknownModel):
        return counter_for(model, "approximate")


_LINEAR_CHECKS = (1_000, 300_000, 2_000_000)
"""Token counts at which a model's cached per-token prices are checked against LiteLLM's
(a model priced by tiers, dearer above some count, is priced by LiteLLM every call)."""

_UNPRICED = (0.0, 0.0, False)
_PRICES: dict[str, tuple[float, float, bool] | None] = {}
"""Per model: ``(USD per input token, per output token, priced)``, or ``None`` when its
prices are not linear in the tokens (LiteLLM is asked every call)."""


def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD cost of the tokens by LiteLLM's model cost map, its prices read once per model.

    The same figure as :func:`apportion.integrations.litellm.cost` (tokens times
    LiteLLM's per-token prices), without LiteLLM's lookup on every call: the per-token
    prices are read on a model's first call and kept, once they are seen to be linear
    in the tokens (a model priced by tiers is priced by LiteLLM every call). ``None``
    for a model LiteLLM does not price.
    """
    if model not in _PRICES:
        _PRICES[model] = _prices(model)
    prices = _PRICES[model]
    if prices is None:
        return litellm_cost(model, prompt_tokens, completion_tokens)
    per_input, per_output, priced = prices
    if not priced:
        return None
    return float(prompt_tokens * per_input) + float(completion_tokens * per_output)


def _prices(model: str) -> tuple[float, float, bool] | None:
    """``(per input token, per output token, priced)``; ``None``: not linear (tiers)."""
    per_input = litellm_cost(model, 1, 0)
    per_output = litellm_cost(model, 0, 1)
    if per_input is None or per_output is None:
        return _UNPRICED if per_input is None and per_output is None else None
    for tokens in _LINEAR_CHECKS:
        for got, want in (
            (litellm_cost(model, tokens, 0), tokens * per_input),
            (litellm_cost(model, 0, tokens), tokens * per_output),
        ):
            if got is None or abs(got - want) > 1e-9 * max(abs(want), 1e-12):
                return None
    return per_input, per_output, True


async def budgeted(areq: Any, agent: str, body: Body, send: Callable[..., Awaitable[Any]]) -> Any:
    """The call through the engine: the response (``.apportion`` its report), or a stream.

    Raises:
        ApportionError: refused (``BudgetExceeded`` ...) or bad input, or LiteLLM (which
            prices the call) is not installed (``MissingExtra``); nothing reserved.
        Exception: the upstream's error, once the grant is released (or settled).
    """
    model = body.upstream_model or body.model
    await loaded_litellm()  # for the cost: imported off the event loop, before reserving
    return await areq.call(
        agent,
        body.messages,
        send=send,
        model=model,
        protocol=body.protocol,
        counter=counter(model),
        cost=cost,
        **body.params,
    )


def dump(obj: Any) -> Any:
    """A provider object (LiteLLM's pydantic models, the direct sender's views) as JSON data."""
    from apportion.serve.upstream_http import JSONView

    if isinstance(obj, JSONView):
        return obj.data
    if isinstance(obj, Mapping):
        return dict(obj)
    model_dump = getattr(obj, "model_dump", None)
    if callable(model_dump):
        if type(obj).__module__.startswith("openai."):  # the SDK's: the fields it was sent
            return model_dump(mode="json", exclude_unset=True, warnings=False)
        return model_dump(mode="json", exclude_none=True, warnings=False)
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return json.loads(json.dumps(obj, default=str))


def wire(response: Any) -> bytes:
    """The provider's answer as the OpenAI wire format's JSON body.

    The direct sender's answer is passed as the upstream's bytes when the engine left it
    as it came.
    """
    from apportion.serve.upstream_http import JSONView, dumps, raw_bytes

    if isinstance(response, JSONView):
        return raw_bytes(response)
    return dumps(dump(response))


def sse(protocol: str, chunk: Any) -> bytes:
    """One server-sent event of a stream: ``data: {chunk}`` (Responses: with its ``event``)."""
    body = dump(chunk)
    data = json.dumps(body, separators=(",", ":"))
    kind = body.get("type") if isinstance(body, dict) else None
    if protocol == RESPONSES and isinstance(kind, str):
        return f"event: {kind}\ndata: {data}\n\n".encode()
    return f"data: {data}\n\n".encode()


DONE = b"data: [DONE]\n\n"
"""The end of a chat completions stream."""


def figures(report: CallReport | None, remaining: int | None) -> dict[str, Any]:
    """The call's figures: granted, used, remaining, status (for headers and the stream's end)."""
    granted = used = 0
    status = "refused"
    if report is not None:
        granted = report.grant.total if report.grant is not None else 0
        used = report.input_tokens + report.output_tokens
        status = report.status
    out: dict[str, Any] = {"granted": granted, "used": used, "status": status}
    if remaining is not None:
        out["remaining"] = remaining
    return out


def report_headers(
    request_id: str, report: CallReport | None, remaining: int | None
) -> dict[str, str]:
    """The ``Apportion-*`` response headers of a call."""
    got = figures(report, remaining)
    headers = {
        REQUEST: request_id,
        GRANTED: str(got["granted"]),
        USED: str(got["used"]),
        STATUS: str(got["status"]),
    }
    if remaining is not None:
        headers[REMAINING] = str(remaining)
    return headers


def report(response: Any) -> CallReport | None:
    """The engine's report of a response or stream."""
    return report_of(response)


async def events(
    protocol: str, stream: Any, end: Callable[[], Awaitable[bytes]]
) -> AsyncIterator[bytes]:
    """The stream's chunks as server-sent events, then ``end()``'s bytes (and ``[DONE]``).

    The stream settles its grant when it ends; a client that hangs up closes it, which
    settles the grant with what arrived. An upstream error mid-stream is sent as an
    ``error`` event (the status line is long gone).
    """
    try:
        try:
            async for chunk in stream:
                yield sse(protocol, chunk)
        except ApportionError:
            raise
        except Exception as error:  # the provider failed mid-stream: tell the client
            status, message = upstream_error(error, ())
            payload = {"error": {"message": message, "type": "upstream_error", "code": status}}
            if protocol == RESPONSES:
                yield f"event: error\ndata: {json.dumps(payload)}\n\n".encode()
            else:
                yield f"data: {json.dumps(payload)}\n\n".encode()
            return
        yield await end()
        if protocol == CHAT:
            yield DONE
    finally:
        with suppress(Exception):
            await stream.aclose()


def upstream_error(error: BaseException, secrets: Iterable[str | None]) -> tuple[int, str]:
    """The upstream's HTTP status and message of ``error`` (502 when it had none).

    Any of ``secrets`` (the keys used) appearing in the message is replaced by ``***``.
    """
    status = getattr(error, "status_code", None)
    if not isinstance(status, int) or not 400 <= status <= 599:
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
    if not isinstance(status, int) or not 400 <= status <= 599:
        status = 504 if "timeout" in type(error).__name__.lower() else 502
    message = str(getattr(error, "message", None) or error) or type(error).__name__
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return status, message
