"""Wrapping up and the budget shown to the model, through the call engine, over HTTP.

The OpenAI SDK and LiteLLM call the local OpenAI-protocol server; a refused extension
with a wrap-up reserve left makes a "wrap up now" follow-up capped at the reserve, and
``show_budget`` puts a line in what the server receives.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from integration_helpers import (
    PIPELINE,
    FixedPolicy,
    assert_shown_and_wrapped_up,
    async_openai_client,
    litellm_args,
    openai_client,
    words,
)

from apportion import AsyncController, Controller
from apportion.errors import InvalidArgument, InvalidTokenCount
from apportion.integrations.chat import (
    BUDGET_LINE,
    TASK_BUDGET_BETA,
    WRAP_UP_HEADER,
    WRAP_UP_PROMPT,
    ChatCall,
)
from apportion.integrations.drivers import run
from apportion.integrations.engine import prepare
from apportion.testing.openai_server import Reply

QUESTION = [
    {"role": "system", "content": "You count."},
    {"role": "user", "content": "Count for me, please."},
]
MODEL = "gpt-4o-mini"


def make(store: Any, output: int, **kwargs: Any) -> Controller:
    return Controller(PIPELINE, policy=FixedPolicy(output=output, extra=0), store=store, **kwargs)


def create(req: Any, server: Any, **kwargs: Any) -> Any:
    chat = req.openai(openai_client(server))
    return chat.chat.completions.create(agent="reasoner", model=MODEL, messages=QUESTION, **kwargs)


def test_a_refused_extension_wraps_up_within_the_reserve(server, store):
    server.queue(Reply(words(70)))
    ctl = make(store, output=60, wrap_up_tokens=400)  # the controller's reserve: every call
    with ctl.request(ceiling=5_000) as req:
        response = create(req, server)
        report = response.apportion
        first, wrap = server.requests
        assert first["max_tokens"] == 60  # the working call leaves the reserve unspent
        assert wrap["messages"][-2:] == [
            {"role": "assistant", "content": words(60)},
            {"role": "user", "content": WRAP_UP_PROMPT.format(tokens=200)},
        ]
        assert wrap["max_tokens"] <= 400
        assert response.choices[0].message.content == words(70)  # concluded
        assert (report.calls, report.extensions, report.truncated) == (2, 0, False)
        assert (report.status, report.wrap_up_tokens, report.overuse) == ("wrapped_up", 400, 0)
        assert report.input_tokens + report.output_tokens <= report.grant.total
        assert req.calls[report.grant.grant_id].status == "wrapped_up"
        assert req.summary().statuses == {"wrapped_up": 1}


def test_a_tight_reserve_folds_the_answer_into_one_shortened_wrap_up_turn(server, store):
    server.queue(Reply(words(260)), Reply("In short: done."))
    ctl = make(store, output=200)
    with ctl.request(ceiling=5_000) as req:
        response = create(req, server, wrap_up_tokens=160)  # per call
        report = response.apportion
        first, wrap = server.requests
        assert first["max_tokens"] == 200
        last = wrap["messages"][-1]
        assert last["role"] == "user" and last["content"].startswith(WRAP_UP_HEADER)
        assert last["content"].endswith(WRAP_UP_PROMPT.format(tokens=80))
        assert "tokens cut ...]" in last["content"]  # the answer so far, shortened inside
        assert wrap["max_tokens"] <= 160
        assert response.choices[0].message.content == words(200) + "In short: done."
        assert report.status == "wrapped_up" and report.overuse == 0
        assert report.input_tokens + report.output_tokens <= report.grant.total


def test_without_a_reserve_a_refused_extension_ends_cut(server, store):
    server.queue(Reply(words(70)))
    with make(store, output=60).request(ceiling=5_000) as req:
        report = create(req, server).apportion
        assert len(server.requests) == 1
        assert (report.status, report.truncated) == ("cut", True)
        assert req.calls[report.grant.grant_id].status == "cut"
        assert req.summary().statuses == {"cut": 1}


def test_a_reserve_too_small_for_any_prompt_ends_cut(server, store):
    server.queue(Reply(words(70)))
    with make(store, output=60).request(ceiling=5_000) as req:
        report = create(req, server, wrap_up_tokens=4).apportion
        assert len(server.requests) == 1 and server.requests[0]["max_tokens"] == 60
        assert report.status == "cut"


def test_a_wrap_up_cut_at_its_cap_is_cut(server, store):
    server.queue(Reply(words(260)), Reply(words(500, "c")))
    with make(store, output=200).request(ceiling=5_000) as req:
        report = create(req, server, wrap_up_tokens=160).apportion
        assert len(server.requests) == 2 and report.truncated
        assert report.status == "cut" == req.calls[report.grant.grant_id].status


def test_a_refused_begin_says_refused(server, store):
    with make(store, output=60).request(ceiling=5_000) as req:
        chat = ChatCall("reasoner", MODEL, QUESTION, {}, wrap_up_tokens=5_000)
        with pytest.raises(Exception, match="wrapping up"):
            run(chat, req, lambda **kw: None)
        assert chat.report.status == "refused" and not server.requests


def test_async_and_litellm_wrap_up_too(server, store):
    server.queue(Reply(words(70)))
    ctl = AsyncController(
        PIPELINE, policy=FixedPolicy(output=60, extra=0), store=store, wrap_up_tokens=400
    )

    async def main() -> None:
        async with ctl.request(ceiling=5_000) as req:
            response = await req.acompletion("reasoner", messages=QUESTION, **litellm_args(server))
            assert response.apportion.status == "wrapped_up"
            assert response.choices[0].message.content == words(70)

    asyncio.run(main())


# ------------------------------------------------------------------ show_budget


def test_show_budget_off_changes_nothing(server, store):
    server.queue(Reply("fine"), Reply("fine"))
    with make(store, output=100).request(ceiling=5_000) as req:
        create(req, server)
    with make(store, output=100, show_budget=False).request(ceiling=5_000) as req:
        report = create(req, server, show_budget=None).apportion
    plain, off = server.requests
    assert plain == off and plain["messages"] == QUESTION
    assert report.budget_line is None
    assert "output_config" not in off and "extra_headers" not in off


def test_show_budget_puts_the_line_in_what_the_server_receives(server, store):
    server.queue(Reply("fine"), Reply("fine"))
    with make(store, output=100, show_budget=True).request(ceiling=5_000) as req:
        report = create(req, server, wrap_up_tokens=30).apportion
        grant = report.grant
        line = BUDGET_LINE.format(context=grant.context_tokens, output=100)
        sent = server.requests[0]["messages"]
        assert sent == [QUESTION[0], {"role": "system", "content": line}, QUESTION[1]]
        assert report.budget_line == line
        record = req.calls[grant.grant_id]
        assert record.input_asked > report.counted_input  # the line is counted at begin
        assert report.sent_input <= grant.context_tokens  # and fitted with the messages
    with make(store, output=100).request(ceiling=5_000) as req:  # per call, controller off
        create(req, server, show_budget=True)
        assert server.requests[1]["messages"][1]["content"].startswith("Token budget")


def test_show_budget_line_is_fitted_with_the_messages(server, store):
    long = [
        {"role": "user", "content": words(400)},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "Count, please."},
    ]
    server.queue(Reply("fine"))
    policy = FixedPolicy(context=120, output=50)
    ctl = Controller(PIPELINE, policy=policy, store=store, show_budget=True)
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server))
        report = chat.chat.completions.create(agent="reasoner", model=MODEL, messages=long)
        report = report.apportion
        sent = server.requests[0]["messages"]
        assert sent[0]["content"] == BUDGET_LINE.format(context=120, output=50)
        assert report.input_cut and report.sent_input <= 120


def test_anthropic_task_budget_is_set_from_the_grant_through_litellm():
    import litellm

    chat = prepare(
        "reasoner",
        QUESTION,
        send=litellm.completion,
        model="anthropic/claude-opus-4-7",
        counter="approximate",
        show_budget=True,
        params={"extra_headers": {"anthropic-beta": "other-beta"}},
    )
    assert chat.provider_budget
    assert not prepare(
        "reasoner", QUESTION, send=lambda **kw: None, model=MODEL, params={}
    ).provider_budget
    ctl = Controller(PIPELINE, policy=FixedPolicy(output=100, extra=0))
    sent: list[dict[str, Any]] = []

    def send(**params: Any) -> Any:
        sent.append(params)
        return litellm.completion(**params, mock_response="fine")

    with ctl.request(ceiling=5_000) as req:
        report = run(chat, req, send).apportion
    grant = report.grant
    assert sent[0]["output_config"] == {
        "task_budget": {"type": "tokens", "total": grant.total, "remaining": 100}
    }
    assert sent[0]["extra_headers"] == {"anthropic-beta": f"other-beta,{TASK_BUDGET_BETA}"}
    plain = prepare(
        "reasoner",
        QUESTION,
        send=litellm.completion,
        model="gpt-4o-mini",
        counter="approximate",
        show_budget=True,
        params={},
    )
    with ctl.request(ceiling=5_000) as req:
        run(plain, req, send)
    assert "output_config" not in sent[1]  # not an Anthropic model: the line only


def test_the_responses_api_wraps_up_by_resending(server, store):
    server.queue(Reply(words(70)))
    with make(store, output=60).request(ceiling=5_000) as req:
        client = openai_client(server)
        response = req.call(
            "reasoner",
            "Count for me, please.",
            send=client.responses.create,
            model=MODEL,
            protocol="responses",
            wrap_up_tokens=400,
        )
        report = response.apportion
        first, wrap = server.requests
        assert first["max_output_tokens"] == 60
        assert "previous_response_id" not in wrap
        assert wrap["input"][-1] == {"role": "user", "content": WRAP_UP_PROMPT.format(tokens=200)}
        assert report.status == "wrapped_up" and response.output_text == words(70)


def test_an_answer_still_cut_after_its_last_extension_wraps_up(server, store):
    server.queue(Reply(words(50)), Reply(words(50)))
    ctl = Controller(PIPELINE, policy=FixedPolicy(output=20, extra=20), store=store)
    with ctl.request(ceiling=5_000) as req:
        report = create(req, server, max_extensions=1, wrap_up_tokens=300).apportion
        assert [r["max_tokens"] for r in server.requests[:2]] == [20, 20]
        assert server.requests[2]["messages"][-1]["content"].startswith("Budget spent")
        assert (report.extensions, report.status) == (1, "wrapped_up")
        assert req.calls[report.grant.grant_id].status == "wrapped_up"
        n = len(server.requests)
        report = create(req, server, max_extensions=0, wrap_up_tokens=300).apportion
        assert len(server.requests) == n + 1  # no follow-up at all: the caller said so
        assert report.status == "cut"


@pytest.mark.parametrize("protocol", ["chat", "responses"])
def test_a_stream_wraps_up_within_the_reserve_in_the_same_stream(server, store, protocol):
    server.queue(Reply(words(70)))
    ctl = make(store, output=60, wrap_up_tokens=400)
    with ctl.request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), agent="reasoner")
        if protocol == "chat":
            stream = chat.chat.completions.create(model=MODEL, messages=QUESTION, stream=True)
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
            assert [r for r in reasons if r] == ["stop"]  # one ending, the wrap-up's
        else:
            stream = chat.responses.create(model=MODEL, input="Count.", stream=True)
            events = list(stream)
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            assert events[-1].type == "response.completed"
            assert events[-1].response.output_text == text
        first, wrap = server.requests
        cap = "max_tokens" if protocol == "chat" else "max_output_tokens"
        assert first[cap] == 60 and wrap[cap] <= 400  # the first stream left the reserve
        prompt = WRAP_UP_PROMPT.format(tokens=200)
        last = wrap["messages" if protocol == "chat" else "input"][-1]
        assert last == {"role": "user", "content": prompt}
        assert text == words(70)
        report = stream.report
        assert (report.calls, report.status, report.truncated) == (2, "wrapped_up", False)
        assert report.input_tokens + report.output_tokens <= report.grant.total
        assert req.calls[report.grant.grant_id].status == "wrapped_up"


# ------------------------------------------------------------------ per adapter


def test_the_drop_in_client_takes_both_keywords_for_every_call(server, store):
    server.queue(Reply(words(70)), Reply("fine"), Reply("fine"))
    with make(store, output=60).request(ceiling=5_000) as req:
        chat = req.openai(openai_client(server), "reasoner", wrap_up_tokens=400, show_budget=True)
        chat.chat.completions.create(model=MODEL, messages=QUESTION)
        assert_shown_and_wrapped_up(server, req)
        view = chat.with_options(timeout=30)  # a view keeps them; a call's own wins
        report = view.chat.completions.create(model=MODEL, messages=QUESTION, show_budget=False)
        assert server.requests[-1]["messages"] == QUESTION
        assert report.apportion.wrap_up_tokens == 400
        view.chat.completions.create(model=MODEL, messages=QUESTION, show_budget=None)
        assert server.requests[-1]["messages"] != QUESTION  # None: the client's, not off


def test_the_async_drop_in_client_takes_both_keywords(server, store):
    server.queue(Reply(words(70)))
    ctl = AsyncController(PIPELINE, policy=FixedPolicy(output=60, extra=0), store=store)

    async def main() -> None:
        async with ctl.request(ceiling=5_000) as req:
            chat = req.openai(
                async_openai_client(server), "reasoner", wrap_up_tokens=400, show_budget=True
            )
            await chat.chat.completions.create(model=MODEL, messages=QUESTION)
            assert_shown_and_wrapped_up(server, req)

    asyncio.run(main())


def test_litellm_completion_takes_both_keywords(server, store):
    server.queue(Reply(words(70)), Reply(words(70)))
    with make(store, output=60).request(ceiling=5_000) as req:
        args = litellm_args(server)
        req.completion("reasoner", messages=QUESTION, wrap_up_tokens=400, show_budget=True, **args)
        assert_shown_and_wrapped_up(server, req)


@pytest.mark.parametrize(
    ("keywords", "error"),
    [
        ({"wrap_up_tokens": -1}, InvalidTokenCount),
        ({"wrap_up_tokens": 1.5}, InvalidTokenCount),
        ({"show_budget": "yes"}, InvalidArgument),
    ],
)
def test_bad_keywords_are_refused_when_the_client_is_made(server, store, keywords, error):
    with make(store, output=60).request(ceiling=5_000) as req:
        with pytest.raises(error) as caught:
            req.openai(openai_client(server), "reasoner", **keywords)
        error = caught.value
        name = error.argument if isinstance(error, InvalidArgument) else error.field
        assert name == next(iter(keywords))
        assert req.summary().reserved == 0 and not server.requests
