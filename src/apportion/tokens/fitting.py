"""Fitting chat messages into a context grant: choose which turns to send.

:func:`fit_messages` returns the messages to send within ``budget`` prompt tokens and the
messages it left out. Three strategies (:data:`STRATEGIES`):

``keep-recent``
    The leading system prompt plus the newest turns that fit, contiguous from the end.
``head-tail``
    The system prompt, then alternately (newest first) the newest and the oldest turns
    while they fit, with one system-role note ``"[N earlier messages (T tokens) omitted]"``
    where turns were skipped. The note counts against the budget; when even the note does
    not fit, the turns are chosen without it.
``middle-out``
    Turns are dropped from the middle of the conversation outward, alternately toward
    the newer and the older end, until the rest fits.

Messages are kept or dropped by whole turns: a user message together with the assistant,
tool and other messages that follow it up to the next user message. So an assistant
message with ``tool_calls`` (or a legacy ``function_call``) is never separated from its
tool results, and a kept stretch of conversation never opens on an orphaned answer (which
some providers, Anthropic's among them, refuse). Before the first user message each message
is its own unit, an assistant tool call still taking its results with it.

Whatever the strategy, the irreducible part is always kept: the leading system/developer
message(s), and the last user message with everything after it (without any user message,
the last unit); :func:`irreducible_tokens` counts it, so a caller can ask for a context
grant that holds it (``begin(..., min_context_tokens=...)``).

When the irreducible part alone exceeds the budget (a history that arrives as one big
prompt, as CrewAI sends a whole thread inside one task prompt), every droppable turn is
dropped and the biggest messages of that part are shortened inside, biggest first: each
keeps its head and its tail (half the kept tokens each, cut at whitespace) around the line
``"[... N tokens cut ...]"``, N the tokens of the text taken out, so the message fills the
room left and is never sent whole over the grant. Only text is shortened (a string
``content``, or the longest text part of a list); tool calls never are. When even that
cannot fit (each shortened message keeps at least a token of head and of tail), or with
``shorten=False``, :class:`~apportion.errors.InputTooLarge` says how many tokens the
irreducible part needs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apportion.errors import InputTooLarge, InvalidArgument, InvalidTokenCount
from apportion.tokens.counting import TokenCounter

__all__ = ["STRATEGIES", "Fit", "fit_messages", "irreducible_tokens"]

STRATEGIES: tuple[str, ...] = ("keep-recent", "head-tail", "middle-out")
"""The fitting strategies, by name."""

_HEAD_ROLES = frozenset({"system", "developer"})
_RESULT_ROLES = frozenset({"tool", "function"})


@dataclass(frozen=True)
class Fit:
    """What to send after fitting messages into a context grant.

    Attributes:
        messages: the messages to send (copies; the originals are untouched), in order;
            with ``head-tail``, the inserted note among them.
        dropped: the original messages left out (copies), in order; the note is not one.
        dropped_tokens: the tokens of the dropped messages (each counted on its own), plus
            the tokens cut out of the shortened ones.
        input_tokens: ``counter.count_messages(messages, tools)``: at most the budget.
        cut: ``True`` when anything was dropped or shortened: the call is input-cut.
        shortened: how many of ``messages`` were shortened inside.
    """

    messages: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    dropped_tokens: int
    input_tokens: int
    cut: bool
    shortened: int = 0


def fit_messages(
    messages: Sequence[Mapping[str, Any]],
    budget: int,
    counter: TokenCounter,
    *,
    strategy: str = "keep-recent",
    tools: Sequence[Mapping[str, Any]] | None = None,
    agent: str | None = None,
    shorten: bool = True,
) -> Fit:
    """Fit ``messages`` (and ``tools``) into ``budget`` prompt tokens.

    Args:
        messages: the chat messages, oldest first (mappings with a ``role``).
        budget: the prompt tokens allowed: the grant's ``context_tokens``.
        counter: the model's token counter (see :func:`~apportion.tokens.counter_for`).
        strategy: one of :data:`STRATEGIES`.
        tools: the tool definitions sent with the call; they count against the budget.
        agent: the agent the call is for, carried into :class:`InputTooLarge`.
        shorten: shorten messages inside when the irreducible part exceeds the budget
            (``False``: raise :class:`InputTooLarge` instead).

    Returns:
        All messages, ``cut=False``, when they fit; else the kept ones and the dropped.

    Raises:
        InputTooLarge: the system prompt, the last user turn and what follows it need more
            than ``budget`` (``required`` says how much), and shortening them cannot fit
            it either (or ``shorten`` is ``False``).
        ValueError: an unknown strategy (the error lists them), or a message without a role.
        TypeError: ``messages`` is not a list of mappings, or ``counter`` is no counter.
        InvalidTokenCount: ``budget`` is not a non-negative integer.
    """
    if strategy not in STRATEGIES:
        raise InvalidArgument(
            "strategy",
            strategy,
            "unknown fitting strategy; choose one of: " + ", ".join(STRATEGIES),
        )
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise InvalidTokenCount("budget", budget, "must be a non-negative integer")
    if not isinstance(counter, TokenCounter):
        raise InvalidArgument("counter", counter, "a TokenCounter (see counter_for)")
    originals = _validate(messages)
    tool_list = _validate_tools(tools)

    total = counter.count_messages(originals, tool_list)
    if total <= budget:
        return Fit([_copy(m) for m in originals], [], 0, total, cut=False)

    head_end, tail_start, units = _layout(originals)
    irreducible = originals[:head_end] + originals[tail_start:]
    required = counter.count_messages(irreducible, tool_list)
    if required > budget:
        shortened = _shortened(irreducible, budget, counter, tool_list) if shorten else None
        if shortened is None:
            raise InputTooLarge(required, budget, agent=agent)
        fitted, input_tokens, cut_tokens, count = shortened
        middle = range(head_end, tail_start)
        return Fit(
            messages=fitted,
            dropped=[_copy(originals[i]) for i in middle],
            dropped_tokens=sum(counter.count_message(originals[i]) for i in middle) + cut_tokens,
            input_tokens=input_tokens,
            cut=True,
            shortened=count,
        )

    costs = [counter.count_message(m) for m in originals]
    unit_costs = [sum(costs[start:end]) for start, end in units]
    choose = _CHOOSERS[strategy]
    with_note = strategy == "head-tail"
    note_reserve = 0
    if with_note:
        middle = range(head_end, tail_start)
        widest = _note(len(middle), sum(costs[i] for i in middle))
        note_reserve = counter.count_message(widest)

    shortfall = 0
    while True:
        room = budget - required - shortfall
        note = with_note and room >= note_reserve
        keep = choose(unit_costs, room - note_reserve if note else room)
        fitted, dropped_idx = _assemble(originals, head_end, tail_start, units, keep, costs, note)
        input_tokens = counter.count_messages(fitted, tool_list)
        if input_tokens <= budget:
            break
        # The counter is not exactly additive (LiteLLM's tool overhead): ask for less room.
        shortfall += input_tokens - budget
    dropped = [_copy(originals[i]) for i in dropped_idx]
    return Fit(
        messages=fitted,
        dropped=dropped,
        dropped_tokens=sum(costs[i] for i in dropped_idx),
        input_tokens=input_tokens,
        cut=bool(dropped),
    )


def irreducible_tokens(
    messages: Sequence[Mapping[str, Any]],
    counter: TokenCounter,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """The prompt tokens of the part of ``messages`` fitting keeps whole when it can.

    That is the leading system/developer message(s) and the last user message with
    everything after it (see the module docstring), with ``tools``: what a context grant
    must hold for :func:`fit_messages` to drop only whole turns and shorten nothing.

    Raises:
        ValueError, TypeError: as :func:`fit_messages`, for bad messages or tools.
    """
    if not isinstance(counter, TokenCounter):
        raise InvalidArgument("counter", counter, "a TokenCounter (see counter_for)")
    originals = _validate(messages)
    tool_list = _validate_tools(tools)
    head_end, tail_start, _ = _layout(originals)
    return counter.count_messages(originals[:head_end] + originals[tail_start:], tool_list)


# -- structure -----------------------------------------------------------------------------


def _validate(messages: object) -> list[Mapping[str, Any]]:
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise InvalidArgument(
            "messages", messages, "a list of chat messages (mappings with a 'role')"
        )
    checked: list[Mapping[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            reason = f"messages[{index}] must be a mapping with a 'role'"
            raise InvalidArgument(f"messages[{index}]", message, reason)
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidArgument(
                "role", role, f"messages[{index}] has no 'role' (a non-empty string)"
            )
        checked.append(message)
    return checked


def _validate_tools(tools: object) -> list[Mapping[str, Any]] | None:
    if tools is None:
        return None
    if isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Sequence):
        raise InvalidArgument("tools", tools, "a list of tool definitions")
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise InvalidArgument(f"tools[{index}]", tool, "a tool must be a mapping")
    return list(tools)


def _starts_tool_unit(message: Mapping[str, Any]) -> bool:
    return message["role"] == "assistant" and bool(
        message.get("tool_calls") or message.get("function_call")
    )


def _units(messages: Sequence[Mapping[str, Any]], start: int, end: int) -> list[tuple[int, int]]:
    """Split ``messages[start:end]`` into droppable units, as ``(start, end)`` ranges.

    A unit is a turn: a user message and every message up to the next user message.
    Before the first user message, each message is a unit, except that an assistant
    message with tool calls takes the tool results that follow it.
    """
    units = []
    index = start
    while index < end:
        stop = index + 1
        if messages[index]["role"] == "user":
            while stop < end and messages[stop]["role"] != "user":
                stop += 1
        elif _starts_tool_unit(messages[index]):
            while stop < end and messages[stop]["role"] in _RESULT_ROLES:
                stop += 1
        units.append((index, stop))
        index = stop
    return units


def _layout(
    messages: Sequence[Mapping[str, Any]],
) -> tuple[int, int, list[tuple[int, int]]]:
    """Return ``(head_end, tail_start, units)``: kept head, kept tail, droppable middle."""
    count = len(messages)
    head_end = 0
    while head_end < count and messages[head_end]["role"] in _HEAD_ROLES:
        head_end += 1
    last_user = next(
        (i for i in range(count - 1, head_end - 1, -1) if messages[i]["role"] == "user"), None
    )
    if last_user is not None:
        return head_end, last_user, _units(messages, head_end, last_user)
    units = _units(messages, head_end, count)
    if not units:
        return head_end, count, []
    return head_end, units[-1][0], units[:-1]


# -- strategies: which units to keep, given their costs and the room for them --------------


def _keep_recent(costs: Sequence[int], room: int) -> list[bool]:
    keep = [False] * len(costs)
    used = 0
    for index in range(len(costs) - 1, -1, -1):
        if used + costs[index] > room:
            break
        keep[index] = True
        used += costs[index]
    return keep


def _head_tail(costs: Sequence[int], room: int) -> list[bool]:
    keep = [False] * len(costs)
    low, high, used = 0, len(costs) - 1, 0
    newest_open = oldest_open = True
    newest_turn = True
    while low <= high and (newest_open or oldest_open):
        take_newest = newest_open and (newest_turn or not oldest_open)
        index = high if take_newest else low
        if used + costs[index] <= room:
            keep[index] = True
            used += costs[index]
            if take_newest:
                high -= 1
            else:
                low += 1
        elif take_newest:
            newest_open = False
        else:
            oldest_open = False
        newest_turn = not newest_turn
    return keep


def _middle_out_order(count: int) -> list[int]:
    """Unit indices from the middle outward: centre, newer, older, newer, older ..."""
    if count == 0:
        return []
    centre = (count - 1) // 2
    order = [centre]
    step = 1
    while len(order) < count:
        if centre + step < count:
            order.append(centre + step)
        if centre - step >= 0:
            order.append(centre - step)
        step += 1
    return order


def _middle_out(costs: Sequence[int], room: int) -> list[bool]:
    keep = [True] * len(costs)
    used = sum(costs)
    for index in _middle_out_order(len(costs)):
        if used <= room:
            break
        keep[index] = False
        used -= costs[index]
    return keep


_CHOOSERS: dict[str, Callable[[Sequence[int], int], list[bool]]] = {
    "keep-recent": _keep_recent,
    "head-tail": _head_tail,
    "middle-out": _middle_out,
}


# -- assembling ----------------------------------------------------------------------------


def _note(count: int, tokens: int) -> dict[str, Any]:
    noun = "message" if count == 1 else "messages"
    return {"role": "system", "content": f"[{count} earlier {noun} ({tokens} tokens) omitted]"}


def _assemble(
    messages: Sequence[Mapping[str, Any]],
    head_end: int,
    tail_start: int,
    units: Sequence[tuple[int, int]],
    keep: Sequence[bool],
    costs: Sequence[int],
    note: bool,
) -> tuple[list[dict[str, Any]], list[int]]:
    """Return the messages to send and the indices of the dropped ones."""
    dropped = [
        i
        for (start, end), kept in zip(units, keep, strict=True)
        if not kept
        for i in range(start, end)
    ]
    fitted = [_copy(m) for m in messages[:head_end]]
    note_placed = False
    for (start, end), kept in zip(units, keep, strict=True):
        if kept:
            fitted.extend(_copy(messages[i]) for i in range(start, end))
        elif note and not note_placed:
            fitted.append(_note(len(dropped), sum(costs[i] for i in dropped)))
            note_placed = True
    fitted.extend(_copy(m) for m in messages[tail_start:])
    return fitted, dropped


# -- shortening inside a message -----------------------------------------------------------

_MIN_SIDE = 1
"""Tokens a shortened text keeps at least on each side of the marker."""


def _marker(tokens: int) -> str:
    return f"\n[... {tokens} tokens cut ...]\n"


def _text_slot(message: Mapping[str, Any]) -> tuple[str, int | None] | None:
    """The text of ``message`` that may be shortened: ``(text, part index or None)``."""
    content = message.get("content")
    if isinstance(content, str):
        return (content, None) if content else None
    if isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):
        best: tuple[str, int | None] | None = None
        for index, part in enumerate(content):
            text = part.get("text") if isinstance(part, Mapping) else None
            if (
                isinstance(part, Mapping)
                and part.get("type") in ("text", "input_text")
                and isinstance(text, str)
                and (best is None or len(text) > len(best[0]))
            ):
                best = (text, index)
        return best if best is not None and best[0] else None
    return None


def _with_text(message: dict[str, Any], text: str, index: int | None) -> None:
    if index is None:
        message["content"] = text
    else:
        message["content"][index] = {**message["content"][index], "text": text}


def _cut_text(text: str, keep: int, tokens: int, counter: TokenCounter) -> tuple[str, int]:
    """``text`` keeping about ``keep`` of its ``tokens``: head, marker, tail; and the cut."""
    per_token = len(text) / max(tokens, 1)
    side = max(_MIN_SIDE, keep // 2)
    head_end = max(1, round(side * per_token))
    tail_start = min(len(text) - 1, len(text) - max(1, round((keep - side) * per_token)))
    if tail_start <= head_end:
        return text, 0
    space = text.rfind(" ", head_end // 2, head_end)  # end the head at a word's end
    head_end = space if space > 0 else head_end
    space = text.find(" ", tail_start, tail_start + (len(text) - tail_start) // 2)
    tail_start = space if space > 0 else tail_start
    cut = counter.count_text(text[head_end:tail_start])
    return text[:head_end] + _marker(cut) + text[tail_start:], cut


def _shortened(
    messages: Sequence[Mapping[str, Any]],
    budget: int,
    counter: TokenCounter,
    tools: Sequence[Mapping[str, Any]] | None,
) -> tuple[list[dict[str, Any]], int, int, int] | None:
    """``messages`` with the biggest texts shortened inside to fit ``budget``, or ``None``.

    Returns ``(messages, their tokens, tokens cut, messages shortened)``.
    """
    fitted = [_copy(m) for m in messages]
    slots = [(i, _text_slot(m)) for i, m in enumerate(messages)]
    order = sorted(
        ((i, slot) for i, slot in slots if slot is not None),
        key=lambda item: -counter.count_text(item[1][0]),
    )
    total = counter.count_messages(fitted, tools)
    cut_tokens = shortened = 0
    for index, (text, part) in order:
        if total <= budget:
            break
        tokens = counter.count_text(text)
        keep = tokens - (total - budget) - counter.count_text(_marker(tokens))
        cut = 0
        while True:
            keep = max(keep, 2 * _MIN_SIDE)
            new, cut = _cut_text(text, keep, tokens, counter)
            _with_text(fitted[index], new, part)
            total = counter.count_messages(fitted, tools)
            if total <= budget or keep <= 2 * _MIN_SIDE or not cut:
                break
            keep -= total - budget  # the text is not evenly dense: ask for less
        if cut:
            cut_tokens += cut
            shortened += 1
    return (fitted, total, cut_tokens, shortened) if total <= budget else None


def _copy(message: Mapping[str, Any]) -> dict[str, Any]:
    return {key: copy.deepcopy(value) for key, value in message.items()}
