"""Streamed answers: usage asked for, counted when missing, a cut stream extended as one.

Real clients (the OpenAI SDK, LiteLLM) stream over HTTP from the local OpenAI-protocol
server, which cuts a streamed answer at ``max_tokens`` with ``finish_reason: "length"``
and serves its rest to a "continue" follow-up, billing each call as a provider would.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import openai
import pytest
from integration_helpers import (
    PIPELINE,
    FixedPolicy,
    async_openai_client,
    controller,
    litellm_args,
    openai_client,
    words,
)

from apportion import AsyncController
from apportion.integrations import CONTINUE_PROMPT
from apportion.testing.openai_server import OpenAIServer, Reply, prompt_tokens
from apportion.tokens.counting import counter_for

QUESTION = [{"role": "user", "content": "Count for me, please."}]
MODEL = "gpt-4o-mini"


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def reasons(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def check_capped(server: OpenAIServer) -> None:
    """Every call the server saw carried a cap and asked for usage."""
    for sent in server.requests:
        assert isinstance(sent.get("max_tokens", sent.get("max_completion_tokens")), int)
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_cut_stream_is_extended_and_read_as_one_stream(server, store):
    answer = words(50)
    server.queue(Reply(answer))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        stream = req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner", model=MODEL, messages=QUESTION, max_tokens=20, stream=True
        )
        chunks = list(stream)
        assert text_of(chunks) == answer
        assert reasons(chunks) == ["stop"]  # one finish reason, at the end
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert all(c.usage is None for c in chunks)  # the usage we asked for is kept back
        assert len({c.id for c in chunks}) == 1
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.role) == 1
        check_capped(server)
        assert [r["max_tokens"] for r in server.requests] == [20, 20, 20]
        assert server.requests[2]["messages"][-2:] == [
            {"role": "assistant", "content": words(40)},
            {"role": "user", "content": CONTINUE_PROMPT},
        ]
        report = stream.report
        assert (report.calls, report.extensions, report.truncated) == (3, 2, False)
        assert report.finish_reason == "stop" and not report.usage_estimated
        prompt = sum(prompt_tokens(r["messages"]) for r in server.requests)
        assert (report.input_tokens, report.output_tokens) == (prompt, 50)
        summary = req.summary()
        assert summary.agents["reasoner"].consumed == sum(map(sum, server.billed))
        assert summary.reserved == 0 and summary.consumed <= 2_000


def test_the_callers_usage_chunk_sums_every_call(server, store):
    answer = words(30)
    server.queue(Reply(answer))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        stream = req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner",
            model=MODEL,
            messages=QUESTION,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert text_of(chunks) == answer and reasons(chunks) == ["stop"]
        usage = [c for c in chunks if c.usage is not None]
        assert usage == [chunks[-1]] and chunks[-1].choices == []
        prompt = sum(prompt_tokens(r["messages"]) for r in server.requests)
        assert len(server.requests) == 3
        assert (usage[0].usage.prompt_tokens, usage[0].usage.completion_tokens) == (prompt, 30)
        assert usage[0].usage.total_tokens == prompt + 30
        assert stream.report.output_tokens == 30


def test_cut_stream_without_usage_is_counted_and_flagged_estimated(server, store):
    answer = words(30)
    server.queue(Reply(answer, usage=False))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        stream = req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner", model=MODEL, messages=QUESTION, max_tokens=12, stream=True
        )
        chunks = list(stream)
        assert text_of(chunks) == answer and reasons(chunks) == ["stop"]
        report = stream.report
        assert report.calls == 3 and report.usage_estimated
        assert report.output_tokens == stream.output_tokens == counter_for(MODEL).count_text(answer)
        record = req.calls[report.grant.grant_id]
        assert record.notes["usage_estimated"] is True
        assert record.output_used == report.output_tokens


def test_reported_zero_output_beside_streamed_text_is_counted(server, store):
    server.queue(Reply(words(5), usage={"completion_tokens": 0}))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        stream = req.openai(openai_client(server)).chat.completions.create(
            agent="triage", model=MODEL, messages=QUESTION, stream=True
        )
        assert text_of(list(stream)) == words(5)
        report = stream.report
        assert report.usage_estimated and report.output_tokens == stream.output_tokens > 0
        assert req.calls[report.grant.grant_id].output_used == report.output_tokens


def test_a_refused_extension_ends_the_stream_on_length(server, store):
    server.queue(Reply(words(30)))
    ctl = controller(store, FixedPolicy(output=10, extra=0))
    with ctl.request(ceiling=2_000) as req:
        stream = req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner", model=MODEL, messages=QUESTION, stream=True
        )
        chunks = list(stream)
        assert text_of(chunks) == words(10) and reasons(chunks) == ["length"]
        assert len(server.requests) == 1
        report = stream.report
        assert (report.calls, report.extensions, report.truncated) == (1, 0, True)
        assert req.calls[report.grant.grant_id].status == "cut"  # refused, nothing concluded it


def test_max_extensions_zero_leaves_a_cut_stream_cut(server, store):
    server.queue(Reply(words(30)))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        stream = req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner",
            model=MODEL,
            messages=QUESTION,
            max_tokens=10,
            max_extensions=0,
            stream=True,
        )
        assert reasons(list(stream)) == ["length"] and stream.report.truncated
        assert len(server.requests) == 1


def test_an_error_in_the_continuation_settles_what_every_call_streamed(server, store):
    server.queue(Reply(words(30)))
    server.fail_at(2)
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        stream = req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner", model=MODEL, messages=QUESTION, max_tokens=10, stream=True
        )
        seen = []
        with pytest.raises(openai.InternalServerError):
            for chunk in stream:
                seen.append(chunk)
        assert text_of(seen) == words(10) and reasons(seen) == []
        report = stream.report
        assert report.settled == "finish" and report.truncated and report.extensions == 1
        first = prompt_tokens(server.requests[0]["messages"])
        assert (report.input_tokens, report.output_tokens) == (first, 10)
        summary = req.summary()
        assert server.billed == [(first, 10)]  # the failed follow-up billed nothing
        assert summary.reserved == 0 and summary.agents["reasoner"].consumed == first + 10


def test_closing_during_the_continuation_settles_what_arrived(server, store):
    server.queue(Reply(words(30)))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        with req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner", model=MODEL, messages=QUESTION, max_tokens=10, stream=True
        ) as stream:
            seen = ""
            for chunk in stream:
                seen += chunk.choices[0].delta.content or ""
                if seen.endswith("w12"):
                    break
        report = stream.report
        assert report.settled == "finish" and report.truncated and report.calls == 2
        assert report.output_tokens >= 10 and req.summary().reserved == 0


def test_a_stream_of_several_choices_is_not_extended(server, store):
    server.queue(Reply(words(20)))
    ctl = controller(store)
    with ctl.request(ceiling=4_000) as req:
        stream = req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner", model=MODEL, messages=QUESTION, max_tokens=20, n=2, stream=True
        )
        chunks = list(stream)
        assert len(server.requests) == 1 and stream.report.truncated
        ends = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
        assert sorted((e.index, e.finish_reason) for e in ends) == [(0, "length"), (1, "length")]


def test_litellm_cut_stream_is_extended_and_read_as_one_stream(server, store):
    answer = words(30)
    server.queue(Reply(answer))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stream = req.completion(
            "reasoner",
            messages=QUESTION,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            **litellm_args(server),
        )
        chunks = list(stream)
        assert text_of(chunks) == answer
        assert reasons(chunks) == ["stop"]
        check_capped(server)
        report = stream.report
        assert (report.calls, report.extensions, report.truncated) == (3, 2, False)
        prompt = sum(prompt_tokens(r["messages"]) for r in server.requests)
        assert (report.input_tokens, report.output_tokens) == (prompt, 30)
        usage = [c.usage for c in chunks if getattr(c, "usage", None) is not None]
        assert [(u.prompt_tokens, u.completion_tokens) for u in usage] == [(prompt, 30)]
        assert req.summary().agents["reasoner"].consumed == sum(map(sum, server.billed))


def test_async_cut_stream_is_extended_and_read_as_one_stream(server, store):
    answer = words(50)
    server.queue(Reply(answer))
    ctl = AsyncController(PIPELINE, policy="elastic", store=store)

    async def main() -> None:
        client = async_openai_client(server)
        async with ctl.request(ceiling=2_000) as req:
            stream = await req.openai(client).chat.completions.create(
                agent="reasoner",
                model=MODEL,
                messages=QUESTION,
                max_tokens=20,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            assert text_of(chunks) == answer and reasons(chunks) == ["stop"]
            assert [c for c in chunks if c.usage is not None] == [chunks[-1]]
            prompt = sum(prompt_tokens(r["messages"]) for r in server.requests)
            assert chunks[-1].usage.completion_tokens == 50
            assert chunks[-1].usage.prompt_tokens == prompt
            assert [r["max_tokens"] for r in server.requests] == [20, 20, 20]
            report = stream.report
            assert (report.calls, report.extensions, report.truncated) == (3, 2, False)
            assert req.summary().agents["reasoner"].consumed == sum(map(sum, server.billed))
        await client.close()

    asyncio.run(main())


def test_async_error_in_the_continuation_settles_and_reraises(server, store):
    server.queue(Reply(words(30)))
    server.fail_at(2, status=429)
    ctl = AsyncController(PIPELINE, policy="elastic", store=store)

    async def main() -> None:
        client = async_openai_client(server)
        async with ctl.request(ceiling=2_000) as req:
            stream = await req.openai(client).chat.completions.create(
                agent="reasoner", model=MODEL, messages=QUESTION, max_tokens=10, stream=True
            )
            seen = []
            with pytest.raises(openai.RateLimitError):
                async for chunk in stream:
                    seen.append(chunk)
            assert text_of(seen) == words(10)
            assert stream.report.settled == "finish" and stream.report.truncated
            assert stream.report.output_tokens == 10 and req.summary().reserved == 0
        await client.close()

    asyncio.run(main())


def test_an_estimated_stream_is_flagged_in_the_sql_telemetry(server, tmp_path):
    from apportion import Controller
    from apportion.telemetry import flush
    from apportion.telemetry.sql import open_database

    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    server.queue(Reply(words(30), usage=False), Reply(words(3)))
    ctl = Controller(PIPELINE, policy="elastic", telemetry=url)
    with ctl.request(ceiling=2_000) as req:
        chat = req.openai(openai_client(server))
        counted = chat.chat.completions.create(
            agent="reasoner", model=MODEL, messages=QUESTION, max_tokens=12, stream=True
        )
        list(counted)
        reported = chat.chat.completions.create(
            agent="formatter", model=MODEL, messages=QUESTION, stream=True
        )
        list(reported)
    assert flush(30)
    with open_database(url) as db:
        calls = {c.agent: c for c in db.load().calls}
    assert calls["reasoner"].estimated is True and calls["reasoner"].extensions == 2
    assert calls["reasoner"].used_output == counted.report.output_tokens
    assert calls["formatter"].estimated is False and calls["formatter"].used_output == 3


def test_a_streamed_tool_call_cut_at_its_cap_is_not_continued():
    from types import SimpleNamespace as NS

    from apportion.integrations.streams import ChatTally

    tally = ChatTally(counter_for(MODEL))
    call = NS(function=NS(name="lookup", arguments='{"id": 4'))
    delta = NS(content=None, role=None, tool_calls=[call])
    tally.add(NS(choices=[NS(index=0, delta=delta, finish_reason="length")], usage=None))
    assert tally.finish_reason == "length" and not tally.continuable(1)


def test_async_closing_during_the_continuation_settles_what_arrived(server, store):
    server.queue(Reply(words(30)))
    ctl = AsyncController(PIPELINE, policy="elastic", store=store)

    async def main() -> None:
        client = async_openai_client(server)
        async with ctl.request(ceiling=2_000) as req:
            stream = await req.openai(client).chat.completions.create(
                agent="reasoner", model=MODEL, messages=QUESTION, max_tokens=10, stream=True
            )
            async with stream:
                seen = ""
                async for chunk in stream:
                    seen += chunk.choices[0].delta.content or ""
                    if seen.endswith("w12"):
                        break
            report = stream.report
            assert report.settled == "finish" and report.truncated and report.calls == 2
            assert report.output_tokens >= 10 and req.summary().reserved == 0
        await client.close()

    asyncio.run(main())


def test_glue_that_read_a_stream_without_usage_is_not_settled_as_zero(server, store):
    from apportion import UsageWarning

    server.queue(Reply(words(40)))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        grant = req.begin("reasoner", 50, 100, model=MODEL)
        raw = openai_client(server).chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=grant.output_tokens, stream=True
        )
        chunks = list(raw)  # a stream not asked for usage: it reports none
        assert all(c.usage is None for c in chunks) and server.billed[0][1] == 40
        with pytest.warns(UsageWarning, match="0 output tokens"):
            req.finish(grant, input_tokens=50, output_tokens=0, text=text_of(chunks))
        record = req.calls[grant.grant_id]
        assert record.output_used == counter_for(MODEL).count_text(words(40)) > 0
        assert record.notes["usage_estimated"] is True


def test_a_stream_dropped_unread_is_released_by_the_close_quietly(server, store, monkeypatch):
    import gc
    import sys

    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        stream = req.openai(openai_client(server)).chat.completions.create(
            agent="reasoner", model=MODEL, messages=QUESTION, stream=True
        )
        del stream
        gc.collect()
        assert req.summary().reserved > 0  # its grant is held until the close
    assert unraisable == []  # no "generator ignored GeneratorExit"
    assert req.summary().reserved == 0
