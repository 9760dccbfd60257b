"""``req.openai(client)``: the real OpenAI SDK over HTTP to the local server."""

from __future__ import annotations

import asyncio

import openai
import pytest
from integration_helpers import (
    PIPELINE,
    FixedPolicy,
    async_openai_client,
    controller,
    openai_client,
    words,
)

from apportion import AsyncController, BudgetExceeded, NoTokenizer
from apportion.integrations import CONTINUE_PROMPT
from apportion.integrations.openai import (
    AsyncBudgetedOpenAI,
    BudgetedOpenAI,
    budgeted,
    cost,
)
from apportion.testing.openai_server import Reply, prompt_tokens

QUESTION = [{"role": "user", "content": "Count for me, please."}]
MODEL = "gpt-4o-mini"


def test_cut_call_is_extended_and_completed_within_the_ceiling(server, store):
    answer = words(50)
    server.queue(Reply(answer))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        chat = req.openai(openai_client(server))
        assert isinstance(chat, BudgetedOpenAI)
        response = chat.chat.completions.create(
            agent="reasoner", model=MODEL, messages=QUESTION, max_tokens=20
        )
        report = response.apportion
        assert response.choices[0].message.content == answer
        assert response.choices[0].finish_reason == "stop"
        assert [r["max_tokens"] for r in server.requests] == [20, 20, 20]
        assert server.requests[2]["messages"][-2:] == [
            {"role": "assistant", "content": words(40)},
            {"role": "user", "content": CONTINUE_PROMPT},
        ]
        assert (report.calls, report.extensions, report.truncated) == (3, 2, False)
        assert report.output_tokens == 50 == response.usage.completion_tokens
        assert report.input_tokens == sum(prompt_tokens(r["messages"]) for r in server.requests)
        assert report.cost_usd == pytest.approx(
            0.15e-6 * report.input_tokens + 0.6e-6 * report.output_tokens
        )
        summary = req.summary()
        assert summary.agents["reasoner"].consumed == report.input_tokens + 50
        assert summary.reserved == 0 and summary.consumed <= 2_000
    # the report does not leak into the response's JSON
    assert "apportion" not in response.model_dump_json()


def test_no_usage_is_counted_and_marked_estimated(server, store):
    server.queue(Reply("one two three", usage=False))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        response = req.openai(openai_client(server)).chat.completions.create(
            agent="triage", model=MODEL, messages=QUESTION
        )
        assert response.usage is None
        report = response.apportion
        assert report.usage_estimated
        assert (report.input_tokens, report.output_tokens) == (report.sent_input, 3)


def test_server_error_releases_and_reraises(server, store):
    server.queue(Reply(status=500))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        chat = req.openai(openai_client(server))
        with pytest.raises(openai.InternalServerError):
            chat.chat.completions.create(agent="triage", model=MODEL, messages=QUESTION)
        summary = req.summary()
        assert (summary.consumed, summary.reserved, summary.free) == (0, 0, 2_000)


def test_usage_above_the_grant_never_breaks_the_ceiling(server, store):
    server.queue(Reply("x", usage={"prompt_tokens": 20, "completion_tokens": 5_000}))
    ctl = controller(store, FixedPolicy(output=200))
    with ctl.request(ceiling=1_000) as req:
        chat = req.openai(openai_client(server))
        response = chat.chat.completions.create(agent="triage", model=MODEL, messages=QUESTION)
        assert response.apportion.overuse > 0
        summary = req.summary()
        assert summary.consumed == 1_000 and summary.overflow == 5_020 - 1_000
        assert summary.agents["triage"].overuse == response.apportion.overuse
        with pytest.raises(BudgetExceeded):
            chat.chat.completions.create(agent="formatter", model=MODEL, messages=QUESTION)


def test_reasoning_model_gets_max_completion_tokens(server, store):
    ctl = controller(store, FixedPolicy(output=123))
    with ctl.request(ceiling=2_000) as req:
        req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner", model="o4-mini", messages=QUESTION
        )
        sent = server.requests[-1]
        assert sent["max_completion_tokens"] == 123 and "max_tokens" not in sent


def test_unknown_model_is_a_clear_error(server, store):
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        chat = req.openai(openai_client(server))
        with pytest.raises(NoTokenizer):
            chat.chat.completions.create(agent="triage", model="my-local-model", messages=QUESTION)
        assert server.requests == [] and req.summary().agents["triage"].calls == 0
        response = chat.chat.completions.create(
            agent="triage", model="my-local-model", messages=QUESTION, counter="approximate"
        )
        assert response.apportion.cost_usd is None
        assert response.apportion.settled == "finish"


def test_streaming_without_usage_counts_the_text(server, store):
    server.queue(Reply(words(9), usage=False))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        stream = req.openai(openai_client(server)).chat.completions.create(
            agent="triage", model=MODEL, messages=QUESTION, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream)
        assert text == words(9)
        report = stream.report
        assert report.usage_estimated and report.output_tokens == stream.output_tokens == 18
        assert report.input_tokens == report.sent_input
        assert req.summary().agents["triage"].consumed == report.input_tokens + 18


def test_streaming_with_the_callers_own_usage_request_passes_the_usage_chunk(server, store):
    server.queue(Reply(words(5)))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        stream = req.openai(openai_client(server)).chat.completions.create(
            agent="triage",
            model=MODEL,
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
        assert stream.report.output_tokens == 5 and not stream.report.usage_estimated


def test_wrapper_passes_other_attributes_through(server, store):
    client = openai_client(server)
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        chat = budgeted(client, req)
        assert chat.models is client.models
        assert chat.client is client and chat.req is req


def test_sync_client_refuses_an_async_request(server, store):
    ctl = AsyncController(PIPELINE, store=store)

    async def main() -> None:
        async with ctl.request(ceiling=2_000) as req:
            with pytest.raises(TypeError, match="AsyncOpenAI"):
                req.openai(openai_client(server))

    asyncio.run(main())


def test_not_a_client_is_refused(store):
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req, pytest.raises(TypeError, match="not an OpenAI"):
        req.openai(object())


def test_cost_reads_the_map_without_litellm_imported(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "litellm", raising=False)
    assert cost("gpt-4o-mini", 1_000, 1_000) == pytest.approx(0.15e-3 + 0.6e-3)
    assert cost("openai/gpt-4o-mini", 1_000, 0) == pytest.approx(0.15e-3)
    assert cost("no-such-model", 1, 1) is None


# ---------------------------------------------------------------------- async


def test_async_client_extends_and_completes(server, store):
    answer = words(30)
    server.queue(Reply(answer))
    ctl = AsyncController(PIPELINE, policy="elastic", store=store)

    async def main() -> None:
        client = async_openai_client(server)
        async with ctl.request(ceiling=2_000) as req:
            chat = req.openai(client)
            assert isinstance(chat, AsyncBudgetedOpenAI)
            response = await chat.chat.completions.create(
                agent="reasoner", model=MODEL, messages=QUESTION, max_tokens=12
            )
            assert response.choices[0].message.content == answer
            assert response.apportion.extensions == 2
            assert req.summary().reserved == 0
        await client.close()

    asyncio.run(main())


def test_async_client_with_a_sync_request(server, store):
    ctl = controller(store)

    async def main() -> None:
        client = async_openai_client(server)
        with ctl.request(ceiling=2_000) as req:
            response = await req.openai(client).chat.completions.create(
                agent="triage", model=MODEL, messages=QUESTION
            )
            assert response.apportion.settled == "finish"
        await client.close()

    asyncio.run(main())


def test_async_stream_error_settles_what_arrived(server, store):
    server.queue(Reply(words(20), fail_after=4))
    ctl = AsyncController(PIPELINE, policy="elastic", store=store)

    async def main() -> None:
        client = async_openai_client(server)
        async with ctl.request(ceiling=2_000) as req:
            stream = await req.openai(client).chat.completions.create(
                agent="triage", model=MODEL, messages=QUESTION, stream=True
            )
            with pytest.raises(openai.APIError):
                async for _ in stream:
                    pass
            assert stream.report.settled == "finish" and stream.report.truncated
            assert stream.report.output_tokens == stream.output_tokens > 0
            assert req.summary().reserved == 0
        await client.close()

    asyncio.run(main())


def test_async_stream_closed_early_is_settled(server, store):
    server.queue(Reply(words(20)))
    ctl = AsyncController(PIPELINE, policy="elastic", store=store)

    async def main() -> None:
        client = async_openai_client(server)
        async with ctl.request(ceiling=2_000) as req:
            stream = await req.openai(client).chat.completions.create(
                agent="triage", model=MODEL, messages=QUESTION, stream=True
            )
            async with stream:
                await stream.__anext__()
                await stream.__anext__()
            assert stream.report.settled == "finish" and stream.report.truncated
            assert req.summary().reserved == 0
        await client.close()

    asyncio.run(main())


def test_async_error_releases(server, store):
    server.queue(Reply(status=429))
    ctl = AsyncController(PIPELINE, policy="elastic", store=store)

    async def main() -> None:
        client = async_openai_client(server)
        async with ctl.request(ceiling=2_000) as req:
            with pytest.raises(openai.RateLimitError):
                await req.openai(client).chat.completions.create(
                    agent="triage", model=MODEL, messages=QUESTION
                )
            summary = req.summary()
            assert (summary.consumed, summary.reserved) == (0, 0)
        await client.close()

    asyncio.run(main())
