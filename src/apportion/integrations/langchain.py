"""Budgeted LangChain 1.x agents: a middleware for ``create_agent``.

::

    from apportion.integrations.langchain import BudgetMiddleware

    agent = create_agent(model, tools, name="reasoner", middleware=[BudgetMiddleware()])
    with controller.request(ceiling=20_000):
        agent.invoke({"messages": [...]})            # each model call is budgeted

:class:`BudgetMiddleware` implements ``wrap_model_call`` and ``awrap_model_call``: every
model call of the agent goes through apportion's call engine
(:mod:`apportion.integrations.engine`): the system message, the messages and
``request.tools`` are counted, a grant is begun for the agent, the messages are fitted
into it, the call is capped (``max_tokens`` in the request's ``model_settings``; ChatOpenAI
sends it as ``max_completion_tokens``), a cut answer of plain text is continued by calling
the handler again (an answer with tool calls, or a structured one, never is), and the
grant is settled with the usage the model reported (``usage_metadata``; counted from the
text when absent, flagged estimated).

The agent is the ``name`` given to ``create_agent`` (LangGraph's config metadata
``lc_agent_name``), else the middleware's ``agent=``, else the current agent
(``with req.agent(name):``). The request is the middleware's ``req=``, else the current
one (:func:`~apportion.ambient.resolve_request`).

Streaming (``agent.stream(..., stream_mode="messages")``) is budgeted too: the model node
still hands the middleware the whole answer. ChatOpenAI pointed at a ``base_url`` leaves
stream usage off; the middleware turns ``stream_usage`` on for the call so the usage is
the provider's.

LangChain is imported on first use; a missing one raises
:class:`~apportion.errors.MissingExtra` (``apportion[langchain]``), a version outside
:data:`SUPPORTED` raises :class:`~apportion.errors.UnsupportedVersion`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import json
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any

from apportion.ambient import OUTSIDE, resolve_agent, resolve_request
from apportion.errors import InvalidArgument, MissingExtra
from apportion.integrations.chat import MAX_EXTENSIONS, call_options
from apportion.integrations.engine import acall, call
from apportion.integrations.versions import installed, within

SUPPORTED = ">=1.5,<2"
"""The LangChain versions this adapter supports."""

_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@functools.cache
def import_langchain() -> Any:
    """Import the LangChain pieces the middleware needs, checking the version.

    Raises:
        MissingExtra: LangChain is not installed.
        UnsupportedVersion: LangChain is outside :data:`SUPPORTED`.
    """
    try:
        middleware = importlib.import_module("langchain.agents.middleware")
        messages = importlib.import_module("langchain_core.messages")
        tools = importlib.import_module("langchain_core.utils.function_calling")
        config = importlib.import_module("langgraph.config")
    except ImportError as error:
        raise MissingExtra("langchain", "langchain") from error
    within("langchain", installed("langchain", "langchain"), SUPPORTED, "langchain")
    return SimpleNamespace(
        AgentMiddleware=middleware.AgentMiddleware,
        messages=messages,
        convert_to_openai_tool=tools.convert_to_openai_tool,
        get_config=config.get_config,
    )


def _agent_name() -> str | None:
    """``lc_agent_name`` of the running LangGraph node (``create_agent(name=...)``)."""
    lc = import_langchain()
    try:
        metadata = lc.get_config().get("metadata") or {}
    except RuntimeError:  # not inside a runnable context
        return None
    name = metadata.get("lc_agent_name")
    return name if isinstance(name, str) and name else None


def _model_name(model: Any) -> str | None:
    for attr in ("model_name", "model", "model_id"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def _finish_reason(message: Any) -> str | None:
    metadata = getattr(message, "response_metadata", None) or {}
    reason = metadata.get("finish_reason")
    if reason is None and metadata.get("status") == "incomplete":
        details = metadata.get("incomplete_details") or {}
        if details.get("reason") == "max_output_tokens":
            return "length"
    return reason if isinstance(reason, str) else None


def _text(message: Any) -> str:
    content = getattr(message, "content", None)
    if isinstance(content, str):
        return content
    text = getattr(message, "text", "")
    if isinstance(text, str):  # langchain-core 1.x: a property (a callable str)
        return str(text)
    return str(text() if callable(text) else text or "")


def _as_chat_response(response: Any) -> Any:
    """A ``ModelResponse`` seen as a chat-completions response (what the engine reads)."""
    results = list(getattr(response, "result", None) or ())
    message = results[-1] if results else None
    calls = [
        *(getattr(message, "tool_calls", None) or ()),
        *(getattr(message, "invalid_tool_calls", None) or ()),  # e.g. arguments cut at the cap
    ]
    tool_calls = [
        SimpleNamespace(
            function=SimpleNamespace(
                name=call.get("name") or "",
                arguments=args
                if isinstance(args := call.get("args", {}), str)
                else json.dumps(args),
            )
        )
        for call in calls
    ]
    usage_metadata = getattr(message, "usage_metadata", None)
    usage = None
    if usage_metadata:
        usage = SimpleNamespace(
            prompt_tokens=usage_metadata.get("input_tokens"),
            completion_tokens=usage_metadata.get("output_tokens"),
            total_tokens=usage_metadata.get("total_tokens"),
        )
    structured = getattr(response, "structured_response", None) is not None
    content = None if structured else _text(message)
    return SimpleNamespace(
        choices=[
            SimpleNamespace(
                message=SimpleNamespace(content=content, tool_calls=tool_calls),
                finish_reason=_finish_reason(message),
            )
        ],
        usage=usage,
        lc_response=response,
    )


def restore_messages(
    lc: Any, dicts: Sequence[Any], originals: Sequence[Any], fitted: Sequence[Any]
) -> list[Any]:
    """LangChain messages of the fitted chat messages: the originals where unchanged."""
    unused = list(zip(dicts, originals, strict=True))
    rebuilt: list[Any] = []
    for item in fitted:
        match = next((i for i, (d, _) in enumerate(unused) if d == item), None)
        if match is not None:
            rebuilt.append(unused.pop(match)[1])
        else:
            rebuilt.extend(lc.messages.convert_to_messages([item]))
    return rebuilt


class _Call:
    """One model call of the agent: the request, and the conversions both ways."""

    def __init__(self, lc: Any, request: Any, agent: str, model: str | None) -> None:
        self.lc = lc
        self.request = request
        self.agent = agent
        self.model = model or _model_name(request.model)
        if self.model is None:
            raise InvalidArgument(
                "model", None, "the model's name: pass model=... to the middleware"
            )
        originals = list(request.messages)
        if request.system_message is not None:
            originals.insert(0, request.system_message)
        self.originals = originals
        self.dicts = list(lc.messages.convert_to_openai_messages(originals))
        self.system = request.system_message is not None

    def params(self) -> dict[str, Any]:
        """What the engine counts and reads: tools, the most output wanted, structure."""
        params: dict[str, Any] = {}
        tools = [self.lc.convert_to_openai_tool(t) for t in self.request.tools or ()]
        if tools:
            params["tools"] = tools
        settings = self.request.model_settings or {}
        wanted = next((settings[k] for k in _CAPS if settings.get(k) is not None), None)
        if wanted is None:
            wanted = getattr(self.request.model, "max_tokens", None)
        if isinstance(wanted, int) and not isinstance(wanted, bool):
            params["max_tokens"] = wanted
        if self.request.response_format is not None:
            params["response_format"] = {"type": "json_schema"}
        return params

    def build(self, messages: Sequence[Any], cap: int) -> Any:
        """The request for one call: the fitted messages, capped at ``cap``."""
        rebuilt = restore_messages(self.lc, self.dicts, self.originals, messages)
        system = None
        if rebuilt and isinstance(rebuilt[0], self.lc.messages.SystemMessage):
            system = rebuilt.pop(0)
        settings = {k: v for k, v in (self.request.model_settings or {}).items() if k not in _CAPS}
        settings["max_tokens"] = cap
        overrides: dict[str, Any] = {
            "messages": rebuilt,
            "system_message": system,
            "model_settings": settings,
        }
        model = self.request.model
        if hasattr(model, "stream_usage") and model.stream_usage is not True:
            overrides["model"] = model.model_copy(update={"stream_usage": True})
        return self.request.override(**overrides)

    def result(self, merged: Any) -> Any:
        """The handler's response, with a continued answer joined and its usage summed."""
        response = merged.lc_response
        report = merged.apportion
        if report.calls <= 1:
            return response
        results = list(response.result)
        message = results[-1]
        metadata = dict(getattr(message, "response_metadata", None) or {})
        metadata["finish_reason"] = report.finish_reason
        results[-1] = message.model_copy(
            update={
                "content": merged.choices[0].message.content,
                "response_metadata": metadata,
                "usage_metadata": {
                    "input_tokens": report.input_tokens,
                    "output_tokens": report.output_tokens,
                    "total_tokens": report.input_tokens + report.output_tokens,
                },
            }
        )
        response.result = results
        return response


def _cap(kwargs: dict[str, Any]) -> int:
    return int(next(kwargs[k] for k in _CAPS if kwargs.get(k) is not None))


def _middleware_class() -> type:
    lc = import_langchain()

    class BudgetMiddlewareImpl(lc.AgentMiddleware):  # type: ignore[misc,name-defined]
        """See :class:`BudgetMiddleware`."""

        def __init__(self, settings: dict[str, Any]) -> None:
            super().__init__()
            self._settings = settings

        @property
        def name(self) -> str:
            return "apportion"

        def _prepare(self) -> tuple[Any, str]:
            s = self._settings
            req = resolve_request(s["req"], outside=s["outside"], what="a LangChain model call")
            if req is None:  # outside="pass" and no request: not budgeted
                return None, ""
            agent = resolve_agent(_agent_name() or s["agent"])
            return req, agent

        def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
            req, agent = self._prepare()
            if req is None:
                return handler(request)
            one = _Call(lc, request, agent, self._settings["model"])

            def send(*, model: str, messages: list[Any], **kwargs: Any) -> Any:
                return _as_chat_response(handler(one.build(messages, _cap(kwargs))))

            merged = call(req, agent, one.dicts, send=send, **self._engine(one))
            return one.result(merged)

        async def awrap_model_call(
            self, request: Any, handler: Callable[[Any], Awaitable[Any]]
        ) -> Any:
            req, agent = self._prepare()
            if req is None:
                return await handler(request)
            one = _Call(lc, request, agent, self._settings["model"])

            async def send(*, model: str, messages: list[Any], **kwargs: Any) -> Any:
                return _as_chat_response(await handler(one.build(messages, _cap(kwargs))))

            merged = await acall(req, agent, one.dicts, send=send, **self._engine(one))
            return one.result(merged)

        def _engine(self, one: _Call) -> dict[str, Any]:
            s = self._settings
            return {
                "model": one.model,
                "counter": s["counter"],
                "fit": s["fit"],
                "max_extensions": s["max_extensions"],
                **s["options"],
                **one.params(),
            }

    return BudgetMiddlewareImpl


_CLASS: list[type] = []


def check_options(
    agent: str | None,
    max_extensions: int,
    outside: str,
    *,
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
) -> dict[str, Any]:
    """Check the options the LangChain and LangGraph adapters share.

    Returns:
        The call engine's ``wrap_up_tokens`` / ``show_budget`` keywords that are set
        (:func:`~apportion.integrations.chat.call_options`).

    Raises:
        InvalidArgument: ``agent`` is not a name, ``max_extensions`` not an integer >= 0,
            ``outside`` not one of :data:`~apportion.ambient.OUTSIDE`, or ``show_budget``
            not a bool.
        InvalidTokenCount: ``wrap_up_tokens`` is not a token count.
    """
    if agent is not None and (not isinstance(agent, str) or not agent):
        raise InvalidArgument("agent", agent, "an agent's name")
    if type(max_extensions) is not int or max_extensions < 0:
        raise InvalidArgument("max_extensions", max_extensions, "an integer >= 0")
    if outside not in OUTSIDE:
        raise InvalidArgument("outside", outside, "one of: " + ", ".join(OUTSIDE))
    return call_options(wrap_up_tokens, show_budget)


def BudgetMiddleware(
    *,
    agent: str | None = None,
    req: Any = None,
    model: str | None = None,
    counter: Any = None,
    fit: str = "keep-recent",
    max_extensions: int = MAX_EXTENSIONS,
    outside: str = "raise",
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
) -> Any:
    """A LangChain ``AgentMiddleware`` budgeting every model call of a ``create_agent`` agent.

    Args:
        agent: the agent when ``create_agent`` got no ``name`` (else the current agent).
        req: the request to draw on (default: the current request at each call).
        model: the model's name for counting and pricing (default: the chat model's
            ``model_name``).
        counter: ``None`` (the model's tokenizer), ``"approximate"``, or a counter.
        fit: how to fit messages over the context grant.
        max_extensions: follow-up calls allowed for a cut answer.
        outside: with no request: ``"raise"`` (``NoOpenRequest``) or ``"pass"`` (the call
            is made unbudgeted, with an ``UnbudgetedCall`` warning).
        wrap_up_tokens: the wrap-up reserve of every call's grant (``None``: the
            controller's): a plain-text answer cut with its extension refused is concluded
            by a "wrap up now" call within it.
        show_budget: add the budget line to every call's prompt (``None``: the
            controller's).

    Raises:
        MissingExtra: LangChain is not installed.
        UnsupportedVersion: LangChain is outside :data:`SUPPORTED`.
        InvalidArgument: a bad argument.
        InvalidTokenCount: ``wrap_up_tokens`` is not a token count.
    """
    options = check_options(
        agent, max_extensions, outside, wrap_up_tokens=wrap_up_tokens, show_budget=show_budget
    )
    if model is not None and (not isinstance(model, str) or not model):
        raise InvalidArgument("model", model, "a model's name")
    if not _CLASS:
        _CLASS.append(_middleware_class())
    settings = {
        "agent": agent,
        "req": req,
        "model": model,
        "counter": counter,
        "fit": fit,
        "max_extensions": max_extensions,
        "outside": outside,
        "options": options,
    }
    return _CLASS[0](settings)
