"""The public call engine: budget one model call made by any client or framework.

``req.call(...)`` (:meth:`~apportion.controller.Request.call`) and ``await
areq.call(...)`` (:meth:`~apportion.controller.AsyncRequest.call`) take the messages, the
model and a ``send`` function that performs ONE provider call; the engine does the rest::

    with controller.request(ceiling=20_000) as req:
        response = req.call(
            "reasoner",
            messages,
            send=client.chat.completions.create,   # any function taking keywords
            model="gpt-4o-mini",
            max_tokens=800,                        # the most output wanted (optional)
            temperature=0.2,                       # passed to send as given
        )
        response.apportion                         # CallReport: grant, usage, cost ...

Count the messages, begin a grant, fit the messages into it, cap the output at it, call
``send(model=..., messages=<fitted>, max_tokens=<cap>, **params)``, read the usage and the
finish reason, extend a cut answer by calling ``send`` again, and finish the grant with
the usage summed over the calls (all described in :mod:`apportion.integrations.chat`).
``send`` is called with keywords only, the names of the protocol's wire format, so a
client's own method (``client.chat.completions.create``, ``litellm.completion``,
``client.responses.create`` with ``protocol="responses"``) is a ``send`` as it is; a
framework wraps its own call in a function of those keywords.

``send`` returns the provider's response (an object with ``choices`` and ``usage`` for
chat completions; with ``output``, ``status`` and ``usage`` for the Responses API), or a
stream of chunks (or Responses events) when ``stream=True`` is passed, which comes back as a
:class:`~apportion.integrations.drivers.BudgetedStream`.

An error raised by ``send`` (the provider's HTTP error, a timeout, a cancellation) releases
the grant (or finishes it with what earlier calls of the same answer used) and is re-raised
unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from apportion.ambient import current_call_options
from apportion.errors import InvalidArgument
from apportion.integrations.chat import MAX_EXTENSIONS, ChatCall, Cost
from apportion.integrations.drivers import AsyncBudgetedStream, BudgetedStream, arun, run
from apportion.integrations.protocols import CHAT, Protocol


def prepare(
    agent: str,
    messages: Any,
    *,
    send: Any,
    model: str,
    protocol: Protocol | str = CHAT,
    counter: Any = None,
    fit: str = "keep-recent",
    max_extensions: int = MAX_EXTENSIONS,
    cost: Cost | None = None,
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
    params: dict[str, Any],
) -> ChatCall:
    """Check the arguments and build the :class:`ChatCall` (nothing is reserved yet).

    ``wrap_up_tokens`` and ``show_budget`` left ``None`` are those an adapter made current
    for the run (:func:`~apportion.ambient.current_call_options`), else the controller's.

    A ``send`` of LiteLLM's (``litellm.completion`` ...) takes the providers' own budget
    fields, which ``show_budget`` then sets (see :meth:`ChatCall.first_params`).
    """
    if not callable(send):
        raise InvalidArgument("send", send, "a function that makes one provider call")
    ambient = current_call_options()  # an adapter's run-wide options (Pydantic AI's Apportion)
    if wrap_up_tokens is None:
        wrap_up_tokens = ambient.get("wrap_up_tokens")
    if show_budget is None:
        show_budget = ambient.get("show_budget")
    chat = ChatCall(
        agent,
        model,
        messages,
        params,
        counter=counter,
        fit=fit,
        max_extensions=max_extensions,
        cost=cost,
        protocol=protocol,
        wrap_up_tokens=wrap_up_tokens,
        show_budget=show_budget,
    )
    module = getattr(send, "__module__", None)
    chat.provider_budget = isinstance(module, str) and module.split(".")[0] == "litellm"
    return chat


def call(
    req: Any,
    agent: str,
    messages: Any,
    *,
    send: Callable[..., Any],
    model: str,
    protocol: Protocol | str = CHAT,
    counter: Any = None,
    fit: str = "keep-recent",
    max_extensions: int = MAX_EXTENSIONS,
    cost: Cost | None = None,
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
    **params: Any,
) -> Any:
    """One budgeted model call of ``agent`` within the open request ``req``.

    Args:
        req: the open :class:`~apportion.controller.Request`.
        agent: the agent calling.
        messages: the chat messages (the Responses API's ``input``: a text or items).
        send: makes one provider call, given the call's parameters as keywords (``model``,
            the fitted messages, the cap, and ``params``); returns the response.
        model: the model to call (a routing policy may call another: ``grant.model``).
        protocol: ``"chat"`` (chat completions) or ``"responses"`` (the Responses API),
            or a :class:`~apportion.integrations.protocols.Protocol`.
        counter: ``None`` (the model's tokenizer), ``"approximate"``, or a counter.
        fit: how to fit messages that exceed the context grant (``keep-recent`` ...).
        max_extensions: follow-up calls allowed when the answer is cut at its cap.
        cost: prices ``(model, prompt, completion)`` tokens in USD (default: the
            controller's catalog only).
        wrap_up_tokens: the grant's wrap-up reserve (``None``: the controller's): the
            first call leaves it unspent, and when an extension is refused a "wrap up
            now" follow-up concludes the answer within it (``report.status`` then says
            ``wrapped_up``).
        show_budget: add the budget line to the prompt (``None``: the controller's).
        **params: passed to ``send``; the protocol's cap parameters (``max_tokens``,
            ``max_completion_tokens``, ``max_output_tokens``) are the most output wanted,
            and are sent under the same name, capped at the grant.

    Returns:
        The response, with a :class:`~apportion.integrations.chat.CallReport` as
        ``response.apportion``; a :class:`BudgetedStream` when ``stream=True``.

    Raises:
        BudgetExceeded: not enough is left for this agent.
        InputTooLarge: the messages cannot fit the context grant even after fitting.
        NoTokenizer, UnknownModel: no tokenizer for the model (``counter="approximate"``).
        InvalidArgument: a bad argument; nothing is reserved.
        Exception: what ``send`` raised, re-raised once the grant is settled.
    """
    chat = prepare(
        agent,
        messages,
        send=send,
        model=model,
        protocol=protocol,
        counter=counter,
        fit=fit,
        max_extensions=max_extensions,
        cost=cost,
        wrap_up_tokens=wrap_up_tokens,
        show_budget=show_budget,
        params=params,
    )
    if chat.stream:
        return BudgetedStream(chat, req, send)
    return run(chat, req, send)


async def acall(
    req: Any,
    agent: str,
    messages: Any,
    *,
    send: Callable[..., Awaitable[Any]],
    model: str,
    protocol: Protocol | str = CHAT,
    counter: Any = None,
    fit: str = "keep-recent",
    max_extensions: int = MAX_EXTENSIONS,
    cost: Cost | None = None,
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
    **params: Any,
) -> Any:
    """The async :func:`call`: ``send`` is awaited; ``req`` an ``AsyncRequest`` or a ``Request``.

    With ``stream=True`` it returns an
    :class:`~apportion.integrations.drivers.AsyncBudgetedStream`, opened.
    """
    chat = prepare(
        agent,
        messages,
        send=send,
        model=model,
        protocol=protocol,
        counter=counter,
        fit=fit,
        max_extensions=max_extensions,
        cost=cost,
        wrap_up_tokens=wrap_up_tokens,
        show_budget=show_budget,
        params=params,
    )
    if chat.stream:
        return await AsyncBudgetedStream(chat, req, send).open()
    return await arun(chat, req, send)
