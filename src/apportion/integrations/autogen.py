"""Budgeted AutoGen AgentChat: a ``ChatCompletionClient`` that draws on the current request.

::

    from apportion.integrations.autogen import budgeted

    triage = AssistantAgent("triage", model_client=budgeted(model_client, agent="triage"))
    ...
    async with controller.arequest(ceiling=20_000):   # or `with controller.request(...)`
        await triage.run(task=...)

:func:`budgeted` wraps any ``ChatCompletionClient`` (``OpenAIChatCompletionClient`` ...;
one inner client may serve several wrappers). Every ``create`` and ``create_stream`` goes
through apportion's call engine (:mod:`apportion.integrations.engine`): the messages are
counted and fitted into the grant (an over-long message is shortened inside), the output is
capped through ``extra_create_args`` (under the caller's key: ``max_tokens`` unless
``max_completion_tokens`` is given there or the model is a reasoning model), a cut answer
is extended, and the grant is settled with the usage the inner client reports. Streams ask
for usage (``stream_options={"include_usage": True}``); a stream that still reports none
(``RequestUsage(0, 0)``) is settled on the tokens counted here, marked estimated.

The agent: the wrapper's ``agent=``; else, inside a team (``RoundRobinGroupChat`` ...),
the agent the runtime is handling a message for (``MessageHandlerContext.agent_id()``,
whose type is ``<name>_<team id>``); else the current agent (``with req.agent(name):``).
The request: ``req=`` if given, else the current request.

``remaining_tokens`` is the inner client's, but never more than the current request has
free (so AutoGen's ``TokenLimitedChatCompletionContext`` trims to the budget too);
``count_tokens`` / ``actual_usage`` / ``total_usage`` / ``model_info`` / ``capabilities``
/ ``close`` are the inner client's.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apportion.ambient import current_agent, current_request, resolve_request
from apportion.errors import InvalidArgument, MissingExtra, UnsupportedVersion
from apportion.integrations.chat import MAX_EXTENSIONS, call_options
from apportion.integrations.engine import acall

SUPPORTED = ">=0.7.5,<0.8"
"""The ``autogen-agentchat`` / ``autogen-core`` versions this adapter supports."""

_CAPS = ("max_tokens", "max_completion_tokens")
_TEAM_SUFFIX = re.compile(r"_[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$")


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise MissingExtra(name, "autogen") from error


def check_version() -> None:
    """Raise :class:`UnsupportedVersion` when autogen-core is outside :data:`SUPPORTED`."""
    try:
        version = importlib.metadata.version("autogen-core")
    except importlib.metadata.PackageNotFoundError as error:
        raise MissingExtra("autogen_core", "autogen") from error
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    if not (0, 7, 5) <= parts < (0, 8):
        raise UnsupportedVersion("autogen-core", version, SUPPORTED)


def team_agent() -> str | None:
    """The agent the AutoGen runtime is handling a message for, if any (its name)."""
    core = _import("autogen_core")
    try:
        agent_type = str(core.MessageHandlerContext.agent_id().type)
    except RuntimeError:  # not inside a message handler
        return None
    return _TEAM_SUFFIX.sub("", agent_type)


# ------------------------------------------------------------------ message conversion


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text(part) for part in content if isinstance(part, str))
    return str(content)


def to_wire(message: Any) -> dict[str, Any]:
    """An AutoGen ``LLMMessage`` as a chat message, for counting and fitting."""
    kind = getattr(message, "type", "")
    content = getattr(message, "content", "")
    if kind == "SystemMessage":
        return {"role": "system", "content": _text(content)}
    if kind == "AssistantMessage":
        if isinstance(content, list):  # function calls
            calls = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in content
            ]
            return {"role": "assistant", "content": None, "tool_calls": calls}
        return {"role": "assistant", "content": _text(content)}
    if kind == "FunctionExecutionResultMessage":
        results = "\n".join(str(getattr(result, "content", result)) for result in content)
        return {"role": "tool", "content": results}
    return {"role": "user", "content": _text(content)}


@dataclass
class _Messages:
    """The agent's messages and their wire forms: what fitting kept goes back as it was."""

    originals: Sequence[Any]
    agent: str
    wire: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.wire = [to_wire(message) for message in self.originals]

    def back(self, fitted: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The fitted chat messages as AutoGen messages (originals where unchanged)."""
        models = _import("autogen_core.models")
        by_id = {
            id(wire): original for wire, original in zip(self.wire, self.originals, strict=True)
        }
        out: list[Any] = []
        for message in fitted:
            original = by_id.get(id(message))
            if original is not None:
                out.append(original)
                continue
            role, content = message.get("role"), message.get("content") or ""
            if role == "system":
                out.append(models.SystemMessage(content=content))
            elif role == "assistant":
                out.append(models.AssistantMessage(content=content, source=self.agent))
            else:
                out.append(models.UserMessage(content=content, source="user"))
        return out


# ------------------------------------------------------------------ responses as chat


@dataclass
class _Message:
    content: str | None
    tool_calls: list[Any] | None = None


@dataclass
class _Choice:
    message: _Message
    finish_reason: str | None
    index: int = 0


@dataclass
class _Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int = 0


@dataclass
class _Response:
    """A ``CreateResult`` in the shape the engine reads (one choice, usage)."""

    result: Any
    choices: list[_Choice]
    usage: _Usage | None


@dataclass
class _Delta:
    content: str | None = None
    tool_calls: list[Any] | None = None
    role: str | None = None


@dataclass
class _ChunkChoice:
    delta: _Delta
    finish_reason: str | None = None
    index: int = 0


@dataclass
class _Chunk:
    choices: list[_ChunkChoice]
    usage: _Usage | None = None
    id: Any = None
    result: Any = None


def _usage(result: Any) -> _Usage | None:
    usage = getattr(result, "usage", None)
    prompt = getattr(usage, "prompt_tokens", 0) or 0
    completion = getattr(usage, "completion_tokens", 0) or 0
    if not prompt and not completion:  # AutoGen's "no usage reported"
        return None
    return _Usage(prompt, completion, prompt + completion)


def _finish(result: Any) -> str:
    reason = str(getattr(result, "finish_reason", "") or "stop")
    return {"function_calls": "tool_calls"}.get(reason, reason)


def _tool_calls(result: Any) -> list[Any] | None:
    content = getattr(result, "content", None)
    if not isinstance(content, list):
        return None
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in content
    ]


def _as_response(result: Any) -> _Response:
    calls = _tool_calls(result)
    content = None if calls else str(result.content)
    return _Response(result, [_Choice(_Message(content, calls), _finish(result))], _usage(result))


def _as_create_result(response: _Response, report: Any) -> Any:
    """The inner ``CreateResult`` with the joined text and the usage over every call."""
    models = _import("autogen_core.models")
    result = response.result
    update: dict[str, Any] = {
        "usage": models.RequestUsage(
            prompt_tokens=report.input_tokens, completion_tokens=report.output_tokens
        )
    }
    if report.calls > 1:
        update["content"] = response.choices[0].message.content
        update["finish_reason"] = report.finish_reason or result.finish_reason
    return result.model_copy(update=update)


# ------------------------------------------------------------------ the wrapper


def _split(extra: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The caller's cap parameters (the most wanted) and the other create args."""
    caps = {key: value for key, value in extra.items() if key in _CAPS and value is not None}
    rest = {key: value for key, value in extra.items() if key not in _CAPS}
    return caps, rest


def _cap_default(inner: Any) -> dict[str, Any]:
    """A cap configured on the inner client (``OpenAIChatCompletionClient(max_tokens=...)``)."""
    args = getattr(inner, "_create_args", None)
    if not isinstance(args, Mapping):
        return {}
    return {key: args[key] for key in _CAPS if isinstance(args.get(key), int)}


def budgeted(
    client: Any,
    agent: str | None = None,
    *,
    req: Any = None,
    model: str | None = None,
    counter: Any = None,
    fit: str = "keep-recent",
    max_extensions: int = MAX_EXTENSIONS,
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
) -> Any:
    """A ``ChatCompletionClient`` whose calls are budgeted for ``agent``.

    Args:
        client: the AutoGen ``ChatCompletionClient`` making the calls.
        agent: the agent calling (default: the team's agent handling the message, else the
            current agent).
        req: the request to draw on (default: the current request at each call).
        model: the model to count and route with (default: the client's
            ``model_info``/``_create_args`` model).
        counter: ``None`` (the model's tokenizer), ``"approximate"``, or a counter.
        fit: how to fit messages over the context grant.
        max_extensions: follow-up calls allowed for a cut answer.
        wrap_up_tokens: the wrap-up reserve of every call's grant (``None``: the
            controller's): a plain-text answer cut with its extension refused is concluded
            by a "wrap up now" call within it.
        show_budget: add the budget line to every call's prompt (``None``: the
            controller's).

    Raises:
        MissingExtra: AutoGen is not installed.
        UnsupportedVersion: autogen-core is outside :data:`SUPPORTED`.
        InvalidArgument: ``client`` is not a ``ChatCompletionClient``, or ``show_budget``
            is not a bool.
        InvalidTokenCount: ``wrap_up_tokens`` is not a token count.
    """
    check_version()
    models = _import("autogen_core.models")
    if not isinstance(client, models.ChatCompletionClient):
        raise InvalidArgument("client", client, "an AutoGen ChatCompletionClient")
    if agent is not None and (not isinstance(agent, str) or not agent):
        raise InvalidArgument("agent", agent, "an agent's name")
    options = call_options(wrap_up_tokens, show_budget)
    cls = _client_class()
    return cls(
        client,
        agent=agent,
        req=req,
        model=model,
        counter=counter,
        fit=fit,
        max_extensions=max_extensions,
        **options,
    )


_CLASS: Any = None


def _client_class() -> Any:
    """Build the wrapper class on first use (AutoGen is imported lazily)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    base: Any = _import("autogen_core.models").ChatCompletionClient

    class BudgetedChatCompletionClient(base):  # type: ignore[misc]
        """A ``ChatCompletionClient`` budgeted by apportion (see :func:`budgeted`)."""

        def __init__(self, inner: Any, **options: Any) -> None:
            self.inner = inner
            self.agent: str | None = options.pop("agent")
            self.req: Any = options.pop("req")
            self.model: str | None = options.pop("model")
            self.options = options

        # --------------------------------------------------------------- helpers

        def _who(self) -> str:
            agent = self.agent or team_agent() or current_agent()
            if agent is None:
                raise InvalidArgument(
                    "agent",
                    None,
                    "no agent named: budgeted(client, agent=...), or run inside a team, "
                    "or inside `with req.agent(name):`",
                )
            return agent

        def _model(self) -> str:
            if self.model:
                return self.model
            args = getattr(self.inner, "_create_args", None)
            if isinstance(args, Mapping) and isinstance(args.get("model"), str):
                return str(args["model"])
            raise InvalidArgument(
                "model", None, "the client names no model: budgeted(client, model=...)"
            )

        def _prepare(
            self, messages: Sequence[Any], extra: Mapping[str, Any]
        ) -> tuple[Any, str, _Messages, dict[str, Any], dict[str, Any]]:
            req = resolve_request(self.req, what="ChatCompletionClient.create")
            agent = self._who()
            caps, rest = _split(extra)
            return req, agent, _Messages(messages, agent), caps or _cap_default(self.inner), rest

        async def create(
            self,
            messages: Sequence[Any],
            *,
            tools: Sequence[Any] = [],
            tool_choice: Any = "auto",
            json_output: Any = None,
            extra_create_args: Mapping[str, Any] = {},
            cancellation_token: Any = None,
        ) -> Any:
            req, agent, msgs, caps, rest = self._prepare(messages, extra_create_args)

            async def send(*, model: str, messages: Any, **params: Any) -> _Response:
                params.pop("stream", None)
                result = await self.inner.create(
                    msgs.back(messages),
                    tools=tools,
                    tool_choice=tool_choice,
                    json_output=json_output,
                    extra_create_args={**rest, **params},
                    cancellation_token=cancellation_token,
                )
                return _as_response(result)

            response = await self._call(req, agent, msgs, send, caps, json_output, tools)
            return _as_create_result(response, response.apportion)

        async def _call(
            self,
            req: Any,
            agent: str,
            msgs: _Messages,
            send: Any,
            caps: dict[str, Any],
            json_output: Any,
            tools: Sequence[Any],
            **more: Any,
        ) -> Any:
            params: dict[str, Any] = {**caps, **more}
            if json_output:  # structured answers are not continued
                params["response_format"] = {"type": "json_object"}
            if tools:
                params["tools"] = [_tool_schema(tool) for tool in tools]

            async def sent(**wire: Any) -> Any:
                wire.pop("response_format", None)
                wire.pop("tools", None)
                return await send(**wire)

            return await acall(
                req,
                agent,
                msgs.wire,
                send=sent,
                model=self._model(),
                **self.options,
                **params,
            )

        async def create_stream(
            self,
            messages: Sequence[Any],
            *,
            tools: Sequence[Any] = [],
            tool_choice: Any = "auto",
            json_output: Any = None,
            extra_create_args: Mapping[str, Any] = {},
            cancellation_token: Any = None,
        ) -> AsyncIterator[Any]:
            req, agent, msgs, caps, rest = self._prepare(messages, extra_create_args)
            last: list[Any] = []

            async def send(*, model: str, messages: Any, **params: Any) -> AsyncIterator[_Chunk]:
                params.pop("stream", None)
                inner = self.inner.create_stream(
                    msgs.back(messages),
                    tools=tools,
                    tool_choice=tool_choice,
                    json_output=json_output,
                    extra_create_args={**rest, **params},
                    cancellation_token=cancellation_token,
                )
                return _chunks(inner, last)

            stream = await self._call(req, agent, msgs, send, caps, json_output, tools, stream=True)
            text: list[str] = []
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        text.append(choice.delta.content)
                        yield choice.delta.content
            report = stream.report
            models_ = _import("autogen_core.models")
            final = last[-1] if last else None
            usage = models_.RequestUsage(
                prompt_tokens=report.input_tokens, completion_tokens=report.output_tokens
            )
            if final is None:  # pragma: no cover  (the inner stream always ends with one)
                final = models_.CreateResult(
                    finish_reason="unknown", content="".join(text), usage=usage, cached=False
                )
            update: dict[str, Any] = {"usage": usage}
            if isinstance(final.content, str):
                update["content"] = "".join(text)
                if report.finish_reason in ("stop", "length", "content_filter"):
                    update["finish_reason"] = report.finish_reason
            yield final.model_copy(update=update)

        async def close(self) -> None:
            await self.inner.close()

        def actual_usage(self) -> Any:
            return self.inner.actual_usage()

        def total_usage(self) -> Any:
            return self.inner.total_usage()

        def count_tokens(self, messages: Sequence[Any], *, tools: Sequence[Any] = []) -> int:
            return int(self.inner.count_tokens(messages, tools=tools))

        def remaining_tokens(self, messages: Sequence[Any], *, tools: Sequence[Any] = []) -> int:
            """The inner client's, but never more than the current request has free."""
            left = int(self.inner.remaining_tokens(messages, tools=tools))
            req = self.req if self.req is not None else current_request(default=None)
            summary = None if req is None else req.summary()
            if summary is None or inspect.isawaitable(summary):  # an async store: unknown
                if inspect.iscoroutine(summary):
                    summary.close()
                return left
            return min(left, int(summary.free) - self.count_tokens(messages, tools=tools))

        @property
        def capabilities(self) -> Any:
            return self.inner.capabilities

        @property
        def model_info(self) -> Any:
            return self.inner.model_info

    _CLASS = BudgetedChatCompletionClient
    return _CLASS


async def _chunks(inner: AsyncIterator[Any], last: list[Any]) -> AsyncIterator[_Chunk]:
    """An AutoGen stream (text pieces, then a ``CreateResult``) as chat completion chunks."""
    async for item in inner:
        if isinstance(item, str):
            if item:
                yield _Chunk([_ChunkChoice(_Delta(content=item))])
            continue
        last.append(item)
        calls = _tool_calls(item)
        if calls:
            yield _Chunk([_ChunkChoice(_Delta(tool_calls=[_call_delta(c) for c in calls]))])
        yield _Chunk([_ChunkChoice(_Delta(), finish_reason=_finish(item))])
        usage = _usage(item)
        if usage is not None:
            yield _Chunk([], usage=usage)


@dataclass
class _Function:
    name: str
    arguments: str


@dataclass
class _CallDelta:
    id: str
    function: _Function
    index: int = 0
    type: str = "function"


def _call_delta(call: Mapping[str, Any]) -> _CallDelta:
    function = call["function"]
    return _CallDelta(call["id"], _Function(function["name"], function["arguments"]))


def _tool_schema(tool: Any) -> dict[str, Any]:
    """A tool (or its schema) as a chat completions tool, so that it is counted."""
    schema = getattr(tool, "schema", tool)
    return {"type": "function", "function": dict(schema)}
