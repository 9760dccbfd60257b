"""Helpers of the integration tests: pipeline, policies, a checking store, client setup."""

from __future__ import annotations

from typing import Any

from apportion import Agent, Controller, MemoryStore, Pipeline, Policy
from apportion.testing.openai_server import OpenAIServer
from policy_helpers import FixedPolicy  # noqa: F401  (the integration tests import it from here)

MODEL = "openai/gpt-4o-mini"
"""LiteLLM's OpenAI-compatible route: with ``api_base`` it calls the local server."""


def words(count: int, prefix: str = "w") -> str:
    """``count`` distinct words: the server counts one token per word."""
    return " ".join(f"{prefix}{i}" for i in range(count))


class CheckedStore(MemoryStore):
    """A memory store that checks conservation and the hard cap after every operation."""

    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def _check(self, request_id: str) -> None:
        state = self.get(request_id)
        assert state.free + state.reserved + state.consumed == state.ceiling
        assert state.consumed <= state.ceiling
        assert state.free >= 0 and state.reserved >= 0
        self.checks += 1

    def begin(self, request_id: str, *args: Any, **kwargs: Any) -> Any:
        result = super().begin(request_id, *args, **kwargs)
        self._check(request_id)
        return result

    def extend(self, request_id: str, *args: Any, **kwargs: Any) -> Any:
        result = super().extend(request_id, *args, **kwargs)
        self._check(request_id)
        return result

    def finish(self, request_id: str, *args: Any, **kwargs: Any) -> Any:
        result = super().finish(request_id, *args, **kwargs)
        self._check(request_id)
        return result

    def release(self, request_id: str, *args: Any, **kwargs: Any) -> Any:
        result = super().release(request_id, *args, **kwargs)
        self._check(request_id)
        return result


PIPELINE = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="prose"),
    ]
)


def controller(store: MemoryStore, policy: str | Policy = "elastic") -> Controller:
    return Controller(PIPELINE, policy=policy, store=store)


def litellm_args(server: OpenAIServer) -> dict[str, Any]:
    """What points LiteLLM at the local server."""
    return {"model": MODEL, "api_base": server.url, "api_key": "test", "max_retries": 0}


def openai_client(server: OpenAIServer) -> Any:
    import openai

    return openai.OpenAI(base_url=server.url, api_key="test", max_retries=0)


def async_openai_client(server: OpenAIServer) -> Any:
    import openai

    return openai.AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0)


def assert_shown_and_wrapped_up(server: OpenAIServer, req: Any) -> None:
    """The server saw the budget line in the first call and a wrap-up follow-up last.

    For an adapter given ``wrap_up_tokens=`` and ``show_budget=True`` whose one call was
    cut with its extension refused (``FixedPolicy(output=..., extra=0)``).
    """
    import json

    from apportion.integrations.chat import BUDGET_LINE, WRAP_UP_PROMPT

    first, *rest = server.requests
    assert BUDGET_LINE.split("{")[0] in json.dumps(first)
    assert rest, "no wrap-up follow-up was sent"
    assert WRAP_UP_PROMPT.split("{")[0] in json.dumps(rest[-1])
    assert WRAP_UP_PROMPT.split("{")[0] not in json.dumps(first)
    assert [record.status for record in req.calls.values()] == ["wrapped_up"]
