"""Budgeted model calls through LiteLLM and the OpenAI SDK.

Each integration is imported lazily, so ``import apportion`` pulls no client library; a
missing one raises :class:`~apportion.errors.MissingExtra` naming the extra to install.

* :mod:`apportion.integrations.litellm`: ``req.completion(agent, model=..., messages=...)``
  and ``await req.acompletion(...)``.
* :mod:`apportion.integrations.openai`: ``req.openai(client)`` (or
  ``budgeted(client, req)``) wraps ``openai.OpenAI`` / ``openai.AsyncOpenAI``, whose
  ``.chat.completions.create(agent=..., model=..., messages=...)`` is budgeted.

Both share one implementation of the call semantics (count, begin, fit, cap, call, extend,
finish), described in :mod:`apportion.integrations._calls`. Each budgeted response carries
a :class:`CallReport` as ``response.apportion`` (:func:`report_of`).
"""

from apportion.integrations._calls import (
    CONTINUE_PROMPT,
    AsyncBudgetedStream,
    BudgetedStream,
    CallReport,
    report_of,
)

__all__ = [
    "CONTINUE_PROMPT",
    "AsyncBudgetedStream",
    "BudgetedStream",
    "CallReport",
    "report_of",
]
