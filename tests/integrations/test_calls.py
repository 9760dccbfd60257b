"""The shared call semantics, without a client: caps, reasoning budgets, argument checks."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace as NS

import pytest

from apportion.integrations.chat import (
    THINKING_MIN_BUDGET,
    CallReport,
    ChatCall,
    is_reasoning_model,
)
from apportion.integrations.streams import ChatTally
from apportion.tokens.counting import counter_for

QUESTION = [{"role": "user", "content": "hi"}]


def make(model: str = "gpt-4o-mini", **params: object) -> ChatCall:
    return ChatCall("triage", model, QUESTION, params, counter="approximate")


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [
        ("o1", True),
        ("o3-mini", True),
        ("o4-mini-2025-04-16", True),
        ("openai/o3", True),
        ("azure/o1-preview", True),
        ("gpt-5", True),
        ("gpt-5-mini", True),
        ("gpt-4o-mini", False),
        ("gpt-4.1", False),
        ("anthropic/claude-sonnet-4-20250514", False),
        ("ollama/llama3", False),
        ("omni-model", False),
    ],
)
def test_reasoning_models_are_recognised(model, reasoning):
    assert is_reasoning_model(model) is reasoning


def test_the_grant_sets_max_tokens_and_the_callers_cap_is_read():
    call = make(max_tokens=300, temperature=0)
    assert call.cap == 300
    params = call.call_params(QUESTION, 120)
    assert params["max_tokens"] == 120 and params["temperature"] == 0
    assert "max_completion_tokens" not in params
    assert make(max_tokens=300, max_completion_tokens=200).cap == 200
    assert make().cap is None


def test_reasoning_models_are_capped_with_max_completion_tokens():
    params = make("o3-mini", max_tokens=50).call_params(QUESTION, 40)
    assert params["max_completion_tokens"] == 40 and "max_tokens" not in params


def test_the_callers_cap_parameter_names_are_kept():
    params = make(max_completion_tokens=300).call_params(QUESTION, 120)
    assert params["max_completion_tokens"] == 120 and "max_tokens" not in params
    both = make(max_tokens=300, max_completion_tokens=200).call_params(QUESTION, 120)
    assert (both["max_tokens"], both["max_completion_tokens"]) == (120, 120)
    responses = ChatCall(
        "triage",
        "gpt-4o-mini",
        "hi",
        {"max_output_tokens": 300, "instructions": "Be brief."},
        counter="approximate",
        protocol="responses",
    )
    assert responses.cap == 300
    params = responses.call_params(responses.messages, 90)
    assert params["max_output_tokens"] == 90 and not {"max_tokens", "messages"} & set(params)
    assert params["input"] == [{"role": "user", "content": "hi"}]
    assert params["instructions"] == "Be brief."


def test_the_openai_sdk_placeholders_are_absent():
    import openai

    call = make(max_tokens=openai.omit, tools=openai.NOT_GIVEN, temperature=openai.omit)
    assert call.cap is None and call.tools is None
    assert set(call.call_params(QUESTION, 10)) == {"model", "messages", "max_tokens"}


def test_n_choices_share_the_cap():
    assert make(n=3).call_params(QUESTION, 100)["max_tokens"] == 33


def test_anthropic_thinking_budget_stays_within_the_grant():
    thinking = {"type": "enabled", "budget_tokens": 10_000}
    call = make("anthropic/claude-sonnet-4-20250514", thinking=thinking)
    params = call.call_params(QUESTION, 8_000)
    assert params["max_tokens"] == 8_000
    assert params["thinking"] == {"type": "enabled", "budget_tokens": 6_000}
    assert call.report.thinking_budget == 6_000
    # the caller's smaller budget is kept
    small = make(
        "anthropic/claude-sonnet-4-20250514", thinking={**thinking, "budget_tokens": 2_000}
    )
    assert small.call_params(QUESTION, 8_000)["thinking"]["budget_tokens"] == 2_000
    # a grant too small for Anthropic's minimum thinking budget: thinking is left off
    tight = make("anthropic/claude-sonnet-4-20250514", thinking=thinking)
    params = tight.call_params(QUESTION, THINKING_MIN_BUDGET)
    assert "thinking" not in params and tight.report.thinking_budget == 0
    assert thinking == {"type": "enabled", "budget_tokens": 10_000}  # the caller's is untouched


def test_bad_arguments_are_refused_before_anything_is_reserved():
    with pytest.raises(TypeError):
        ChatCall("triage", "gpt-4o-mini", "hello", {}, counter="approximate")
    with pytest.raises(TypeError):
        ChatCall("triage", "", QUESTION, {}, counter="approximate")
    with pytest.raises(ValueError):
        ChatCall("triage", "gpt-4o-mini", QUESTION, {}, counter="approximate", max_extensions=-1)
    with pytest.raises(ValueError):
        ChatCall("triage", "gpt-4o-mini", QUESTION, {"n": 0}, counter="approximate")


def test_stream_tally_counts_text_and_keeps_back_only_its_own_usage_chunk():
    tally = ChatTally(counter_for("gpt-4o-mini"), hide_usage=True)
    text = NS(choices=[NS(index=0, delta=NS(content="hello world", role=None))], usage=None)
    final = NS(choices=[NS(index=0, delta=NS(content=None, role=None), finish_reason="stop")])
    usage = NS(choices=[], usage=NS(prompt_tokens=5, completion_tokens=2))
    assert tally.add(text) == [text]
    assert tally.add(final) == [] and tally.add(usage) == []  # held to the end; kept back
    assert tally.output_tokens == 2 and tally.finish_reason == "stop"
    assert tally.usage.completion_tokens == 2 and tally.texts == {0: "hello world"}
    assert tally.settle(9) == (5, 2, False)
    tally.end(CallReport("a", "m", calls=1))
    assert tally.drain() == [final] and tally.drain() == []


def test_stream_tally_joins_a_continuation_into_one_stream():
    tally = ChatTally(counter_for("gpt-4o-mini"))  # the caller asked for usage itself

    def chunk(id_: str, content: str | None, reason: str | None = None, role: str | None = None):
        delta = NS(content=content, role=role, tool_calls=None)
        return NS(id=id_, choices=[NS(index=0, delta=delta, finish_reason=reason)], usage=None)

    def usage(id_: str, completion: int) -> NS:
        return NS(id=id_, choices=[], usage=NS(prompt_tokens=7, completion_tokens=completion))

    first = [chunk("a", "", role="assistant"), chunk("a", "one two"), chunk("a", None, "length")]
    assert [tally.add(c) for c in [*first, usage("a", 2)]] == [[first[0]], [first[1]], [], []]
    assert tally.continuable(1) and not tally.continuable(2) and tally.text == "one two"
    tally.next_call()
    assert tally.drain() == []  # the first call's finish reason is dropped
    rest = [chunk("b", "", role="assistant"), chunk("b", " three"), chunk("b", None, "stop")]
    assert [tally.add(c) for c in [*rest, usage("b", 1)]] == [[], [rest[1]], [], []]
    assert rest[1].id == "a" and tally.text == "one two three"
    assert tally.settle(20) == (7, 1, False)
    tally.end(CallReport("a", "m", calls=2, input_tokens=14, output_tokens=3))
    end, summed = tally.drain()
    assert end is rest[2] and end.choices[0].finish_reason == "stop"
    assert (summed.usage.prompt_tokens, summed.usage.completion_tokens) == (14, 3)
    assert summed.usage.total_tokens == 17


def test_stream_tally_counts_a_reported_zero_beside_text():
    tally = ChatTally(counter_for("gpt-4o-mini"))
    delta = NS(content="hello world", role=None)
    tally.add(NS(choices=[NS(index=0, delta=delta)], usage=NS(completion_tokens=0)))
    assert tally.settle(4) == (4, 2, True)


def test_importing_the_integrations_pulls_no_client():
    code = (
        "import sys, apportion.integrations, apportion.integrations.litellm, "
        "apportion.integrations.openai; "
        "print(sorted({'litellm', 'openai', 'tiktoken'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_request_says_whether_it_is_async():
    from apportion import AsyncRequest, Request
    from apportion.integrations.drivers import is_async_request

    assert Request.is_async is False and AsyncRequest.is_async is True

    class Awaited:  # a request-like object that does not say: its begin is asked
        async def begin(self) -> None: ...

    class Said(Awaited):
        is_async = False

    assert is_async_request(Awaited()) and not is_async_request(Said())
