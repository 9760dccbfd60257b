"""Budgeted model calls: the public call engine, LiteLLM and the OpenAI SDK.

Each integration is imported lazily, so ``import apportion`` pulls no client library; a
missing one raises :class:`~apportion.errors.MissingExtra` naming the extra to install.

* :mod:`apportion.integrations.engine`: ``req.call(agent, messages, send=..., model=...)``
  and ``await areq.call(...)``: any client or framework that makes its own provider call.
* :mod:`apportion.integrations.litellm`: ``req.completion(agent, model=..., messages=...)``
  and ``await req.acompletion(...)``.
* :mod:`apportion.integrations.openai`: ``req.openai(client, agent=...)`` (or
  ``budgeted(client, req, agent)``), a drop-in ``openai.OpenAI`` / ``openai.AsyncOpenAI``
  whose chat completions and Responses calls are budgeted.
* :mod:`apportion.integrations.openai_agents`: ``run_config(client)`` for the OpenAI
  Agents SDK's ``Runner`` (extra ``openai-agents``).
* :mod:`apportion.integrations.pydantic_ai`: ``budgeted_model(name, client)`` and the
  ``Apportion()`` capability for Pydantic AI (extra ``pydantic-ai``).

All share one implementation of the call semantics (count, begin, fit, cap, call, extend,
finish), described in :mod:`apportion.integrations.chat`, over a wire protocol
(:mod:`apportion.integrations.protocols`: chat completions or the Responses API), carried
out by :mod:`apportion.integrations.drivers`. Each budgeted response carries a
:class:`CallReport` as ``response.apportion`` (:func:`report_of`).
"""

from apportion.integrations.chat import CONTINUE_PROMPT, CallReport, report_of
from apportion.integrations.drivers import AsyncBudgetedStream, BudgetedStream

__all__ = [
    "CONTINUE_PROMPT",
    "AsyncBudgetedStream",
    "BudgetedStream",
    "CallReport",
    "report_of",
]
