"""``req.completion`` / ``req.acompletion``: real LiteLLM client code, no outside network.

Two paths: LiteLLM's ``mock_response`` (no HTTP at all), and real HTTP calls to the local
OpenAI-protocol server through LiteLLM's ``openai/`` route.
"""

from __future__ import annotations

import asyncio
import sys

import litellm
import pytest
from integration_helpers import MODEL, PIPELINE, FixedPolicy, controller, litellm_args, words

from apportion import (
    AsyncController,
    BudgetExceeded,
    Controller,
    InputTooLarge,
    MissingExtra,
    NoTokenizer,
)
from apportion.integrations import CONTINUE_PROMPT, report_of
from apportion.testing.openai_server import Reply, prompt_tokens

QUESTION = [{"role": "user", "content": "Count for me, please."}]


def events(ctl: Controller, req: object, kind: str | None = None) -> list[object]:
    found = ctl.store.events(req.request_id)  # type: ignore[attr-defined]
    return [e for e in found if kind is None or e.kind == kind]


# ------------------------------------------------------------------ mock_response


def test_mock_response_call_is_granted_capped_and_settled(store):
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        response = req.completion(
            "triage", model="gpt-4o-mini", messages=QUESTION, mock_response="Three items."
        )
        report = report_of(response)
        assert response.choices[0].message.content == "Three items."
        assert report is response.apportion
        assert report.settled == "finish" and report.calls == 1 and report.extensions == 0
        assert report.counted_input > 0 and report.sent_input == report.counted_input
        # LiteLLM's mock reports its own usage: that is what is settled
        assert (report.input_tokens, report.output_tokens) == (
            response.usage.prompt_tokens,
            response.usage.completion_tokens,
        )
        assert report.usage_estimated is False
        assert report.cost_usd == pytest.approx(
            sum(litellm.cost_per_token("gpt-4o-mini", report.input_tokens, report.output_tokens))
        )
        summary = req.summary()
        assert summary.agents["triage"].consumed == report.input_tokens + report.output_tokens
        assert summary.reserved == 0
    # the report is no part of the response's serialization
    assert "apportion" not in response.model_dump()


def test_mock_response_usage_above_the_grant_is_recorded_and_the_ceiling_holds(store):
    ctl = controller(store, FixedPolicy(output=50))
    mocked = {
        "choices": [{"message": {"role": "assistant", "content": "long"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 900, "total_tokens": 910},
    }
    with ctl.request(ceiling=600) as req:
        response = req.completion(
            "triage", model="gpt-4o-mini", messages=QUESTION, mock_response=mocked
        )
        report = response.apportion
        assert report.output_tokens == 900
        assert report.overuse == 910 - report.grant.total
        summary = req.summary()
        assert summary.agents["triage"].overuse == report.overuse
        assert summary.consumed == 600 and summary.overflow == 310
        # nothing is left: the next agent is refused instead of breaking the ceiling
        with pytest.raises(BudgetExceeded):
            req.completion("formatter", model="gpt-4o-mini", messages=QUESTION, mock_response="x")
        assert req.summary().consumed <= 600


def test_mock_response_error_releases_the_grant_and_reraises(store):
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        with pytest.raises(litellm.RateLimitError):
            req.completion(
                "triage",
                model="gpt-4o-mini",
                messages=QUESTION,
                mock_response="litellm.RateLimitError",
            )
        summary = req.summary()
        assert (summary.consumed, summary.reserved, summary.free) == (0, 0, 5_000)
        assert [e.kind for e in events(ctl, req)] == ["open", "begin", "release"]


def test_unknown_model_is_a_clear_error_and_reserves_nothing(store):
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        with pytest.raises(NoTokenizer) as caught:
            req.completion(
                "triage", model="no-such-model-xyz", messages=QUESTION, mock_response="x"
            )
        assert caught.value.model == "no-such-model-xyz"
        assert "counter='approximate'" in str(caught.value)
        assert req.summary().agents["triage"].calls == 0
        # asked for by name, the approximate counter goes on; the cost is then unknown
        response = req.completion(
            "triage",
            model="no-such-model-xyz",
            messages=QUESTION,
            mock_response="ok",
            counter="approximate",
            custom_llm_provider="openai",
        )
        assert response.apportion.cost_usd is None
        assert response.apportion.settled == "finish"


def test_messages_that_cannot_fit_say_what_the_irreducible_part_needs(store):
    # the request cannot afford the irreducible part, and 10 tokens cannot hold even the
    # shortened messages (a token of head and tail each, and the marker)
    ctl = controller(store, FixedPolicy(context=10, output=100))
    big = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": words(400)},
    ]
    with ctl.request(ceiling=300) as req:
        with pytest.raises(InputTooLarge) as caught:
            req.completion("reasoner", model="gpt-4o-mini", messages=big, mock_response="x")
        error = caught.value
        assert error.available == 10 and error.agent == "reasoner"
        assert error.required > 400  # the system prompt and the last user turn, counted
        summary = req.summary()
        assert (summary.consumed, summary.reserved) == (0, 0)  # the grant was released


def test_missing_litellm_names_the_extra(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "litellm", None)
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req, pytest.raises(MissingExtra) as caught:
        req.completion("triage", model="gpt-4o-mini", messages=QUESTION)
    assert caught.value.extra == "litellm"


def test_mock_response_streams_count_and_settle(store):
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        stream = req.completion(
            "triage",
            model="gpt-4o-mini",
            messages=QUESTION,
            mock_response="one two three four",
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "one two three four"
        assert stream.report.settled == "finish"
        assert stream.output_tokens >= 4
        assert req.summary().reserved == 0
        assert req.summary().agents["triage"].consumed > 0


# ------------------------------------------------------------ the local server


def test_cut_call_is_extended_and_completed_within_the_ceiling(server, store):
    answer = words(60)
    server.queue(Reply(answer))
    ctl = controller(store)
    with ctl.request(ceiling=3_000) as req:
        response = req.completion(
            "reasoner", messages=QUESTION, max_tokens=25, **litellm_args(server)
        )
        report = response.apportion
        # the whole answer, in three calls of at most 25 tokens each
        assert response.choices[0].message.content == answer
        assert response.choices[0].finish_reason == "stop"
        assert [r["max_tokens"] for r in server.requests] == [25, 25, 25]
        follow_up = server.requests[1]["messages"]
        assert follow_up[-2] == {"role": "assistant", "content": words(25)}
        assert follow_up[-1] == {"role": "user", "content": CONTINUE_PROMPT}
        assert (report.calls, report.extensions, report.truncated) == (3, 2, False)
        # settled once, with the real usage summed over the three calls
        billed_in = sum(prompt_tokens(r["messages"]) for r in server.requests)
        assert report.input_tokens == billed_in
        finish = events(ctl, req, "finish")
        assert len(finish) == 1
        assert finish[0].output_tokens == 60 == report.output_tokens
        assert finish[0].context_tokens == report.input_tokens == response.usage.prompt_tokens
        assert len(events(ctl, req, "extend")) == 2
        assert report.grant.output_tokens == 75
        assert report.input_tokens + report.output_tokens <= report.grant.total
        # the other agents run in what is left, and the ceiling holds across all of it
        server.queue("fine", "done")
        req.completion("triage", messages=QUESTION, **litellm_args(server))
        req.completion("formatter", messages=QUESTION, **litellm_args(server))
        summary = req.summary()
        assert summary.consumed <= 3_000 and summary.reserved == 0
        assert summary.overflow == 0
    assert store.checks >= 8


def test_extension_refused_settles_the_call_as_truncated(server, store):
    server.queue(Reply(words(60)))
    ctl = controller(store, FixedPolicy(output=20, extra=0))
    with ctl.request(ceiling=3_000) as req:
        response = req.completion("reasoner", messages=QUESTION, **litellm_args(server))
        report = response.apportion
        assert response.choices[0].finish_reason == "length"
        assert response.choices[0].message.content == words(20)
        assert (report.calls, report.extensions, report.truncated) == (1, 0, True)
        assert req.summary().agents["reasoner"].truncated_calls == 1
        assert len(server.requests) == 1


def test_extensions_stop_at_max_extensions(server, store):
    server.queue(Reply(words(60)))
    ctl = controller(store, FixedPolicy(output=10, extra=10))
    with ctl.request(ceiling=3_000) as req:
        response = req.completion(
            "reasoner", messages=QUESTION, max_extensions=2, **litellm_args(server)
        )
        report = response.apportion
        assert response.choices[0].message.content == words(30)
        assert (report.calls, report.extensions, report.truncated) == (3, 2, True)


def test_input_fitting_sends_fewer_messages(server, store):
    history = [{"role": "system", "content": "Be brief."}]
    for i in range(20):
        history.append({"role": "user", "content": words(20, f"q{i}-")})
        history.append({"role": "assistant", "content": words(20, f"a{i}-")})
    history.append({"role": "user", "content": "And now?"})
    ctl = controller(store, FixedPolicy(context=300))
    with ctl.request(ceiling=5_000) as req:
        response = req.completion("formatter", messages=history, **litellm_args(server))
        report = response.apportion
        sent = server.requests[0]["messages"]
        assert len(sent) < len(history)
        assert sent[0] == history[0] and sent[-1] == history[-1]
        assert report.input_cut and report.dropped_messages == len(history) - len(sent)
        assert report.dropped_tokens > 0
        assert report.counted_input > 300 >= report.sent_input
        assert report.grant.context_tokens == 300


def test_no_usage_is_counted_and_marked_estimated(server, store):
    server.queue(Reply("five words are here now", usage=False))
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        response = req.completion("triage", messages=QUESTION, **litellm_args(server))
        report = response.apportion
        assert report.usage_estimated is True
        assert report.input_tokens == report.sent_input
        assert report.output_tokens == 5  # tiktoken's count of the returned text
        assert req.summary().agents["triage"].consumed == report.sent_input + 5


def test_server_usage_above_the_grant_is_recorded_not_hidden(server, store):
    server.queue(Reply("short", usage={"prompt_tokens": 50, "completion_tokens": 4_000}))
    ctl = controller(store, FixedPolicy(output=100))
    with ctl.request(ceiling=2_000) as req:
        response = req.completion("triage", messages=QUESTION, **litellm_args(server))
        overuse = response.apportion.overuse
        assert overuse == 4_050 - response.apportion.grant.total > 0
        summary = req.summary()
        assert summary.agents["triage"].overuse == overuse
        assert summary.consumed == 2_000 and summary.overflow == 2_050
        with pytest.raises(BudgetExceeded):
            req.completion("formatter", messages=QUESTION, **litellm_args(server))
    assert req.summary().consumed == 2_000


def test_server_error_releases_the_grant_and_reraises(server, store):
    server.queue(Reply(status=500))
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        with pytest.raises(litellm.InternalServerError):
            req.completion("triage", messages=QUESTION, **litellm_args(server))
        summary = req.summary()
        assert (summary.consumed, summary.reserved, summary.free) == (0, 0, 5_000)
        assert [e.kind for e in events(ctl, req)] == ["open", "begin", "release"]


def test_error_in_a_follow_up_settles_what_the_first_call_used(server, store):
    server.queue(Reply(words(40)))
    server.fail_at(2, 429)
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        with pytest.raises(litellm.RateLimitError):
            req.completion("reasoner", messages=QUESTION, max_tokens=10, **litellm_args(server))
        (finish,) = events(ctl, req, "finish")
        assert finish.output_tokens == 10 and finish.truncated
        assert req.summary().consumed == finish.context_tokens + 10
        assert req.summary().reserved == 0


def test_reasoning_models_get_max_completion_tokens(server, store):
    ctl = controller(store, FixedPolicy(output=300))
    with ctl.request(ceiling=5_000) as req:
        args = {**litellm_args(server), "model": "openai/o3-mini"}
        req.completion("reasoner", messages=QUESTION, **args)
        sent = server.requests[-1]
        assert sent["max_completion_tokens"] == 300
        assert "max_tokens" not in sent


def test_user_max_tokens_caps_the_grant(server, store):
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        response = req.completion(
            "triage", messages=QUESTION, max_tokens=7, max_extensions=0, **litellm_args(server)
        )
        assert response.apportion.grant.output_tokens == 7
        assert server.requests[-1]["max_tokens"] == 7
        assert response.apportion.truncated


def test_n_choices_share_the_output_grant(server, store):
    ctl = controller(store, FixedPolicy(output=40))
    with ctl.request(ceiling=5_000) as req:
        server.queue(Reply(words(100)))
        response = req.completion("triage", messages=QUESTION, n=2, **litellm_args(server))
        assert server.requests[-1]["max_tokens"] == 20
        assert response.apportion.output_tokens == 40
        assert response.apportion.extensions == 0  # several choices are not continued


def test_streaming_counts_as_tokens_arrive_and_settles(server, store):
    server.queue(Reply(words(12)))
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        stream = req.completion("triage", messages=QUESTION, stream=True, **litellm_args(server))
        assert req.summary().reserved > 0  # the grant is open while the stream runs
        seen = []
        for chunk in stream:
            assert chunk.choices, "the usage-only chunk apportion asked for is kept back"
            seen.append(chunk.choices[0].delta.content or "")
            assert stream.output_tokens >= len([s for s in seen if s.strip()])
        assert "".join(seen) == words(12)
        report = stream.report
        assert report.settled == "finish" and not report.usage_estimated
        assert report.output_tokens == 12  # the server's usage chunk
        assert server.requests[-1]["stream_options"] == {"include_usage": True}
        assert req.summary().reserved == 0


def test_streaming_without_usage_settles_with_litellms_count(server, store):
    # LiteLLM fills in a usage chunk of its own counting when the provider sends none; it
    # looks like the provider's (see the OpenAI tests for a stream really without usage)
    server.queue(Reply(words(8), usage=False))
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        stream = req.completion("triage", messages=QUESTION, stream=True, **litellm_args(server))
        list(stream)
        assert stream.report.output_tokens == stream.output_tokens == 16  # "w0" is 2 tokens
        assert req.summary().agents["triage"].consumed == (
            stream.report.input_tokens + stream.report.output_tokens
        )


def test_streaming_error_settles_what_arrived_and_reraises(server, store):
    server.queue(Reply(words(20), fail_after=5))
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        stream = req.completion("triage", messages=QUESTION, stream=True, **litellm_args(server))
        with pytest.raises(Exception, match="scripted stream error"):
            list(stream)
        assert stream.report.settled == "finish" and stream.report.truncated
        assert req.summary().reserved == 0
        assert req.summary().agents["triage"].consumed > 0


def test_streaming_error_before_any_chunk_releases(server, store):
    server.queue(Reply(status=500))
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        with pytest.raises(litellm.InternalServerError):
            req.completion("triage", messages=QUESTION, stream=True, **litellm_args(server))
        summary = req.summary()
        assert (summary.consumed, summary.reserved) == (0, 0)


def test_stream_closed_early_is_settled(server, store):
    server.queue(Reply(words(30)))
    ctl = controller(store)
    with ctl.request(ceiling=5_000) as req:
        with req.completion(
            "triage", messages=QUESTION, stream=True, **litellm_args(server)
        ) as stream:
            next(iter(stream))
            next(iter(stream))
        assert stream.report.settled == "finish" and stream.report.truncated
        assert req.summary().reserved == 0


# ---------------------------------------------------------------------- async


def test_acompletion_extends_and_completes(server, store):
    answer = words(40)
    server.queue(Reply(answer))
    ctl = AsyncController(PIPELINE, policy="elastic", store=store)

    async def main() -> None:
        async with ctl.request(ceiling=3_000) as req:
            response = await req.acompletion(
                "reasoner", messages=QUESTION, max_tokens=15, **litellm_args(server)
            )
            assert response.choices[0].message.content == answer
            assert response.apportion.extensions == 2
            assert req.summary().reserved == 0
            assert req.summary().consumed <= 3_000

    asyncio.run(main())


def test_acompletion_error_releases(server, store):
    server.queue(Reply(status=500))
    ctl = AsyncController(PIPELINE, policy="elastic", store=store)

    async def main() -> None:
        async with ctl.request(ceiling=3_000) as req:
            with pytest.raises(litellm.InternalServerError):
                await req.acompletion("triage", messages=QUESTION, **litellm_args(server))
            summary = req.summary()
            assert (summary.consumed, summary.reserved) == (0, 0)

    asyncio.run(main())


def test_async_streaming_settles(server, store):
    server.queue(Reply(words(10)))
    ctl = AsyncController(PIPELINE, policy="elastic", store=store)

    async def main() -> None:
        async with ctl.request(ceiling=3_000) as req:
            stream = await req.acompletion(
                "triage", messages=QUESTION, stream=True, **litellm_args(server)
            )
            pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            assert "".join(pieces) == words(10)
            assert stream.report.settled == "finish"
            assert stream.report.output_tokens == 10
            assert req.summary().reserved == 0

    asyncio.run(main())


def test_sync_completion_refuses_an_async_request(store):
    ctl = AsyncController(PIPELINE, policy="elastic", store=store)

    async def main() -> None:
        async with ctl.request(ceiling=3_000) as req:
            from apportion.integrations.litellm import completion

            with pytest.raises(TypeError, match="acompletion"):
                completion(req, "triage", model=MODEL, messages=QUESTION, mock_response="x")

    asyncio.run(main())


def test_call_details_are_annotated_on_the_grant_for_telemetry(store):
    ctl = controller(store)
    notes = []
    with ctl.request(ceiling=5_000) as req:
        req.annotate = lambda grant, **fields: notes.append((grant.agent, fields))
        req.completion("triage", model="gpt-4o-mini", messages=QUESTION, mock_response="ok")
    ((agent, fields),) = notes
    assert agent == "triage" and fields["model"] == "gpt-4o-mini"
    assert fields["cost_usd"] > 0 and fields["calls"] == 1 and fields["extensions"] == 0


def test_a_stream_longer_than_its_lease_renews_it_and_is_recorded_in_full(server, store):
    server.queue(Reply(words(12)))
    now = [1000.0]

    def clock() -> float:  # every reading of the clock is 1 s later: the stream outlives 10 s
        now[0] += 1.0
        return now[0]

    ctl = Controller(PIPELINE, policy="elastic", store=store, clock=clock, lease_seconds=10)
    with ctl.request(ceiling=5_000) as req:
        stream = req.completion("triage", messages=QUESTION, stream=True, **litellm_args(server))
        first = stream.report.grant
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert text == words(12)
        (call,) = req.calls.values()
        assert call.status == "completed" and call.output_used == 12
        assert call.settled_at > first.lease_expires_at  # it outlived its first lease
        assert call.lease_expires_at > call.settled_at  # renewed as the chunks came
        state = ctl.store.get(req.request_id)
        assert state.overuse_by["triage"] == 0 and state.consumed == call.input_used + 12
        assert not [e for e in ctl.store.events(req.request_id) if e.kind == "expire"]
