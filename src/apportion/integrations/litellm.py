"""Budgeted LiteLLM calls: ``req.completion(...)`` and ``await req.acompletion(...)``.

::

    with controller.request(ceiling=20_000) as req:
        response = req.completion("reasoner", model="gpt-4o-mini", messages=messages)
        response.choices[0].message.content     # the whole answer, extensions joined
        response.apportion                      # CallReport: grant, usage, cost, ...

Every LiteLLM parameter passes through (``api_base``, ``api_key``, ``tools``,
``mock_response``, ``stream`` ...), except ``max_tokens`` / ``max_completion_tokens``, which
become the most output asked of the policy; the call is capped at what the policy grants.
The semantics (counting, fitting, caps, extension of a cut answer, settling, errors,
streaming) are those of :mod:`apportion.integrations.chat`, through the public engine
(:mod:`apportion.integrations.engine`), shared with the OpenAI SDK integration.

LiteLLM is imported on first use, with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` set first
(unless already set) so that it reads its bundled model cost map instead of fetching it.
Costs come from that map (``litellm.cost_per_token``); a model it does not price has cost
``None``, which is not an error. Counting, though, needs a tokenizer: an unknown model
raises :class:`~apportion.errors.NoTokenizer` before anything is reserved, unless
``counter="approximate"`` is given.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

from apportion.errors import MissingExtra
from apportion.integrations.chat import MAX_EXTENSIONS
from apportion.integrations.engine import acall, call


def import_litellm() -> Any:
    """Import LiteLLM with its bundled cost map and quiet debug output.

    Raises:
        MissingExtra: LiteLLM is not installed.
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        litellm = importlib.import_module("litellm")
    except ImportError as error:
        raise MissingExtra("litellm", "litellm") from error
    setattr(litellm, "suppress_debug_info", True)  # noqa: B010  (untyped module attribute)
    return litellm


def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD cost of the tokens by LiteLLM's model cost map; ``None`` if it has no price."""
    litellm = import_litellm()
    try:
        prompt, completion = litellm.cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except Exception:  # LiteLLM raises several kinds for a model it cannot price
        return None
    return float(prompt) + float(completion)


def completion(
    req: Any,
    agent: str,
    *,
    model: str,
    messages: Sequence[Any],
    counter: Any = None,
    fit: str = "keep-recent",
    max_extensions: int = MAX_EXTENSIONS,
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
    **kwargs: Any,
) -> Any:
    """A budgeted ``litellm.completion`` for ``agent`` within request ``req``.

    Args:
        req: the open :class:`~apportion.controller.Request`.
        agent: the agent calling.
        model: the LiteLLM model name (``gpt-4o-mini``, ``anthropic/claude-...``).
        messages: the chat messages (fitted into the grant's context).
        counter: the token counter: ``None`` (by model), ``"approximate"``, or a counter.
        fit: how to fit messages that exceed the context grant (``keep-recent`` ...).
        max_extensions: follow-up calls allowed when the answer is cut at its cap.
        wrap_up_tokens: the grant's wrap-up reserve (``None``: the controller's): when an
            extension is refused, a "wrap up now" follow-up concludes within it.
        show_budget: add the budget line to the prompt, and set the provider's own budget
            field where it takes one (``None``: the controller's).
        **kwargs: passed to ``litellm.completion``.

    Returns:
        LiteLLM's ``ModelResponse`` (with ``.apportion``), or a :class:`BudgetedStream`
        when ``stream=True``.

    Raises:
        BudgetExceeded: not enough is left for this agent.
        InputTooLarge: the messages cannot fit the context grant even after fitting.
        NoTokenizer, UnknownModel: no tokenizer for the model.
        MissingExtra: LiteLLM is not installed.
        Exception: the client's own errors, re-raised once the grant is settled.
    """
    litellm = import_litellm()
    return call(
        req,
        agent,
        messages,
        send=litellm.completion,
        model=model,
        counter=counter,
        fit=fit,
        max_extensions=max_extensions,
        cost=cost,
        wrap_up_tokens=wrap_up_tokens,
        show_budget=show_budget,
        **kwargs,
    )


async def acompletion(
    req: Any,
    agent: str,
    *,
    model: str,
    messages: Sequence[Any],
    counter: Any = None,
    fit: str = "keep-recent",
    max_extensions: int = MAX_EXTENSIONS,
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
    **kwargs: Any,
) -> Any:
    """The async :func:`completion`, with ``litellm.acompletion``.

    ``req`` is an :class:`~apportion.controller.AsyncRequest` (a sync ``Request`` works
    too). With ``stream=True`` it returns an :class:`AsyncBudgetedStream`.
    """
    litellm = import_litellm()
    return await acall(
        req,
        agent,
        messages,
        send=litellm.acompletion,
        model=model,
        counter=counter,
        fit=fit,
        max_extensions=max_extensions,
        cost=cost,
        wrap_up_tokens=wrap_up_tokens,
        show_budget=show_budget,
        **kwargs,
    )
