"""Token counting per model, and fitting chat messages into a context grant.

:func:`counter_for` gives a model's :class:`TokenCounter` (tiktoken for OpenAI models,
LiteLLM's counter for the others, an approximate one only by name); :func:`fit_messages`
chooses which messages to send within a grant's ``context_tokens``. Importing this package
imports neither tiktoken nor LiteLLM: a counter imports what it needs when it is made.
"""

from __future__ import annotations

from apportion.tokens.counting import (
    ApproximateCounter,
    LiteLLMCounter,
    TiktokenCounter,
    TokenCounter,
    count_messages,
    counter_for,
)
from apportion.tokens.fitting import STRATEGIES, Fit, fit_messages, irreducible_tokens

__all__ = [
    "STRATEGIES",
    "ApproximateCounter",
    "Fit",
    "LiteLLMCounter",
    "TiktokenCounter",
    "TokenCounter",
    "count_messages",
    "counter_for",
    "fit_messages",
    "irreducible_tokens",
]
