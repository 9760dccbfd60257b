"""Budgeted OpenAI SDK calls: a wrapper around ``openai.OpenAI`` / ``openai.AsyncOpenAI``.

::

    client = openai.OpenAI()
    with controller.request(ceiling=20_000) as req:
        chat = req.openai(client)                  # or budgeted(client, req)
        response = chat.chat.completions.create(
            agent="reasoner", model="gpt-4o-mini", messages=messages
        )
        response.apportion                          # CallReport: grant, usage, cost, ...

With an ``AsyncOpenAI`` client, ``create`` is awaitable (and the request may be an
``AsyncRequest`` or a sync ``Request``). Every SDK parameter passes through, except
``max_tokens`` / ``max_completion_tokens``, which become the most output asked of the
policy; the call is capped at what the policy grants (``max_completion_tokens`` for
reasoning models). The semantics (counting, fitting, caps, extension of a cut answer,
settling, errors, streaming) are those of :mod:`apportion.integrations.chat`, shared with
the LiteLLM integration. Any other attribute of the wrapper (``.models``,
``.embeddings`` ...) is the client's own, unbudgeted.

Costs come from LiteLLM's model cost map when LiteLLM is installed: through
``litellm.cost_per_token`` when LiteLLM is already imported (so models registered with
``litellm.register_model`` are priced), else read from the map file LiteLLM ships, without
importing LiteLLM (per-token input and output prices; no tiers, no cache discounts).
Without LiteLLM, or for a model the map does not price, the cost is ``None``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from apportion.errors import InvalidArgument
from apportion.integrations.chat import MAX_EXTENSIONS, ChatCall
from apportion.integrations.drivers import (
    AsyncBudgetedStream,
    BudgetedStream,
    arun,
    is_async_request,
    run,
)


def budgeted(client: Any, req: Any) -> BudgetedOpenAI | AsyncBudgetedOpenAI:
    """Wrap an OpenAI client so its chat completions are budgeted within ``req``.

    Args:
        client: an ``openai.OpenAI`` or ``openai.AsyncOpenAI`` (or a compatible client).
        req: the open request: a ``Request`` for a sync client; an ``AsyncRequest`` (or a
            ``Request``) for an async one.

    Raises:
        TypeError: ``client`` has no ``chat.completions.create``, or a sync client was
            given an ``AsyncRequest``.
    """
    create = getattr(getattr(getattr(client, "chat", None), "completions", None), "create", None)
    if not callable(create):
        raise InvalidArgument("client", client, "not an OpenAI client (no chat.completions.create)")
    if _is_async(client, create):
        return AsyncBudgetedOpenAI(client, req)
    if is_async_request(req):
        raise InvalidArgument(
            "client",
            client,
            "a sync OpenAI client cannot be budgeted by an AsyncRequest: use AsyncOpenAI",
        )
    return BudgetedOpenAI(client, req)


def _is_async(client: Any, create: Any) -> bool:
    """Whether ``create`` is a coroutine function (the SDK's decorators hide it)."""
    sdk = sys.modules.get("openai")
    if sdk is not None and isinstance(client, sdk.AsyncOpenAI):
        return True
    return inspect.iscoroutinefunction(inspect.unwrap(create))


class _Wrapper:
    """What the sync and async wrappers share: the client, the request, pass-through."""

    def __init__(self, client: Any, req: Any) -> None:
        self.client = client
        self.req = req

    def __getattr__(self, name: str) -> Any:
        if name in ("client", "req"):  # not set yet (copying, unpickling)
            raise AttributeError(name)
        return getattr(self.client, name)

    def _call(
        self,
        agent: str,
        model: str,
        messages: Sequence[Any],
        counter: Any,
        fit: str,
        max_extensions: int,
        kwargs: dict[str, Any],
    ) -> ChatCall:
        return ChatCall(
            agent,
            model,
            messages,
            kwargs,
            counter=counter,
            fit=fit,
            max_extensions=max_extensions,
            cost=cost,
        )


class BudgetedOpenAI(_Wrapper):
    """An ``openai.OpenAI`` whose ``chat.completions.create`` is budgeted.

    Attributes:
        client: the wrapped client.
        req: the request the calls are budgeted in.
        chat: ``chat.completions.create(agent=..., model=..., messages=..., **kwargs)``.
    """

    def __init__(self, client: Any, req: Any) -> None:
        super().__init__(client, req)
        self.chat = _Namespace(completions=_Namespace(create=self.create))

    def create(
        self,
        *,
        agent: str,
        model: str,
        messages: Sequence[Any],
        counter: Any = None,
        fit: str = "keep-recent",
        max_extensions: int = MAX_EXTENSIONS,
        **kwargs: Any,
    ) -> Any:
        """A budgeted ``client.chat.completions.create`` for ``agent``.

        Args:
            agent: the agent calling.
            model: the model name.
            messages: the chat messages (fitted into the grant's context).
            counter: the token counter: ``None`` (by model), ``"approximate"``, or a counter.
            fit: how to fit messages that exceed the context grant (``keep-recent`` ...).
            max_extensions: follow-up calls allowed when the answer is cut at its cap.
            **kwargs: passed to ``create``.

        Returns:
            The ``ChatCompletion`` (with ``.apportion``), or a :class:`BudgetedStream` when
            ``stream=True``.

        Raises:
            BudgetExceeded, InputTooLarge, NoTokenizer, UnknownModel: as for
            :func:`apportion.integrations.litellm.completion`.
            openai.APIError: the client's errors, re-raised once the grant is settled.
        """
        call = self._call(agent, model, messages, counter, fit, max_extensions, kwargs)
        send = self.client.chat.completions.create
        if call.stream:
            return BudgetedStream(call, self.req, send)
        return run(call, self.req, send)


class AsyncBudgetedOpenAI(_Wrapper):
    """An ``openai.AsyncOpenAI`` whose ``chat.completions.create`` is budgeted (awaitable).

    Attributes:
        client: the wrapped client.
        req: the request the calls are budgeted in.
        chat: ``await chat.completions.create(agent=..., model=..., messages=...)``.
    """

    def __init__(self, client: Any, req: Any) -> None:
        super().__init__(client, req)
        self.chat = _Namespace(completions=_Namespace(create=self.create))

    async def create(
        self,
        *,
        agent: str,
        model: str,
        messages: Sequence[Any],
        counter: Any = None,
        fit: str = "keep-recent",
        max_extensions: int = MAX_EXTENSIONS,
        **kwargs: Any,
    ) -> Any:
        """Async :meth:`BudgetedOpenAI.create`; streams are :class:`AsyncBudgetedStream`."""
        call = self._call(agent, model, messages, counter, fit, max_extensions, kwargs)
        send = self.client.chat.completions.create
        if call.stream:
            return await AsyncBudgetedStream(call, self.req, send).open()
        return await arun(call, self.req, send)


class _Namespace:
    """Attribute access to a few names (``chat.completions.create``)."""

    def __init__(self, **names: Any) -> None:
        self.__dict__.update(names)


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
