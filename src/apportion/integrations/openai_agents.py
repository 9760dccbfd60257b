"""The OpenAI Agents SDK, budgeted: ``Runner.run(agent, input, run_config=run_config(client))``.

::

    from apportion.integrations.openai_agents import run_config

    with controller.request(ceiling=20_000):
        result = await Runner.run(triage, text, run_config=run_config(AsyncOpenAI()))

:func:`run_config` returns the SDK's ``RunConfig`` with

* a model provider (:class:`BudgetedProvider`) whose Responses and Chat Completions models
  call through a budgeted client (:func:`apportion.integrations.openai.budgeted`) over the
  given ``AsyncOpenAI`` client, in the request passed or the current request (looked up at
  each model call, so one ``RunConfig`` serves many requests);
* a ``call_model_input_filter`` that names the agent: before every model call (each turn,
  after a handoff, inside an agent run as a tool) it makes the executing agent's
  ``name`` the current agent (:func:`apportion.current_agent`), which the budgeted client
  charges. A filter of your own (``call_model_input_filter=``) runs after it.

The SDK's cap (``ModelSettings.max_tokens``) is the most output wanted; it goes out as
``max_output_tokens`` (Responses) or ``max_tokens`` (Chat Completions), capped at the
grant. A cut answer is extended. The SDK refuses a Responses answer left
``status="incomplete"`` (``ModelBehaviorError``): when apportion cannot extend a cut answer
(no budget left, ``max_extensions`` reached) the answer is handed to the SDK as completed
(``response.apportion.truncated`` stays ``True``).

``run_config(client, wrap_up_tokens=N, show_budget=True)`` gives every model call a
wrap-up reserve of ``N`` (a cut answer whose extension is refused is concluded within it)
and the budget line in its prompt; ``None`` (the default) leaves the controller's.

**Streaming** (``Runner.run_streamed``) works with both models: a cut streamed answer is
extended and read as one stream (the Responses model's events as one message; the Chat
Completions model asks for usage with ``stream_options``), and a streamed Responses answer
the budget cannot extend ends on ``response.completed`` as above.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from typing import Any

from apportion.ambient import name_agent, resolve_request
from apportion.errors import InvalidArgument, MissingExtra
from apportion.integrations.chat import call_options
from apportion.integrations.openai import budgeted
from apportion.integrations.versions import within

EXTRA = "openai-agents"
SUPPORTED = ">=0.24,<0.25"


def import_agents() -> Any:
    """The ``agents`` package (the OpenAI Agents SDK), checked for a supported version.

    Raises:
        MissingExtra: the SDK is not installed.
        UnsupportedVersion: the installed SDK is outside :data:`SUPPORTED`.
    """
    try:
        agents = importlib.import_module("agents")
    except ImportError as error:
        raise MissingExtra("openai-agents", EXTRA) from error
    check_version(importlib.metadata.version("openai-agents"))
    return agents


def check_version(version: str) -> None:
    """Raise ``UnsupportedVersion`` unless ``version`` is in :data:`SUPPORTED`."""
    within("openai-agents", version, SUPPORTED, EXTRA)


def run_config(
    client: Any,
    *,
    req: Any = None,
    use_responses: bool | None = None,
    call_model_input_filter: Callable[[Any], Any] | None = None,
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
    **options: Any,
) -> Any:
    """A ``RunConfig`` whose model calls are budgeted (see the module docstring).

    Args:
        client: the ``openai.AsyncOpenAI`` client the models call.
        req: the request to budget in; ``None``: the current request at each model call.
        use_responses: ``False`` for the Chat Completions model (needed to stream), ``True``
            or ``None`` (the SDK's default) for the Responses model.
        call_model_input_filter: your own filter, run after the agent is named.
        wrap_up_tokens: the wrap-up reserve of every model call's grant (``None``: the
            controller's): an answer cut with its extension refused is concluded by a
            "wrap up now" call within it.
        show_budget: add the budget line to every model call's prompt (``None``: the
            controller's).
        **options: any other ``RunConfig`` field (``model``, ``model_settings`` ...).

    Raises:
        MissingExtra: the SDK is not installed.
        UnsupportedVersion: the installed SDK is outside :data:`SUPPORTED`.
        InvalidArgument: ``client`` is not an async OpenAI client, ``options`` sets
            ``model_provider``, or ``show_budget`` is not a bool.
        InvalidTokenCount: ``wrap_up_tokens`` is not a token count.
    """
    agents = import_agents()
    if "model_provider" in options:
        raise InvalidArgument(
            "model_provider", options["model_provider"], "run_config() makes the provider"
        )
    provider = BudgetedProvider(
        client,
        req=req,
        use_responses=use_responses,
        wrap_up_tokens=wrap_up_tokens,
        show_budget=show_budget,
    )
    return agents.RunConfig(
        model_provider=provider,
        call_model_input_filter=_namer(call_model_input_filter),
        **options,
    )


def _namer(then: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """A ``call_model_input_filter`` making the executing agent current, then ``then``."""

    def named(data: Any) -> Any:
        name = getattr(data.agent, "name", None)
        if isinstance(name, str) and name:
            name_agent(name)
        return data.model_data if then is None else then(data)

    return named


class BudgetedProvider:
    """A ``ModelProvider`` of the Agents SDK whose models call through a budgeted client.

    Args:
        client: the ``openai.AsyncOpenAI`` client.
        req: the request to budget in; ``None``: the current request when a model is made.
        use_responses: as ``OpenAIProvider``'s (``False``: Chat Completions).
        wrap_up_tokens: the wrap-up reserve of every model call (``None``: the controller's).
        show_budget: add the budget line to every model call (``None``: the controller's).

    Raises:
        InvalidArgument: ``client`` is not an async OpenAI client, or ``show_budget`` is
            not a bool.
        InvalidTokenCount: ``wrap_up_tokens`` is not a token count.
    """

    def __init__(
        self,
        client: Any,
        *,
        req: Any = None,
        use_responses: bool | None = None,
        wrap_up_tokens: int | None = None,
        show_budget: bool | None = None,
    ) -> None:
        agents = import_agents()
        if not _is_async_client(client):
            raise InvalidArgument("client", client, "an openai.AsyncOpenAI client")
        self.options = call_options(wrap_up_tokens, show_budget)
        self.client = client
        self.req = req
        self.use_responses = use_responses
        self._agents = agents

    def get_model(self, model_name: str | None) -> Any:
        """The SDK's model for ``model_name``, over a budgeted client in the request."""
        req = resolve_request(self.req, what="an Agents SDK model call")
        chat = _Completing(budgeted(self.client, req, **self.options))
        provider = self._agents.OpenAIProvider(openai_client=chat, use_responses=self.use_responses)
        return provider.get_model(model_name)

    async def aclose(self) -> None:
        """Nothing to close: the client is the caller's."""


def _is_async_client(client: Any) -> bool:
    import openai

    return isinstance(client, openai.AsyncOpenAI)


class _Wrapper:
    """An object standing for ``inner``: each attribute is ``inner``'s, or what ``_wrap`` gives."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_inner":
            raise AttributeError(name)
        return self._wrap(name, getattr(self._inner, name))

    def _wrap(self, name: str, value: Any) -> Any:
        """The attribute ``name`` of this object, given ``inner``'s ``value``."""
        return value


class _Completing(_Wrapper):
    """A budgeted client whose Responses answers, still cut after extending, read completed.

    The SDK raises ``ModelBehaviorError`` on ``status="incomplete"``; the budget has
    already settled the cut answer (``response.apportion.truncated``).
    """

    def _wrap(self, name: str, value: Any) -> Any:
        if name == "responses":
            return _CompletingResponses(value)
        if name in ("with_options", "copy"):
            return lambda *args, **kwargs: _Completing(value(*args, **kwargs))
        return value


class _CompletingResponses(_Wrapper):
    """``responses`` of :class:`_Completing`: ``create`` (streamed or not), its streaming view."""

    def _wrap(self, name: str, value: Any) -> Any:
        if name == "with_streaming_response":
            return _CompletingView(value)
        if name != "create":
            return value

        async def create(**kwargs: Any) -> Any:
            result = await value(**kwargs)
            return _CompletingStream(result) if kwargs.get("stream") else _completed(result)

        return create


class _CompletingView(_Wrapper):
    """``responses.with_streaming_response`` (the SDK's streamed path), completing."""

    def _wrap(self, name: str, value: Any) -> Any:
        if name != "create":
            return value
        return lambda **kwargs: _CompletingContext(value(**kwargs))


class _CompletingContext(_Wrapper):
    """The streaming view's context: its raw response completes."""

    async def __aenter__(self) -> _CompletingRaw:
        return _CompletingRaw(await self._inner.__aenter__())

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._inner.__aexit__(*exc)


class _CompletingRaw(_Wrapper):
    """The raw response of a streamed call: ``parse()`` gives the completing stream."""

    async def parse(self, **kwargs: Any) -> Any:
        result = await self._inner.parse(**kwargs)
        return _CompletingStream(result) if not kwargs else result


class _CompletingStream(_Wrapper):
    """A budgeted Responses stream whose cut answer, not extended, reads as completed.

    Its terminal ``response.incomplete`` (cut at the cap) becomes ``response.completed``;
    everything else is the stream's own.
    """

    def __aiter__(self) -> _CompletingStream:
        return self

    async def __anext__(self) -> Any:
        event = await self._inner.__anext__()
        if getattr(event, "type", None) != "response.incomplete":
            return event
        response = _completed(event.response)
        if response.status != "completed":
            return event
        from openai.types.responses import ResponseCompletedEvent

        return ResponseCompletedEvent.model_construct(
            type="response.completed", response=response, sequence_number=event.sequence_number
        )


def _completed(response: Any) -> Any:
    """``response``, shown completed when it ended cut at its cap."""
    details = getattr(response, "incomplete_details", None)
    if getattr(response, "status", None) == "incomplete" and (
        getattr(details, "reason", None) == "max_output_tokens"
    ):
        response.status = "completed"
        response.incomplete_details = None
        for item in getattr(response, "output", None) or ():
            if getattr(item, "status", None) == "incomplete":
                item.status = "completed"
    return response
