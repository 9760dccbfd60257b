"""A drop-in budgeted OpenAI client: ``req.openai(client, agent=...)``.

::

    client = openai.OpenAI()
    with controller.request(ceiling=20_000) as req:
        chat = req.openai(client, agent="reasoner")      # or budgeted(client, req, agent)
        response = chat.chat.completions.create(model="gpt-4o-mini", messages=messages)
        response.apportion                                 # CallReport: grant, usage, cost
        chat.responses.create(model="gpt-4o-mini", input="...", agent="formatter")

The budgeted client is what a framework can hold in place of the SDK's client:

* **Budgeted calls**: ``chat.completions.create`` and ``parse``,
  ``beta.chat.completions.parse``, ``responses.create`` and ``parse`` go through the call
  engine (:mod:`apportion.integrations.engine`): counted, begun, fitted, capped, extended
  when cut, settled. The caller's cap parameter (``max_tokens``, ``max_completion_tokens``,
  ``max_output_tokens``) is the most output wanted and is sent under its own name, capped
  at the grant. ``openai.omit`` / ``openai.NOT_GIVEN`` are treated as absent. Chat
  completions and Responses may stream (``stream=True``: a
  :class:`~apportion.integrations.drivers.BudgetedStream`). A structured answer (``parse``,
  ``response_format``, a JSON ``text.format``) is never continued; when ``parse`` cannot
  read an answer (``openai.LengthFinishReasonError`` for one cut at its cap), the grant is
  settled with what the provider billed and the SDK's error is re-raised.
* **The agent** is the one given to ``req.openai(client, agent=...)``, or the ``agent=``
  keyword given to a call (taken out before the call is sent; it wins over the client's),
  else the current agent (``with req.agent(name):``, :func:`apportion.current_agent`).
  A call with none of them raises :class:`~apportion.errors.InvalidArgument` naming the method,
  before anything is reserved or sent.
* **Wrapping up and the budget line**: ``req.openai(client, wrap_up_tokens=N,
  show_budget=True)`` gives every call of the client a wrap-up reserve of ``N`` and the
  budget line (see :mod:`apportion.integrations.chat`); a call's own ``wrap_up_tokens=`` /
  ``show_budget=`` wins, and ``None`` (the default) leaves the controller's. Views
  (``with_options``, ``copy``) keep them.
* **Views stay budgeted**: ``with_options(...)`` and ``copy(...)`` return a budgeted
  client (same request, same agent) over the SDK's copy; ``with_raw_response`` (on the
  client or on a resource, e.g. ``chat.completions.with_raw_response.create``) returns the
  SDK's raw response whose ``.parse()`` gives the budgeted result (the parsed response
  settles the budget; headers and the rest are the first call's); and
  ``with_streaming_response`` makes the call through the raw response when its context is
  entered (the body is read at once; ``parse()`` is awaited with an async client).
* **Refused**: a method that would make a model call apportion cannot budget raises
  :class:`~apportion.errors.UnsupportedCall` naming it, and nothing is sent:
  ``completions`` (legacy), ``images``, ``audio``, ``realtime``, ``batches``, ``evals``
  and every resource not known to be free of generation; ``chat.completions.stream`` and
  ``beta.chat.completions.stream`` and ``responses.stream`` (use
  ``create(stream=True)``); ``responses.compact`` and ``responses.connect``; the
  low-level ``post`` and ``request``. Every other attribute is the client's own
  (``models``, ``embeddings``, ``files``, ``base_url``, ``_client`` ...).

With an ``AsyncOpenAI`` client the budgeted methods are awaitable (and the request may be
an ``AsyncRequest`` or a sync ``Request``).

Costs come from LiteLLM's model cost map when LiteLLM is installed: through
``litellm.cost_per_token`` when LiteLLM is already imported (so models registered with
``litellm.register_model`` are priced), else read from the map file LiteLLM ships, without
importing LiteLLM (per-token input and output prices; no tiers, no cache discounts).
Without LiteLLM, or for a model the map does not price, the cost is ``None``.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from apportion.ambient import current_agent
from apportion.errors import InvalidArgument, UnsupportedCall
from apportion.integrations.chat import MAX_EXTENSIONS, call_options, report_of
from apportion.integrations.drivers import is_async_request
from apportion.integrations.engine import acall, call
from apportion.integrations.protocols import CHAT, RESPONSES, Protocol

Path = tuple[str, ...]

_BUDGETED: Mapping[Path, Mapping[str, Protocol]] = {
    ("chat", "completions"): {"create": CHAT, "parse": CHAT},
    ("beta", "chat", "completions"): {"parse": CHAT},
    ("responses",): {"create": RESPONSES, "parse": RESPONSES},
}
"""The budgeted methods, by the path of their resource."""

_STREAM = "a stream helper is not budgeted: use create(stream=True)"
_REFUSED: Mapping[Path, Mapping[str, str]] = {
    (): {
        "post": "a raw HTTP call is not budgeted: use the client's resources",
        "request": "a raw HTTP call is not budgeted: use the client's resources",
    },
    ("chat", "completions"): {"stream": _STREAM},
    ("beta", "chat", "completions"): {"stream": _STREAM},
    ("responses",): {
        "stream": _STREAM,
        "compact": "compaction generates tokens apportion does not cap",
        "connect": "a realtime connection is not budgeted",
    },
}
"""Methods refused (with the reason), by the path of their resource."""

_ALLOWED: Mapping[Path, frozenset[str]] = {
    (): frozenset(
        {
            "admin",
            "containers",
            "conversations",
            "embeddings",
            "files",
            "fine_tuning",
            "models",
            "moderations",
            "uploads",
            "vector_stores",
            "webhooks",
        }
    ),
    ("beta",): frozenset({"assistants", "vector_stores", "files"}),
    ("chat", "completions"): frozenset({"messages"}),
    ("responses",): frozenset({"input_items", "input_tokens"}),
}
"""Resources passed through as the client's own (they generate nothing), by path."""

_PROXIED: frozenset[Path] = frozenset(
    path[:i] for path in (*_BUDGETED, *_REFUSED) for i in range(len(path) + 1)
)
"""Resources wrapped (they lead to a budgeted or refused method)."""

_MODES = ("plain", "raw", "streaming")


def budgeted(
    client: Any,
    req: Any,
    agent: str | None = None,
    *,
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
) -> BudgetedOpenAI | AsyncBudgetedOpenAI:
    """A budgeted drop-in for an OpenAI client, within the request ``req``.

    Args:
        client: an ``openai.OpenAI`` or ``openai.AsyncOpenAI`` (or a compatible client).
        req: the open request: a ``Request`` for a sync client; an ``AsyncRequest`` (or a
            ``Request``) for an async one.
        agent: the agent the calls are budgeted for (a call's own ``agent=`` wins).
        wrap_up_tokens: the wrap-up reserve of every call's grant (``None``: the
            controller's); a call's own ``wrap_up_tokens=`` wins.
        show_budget: add the budget line to every call's prompt (``None``: the
            controller's); a call's own ``show_budget=`` wins.

    Raises:
        InvalidArgument: ``client`` has no ``chat.completions.create``, a sync client was
            given an ``AsyncRequest``, ``agent`` is not a name, or ``show_budget`` is not
            a bool.
        InvalidTokenCount: ``wrap_up_tokens`` is not a token count.
    """
    create = getattr(getattr(getattr(client, "chat", None), "completions", None), "create", None)
    if not callable(create):
        raise InvalidArgument("client", client, "not an OpenAI client (no chat.completions.create)")
    if agent is not None and not isinstance(agent, str):
        raise InvalidArgument("agent", agent, "an agent name (or None: named per call)")
    options = call_options(wrap_up_tokens, show_budget)
    if _is_async(client, create):
        return AsyncBudgetedOpenAI(client, req, agent, options)
    if is_async_request(req):
        raise InvalidArgument(
            "client",
            client,
            "a sync OpenAI client cannot be budgeted by an AsyncRequest: use AsyncOpenAI",
        )
    return BudgetedOpenAI(client, req, agent, options)


def _is_async(client: Any, create: Any) -> bool:
    """Whether ``create`` is a coroutine function (the SDK's decorators hide it)."""
    sdk = sys.modules.get("openai")
    if sdk is not None and isinstance(client, sdk.AsyncOpenAI):
        return True
    return inspect.iscoroutinefunction(inspect.unwrap(create))


def _is_resource(value: Any) -> bool:
    """Whether ``value`` is one of the SDK's resources (or a raw/streaming view of one)."""
    return type(value).__module__.startswith("openai.resources")


class _Resource:
    """A budgeted view of the SDK resource at ``path`` (see the module docstring)."""

    def __init__(
        self, root: _Root, path: Path, target: Any, view: Any, mode: str = "plain"
    ) -> None:
        self._root = root
        self._path = path
        self._target = target  # the SDK's resource
        self._view = view  # the same in this mode (``target.with_raw_response`` ...)
        self._mode = mode

    def __repr__(self) -> str:
        where = ".".join(self._path) or "client"
        return f"<budgeted {where} ({self._mode}) of {self._target!r}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_root", "_path", "_target", "_view", "_mode"):
            raise AttributeError(name)
        path = (*self._path, name)
        protocol = _BUDGETED.get(self._path, {}).get(name)
        if protocol is not None:
            return self._root._method(".".join(path), protocol, self._target, name, self._mode)
        reason = _REFUSED.get(self._path, {}).get(name)
        if reason is not None:
            return _Refused(".".join(path), reason)
        if name in ("with_raw_response", "with_streaming_response") and self._mode == "plain":
            mode = "raw" if name == "with_raw_response" else "streaming"
            view = getattr(self._target, name)  # what the client's own methods answer
            return _Resource(self._root, self._path, self._target, view, mode)
        value = getattr(self._view, name)
        if path in _PROXIED:
            return _Resource(self._root, path, getattr(self._target, name), value, self._mode)
        if _is_resource(value) and name not in _ALLOWED.get(self._path, frozenset()):
            return _Refused(".".join(path), "it may generate tokens apportion does not cap")
        return value


class _Refused:
    """A method (or resource) that cannot be budgeted: calling it raises ``UnsupportedCall``.

    Its attributes are refused too, so the error names the whole method called.
    """

    def __init__(self, method: str, reason: str) -> None:
        self.method = method
        self.reason = reason

    def __repr__(self) -> str:
        return f"<refused {self.method}: {self.reason}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedCall(self.method, self.reason)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("method", "reason"):
            raise AttributeError(name)
        if name in ("with_raw_response", "with_streaming_response"):
            return self
        return _Refused(f"{self.method}.{name}", self.reason)


class _Root(_Resource):
    """What the sync and async budgeted clients share."""

    def __init__(
        self,
        client: Any,
        req: Any,
        agent: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(self, (), client, client)
        self.client = client
        self.req = req
        self.agent = agent
        self.options = dict(options or {})

    def __getattr__(self, name: str) -> Any:
        if name in ("client", "req", "agent", "options"):  # not set yet (copying, unpickling)
            raise AttributeError(name)
        return super().__getattr__(name)

    def __enter__(self) -> Any:
        self.client.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.__exit__(*exc)

    async def __aenter__(self) -> Any:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.__aexit__(*exc)

    def copy(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``copy`` (``with_options``), budgeted like this client."""
        return type(self)(self.client.copy(*args, **kwargs), self.req, self.agent, self.options)

    def with_options(self, *args: Any, **kwargs: Any) -> Any:
        """The SDK's ``with_options`` (``copy``), budgeted like this client."""
        client = self.client.with_options(*args, **kwargs)
        return type(self)(client, self.req, self.agent, self.options)

    def _agent(self, method: str, given: Any) -> str:
        agent = given if given is not None else self.agent
        if agent is None:
            agent = current_agent()
        if agent is None:
            raise InvalidArgument(
                "agent",
                None,
                f"no agent for {method}: name it with req.openai(client, agent=...), "
                f"{method}(agent=..., ...) or `with req.agent(name):`",
            )
        return agent

    def _prepare(self, method: str, protocol: Protocol, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The engine's keywords: the agent, the messages and the model taken out."""
        key = protocol.messages_key
        if key not in kwargs:
            raise InvalidArgument(key, None, f"{method} needs {key}=")
        if "model" not in kwargs:
            raise InvalidArgument("model", None, f"{method} needs model=")
        agent = self._agent(method, kwargs.pop("agent", None))
        messages = kwargs.pop(key)
        for name in self.options:  # a call's own None leaves the client's
            if kwargs.get(name, self) is None:
                del kwargs[name]
        return {
            "agent": agent,
            "messages": messages,
            "protocol": protocol,
            **self.options,
            **kwargs,
        }

    def _method(
        self, label: str, protocol: Protocol, target: Any, name: str, mode: str
    ) -> Callable[..., Any]:
        raise NotImplementedError


class BudgetedOpenAI(_Root):
    """A budgeted ``openai.OpenAI`` (see the module docstring).

    Attributes:
        client: the wrapped client.
        req: the request the calls are budgeted in.
        agent: the agent the calls are budgeted for, unless a call names its own.
    """

    def _method(
        self, label: str, protocol: Protocol, target: Any, name: str, mode: str
    ) -> Callable[..., Any]:
        plain = getattr(target, name)

        def budgeted_call(
            *,
            counter: Any = None,
            fit: str = "keep-recent",
            max_extensions: int = MAX_EXTENSIONS,
            **kwargs: Any,
        ) -> Any:
            args = self._prepare(label, protocol, kwargs)
            options = {"counter": counter, "fit": fit, "max_extensions": max_extensions}
            if mode == "plain" and name != "parse":
                return call(self.req, send=plain, cost=cost, **options, **args)
            raw = getattr(target.with_raw_response, name)
            if mode == "streaming":
                return _StreamingResponse(lambda: self._raw_call(raw, options, args))
            result = self._raw_call(raw, options, args)
            return result if mode == "raw" else result.parse()

        budgeted_call.__name__ = name
        budgeted_call.__doc__ = f"A budgeted ``{label}`` (see :mod:`{__name__}`)."
        return budgeted_call

    def _raw_call(self, raw: Any, options: dict[str, Any], args: dict[str, Any]) -> Any:
        first: list[Any] = []

        failed: list[Exception] = []

        def send(**params: Any) -> Any:
            response = raw(**params)
            first.append(response)
            return _parsed(response, args["protocol"], failed)

        result = call(self.req, send=send, cost=cost, **options, **args)
        return BudgetedRawResponse(first[0], result, failed[0] if failed else None)


class AsyncBudgetedOpenAI(_Root):
    """A budgeted ``openai.AsyncOpenAI``: its budgeted methods are awaitable.

    Attributes:
        client: the wrapped client.
        req: the request the calls are budgeted in (an ``AsyncRequest`` or a ``Request``).
        agent: the agent the calls are budgeted for, unless a call names its own.
    """

    def _method(
        self, label: str, protocol: Protocol, target: Any, name: str, mode: str
    ) -> Callable[..., Any]:
        plain = getattr(target, name)

        async def budgeted_call(
            *,
            counter: Any = None,
            fit: str = "keep-recent",
            max_extensions: int = MAX_EXTENSIONS,
            **kwargs: Any,
        ) -> Any:
            args = self._prepare(label, protocol, kwargs)
            options = {"counter": counter, "fit": fit, "max_extensions": max_extensions}
            if mode == "plain" and name != "parse":
                return await acall(self.req, send=plain, cost=cost, **options, **args)
            raw = getattr(target.with_raw_response, name)
            result = await self._raw_call(raw, options, args)
            return result if mode != "plain" else result.parse()

        if mode == "streaming":

            def streaming_call(**kwargs: Any) -> Any:
                return _AsyncStreamingResponse(lambda: budgeted_call(**kwargs))

            streaming_call.__name__ = name
            return streaming_call
        budgeted_call.__name__ = name
        budgeted_call.__doc__ = f"A budgeted ``{label}`` (see :mod:`{__name__}`)."
        return budgeted_call

    async def _raw_call(self, raw: Any, options: dict[str, Any], args: dict[str, Any]) -> Any:
        first: list[Any] = []

        failed: list[Exception] = []

        async def send(**params: Any) -> Any:
            response = await raw(**params)
            first.append(response)
            return _parsed(response, args["protocol"], failed)

        result = await acall(self.req, send=send, cost=cost, **options, **args)
        return BudgetedRawResponse(first[0], result, failed[0] if failed else None)


def _parsed(raw: Any, protocol: Protocol, failed: list[Exception]) -> Any:
    """The raw response parsed; when the SDK cannot parse it, its plain type, to settle.

    ``parse`` methods raise on an answer they cannot read (``LengthFinishReasonError`` for
    a structured answer cut at its cap, a validation error ...) though the provider billed
    it: the error is kept in ``failed`` (re-raised once the grant is settled) and the
    response is read as a plain ``ChatCompletion`` / ``Response`` for its usage.
    """
    try:
        return raw.parse()
    except Exception as error:
        sdk = sys.modules.get("openai")
        if sdk is None:
            raise
        plain = sdk.types.chat.ChatCompletion if protocol is CHAT else sdk.types.responses.Response
        try:  # the body, without the SDK's post-parsing (which raised)
            result = plain.construct(**json.loads(raw.text))
        except Exception:
            raise error from None
        failed.append(error)
        return result


class BudgetedRawResponse:
    """The SDK's raw response of a budgeted call: ``parse()`` gives the budgeted result.

    Every other attribute (``headers``, ``http_response``, ``status_code`` ...) is the raw
    response's (of the first call, when a cut answer was continued).

    Attributes:
        apportion: the call's :class:`~apportion.integrations.chat.CallReport`.
    """

    def __init__(self, raw: Any, result: Any, error: Exception | None = None) -> None:
        self.raw = raw
        self.result = result
        self.error = error
        self.apportion = report_of(result)

    def parse(self, *, to: Any = None) -> Any:
        """The budgeted response (``to=``: the raw response parsed as that type).

        Raises:
            Exception: the SDK's own error when it could not parse the answer (e.g.
                ``openai.LengthFinishReasonError``), once the grant is settled.
        """
        if to is not None:
            return self.raw.parse(to=to)
        if self.error is not None:
            raise self.error
        return self.result

    def __getattr__(self, name: str) -> Any:
        if name in ("raw", "result", "error", "apportion"):
            raise AttributeError(name)
        return getattr(self.raw, name)


class _StreamingResponse:
    """``with_streaming_response``'s context: the budgeted raw call is made on entering."""

    def __init__(self, make: Callable[[], BudgetedRawResponse]) -> None:
        self._make = make

    def __enter__(self) -> BudgetedRawResponse:
        return self._make()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class _AsyncRawResponse(BudgetedRawResponse):
    """An async ``with_streaming_response``'s response: ``parse()`` is awaited."""

    async def parse(self, *, to: Any = None) -> Any:
        """The budgeted response (awaited, as the SDK's async streaming response)."""
        return BudgetedRawResponse.parse(self, to=to)


class _AsyncStreamingResponse:
    """The async ``with_streaming_response`` context: the call is made on entering."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make

    async def __aenter__(self) -> _AsyncRawResponse:
        done = await self._make()
        return _AsyncRawResponse(done.raw, done.result, done.error)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


# ------------------------------------------------------------------------------ cost


def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD cost of the tokens by LiteLLM's model cost map; ``None`` if unpriced."""
    litellm = sys.modules.get("litellm")
    if litellm is not None:
        from apportion.integrations.litellm import cost as litellm_cost

        return litellm_cost(model, prompt_tokens, completion_tokens)
    prices = _prices(model)
    if prices is None:
        return None
    return prices[0] * prompt_tokens + prices[1] * completion_tokens


def _prices(model: str) -> tuple[float, float] | None:
    table = _cost_map()
    for name in (model, model.split("/", 1)[-1]):
        entry = table.get(name)
        if isinstance(entry, Mapping):
            inp = entry.get("input_cost_per_token")
            out = entry.get("output_cost_per_token")
            if isinstance(inp, int | float) and isinstance(out, int | float):
                return float(inp), float(out)
    return None


def _cost_map() -> dict[str, Any]:
    """LiteLLM's bundled model cost map, read without importing LiteLLM ({} without it)."""
    from apportion.catalog import bundled_cost_map

    return bundled_cost_map()
