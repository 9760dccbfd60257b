"""The proxy's fast path pieces: cached prices, the raw direct sender, its JSON views.

No timing here: each test checks that a faster piece gives what the slower one gave.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from apportion.integrations.litellm import cost as litellm_cost
from apportion.serve import forward, upstream_http
from apportion.serve.config import UpstreamConfig
from apportion.serve.forward import CHAT, direct_sender
from apportion.serve.upstream_http import JSONView, UpstreamStatusError, raw_bytes, view_of
from apportion.testing.fast_upstream import FastUpstream
from apportion.testing.openai_server import OpenAIServer, Reply

USAGES = [(0, 0), (1, 0), (0, 1), (10, 5), (123_456, 789), (300_000, 20_000), (7, 2_000_000)]
MODELS = [
    "gpt-4o-mini",
    "openai/gpt-4o-mini",
    "gpt-4o",
    "gemini/gemini-2.5-pro",  # priced by tiers: LiteLLM every call
    "no-such-model-anywhere",  # not priced: None
]


@pytest.mark.parametrize("model", MODELS)
def test_the_cached_price_equals_litellms_for_the_same_usage(model, monkeypatch):
    monkeypatch.setattr(forward, "_PRICES", {})
    for prompt, completion in USAGES:
        assert forward.cost(model, prompt, completion) == litellm_cost(model, prompt, completion)


def test_a_linear_models_prices_are_read_once(monkeypatch):
    asked: list[tuple[str, int, int]] = []

    def counted(model: str, prompt: int, completion: int) -> float | None:
        asked.append((model, prompt, completion))
        return litellm_cost(model, prompt, completion)

    monkeypatch.setattr(forward, "_PRICES", {})
    monkeypatch.setattr(forward, "litellm_cost", counted)
    forward.cost("gpt-4o-mini", 10, 5)
    first = len(asked)
    for prompt, completion in USAGES:
        forward.cost("gpt-4o-mini", prompt, completion)
    assert first > 0 and len(asked) == first  # no lookup after the first call
    forward.cost("gemini/gemini-2.5-pro", 10, 5)
    tiered = len(asked)
    forward.cost("gemini/gemini-2.5-pro", 10, 5)
    assert len(asked) == tiered + 1  # a tiered model: LiteLLM every call


def test_a_view_reads_and_writes_the_json_and_keeps_the_upstreams_bytes():
    raw = (
        b'{"id":"c1","choices":[{"message":{"content":"hi"},"finish_reason":"length"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1}}'
    )
    view = view_of(raw)
    assert view.choices[0].message.content == "hi" and view.usage.prompt_tokens == 3
    assert view.missing is None and getattr(view, "apportion", None) is None
    assert raw_bytes(view) is raw  # unchanged: passed as it came
    view.choices[0].message.content = "hi there"
    view.usage.completion_tokens = 2
    assert json.loads(raw_bytes(view)) == {
        "id": "c1",
        "choices": [{"message": {"content": "hi there"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    with pytest.raises(UpstreamStatusError) as caught:
        view_of(b"[1, 2]")
    assert caught.value.status_code == 502


def test_the_direct_sender_posts_raw_json_and_answers_views_not_sdk_objects():
    async def go(url: str) -> Any:
        send = direct_sender(CHAT, UpstreamConfig("u", api_base=url, model="openai/m-1"), "k")
        try:
            return await send(
                model="asked", messages=[{"role": "user", "content": "tag hello"}], max_tokens=3
            )
        finally:
            await upstream_http.aclose_clients()

    with FastUpstream(reply_tokens=8) as upstream:
        answer = asyncio.run(go(upstream.url))
        assert upstream.billed == {"tag": answer.usage.total_tokens}
    assert isinstance(answer, JSONView)
    assert answer.model == "m-1" and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 3
    assert json.loads(forward.wire(answer))["choices"][0]["message"]["content"] == "ok ok ok"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_an_upstream_error_keeps_the_providers_status_and_message(status):
    async def go(url: str) -> Any:
        send = direct_sender(CHAT, UpstreamConfig("u", api_base=url), None)
        try:
            await send(model="m", messages=[{"role": "user", "content": "x"}])
        finally:
            await upstream_http.aclose_clients()

    with OpenAIServer() as server:
        server.queue(Reply(status=status))
        with pytest.raises(UpstreamStatusError) as caught:
            asyncio.run(go(server.url))
    assert forward.upstream_error(caught.value, ())[0] == status
    assert caught.value.message and "Error code" not in caught.value.message


def test_json_falls_back_to_the_standard_library(monkeypatch):
    monkeypatch.setattr(upstream_http, "_json", None)
    monkeypatch.setitem(__import__("sys").modules, "orjson", None)
    assert upstream_http.loads(upstream_http.dumps({"a": "é"})) == {"a": "é"}
    monkeypatch.setattr(upstream_http, "_json", None)
