"""Budgeted model calls through LiteLLM and the OpenAI SDK.

Each integration is imported lazily, so ``import apportion`` pulls no client library; a
missing one raises :class:`~apportion.errors.MissingExtra` naming the extra to install.

* :mod:`apportion.integrations.litellm`: ``req.completion(agent, model=..., messages=...)``
  and ``await req.acompletion(...)``.
* :mod:`apportion.integrations.openai`: ``req.openai(client)`` (or
  ``budgeted(client, req)``) wraps ``openai.OpenAI`` / ``openai.AsyncOpenAI``, whose
  ``.chat.completions.create(agent=..., model=..., messages=...)`` is budgeted.

Both share one implementation of the call semantics (count, begin, fit, cap, call, extend,
finish), described in :mod:`apportion.integrations.chat`
(carried out by :mod:`apportion.integrations.drivers`). Each budgeted response carries
a :class:`CallReport` as ``response.apportion`` (:func:`report_of`).
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
