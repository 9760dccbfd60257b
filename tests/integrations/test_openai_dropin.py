"""``req.openai(client, agent=...)`` as a drop-in client, and the public ``req.call`` engine.

Real OpenAI SDK over HTTP to the local server: every call the server sees carries a cap,
and what the ledger settles equals what the server billed (``server.billed``).
"""

from __future__ import annotations

import asyncio
from typing import Any

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
from pydantic import BaseModel, ValidationError

from apportion import AsyncController, InvalidArgument, UnsupportedCall
from apportion.integrations import CONTINUE_PROMPT
from apportion.integrations.openai import BudgetedOpenAI, BudgetedRawResponse
from apportion.testing.openai_server import Reply
from apportion.tokens import counter_for

QUESTION = [{"role": "user", "content": "Count for me, please."}]
MODEL = "gpt-4o-mini"
CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def caps(server: Any) -> list[dict[str, int]]:
    """The cap parameters of every request the server saw."""
    return [{k: r[k] for k in CAPS if k in r} for r in server.requests]


def count(text: str) -> int:
    """``text``'s tokens by apportion's counter of :data:`MODEL` (what it counts a stream by)."""
    return int(counter_for(MODEL).count_text(text))


def billed(server: Any) -> int:
    return sum(p + c for p, c in server.billed)


def settled(req: Any, agent: str) -> int:
    return int(req.summary().agents[agent].consumed)


# ------------------------------------------------------------------ parameters


def test_omit_and_not_given_are_absent(server, store):
    ctl = controller(store, FixedPolicy(output=40))
    with ctl.request(ceiling=2_000) as req:
        chat = req.openai(openai_client(server), agent="triage")
        response = chat.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=openai.omit,
            max_completion_tokens=openai.NOT_GIVEN,
            tools=openai.omit,
            temperature=openai.NOT_GIVEN,
        )
        assert response.apportion.settled == "finish"
        sent = server.requests[-1]
        assert sent["max_tokens"] == 40
        assert not {"tools", "temperature", "max_completion_tokens"} & set(sent)
        assert settled(req, "triage") == billed(server)


def test_the_callers_cap_parameter_name_is_kept(server, store):
    ctl = controller(store, FixedPolicy(output=25))
    with ctl.request(ceiling=2_000) as req:
        chat = req.openai(openai_client(server), agent="triage")
        chat.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=300)
        chat.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=300)
    assert caps(server) == [{"max_completion_tokens": 25}, {"max_tokens": 25}]


def test_a_cap_hidden_in_extra_body_is_read_and_never_sent_over_the_grant(server, store):
    ctl = controller(store, FixedPolicy(output=25))
    with ctl.request(ceiling=2_000) as req:
        chat = req.openai(openai_client(server), agent="triage")
        response = chat.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            extra_body={"max_completion_tokens": 900, "max_tokens": 800, "top_k": 3},
        )
        assert response.apportion.grant.output_tokens == 25
        sent = server.requests[-1]
        assert (sent["max_completion_tokens"], sent["max_tokens"], sent["top_k"]) == (25, 25, 3)
        chat.responses.create(model=MODEL, input="hi", extra_body={"max_output_tokens": 900})
        assert server.requests[-1]["max_output_tokens"] == 25


def test_no_agent_is_a_clear_error_and_a_call_may_name_its_own(server, store):
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        chat = req.openai(openai_client(server))
        with pytest.raises(InvalidArgument, match=r"chat\.completions\.create") as caught:
            chat.chat.completions.create(model=MODEL, messages=QUESTION)
        assert caught.value.argument == "agent"
        assert server.requests == [] and req.summary().reserved == 0
        bound = req.openai(openai_client(server), agent="triage")
        bound.chat.completions.create(model=MODEL, messages=QUESTION, agent="formatter")
        assert "agent" not in server.requests[-1]
        assert settled(req, "formatter") == billed(server) and settled(req, "triage") == 0


def test_an_unbound_client_takes_the_current_agent(server, store):
    """One client held by a framework serves every agent named by ``with req.agent(...)``."""
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        chat = req.openai(openai_client(server))
        with req.agent("reasoner"):
            chat.chat.completions.create(model=MODEL, messages=QUESTION)
        with req.agent("formatter"):
            chat.with_options(max_retries=0).chat.completions.create(model=MODEL, messages=QUESTION)
        assert settled(req, "reasoner") + settled(req, "formatter") == billed(server)
        assert settled(req, "reasoner") > 0 and settled(req, "formatter") > 0


# --------------------------------------------------------------- views of the client


def test_with_options_and_copy_stay_budgeted(server, store):
    server.queue(Reply(words(30)), Reply(words(5)))
    ctl = controller(store, FixedPolicy(output=12, extra=12))
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        retrying = chat.with_options(max_retries=0, timeout=30)
        assert isinstance(retrying, BudgetedOpenAI) and retrying.client is not chat.client
        response = retrying.chat.completions.create(model=MODEL, messages=QUESTION)
        assert response.choices[0].message.content == words(30)
        copied = chat.copy(max_retries=0)
        assert isinstance(copied, BudgetedOpenAI)
        copied.chat.completions.create(model=MODEL, messages=QUESTION)
        assert all(cap for cap in caps(server))
        assert settled(req, "reasoner") == billed(server)
        with chat as entered:  # the client's own context: it closes the client at the end
            assert entered is chat
        assert chat.client.is_closed()


def test_with_raw_response_stays_budgeted_and_parses(server, store):
    answer = words(30)
    server.queue(Reply(answer), Reply(words(4)))
    ctl = controller(store, FixedPolicy(output=12, extra=12))
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        raw = chat.with_raw_response.chat.completions.create(model=MODEL, messages=QUESTION)
        assert isinstance(raw, BudgetedRawResponse)
        assert raw.headers["content-type"] == "application/json"  # the SDK's raw response
        parsed = raw.parse()
        assert parsed.choices[0].message.content == answer  # extended: 12 + 12 + 6
        assert parsed.apportion.calls == 3 and raw.apportion is parsed.apportion
        # the resource-level view (langchain-openai, CrewAI) is budgeted too
        resource = chat.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)
        assert resource.parse().choices[0].message.content == words(4)
        assert all(cap == {"max_tokens": 12} for cap in caps(server))
        assert settled(req, "reasoner") == billed(server)


class Verdict(BaseModel):
    label: str
    score: int


def test_parse_methods_are_budgeted(server, store):
    text = '{"label": "ok", "score": 3}'
    server.queue(Reply(text), Reply(text), Reply(text))
    ctl = controller(store, FixedPolicy(output=50))
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="triage")
        for parse in (
            chat.beta.chat.completions.parse,
            chat.chat.completions.parse,
            chat.beta.chat.completions.with_raw_response.parse,
        ):
            result = parse(model=MODEL, messages=QUESTION, response_format=Verdict)
            result = result.parse() if isinstance(result, BudgetedRawResponse) else result
            assert result.choices[0].message.parsed == Verdict(label="ok", score=3)
            assert result.apportion.settled == "finish"
        assert all("response_format" in r for r in server.requests)
        assert caps(server) == [{"max_tokens": 50}] * 3
        assert settled(req, "triage") == billed(server)


def test_methods_it_cannot_budget_are_refused_and_nothing_is_sent(server, store):
    ctl = controller(store)
    client = openai_client(server)
    with ctl.request(ceiling=2_000) as req:
        chat = req.openai(client, agent="triage")
        calls = [
            ("completions.create", lambda: chat.completions.create(model=MODEL, prompt="hi")),
            ("images.generate", lambda: chat.images.generate(prompt="a cat")),
            (
                "chat.completions.stream",
                lambda: chat.chat.completions.stream(model=MODEL, messages=QUESTION),
            ),
            (
                "beta.chat.completions.stream",
                lambda: chat.beta.chat.completions.stream(model=MODEL, messages=QUESTION),
            ),
            ("responses.stream", lambda: chat.responses.stream(model=MODEL, input="hi")),
            ("post", lambda: chat.post("/chat/completions", body={}, cast_to=object)),
            (
                "completions.create",
                lambda: chat.with_raw_response.completions.create(model=MODEL, prompt="hi"),
            ),
            (
                "audio.speech.create",
                lambda: chat.with_options(max_retries=0).audio.speech.create(
                    model="tts-1", voice="alloy", input="hi"
                ),
            ),
        ]
        for method, make in calls:
            with pytest.raises(UnsupportedCall) as caught:
                make()
            assert caught.value.method == method, method
        assert server.requests == [] and req.summary().reserved == 0
        # what makes no model call is the client's own
        assert chat.models is client.models and chat.base_url == client.base_url
        assert chat.embeddings is client.embeddings and chat._client is client._client


# ---------------------------------------------------------------- the Responses API


def test_responses_create_is_capped_extended_by_previous_response_id_and_settled(server, store):
    answer = words(50)
    server.queue(Reply(answer))
    ctl = controller(store, FixedPolicy(output=20, extra=20))
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        response = chat.responses.create(
            model=MODEL,
            instructions="You count.",
            input="Count to fifty.",
            max_output_tokens=500,
        )
        assert response.output_text == answer and response.status == "completed"
        assert response.id == "resp_3"  # the last: its id chains the whole answer
        assert caps(server) == [{"max_output_tokens": 20}] * 3
        assert [r.get("previous_response_id") for r in server.requests] == [
            None,
            "resp_1",
            "resp_2",
        ]
        assert server.requests[1]["input"] == [{"role": "user", "content": CONTINUE_PROMPT}]
        report = response.apportion
        assert (report.calls, report.extensions, report.truncated) == (3, 2, False)
        assert report.output_tokens == 50 == response.usage.output_tokens
        assert report.input_tokens == sum(p for p, _ in server.billed)
        assert response.usage.input_tokens == report.input_tokens
        assert settled(req, "reasoner") == billed(server)


def test_responses_with_store_false_resend_the_answer_so_far(server, store):
    server.queue(Reply(words(30)))
    ctl = controller(store, FixedPolicy(output=20, extra=20))
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        response = chat.responses.create(
            model=MODEL, input=[{"role": "user", "content": "Count."}], store=False
        )
        assert response.output_text == words(30)
        follow = server.requests[1]
        assert "previous_response_id" not in follow
        assert follow["input"][-2:] == [
            {"role": "assistant", "content": words(20)},
            {"role": "user", "content": CONTINUE_PROMPT},
        ]
        assert settled(req, "reasoner") == billed(server)


def test_a_cut_response_the_budget_cannot_extend_is_settled_truncated(server, store):
    server.queue(Reply(words(30)))
    ctl = controller(store, FixedPolicy(output=10))  # extends by nothing
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        response = chat.responses.create(model=MODEL, input="Count.")
        assert response.status == "incomplete"
        assert response.incomplete_details.reason == "max_output_tokens"
        assert response.apportion.truncated and response.apportion.finish_reason == "length"
        assert req.summary().agents["reasoner"].truncated_calls == 1
        assert settled(req, "reasoner") == billed(server)


# ------------------------------------------------------- streamed Responses answers


def read_as_one(events: list[Any]) -> tuple[str, Any]:
    """The streamed text and the terminal event, checking the events read as one answer."""
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    kinds = [e.type for e in events]
    assert kinds.count("response.created") == 1 and kinds.count("response.output_item.added") == 1
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert sum(k in ("response.completed", "response.incomplete") for k in kinds) == 1
    assert len({e.item_id for e in events if hasattr(e, "item_id")}) == 1
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = [e for e in events if e.type == "response.output_text.done"]
    assert [e.text for e in done] == [text]
    return text, events[-1]


def test_a_streamed_response_is_capped_extended_and_read_as_one_stream(server, store):
    answer = words(50)
    server.queue(Reply(answer))
    ctl = controller(store, FixedPolicy(output=20, extra=20))
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        stream = chat.responses.create(
            model=MODEL, instructions="You count.", input="Count to fifty.", stream=True
        )
        text, last = read_as_one(list(stream))
        assert text == answer == last.response.output_text
        assert last.type == "response.completed" and last.response.id == "resp_3"
        assert caps(server) == [{"max_output_tokens": 20}] * 3
        assert [r.get("previous_response_id") for r in server.requests] == [
            None,
            "resp_1",
            "resp_2",
        ]
        assert "stream_options" not in server.requests[0]  # usage comes in the last event
        report = stream.report
        assert (report.calls, report.extensions, report.truncated) == (3, 2, False)
        assert not report.usage_estimated
        assert last.response.usage.output_tokens == 50 == report.output_tokens
        assert last.response.usage.input_tokens == sum(p for p, _ in server.billed)
        assert settled(req, "reasoner") == billed(server)


def test_a_streamed_response_without_usage_is_counted_and_flagged(server, store):
    server.queue(Reply(words(30), usage=False))
    ctl = controller(store, FixedPolicy(output=20, extra=20))
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        stream = chat.responses.create(model=MODEL, input="Count.", stream=True)
        text, _ = read_as_one(list(stream))
        assert text == words(30)
        assert stream.report.usage_estimated and stream.report.output_tokens > 0
        assert settled(req, "reasoner") >= stream.report.output_tokens


def test_a_streamed_response_the_budget_cannot_extend_ends_incomplete(server, store):
    server.queue(Reply(words(30)))
    ctl = controller(store, FixedPolicy(output=10))  # extends by nothing
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        stream = chat.responses.create(model=MODEL, input="Count.", stream=True)
        text, last = read_as_one(list(stream))
        assert text == words(10) and last.type == "response.incomplete"
        assert stream.report.truncated and stream.report.finish_reason == "length"
        assert settled(req, "reasoner") == billed(server)


def test_a_streamed_response_failing_midway_settles_what_arrived(server, store):
    server.queue(Reply(words(50), fail_after=5), Reply(words(50)))
    server.fail_at(3)  # the second answer's continuation
    ctl = controller(store, FixedPolicy(output=20, extra=20))
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        stream = chat.responses.create(model=MODEL, input="Count.", stream=True)
        with pytest.raises(openai.APIError):
            list(stream)
        report = stream.report
        assert report.truncated and report.usage_estimated  # no usage: counted here
        assert report.output_tokens == stream.output_tokens == count(words(5))
        stream = chat.responses.create(model=MODEL, input="Count.", stream=True)
        with pytest.raises(openai.InternalServerError):
            list(stream)
        assert (stream.report.calls, stream.report.output_tokens) == (1, 20)
        assert stream.report.truncated and req.summary().reserved == 0
        first = report.input_tokens + report.output_tokens
        assert settled(req, "reasoner") == first + billed(server) - sum(server.billed[0])


def test_an_async_streamed_response_through_the_streaming_response_view(server, store):
    server.queue(Reply(words(30)))
    ctl = controller(store, FixedPolicy(output=20, extra=20))

    async def main() -> tuple[str, Any, int]:
        with ctl.request(ceiling=5_000) as req:
            chat = req.openai(async_openai_client(server), agent="reasoner")
            view = chat.responses.with_streaming_response.create(
                model=MODEL, input="Count.", stream=True
            )
            async with view as raw:
                stream = await raw.parse()
                events = [event async for event in stream]
            return *read_as_one(events), settled(req, "reasoner")

    text, last, consumed = asyncio.run(main())
    assert text == words(30) and last.response.output_text == words(30)
    assert caps(server) == [{"max_output_tokens": 20}] * 2
    assert consumed == billed(server)


# ------------------------------------------------------------------ tool calls

CALL = ("lookup", '{"query": "one two three four five six seven eight nine ten"}')


def tool_arguments(result: Any, protocol: str, streamed: bool) -> str:
    """The arguments of the first tool call the caller got (joined, when streamed)."""
    if protocol == "chat" and streamed:
        return "".join(
            c.choices[0].delta.tool_calls[0].function.arguments or ""
            for c in result
            if c.choices and c.choices[0].delta.tool_calls
        )
    if protocol == "chat":
        return str(result.choices[0].message.tool_calls[0].function.arguments)
    if streamed:
        kind = "response.function_call_arguments.delta"
        return "".join(e.delta for e in result if e.type == kind)
    return str(result.output[0].arguments)


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("protocol", ["chat", "responses"])
def test_a_tool_call_cut_at_its_cap_is_never_continued(server, store, protocol, streamed):
    server.queue(Reply(tool_calls=(CALL,)))
    ctl = controller(store, FixedPolicy(output=6, extra=50))  # extending is possible
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        if protocol == "chat":
            create, asked = chat.chat.completions.create, {"messages": QUESTION}
        else:
            create, asked = chat.responses.create, {"input": "Look it up."}
        cut = create(model=MODEL, stream=streamed, **asked)
        arguments = tool_arguments(list(cut) if streamed else cut, protocol, streamed)
        report = cut.report if streamed else cut.apportion
        assert arguments == CALL[1][: len(arguments)] and len(arguments) < len(CALL[1])
        assert (report.calls, report.extensions, report.truncated) == (1, 0, True)
        assert len(server.requests) == 1
        assert settled(req, "reasoner") == billed(server)


# ------------------------------------------------------------ provider errors mid-call


@pytest.mark.parametrize("protocol", ["chat", "responses"])
def test_a_provider_error_releases_the_grant_and_is_re_raised(server, store, protocol):
    server.queue(Reply(status=500))
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        chat = req.openai(openai_client(server), agent="triage")
        with pytest.raises(openai.InternalServerError):
            if protocol == "chat":
                chat.chat.completions.create(model=MODEL, messages=QUESTION)
            else:
                chat.responses.create(model=MODEL, input="hi")
        summary = req.summary()
        assert (summary.consumed, summary.reserved, summary.free) == (0, 0, 2_000)
        assert next(iter(req.calls.values())).status == "released"


def test_an_error_of_the_follow_up_settles_what_the_first_call_billed(server, store):
    server.queue(Reply(words(30)))
    server.fail_at(2)
    ctl = controller(store, FixedPolicy(output=10, extra=10))
    with ctl.request(ceiling=2_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        with pytest.raises(openai.InternalServerError):
            chat.responses.create(model=MODEL, input="Count.")
        record = next(iter(req.calls.values()))
        assert record.status == "cut" and record.output_used == 10
        assert settled(req, "reasoner") == billed(server) and req.summary().reserved == 0


# -------------------------------------------------------------------------- async


def test_async_views_stay_budgeted(server, store):
    server.queue(Reply(words(8)), Reply(words(8)), Reply(words(8)))
    ctl = AsyncController(PIPELINE, policy=FixedPolicy(output=30), store=store)

    async def main() -> None:
        async with ctl.request(ceiling=5_000) as req:
            chat = req.openai(async_openai_client(server), agent="triage")
            retrying = chat.with_options(max_retries=0)
            first = await retrying.chat.completions.create(model=MODEL, messages=QUESTION)
            assert first.apportion.settled == "finish"
            raw = await chat.responses.with_raw_response.create(model=MODEL, input="hi")
            assert raw.parse().output_text == words(8)
            async with chat.responses.with_streaming_response.create(
                model=MODEL, input="hi"
            ) as streamed:
                result = await streamed.parse()
            assert result.output_text == words(8) and result.apportion.settled == "finish"
            assert caps(server) == [
                {"max_tokens": 30},
                {"max_output_tokens": 30},
                {"max_output_tokens": 30},
            ]
            assert req.summary().agents["triage"].consumed == billed(server)

    asyncio.run(main())


def test_sync_with_streaming_response_makes_the_call_on_entering(server, store):
    ctl = controller(store, FixedPolicy(output=30))
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="triage")
        context = chat.chat.completions.with_streaming_response.create(
            model=MODEL, messages=QUESTION
        )
        assert server.requests == []
        with context as response:
            assert response.parse().apportion.settled == "finish"
        assert caps(server) == [{"max_tokens": 30}]
        assert settled(req, "triage") == billed(server)


# --------------------------------------------------------------- the public engine


def test_req_call_budgets_a_framework_s_own_send_function(server, store):
    client = openai_client(server)
    seen: list[dict[str, Any]] = []

    def send(**params: Any) -> Any:  # a framework's own one-call function
        seen.append(params)
        return client.chat.completions.create(**params)

    server.queue(Reply(words(25)))
    ctl = controller(store, FixedPolicy(output=10, extra=10))
    with ctl.request(ceiling=5_000) as req:
        response = req.call(
            "reasoner",
            QUESTION,
            send=send,
            model=MODEL,
            max_completion_tokens=100,
            temperature=0.0,
        )
        assert response.choices[0].message.content == words(25)
        assert [p["max_completion_tokens"] for p in seen] == [10, 10, 10]
        assert all(p["temperature"] == 0.0 and "max_tokens" not in p for p in seen)
        assert settled(req, "reasoner") == billed(server)
        with pytest.raises(InvalidArgument, match="send"):
            req.call("triage", QUESTION, send=None, model=MODEL)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="protocol"):
            req.call("triage", QUESTION, send=send, model=MODEL, protocol="grpc")
        with pytest.raises(InvalidArgument, match="fit"):
            req.call("triage", QUESTION, send=send, model=MODEL, fit="newest")
        assert len(seen) == 3 and req.summary().agents["triage"].calls == 0


def test_async_req_call_with_the_responses_protocol(server, store):
    ctl = AsyncController(PIPELINE, policy=FixedPolicy(output=15), store=store)

    async def main() -> None:
        client = async_openai_client(server)
        async with ctl.request(ceiling=5_000) as req:
            response = await req.call(
                "triage",
                "Say hi.",
                send=client.responses.create,
                model=MODEL,
                protocol="responses",
            )
            assert response.apportion.settled == "finish"
            assert server.requests[0]["input"] == [{"role": "user", "content": "Say hi."}]
            assert caps(server) == [{"max_output_tokens": 15}]
            assert req.summary().agents["triage"].consumed == billed(server)

    asyncio.run(main())


def test_responses_input_with_tool_items_is_fitted_keeping_calls_with_outputs(server, store):
    turn = [
        {"role": "user", "content": words(40, "q")},
        {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": words(40, "r")},
    ]
    last = [
        {"role": "user", "content": "And now?"},
        {"type": "function_call", "call_id": "c9", "name": "look", "arguments": "{}"},
        {"type": "function_call", "call_id": "c8", "name": "find", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c9", "output": "nine"},
        {"type": "function_call_output", "call_id": "c8", "output": "eight"},
    ]
    ctl = controller(store, FixedPolicy(context=250, output=20))
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        response = chat.responses.create(
            model=MODEL, instructions="Be brief.", input=turn * 6 + last
        )
        report = response.apportion
        assert report.input_cut and report.dropped_messages > 0
        sent = server.requests[0]
        assert sent["instructions"] == "Be brief." and sent["input"][-5:] == last
        calls = {i["call_id"] for i in sent["input"] if i.get("type") == "function_call"}
        outputs = {i["call_id"] for i in sent["input"] if i.get("type") == "function_call_output"}
        assert calls == outputs and "_apportion_items" not in str(sent)
        assert settled(req, "reasoner") == billed(server)


def test_a_raw_stream_is_a_budgeted_stream(server, store):
    server.queue(Reply(words(6)))
    ctl = controller(store, FixedPolicy(output=30))
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="triage")
        raw = chat.chat.completions.with_raw_response.create(
            model=MODEL, messages=QUESTION, stream=True
        )
        stream = raw.parse()
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == words(6) and stream.report.settled == "finish"
        assert caps(server) == [{"max_tokens": 30}]
        assert settled(req, "triage") == billed(server)


def test_bad_agent_and_missing_arguments_are_refused_before_sending(server, store):
    ctl = controller(store)
    with ctl.request(ceiling=2_000) as req:
        with pytest.raises(InvalidArgument, match="agent"):
            req.openai(openai_client(server), agent=5)  # type: ignore[arg-type]
        chat = req.openai(openai_client(server), agent="triage")
        with pytest.raises(InvalidArgument, match="input"):
            chat.responses.create(model=MODEL)
        with pytest.raises(InvalidArgument, match="model"):
            chat.chat.completions.create(messages=QUESTION)
        with pytest.raises(InvalidArgument, match="input"):
            chat.responses.create(model=MODEL, input=42)
        assert server.requests == [] and req.summary().reserved == 0


def test_a_structured_answer_cut_at_its_cap_is_settled_not_continued(server, store):
    long_json = '{"label": "' + words(40) + '", "score": 3}'
    server.queue(Reply(long_json), Reply(long_json), Reply(long_json))
    ctl = controller(store, FixedPolicy(output=10, extra=10))
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        with pytest.raises(openai.LengthFinishReasonError):
            chat.beta.chat.completions.parse(
                model=MODEL, messages=QUESTION, response_format=Verdict
            )
        raw = chat.chat.completions.with_raw_response.parse(
            model=MODEL, messages=QUESTION, response_format=Verdict
        )
        assert raw.apportion.truncated and raw.apportion.calls == 1
        with pytest.raises(openai.LengthFinishReasonError):
            raw.parse()
        with pytest.raises(ValidationError):  # the SDK cannot read the cut JSON
            chat.responses.parse(model=MODEL, input="Judge.", text_format=Verdict)
        assert len(server.requests) == 3  # a JSON answer is never continued
        assert [r.status for r in req.calls.values()] == ["cut"] * 3
        assert settled(req, "reasoner") == billed(server) and req.summary().reserved == 0
