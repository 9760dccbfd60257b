"""Fitting messages into a context grant: every strategy keeps the invariants."""

from __future__ import annotations

import copy
import importlib.util
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.errors import InputTooLarge, InvalidTokenCount
from apportion.tokens import STRATEGIES, Fit, TokenCounter, counter_for, fit_messages
from apportion.tokens.fitting import irreducible_tokens

Message = dict[str, Any]
CUT = re.compile(r"\n\[\.\.\. (\d+) tokens cut \.\.\.\]\n")
NOTE = re.compile(r"^\[(\d+) earlier messages? \((\d+) tokens\) omitted\]$")

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "search_orders",
            "description": "Search the order database",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


def conversation() -> list[Message]:
    """A system prompt, 20 user/assistant turns with a 2-result tool call in the middle."""
    messages: list[Message] = [
        {"role": "system", "content": "You are a support agent for an online shop. " * 5}
    ]
    for turn in range(20):
        messages.append(
            {
                "role": "user",
                "content": f"Turn {turn}: my order {1000 + turn} has not arrived. " * 3,
            }
        )
        if turn == 10:
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{k}",
                            "type": "function",
                            "function": {
                                "name": "search_orders",
                                "arguments": f'{{"query": "order {1000 + turn} part {k}"}}',
                            },
                        }
                        for k in range(2)
                    ],
                }
            )
            for k in range(2):
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": f"call_{k}",
                        "content": f"Result {k}: shipped, in transit, ETA two days. " * 4,
                    }
                )
        messages.append(
            {"role": "assistant", "content": f"Turn {turn}: I have checked, it is on its way. " * 3}
        )
    messages.append({"role": "user", "content": "So when exactly will it arrive? Be precise."})
    return messages


# -- an independent model of the structure, to check the fitter against ----------------------


def structure(messages: list[Message]) -> tuple[int, int, list[tuple[int, int]]]:
    """Head end, tail start, and the tool units ``(assistant, last result + 1)``."""
    head = 0
    while head < len(messages) and messages[head]["role"] in ("system", "developer"):
        head += 1
    users = [i for i in range(head, len(messages)) if messages[i]["role"] == "user"]
    tool_units = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant" and message.get("tool_calls"):
            end = i + 1
            while end < len(messages) and messages[end]["role"] == "tool":
                end += 1
            tool_units.append((i, end))
    if users:
        tail = users[-1]
    elif head == len(messages):
        tail = head
    else:
        tail = next((s for s, e in tool_units if e == len(messages)), len(messages) - 1)
    return head, tail, tool_units


def origin(fit: Fit, messages: list[Message]) -> tuple[list[int], list[int], list[Message]]:
    """Original indices of the kept and dropped messages, and the inserted notes."""
    index = {id(m): i for i, m in enumerate(messages)}
    by_value = {repr(m): i for i, m in enumerate(messages)}
    assert len(by_value) == len(messages), "test messages must be distinct"
    kept, notes = [], []
    for message in fit.messages:
        if repr(message) in by_value:
            kept.append(by_value[repr(message)])
        else:
            notes.append(message)
    dropped = [by_value[repr(m)] for m in fit.dropped]
    assert not any(id(m) in index for m in fit.messages + fit.dropped), "must be copies"
    return kept, dropped, notes


def check_fit(
    fit: Fit,
    messages: list[Message],
    budget: int,
    counter: TokenCounter,
    strategy: str,
    tools: list[dict[str, Any]] | None = None,
) -> None:
    assert fit.input_tokens <= budget
    assert fit.input_tokens == counter.count_messages(fit.messages, tools)
    kept, dropped, notes = origin(fit, messages)
    # dropped + kept = original, each in order
    assert kept == sorted(kept)
    assert dropped == sorted(dropped)
    assert sorted(kept + dropped) == list(range(len(messages)))
    assert fit.cut == bool(dropped)
    assert fit.dropped_tokens == sum(counter.count_message(messages[i]) for i in dropped)
    head, tail, tool_units = structure(messages)
    # the system prompt and the last user turn (with what follows) are kept
    assert set(range(head)) <= set(kept)
    assert set(range(tail, len(messages))) <= set(kept)
    assert fit.messages[:head] == messages[:head]
    assert fit.messages[len(fit.messages) - (len(messages) - tail) :] == messages[tail:]
    # a tool call is never separated from its results
    for start, end in tool_units:
        inside = set(range(start, end))
        assert inside <= set(kept) or inside <= set(dropped), (start, end)
    if strategy == "head-tail" and dropped and notes:
        (note,) = notes
        assert note["role"] == "system"
        found = NOTE.match(note["content"])
        assert found is not None
        assert int(found[1]) == len(dropped)
        assert int(found[2]) == fit.dropped_tokens
        # the note stands where the messages were skipped
        position = fit.messages.index(note)
        assert fit.messages[position - 1] == messages[dropped[0] - 1]
        assert fit.messages[position + 1] == messages[dropped[-1] + 1]
    else:
        assert notes == []
    if strategy == "head-tail" and dropped and not notes:
        # only when even the widest note would not have fitted
        required = counter.count_messages(messages[:head] + messages[tail:], tools)
        middle = range(head, tail)
        widest = {
            "role": "system",
            "content": f"[{len(middle)} earlier messages "
            f"({sum(counter.count_message(messages[i]) for i in middle)} tokens) omitted]",
        }
        assert budget - required < counter.count_message(widest)
    if dropped:
        # every strategy skips one contiguous stretch of the conversation
        assert dropped == list(range(dropped[0], dropped[-1] + 1))
        if strategy == "keep-recent":
            assert dropped[0] == head
        # whole turns: the kept stretch after the gap opens on a user message
        first_user = next(
            (i for i in range(head, len(messages)) if messages[i]["role"] == "user"), None
        )
        if first_user is not None and dropped[-1] >= first_user:
            assert messages[dropped[-1] + 1]["role"] == "user"
        if first_user is not None and dropped[0] >= first_user:
            assert messages[dropped[0]]["role"] == "user"


# -- the realistic conversation --------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt4o() -> TokenCounter:
    return counter_for("gpt-4o")


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.8])
def test_every_strategy_on_a_realistic_conversation(
    gpt4o: TokenCounter, strategy: str, fraction: float
) -> None:
    messages = conversation()
    before = copy.deepcopy(messages)
    total = gpt4o.count_messages(messages, TOOLS)
    budget = int(total * fraction)
    fit = fit_messages(messages, budget, gpt4o, strategy=strategy, tools=TOOLS)
    assert messages == before
    assert fit.cut
    check_fit(fit, messages, budget, gpt4o, strategy, TOOLS)
    if strategy == "head-tail":
        notes = [m for m in fit.messages if m["role"] == "system" and NOTE.match(m["content"])]
        assert len(notes) == 1
    # nearly the whole budget is used: at most one more unit would have fitted
    assert budget - fit.input_tokens < 400


def test_strategies_keep_different_turns(gpt4o: TokenCounter) -> None:
    messages = conversation()
    budget = gpt4o.count_messages(messages) // 2
    fits = {s: fit_messages(messages, budget, gpt4o, strategy=s) for s in STRATEGIES}
    recent = fits["keep-recent"]
    assert recent.messages[1] != messages[1]  # the oldest turns went first
    head_tail = fits["head-tail"]
    assert head_tail.messages[1] == messages[1]  # the first turn stays
    middle = fits["middle-out"]
    assert middle.messages[1] == messages[1]
    assert middle.messages[-2] == messages[-2]
    assert all(NOTE.match(str(m["content"])) is None for m in middle.messages)


def test_everything_fits(gpt4o: TokenCounter) -> None:
    messages = conversation()
    total = gpt4o.count_messages(messages, TOOLS)
    for strategy in STRATEGIES:
        fit = fit_messages(messages, total, gpt4o, strategy=strategy, tools=TOOLS)
        assert fit.messages == messages
        assert fit.messages is not messages
        assert (fit.dropped, fit.dropped_tokens, fit.cut) == ([], 0, False)
        assert fit.input_tokens == total


def test_tool_call_and_results_go_together(gpt4o: TokenCounter) -> None:
    messages = conversation()
    call = next(i for i, m in enumerate(messages) if m.get("tool_calls"))
    # a budget that forces middle-out to take out the tool call's neighbourhood
    budget = gpt4o.count_messages(messages) - gpt4o.count_message(messages[call + 1]) - 1
    fit = fit_messages(messages, budget, gpt4o, strategy="middle-out")
    check_fit(fit, messages, budget, gpt4o, "middle-out")


def test_irreducible_part_too_large(gpt4o: TokenCounter) -> None:
    messages = conversation()
    messages[-1] = {"role": "user", "content": "Please read all of this. " * 400}
    irreducible = [messages[0], messages[-1]]
    required = gpt4o.count_messages(irreducible, TOOLS)
    for strategy in STRATEGIES:
        with pytest.raises(InputTooLarge) as caught:
            fit_messages(
                messages,
                500,
                gpt4o,
                strategy=strategy,
                tools=TOOLS,
                agent="reasoner",
                shorten=False,
            )
        error = caught.value
        assert (error.required, error.available, error.agent) == (required, 500, "reasoner")
        assert error.fields == {"agent": "reasoner", "required": required, "available": 500}
    fit = fit_messages(messages, required, gpt4o, tools=TOOLS)
    assert [m["content"] for m in fit.messages] == [m["content"] for m in irreducible]
    assert fit.shortened == 0
    shortened = fit_messages(messages, 500, gpt4o, tools=TOOLS)  # by default: shortened inside
    assert shortened.shortened == 1 and shortened.input_tokens <= 500


def test_everything_after_the_last_user_message_is_kept(gpt4o: TokenCounter) -> None:
    messages = conversation()[:-1]  # ends with an assistant answer to the last user turn
    budget = gpt4o.count_messages(messages) // 3
    fit = fit_messages(messages, budget, gpt4o)
    assert fit.messages[-2:] == messages[-2:]
    check_fit(fit, messages, budget, gpt4o, "keep-recent")


def test_fitted_messages_are_copies(gpt4o: TokenCounter) -> None:
    messages = conversation()
    before = copy.deepcopy(messages)
    fit = fit_messages(messages, 600, gpt4o, strategy="head-tail", tools=TOOLS)
    for message in fit.messages + fit.dropped:
        message["content"] = "changed"
        if "tool_calls" in message:
            message["tool_calls"][0]["id"] = "changed"
    assert messages == before


def test_bad_input() -> None:
    counter = counter_for("any", "approximate")
    ok = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="keep-recent, head-tail, middle-out"):
        fit_messages(ok, 100, counter, strategy="newest")
    with pytest.raises(ValueError, match=r"messages\[1\] has no 'role'"):
        fit_messages([*ok, {"content": "who?"}], 100, counter)
    with pytest.raises(TypeError, match=r"messages\[0\] must be a mapping"):
        fit_messages(["hello"], 100, counter)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="list of chat messages"):
        fit_messages("hello", 100, counter)  # type: ignore[arg-type]
    with pytest.raises(InvalidTokenCount):
        fit_messages(ok, -1, counter)
    with pytest.raises(TypeError, match="TokenCounter"):
        fit_messages(ok, 100, "gpt-4o")  # type: ignore[arg-type]
    with pytest.raises(InputTooLarge) as caught:
        fit_messages([], 2, counter)
    assert caught.value.required == 3


@pytest.mark.skipif(importlib.util.find_spec("litellm") is None, reason="litellm not installed")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fitting_with_litellm_counter(strategy: str) -> None:
    counter = counter_for("claude-sonnet-4-5")
    messages = conversation()
    budget = counter.count_messages(messages, TOOLS) // 2
    fit = fit_messages(messages, budget, counter, strategy=strategy, tools=TOOLS)
    check_fit(fit, messages, budget, counter, strategy, TOOLS)


# -- properties --------------------------------------------------------------------------------


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    serial = iter(range(10_000))

    def text() -> str:
        return f"m{next(serial)} " + "x" * draw(st.integers(0, 120))

    messages: list[Message] = [
        {"role": draw(st.sampled_from(["system", "developer"])), "content": text()}
        for _ in range(draw(st.integers(0, 2)))
    ]
    kinds = st.sampled_from(["user", "assistant", "tool-call", "system"])
    for kind in draw(st.lists(kinds, max_size=25)):
        if kind != "tool-call":
            messages.append({"role": kind, "content": text()})
            continue
        calls = draw(st.integers(1, 3))
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"c{next(serial)}",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": text()},
                    }
                    for _ in range(calls)
                ],
            }
        )
        for k in range(calls):
            messages.append({"role": "tool", "tool_call_id": f"r{k}", "content": text()})
    if draw(st.booleans()):
        messages.append({"role": "user", "content": text()})
    return messages


@settings(max_examples=50)
@given(
    messages=conversations(),
    strategy=st.sampled_from(STRATEGIES),
    share=st.floats(-0.2, 1.1),
    with_tools=st.booleans(),
)
def test_fitting_invariants(
    messages: list[Message], strategy: str, share: float, with_tools: bool
) -> None:
    counter = counter_for("property-model", "approximate")
    tools = TOOLS if with_tools else None
    before = copy.deepcopy(messages)
    head, tail, _ = structure(messages)
    required = counter.count_messages(messages[:head] + messages[tail:], tools)
    total = counter.count_messages(messages, tools)
    # share < 0: below what the irreducible part needs; 0..1: between that and everything
    if share < 0:
        budget = int(required * (1 + share))
    else:
        budget = required + int((total - required) * share)
    try:
        fit = fit_messages(messages, budget, counter, strategy=strategy, tools=tools, agent="a")
    except InputTooLarge as error:
        assert required > budget
        assert (error.required, error.available, error.agent) == (required, budget, "a")
    else:
        if required > budget:  # shortened inside: the irreducible part, its texts cut
            check_shortened_fit(fit, messages[:head] + messages[tail:], budget, counter, tools)
            assert fit.dropped == messages[head:tail]
            assert messages == before
            return
        assert fit.shortened == 0
        check_fit(fit, messages, budget, counter, strategy, tools)
        if strategy == "keep-recent" and fit.dropped:
            # the next older unit would not have fitted
            _, dropped, _ = origin(fit, messages)
            last = dropped[-1]
            unit_start = next(
                (i for i in range(last, head - 1, -1) if messages[i]["role"] == "user"),
                None,
            )
            if unit_start is None:  # before the first user message: a message or tool unit
                unit_start = next(i for i in range(last, -1, -1) if messages[i]["role"] != "tool")
            unit = messages[unit_start : last + 1]
            assert fit.input_tokens + sum(map(counter.count_message, unit)) > budget
    assert messages == before


# -- a message longer than the room left is shortened inside -----------------------------------


def check_shortened_fit(
    fit: Fit,
    irreducible: list[Message],
    budget: int,
    counter: TokenCounter,
    tools: list[dict[str, Any]] | None,
) -> None:
    """Each kept message is its original, or its original's head and tail around a marker."""
    assert fit.input_tokens == counter.count_messages(fit.messages, tools) <= budget
    assert fit.cut and len(fit.messages) == len(irreducible)
    changed = 0
    for sent, original in zip(fit.messages, irreducible, strict=True):
        if sent == original:
            continue
        changed += 1
        assert sent.keys() == original.keys() and sent["role"] == original["role"]
        found = CUT.search(sent["content"])
        assert found is not None
        head, tail = sent["content"][: found.start()], sent["content"][found.end() :]
        text = original["content"]
        assert head and tail and text.startswith(head) and text.endswith(tail)
        assert int(found[1]) == counter.count_text(text[len(head) : len(text) - len(tail)])
    assert changed == fit.shortened >= 1


def crew_prompt(lines: int = 88) -> list[Message]:
    """A CrewAI-style call: a system prompt, and one task prompt holding a whole thread."""
    thread = "\n".join(
        f"message {i}: " + " ".join(["the customer asked about the refund again"] * 3)
        for i in range(lines)
    )
    task = (
        "Current Task: answer the customer's last question.\n\n"
        f"This is the context you're working with:\n{thread}\n\nBegin! Answer precisely."
    )
    return [
        {"role": "system", "content": "You are the reasoner of a support team."},
        {"role": "user", "content": task},
    ]


def check_shortened(
    fit: Fit, original: Message, budget: int, counter: TokenCounter
) -> tuple[str, str, int]:
    """The shortened message keeps the original's head and tail, and a true marker."""
    (shortened,) = [m for m in fit.messages if CUT.search(str(m.get("content")))]
    head, tail = CUT.split(shortened["content"])[0::2]
    cut = int(CUT.search(shortened["content"])[1])
    text = original["content"]
    assert text.startswith(head) and text.endswith(tail) and head and tail
    assert cut == counter.count_text(text[len(head) : len(text) - len(tail)])
    assert fit.input_tokens == counter.count_messages(fit.messages) <= budget
    assert fit.cut and fit.shortened == 1
    return head, tail, cut


def test_one_big_message_is_shortened_inside_not_refused(gpt4o: TokenCounter) -> None:
    messages = crew_prompt()
    before = copy.deepcopy(messages)
    assert irreducible_tokens(messages, gpt4o) == gpt4o.count_messages(messages)
    budget = gpt4o.count_messages(messages) * 5 // 8  # the issue: needs 2,318, granted 1,464
    fit = fit_messages(messages, budget, gpt4o, agent="reasoner")
    assert fit.messages[0] == messages[0]  # the system prompt is short: kept whole
    head, tail, cut = check_shortened(fit, messages[1], budget, gpt4o)
    assert head.startswith("Current Task") and tail.endswith("Answer precisely.")
    assert fit.dropped == [] and fit.dropped_tokens == cut
    assert budget - fit.input_tokens < 20  # it fills the room, it does not throw it away
    assert messages == before


def test_shortening_drops_the_middle_first(gpt4o: TokenCounter) -> None:
    messages = conversation()
    messages[-1] = crew_prompt()[1]
    irreducible = [messages[0], messages[-1]]
    assert irreducible_tokens(messages, gpt4o, tools=TOOLS) == gpt4o.count_messages(
        irreducible, TOOLS
    )
    budget = gpt4o.count_messages(irreducible, TOOLS) // 2
    for strategy in STRATEGIES:
        fit = fit_messages(messages, budget, gpt4o, strategy=strategy, tools=TOOLS)
        assert len(fit.messages) == 2 and fit.messages[0] == messages[0]
        assert len(fit.dropped) == len(messages) - 2
        assert fit.input_tokens == gpt4o.count_messages(fit.messages, TOOLS) <= budget
        _, _, cut = check_shortened(
            Fit(fit.messages, [], 0, gpt4o.count_messages(fit.messages), True, 1),
            messages[-1],
            budget,
            gpt4o,
        )
        middle = sum(gpt4o.count_message(m) for m in messages[1:-1])
        assert fit.dropped_tokens == middle + cut


def test_no_shortening_when_asked_or_when_nothing_can_fit(gpt4o: TokenCounter) -> None:
    messages = crew_prompt()
    required = gpt4o.count_messages(messages)
    with pytest.raises(InputTooLarge) as caught:
        fit_messages(messages, required - 1, gpt4o, shorten=False, agent="reasoner")
    assert (caught.value.required, caught.value.available) == (required, required - 1)
    with pytest.raises(InputTooLarge) as caught:
        fit_messages(messages, 20, gpt4o, agent="reasoner")  # not even the marker fits
    assert (caught.value.required, caught.value.available) == (required, 20)


def test_the_biggest_text_part_is_shortened(gpt4o: TokenCounter) -> None:
    big = crew_prompt()[1]["content"]
    parts = [{"type": "text", "text": "Read this:"}, {"type": "text", "text": big}]
    messages = [{"role": "user", "content": parts}]
    budget = gpt4o.count_messages(messages) // 2
    fit = fit_messages(messages, budget, gpt4o)
    assert fit.input_tokens == gpt4o.count_messages(fit.messages) <= budget
    sent = fit.messages[0]["content"]
    assert sent[0] == parts[0] and CUT.search(sent[1]["text"]) and fit.shortened == 1
    assert parts[1]["text"] == big  # the caller's message is untouched
