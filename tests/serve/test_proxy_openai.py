"""The official OpenAI client pointed at the gateway (uvicorn on a loopback port).

The gateway forwards through LiteLLM to the local OpenAI-protocol server: the client only
changes its ``base_url`` and adds the ``Apportion-*`` headers.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import proxy_helpers
import pytest
from proxy_helpers import (
    ACME,
    MODEL,
    TENANT_KEYS,
    billed,
    budget_headers,
    proxy_app,
    words,
)

from apportion.testing.openai_server import OpenAIServer, Reply
from conftest import LiveServer
from policy_helpers import FixedPolicy, NoMore

EIGHT = "one two three four five six seven eight"
QUESTION = [{"role": "user", "content": "Count for me, please."}]


@pytest.fixture(autouse=True, params=["litellm", "direct"])
def sender(request, monkeypatch):
    """Every test runs with both senders: LiteLLM (the default) and the OpenAI SDK."""
    monkeypatch.setitem(proxy_helpers.SENDER, "direct", request.param == "direct")
    return request.param


@pytest.fixture
def server():
    with OpenAIServer(default=EIGHT) as running:
        yield running


def client(url: str, headers: dict[str, str], tenant: str = "acme") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=url, api_key=TENANT_KEYS[tenant], default_headers=headers, max_retries=0
    )


def summary(gateway: Any, request_id: str) -> Any:
    return asyncio.run(gateway.summary(ACME, request_id))


def test_chat_through_the_gateway_is_capped_extended_and_reported(server):
    app, gateway = proxy_app(server, FixedPolicy(output=5, extra=5))
    with LiveServer(app) as served:
        chat = client(f"{served.url}/v1", budget_headers("oa-1", "writer", 1_000))
        raw = chat.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)
        response = raw.parse()
    assert response.choices[0].message.content == EIGHT
    assert [r["max_tokens"] for r in server.requests] == [5, 5]
    after = summary(gateway, "oa-1")
    assert raw.headers["Apportion-Status"] == "completed"
    assert int(raw.headers["Apportion-Used"]) == billed(server) == after.consumed
    assert int(raw.headers["Apportion-Remaining"]) == after.free
    assert response.usage is not None and response.usage.total_tokens == billed(server)


def test_streams_of_chat_and_responses_settle(server):
    app, gateway = proxy_app(server, FixedPolicy(output=30))
    with LiveServer(app) as served:
        oa = client(f"{served.url}/v1", budget_headers("oa-2", "planner", 2_000))
        pieces = [
            chunk.choices[0].delta.content or ""
            for chunk in oa.chat.completions.create(model=MODEL, messages=QUESTION, stream=True)
            if chunk.choices
        ]
        events = list(oa.responses.create(model=MODEL, input="Count, please.", stream=True))
        plain = oa.responses.create(model=MODEL, input="Count, please.")
    assert "".join(pieces) == EIGHT
    assert events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == EIGHT
    assert plain.output_text == EIGHT
    assert server.requests[1]["max_output_tokens"] == 30
    after = summary(gateway, "oa-2")
    assert after.consumed == billed(server) and after.reserved == 0
    assert after.agents["planner"].calls == 3


def test_a_refused_budget_raises_the_clients_status_error(server):
    app, _gateway = proxy_app(server, NoMore())
    with LiveServer(app) as served:
        oa = client(f"{served.url}/v1", budget_headers("oa-3", "writer", 100))
        with pytest.raises(openai.APIStatusError) as caught:
            oa.chat.completions.create(model=MODEL, messages=QUESTION)
    assert caught.value.status_code == 402
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "budget_exceeded" and body["agent"] == "writer"
    assert body["available"] == 100
    assert server.requests == []


def test_missing_headers_are_refused(server):
    app, _gateway = proxy_app(server)
    with LiveServer(app) as served:
        oa = client(f"{served.url}/v1", {})
        with pytest.raises(openai.BadRequestError) as caught:
            oa.chat.completions.create(model=MODEL, messages=QUESTION)
    assert caught.value.code == "budget_headers_missing"
    assert server.requests == []


def test_a_downstream_service_draws_a_child_budget_from_a_token(server):
    app, gateway = proxy_app(server, FixedPolicy(output=20))
    with LiveServer(app) as served:
        upstream_service = client(f"{served.url}/v1", budget_headers("oa-4", "planner", 1_000))
        raw = upstream_service.chat.completions.with_raw_response.create(
            model=MODEL, messages=QUESTION
        )
        token = raw.headers["Apportion-Budget-Token"]
        downstream = client(
            f"{served.url}/v1", {"Apportion-Budget-Token": token, "Apportion-Agent": "writer"}
        )
        opened = downstream.chat.completions.with_raw_response.create(
            model=MODEL, messages=QUESTION
        )
        with pytest.raises(openai.PermissionDeniedError) as replay:
            downstream.chat.completions.create(model=MODEL, messages=QUESTION)
    child_id = opened.headers["Apportion-Request"]
    assert child_id.startswith("oa-4::pass-")
    assert replay.value.code == "budget_token_replayed"
    asyncio.run(gateway.close(ACME, child_id))
    parent = summary(gateway, "oa-4")
    assert parent.consumed == billed(server) and parent.reserved == 0


def test_the_ceiling_holds_across_agents_calling_at_once(server):
    server.default = Reply(words(80))
    app, gateway = proxy_app(server, "elastic")
    ceiling = 900
    with LiveServer(app) as served:
        opener = client(f"{served.url}/v1", budget_headers("oa-5", "planner", ceiling))
        opener.chat.completions.create(model=MODEL, messages=QUESTION)

        def call(i: int) -> tuple[int, str]:
            agent = ("planner", "writer", "checker")[i % 3]
            oa = client(f"{served.url}/v1", budget_headers("oa-5", agent))
            messages = [{"role": "user", "content": words(40, f"q{i}")}]
            try:
                if i % 2:
                    for _ in oa.chat.completions.create(
                        model=MODEL, messages=messages, stream=True
                    ):
                        pass
                else:
                    oa.chat.completions.create(model=MODEL, messages=messages)
            except openai.APIStatusError as error:
                return error.status_code, str(getattr(error, "code", ""))
            return 200, ""

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(call, range(24)))
    # refused once the budget runs out: no grant left (402), or too little to fit the input
    assert set(statuses) <= {(200, ""), (402, "budget_exceeded"), (400, "input_too_large")}
    assert (402, "budget_exceeded") in statuses and (200, "") in statuses
    after = summary(gateway, "oa-5")
    assert billed(server) <= ceiling
    assert after.consumed == billed(server) and after.reserved == 0


def test_a_client_hanging_up_mid_stream_settles_the_grant(server):
    import threading

    import httpx

    server.default = Reply(" ".join(["word"] * 3_000))  # one token each, both counts
    app, gateway = proxy_app(server, FixedPolicy(output=3_000))
    with LiveServer(app) as served:
        headers = {
            **budget_headers("oa-6", "writer", 20_000),
            "Authorization": f"Bearer {TENANT_KEYS['acme']}",
        }
        body = {"model": MODEL, "messages": QUESTION, "stream": True}
        with httpx.stream(
            "POST", f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=60
        ) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # one event, then hang up
        after = summary(gateway, "oa-6")
        wait = threading.Event()
        for _ in range(300):  # the gateway notices the hang-up shortly: poll, bounded
            if after.reserved == 0:
                break
            wait.wait(0.05)
            after = summary(gateway, "oa-6")
    assert after.reserved == 0
    assert 0 < after.consumed <= billed(server)
    assert after.agents["writer"].truncated_calls == 1  # settled as cut: it did not end


def test_a_stream_asking_for_usage_gets_one_usage_chunk_for_the_whole_answer(server):
    app, gateway = proxy_app(server, FixedPolicy(output=5, extra=5))
    with LiveServer(app) as served:
        oa = client(f"{served.url}/v1", budget_headers("oa-7", "writer", 1_000))
        chunks = list(
            oa.chat.completions.create(
                model=MODEL,
                messages=QUESTION,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1].usage is usage[0]  # last, once, for both calls
    assert usage[0].total_tokens == billed(server) == summary(gateway, "oa-7").consumed
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == EIGHT
    assert len(server.requests) == 2
