"""A history sent as one big prompt is fitted, not refused (issue 16, item 5).

CrewAI puts the whole thread inside one task prompt. Under ``uniform`` the reasoner's
share (1,952 of 5,856) is split 1,464 context / 488 output, and the call was refused with
``InputTooLarge`` (needs 2,318, granted 1,464) though the request had the tokens. Now the
call asks for its irreducible part (``min_context_tokens``) and gets it when the request
can afford it; when it cannot, the big message is shortened inside, never sent whole over
the grant. Real HTTP calls through LiteLLM to the local OpenAI-protocol server.
"""

from __future__ import annotations

import asyncio
import re

from integration_helpers import PIPELINE, controller, litellm_args

from apportion import AsyncController
from apportion.integrations import report_of
from apportion.testing.openai_server import prompt_tokens
from apportion.tokens.counting import counter_for

NEEDS = 2_318
CUT = re.compile(r"\n\[\.\.\. (\d+) tokens cut \.\.\.\]\n")


def crew_prompt(tokens: int) -> list[dict[str, str]]:
    """One task prompt holding a whole thread, counted at exactly ``tokens``."""
    counter = counter_for("openai/gpt-4o-mini")
    line = " ".join(["the customer asked about the refund again"] * 3)
    thread = "\n".join(f"message {i}: {line}" for i in range(88))
    task = f"Current Task: answer the last question.\n\nContext:\n{thread}\n\nBegin!"
    messages = [{"role": "user", "content": task}]
    while counter.count_messages(messages) < tokens:
        messages[0]["content"] += " ok"
    assert counter.count_messages(messages) == tokens
    return messages


def test_one_big_prompt_gets_the_context_it_needs(server, store):
    ctl = controller(store, "uniform")
    messages = crew_prompt(NEEDS)
    with ctl.request(ceiling=5_856) as req:
        response = req.completion("reasoner", messages=messages, **litellm_args(server))
        report = report_of(response)
        assert report is not None and report.grant is not None
        assert report.grant.context_tokens == NEEDS  # the policy alone gave 1,464
        assert report.grant.output_tokens == 488
        assert not report.input_cut and report.dropped_messages == 0
        (sent,) = server.requests
        assert sent["messages"] == messages and sent["max_tokens"] == 488
        assert req.summary().consumed == report.input_tokens + report.output_tokens
    assert prompt_tokens(sent["messages"]) + report.output_tokens <= 5_856


def test_one_big_prompt_the_request_cannot_afford_is_shortened_inside(server, store):
    ctl = controller(store, "uniform")
    messages = crew_prompt(NEEDS)
    with ctl.request(ceiling=2_400) as req:  # 2,318 + 200 of output are not there
        response = req.completion("reasoner", messages=messages, **litellm_args(server))
        report = report_of(response)
        assert report is not None and report.grant is not None
        assert report.grant.context_tokens == 600
        (sent,) = server.requests
        (message,) = sent["messages"]
        found = CUT.search(message["content"])
        assert found is not None  # head, marker, tail: never the whole prompt
        text = messages[0]["content"]
        head, tail = message["content"][: found.start()], message["content"][found.end() :]
        assert text.startswith(head) and text.endswith(tail) and tail.endswith("ok")
        assert report.sent_input <= 600 and report.input_cut
        assert report.dropped_messages == 1 and report.dropped_tokens == int(found[1])
        assert req.summary().consumed <= 2_400
        # the store keeps a note of it with the request (the dashboard's request page)
        notes = [e for e in store.history(req.request_id) if e.kind == "fitted"]
        assert [(e.agent, e.grant_id, e.context_tokens, e.note) for e in notes] == [
            ("reasoner", report.grant.grant_id, report.dropped_tokens, "1")
        ]
        assert "fitted" not in [e.kind for e in store.events(req.request_id)]


def test_async_and_streamed_calls_ask_for_it_too(server, store):
    ctl = AsyncController(PIPELINE, policy="uniform", store=store)
    messages = crew_prompt(NEEDS)

    async def main() -> tuple[int, int]:
        async with ctl.request(ceiling=5_856) as req:
            response = await req.acompletion("reasoner", messages=messages, **litellm_args(server))
            return response.apportion.grant.context_tokens, len(server.requests)

    async def short() -> list[tuple[str, int]]:
        async with ctl.request(ceiling=2_400) as req:
            response = await req.acompletion("reasoner", messages=messages, **litellm_args(server))
            assert response.apportion.dropped_messages == 1
            return [(e.kind, e.context_tokens) for e in store.history(req.request_id)]

    assert asyncio.run(main()) == (NEEDS, 1)
    kinds = asyncio.run(short())
    assert [k for k, _ in kinds] == ["open", "begin", "fitted", "finish"]
    server.requests.pop()
    assert server.requests[0]["messages"] == messages
    with controller(store, "uniform").request(ceiling=5_856) as req:
        stream = req.completion("reasoner", messages=messages, stream=True, **litellm_args(server))
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert stream.report.grant.context_tokens == NEEDS
    assert server.requests[1]["messages"] == messages
