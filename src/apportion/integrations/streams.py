"""Streamed answers: what a stream delivered, and a cut stream extended into one stream.

:func:`stream_steps` is the streaming twin of :meth:`ChatCall.steps
<apportion.integrations.chat.ChatCall.steps>` (the semantics are described under
"Streaming" in :mod:`apportion.integrations.chat`); :class:`StreamTally` counts the chunks
as they pass and decides which the caller reads, so that the calls of one answer (the
first, then its continuations) read as a single stream. The drivers
(:class:`~apportion.integrations.drivers.BudgetedStream`,
:class:`~apportion.integrations.drivers.AsyncBudgetedStream`) hand it every chunk and
yield what it gives back.
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, ClassVar

from apportion.errors import ApportionError
from apportion.integrations.chat import CallReport, ChatCall, Op
from apportion.integrations.chat import _int as read_int
from apportion.integrations.protocols import LENGTH, RESPONSES
from apportion.ledger import Grant


@dataclass
class StreamTally:
    """What a streamed answer delivered so far, and which chunks its caller reads.

    The part both protocols share; :class:`ChatTally` and :class:`ResponsesTally` read
    their protocol's chunks (:meth:`add`). Per call (reset by :meth:`next_call`):
    ``chunks``, ``texts`` (per choice or output item), ``tool_calls``, ``finish_reason``,
    ``usage``. Over the whole answer: ``output_tokens`` (counted as the chunks arrived) and
    ``answer`` (the text of the calls before).

    The chunks that end an answer are held back (``held``) until the call is over: if a
    continuation follows, they are dropped or stripped of their ending (:meth:`next_call`);
    else they are passed at the end (:meth:`end`).
    """

    counter: Any
    hide_usage: bool = False
    chunks: int = 0
    output_tokens: int = 0
    texts: dict[int, str] = field(default_factory=dict)
    tool_calls: bool = False
    finish_reason: str | None = None
    usage: Any = None
    answer: str = ""
    calls: int = 0
    held: list[Any] = field(default_factory=list)
    ready: list[Any] = field(default_factory=list)

    usage_keys: ClassVar[tuple[str, str]] = ("prompt_tokens", "completion_tokens")

    def add(self, chunk: Any) -> list[Any]:
        """Count one chunk; return the chunks to pass on to the caller now."""
        raise NotImplementedError

    def ask_usage(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` asking the provider to stream the usage, where the protocol must ask."""
        return params

    @property
    def last(self) -> Any:
        """The call's last response as a whole, where the protocol streams one (else None)."""
        return None

    def _count(self, index: int, piece: str) -> None:
        self.texts[index] = self.texts.get(index, "") + piece
        self.output_tokens += self.counter.count_text(piece)

    @property
    def text(self) -> str:
        """The answer so far: the calls before, then this call's first choice."""
        return self.answer + self.texts.get(0, "")

    def continuable(self, choices: int) -> bool:
        """Whether this call's answer was cut and can be continued (one plain-text choice)."""
        return (
            self.finish_reason == LENGTH
            and choices == 1
            and set(self.texts) == {0}
            and not self.tool_calls
            and bool(self.texts[0])
        )

    def settle(self, prompt_counted: int) -> tuple[int, int, bool]:
        """This call's ``(prompt, completion)`` tokens, and whether they were counted here.

        The provider's usage if it sent one; else the prompt as counted and the completion
        counted from the text. A completion reported as 0 beside text is counted too.
        """
        prompt = read_int(getattr(self.usage, self.usage_keys[0], None))
        completion = read_int(getattr(self.usage, self.usage_keys[1], None))
        estimated = False
        if not prompt:
            prompt, estimated = prompt_counted, True
        written = [t for t in self.texts.values() if t]
        if completion is None or (completion == 0 and written):
            completion = sum(self.counter.count_text(t) for t in written)
            estimated = True
        return prompt, completion, estimated

    def next_call(self) -> None:
        """A continuation follows: start counting a new call."""
        self.held = []
        self.answer = self.text
        self.calls += 1
        self.chunks = 0
        self.texts = {}
        self.tool_calls = False
        self.finish_reason = None
        self.usage = None

    def end(self, report: CallReport) -> None:
        """The answer is over: pass the held chunks."""
        self.ready.extend(self.held)
        self.held = []

    def drain(self) -> list[Any]:
        """The chunks ready for the caller (between calls, and at the end)."""
        ready, self.ready = self.ready, []
        return ready


@dataclass
class ChatTally(StreamTally):
    """A streamed chat completion's chunks.

    A chunk that ends a choice (a ``finish_reason``) is held back until the call is over:
    if a continuation follows, its ``finish_reason`` is dropped (the chunk is passed only
    if it also carries text); else it is passed at the end. The provider's usage-only chunk
    is kept from the caller when apportion asked for it (``hide_usage``); when the caller
    asked, the last one is passed at the end, its usage summed over the calls. The
    continuation's chunks carry the first call's ``id``.
    """

    stream_id: Any = None
    usage_chunk: Any = None

    def add(self, chunk: Any) -> list[Any]:
        """Count one chunk; return the chunks to pass on to the caller now."""
        self.chunks += 1
        if self.calls and self.stream_id is not None:  # one stream: the first call's id
            with suppress(AttributeError, TypeError, ValueError):
                chunk.id = self.stream_id
        elif self.stream_id is None:
            self.stream_id = getattr(chunk, "id", None)
        usage = getattr(chunk, "usage", None)
        if usage is not None and getattr(usage, "completion_tokens", None) is not None:
            self.usage = usage
        written = ends = role = False
        for choice in getattr(chunk, "choices", None) or ():
            delta = getattr(choice, "delta", None)
            index = getattr(choice, "index", 0) or 0
            piece = getattr(delta, "content", None)
            if isinstance(piece, str) and piece:
                self._count(index, piece)
                written = True
            for call in getattr(delta, "tool_calls", None) or ():
                args = getattr(getattr(call, "function", None), "arguments", None)
                if isinstance(args, str) and args:
                    self._count(index, args)
                self.tool_calls = written = True
            if getattr(choice, "finish_reason", None):
                self.finish_reason = choice.finish_reason
                ends = True
            role = role or bool(getattr(delta, "role", None))
        if ends:
            self.held.append(chunk)
            return []
        if usage is not None and not written and not role:  # the usage-only chunk
            if not self.hide_usage:
                self.usage_chunk = chunk
            return []
        if role and not written and self.calls:  # a continuation's opening chunk
            return []
        return [chunk]

    def ask_usage(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` asking for the usage chunk (``stream_options``), kept back if we asked."""
        options = dict(params.get("stream_options") or {})
        if not options.get("include_usage"):
            params["stream_options"] = {**options, "include_usage": True}
            self.hide_usage = True
        return params

    def next_call(self) -> None:
        """A continuation follows: the held chunks lose their finish reason."""
        for chunk in self.held:
            if _carries_output(chunk):
                for choice in getattr(chunk, "choices", None) or ():
                    with suppress(AttributeError, TypeError, ValueError):
                        choice.finish_reason = None
                self.ready.append(chunk)
        super().next_call()

    def end(self, report: CallReport) -> None:
        """The answer is over: pass the held chunks, then the caller's usage chunk."""
        super().end(report)
        if self.usage_chunk is not None:
            if report.calls > 1:
                _set_usage(self.usage_chunk.usage, report.input_tokens, report.output_tokens)
            self.ready.append(self.usage_chunk)
            self.usage_chunk = None


_OPENING = frozenset({"response.created", "response.in_progress", "response.queued"})
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_DONE = frozenset(
    {"response.output_text.done", "response.content_part.done", "response.output_item.done"}
)
_OUTPUT_DELTAS = frozenset(
    {
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.refusal.delta",
    }
)
_REASONING_DELTAS = frozenset(
    {"response.reasoning_text.delta", "response.reasoning_summary_text.delta"}
)


@dataclass
class ResponsesTally(StreamTally):
    """A streamed Responses answer's typed events (``response.output_text.delta`` ...).

    The usage comes in the terminal event's response (``response.completed``,
    ``response.incomplete``, ``response.failed``), which is held back with the message's
    ``done`` events (they carry the text so far). A continuation's events read as the same
    message of the same stream: its opening events (``response.created``, the message's
    ``output_item.added`` and ``content_part.added``) are dropped, its deltas carry the
    first message's ``item_id`` and ``output_index``, and every event passed after the
    first call is numbered on from the last one passed (``sequence_number``). At the end,
    the held events carry the whole answer: the ``done`` events its text, the terminal
    event the last response (its id chains the answer) with the joined text and the usage
    summed over the calls (as :meth:`RESPONSES.merge
    <apportion.integrations.protocols.Protocol.merge>` does for a plain call).
    """

    response: Any = None
    others: bool = False
    item: tuple[Any, Any] | None = None
    number: int | None = None

    usage_keys: ClassVar[tuple[str, str]] = ("input_tokens", "output_tokens")

    def add(self, chunk: Any) -> list[Any]:
        """Count one event; return the events to pass on to the caller now."""
        self.chunks += 1
        kind = getattr(chunk, "type", None)
        index = getattr(chunk, "output_index", 0)
        index = index if isinstance(index, int) else 0
        if kind == "response.output_text.delta":
            self._count(index, str(getattr(chunk, "delta", "") or ""))
            self._as_first_item(chunk)
        elif kind in _OUTPUT_DELTAS or kind in _REASONING_DELTAS:
            piece = getattr(chunk, "delta", None)
            if isinstance(piece, str) and piece:
                self.output_tokens += self.counter.count_text(piece)
            if kind in _OUTPUT_DELTAS:
                self.tool_calls = True
        elif kind == "response.output_item.added":
            item_kind = getattr(getattr(chunk, "item", None), "type", None)
            if item_kind not in ("message", "reasoning"):
                self.others = True
            elif item_kind == "message" and self.item is None:
                self.item = (getattr(chunk.item, "id", None), index)
            elif item_kind == "message":
                return []  # the continuation's message: the caller has the first one open
        elif (kind == "response.content_part.added" and self.calls) or (
            kind in _OPENING and self.calls
        ):
            return []
        elif kind in _TERMINAL:
            self.response = getattr(chunk, "response", None)
            usage = getattr(self.response, "usage", None)
            if getattr(usage, "output_tokens", None) is not None:
                self.usage = usage
            self.finish_reason = RESPONSES.finish_reason(self.response)
            self.held.append(chunk)
            return []
        if kind in _DONE:
            self.held.append(chunk)
            return []
        return [self._numbered(chunk)]

    @property
    def last(self) -> Any:
        """The call's response, from its terminal event (its id continues the answer)."""
        return self.response

    @property
    def text(self) -> str:
        """The answer so far: the calls before, then this call's message text."""
        return self.answer + "".join(self.texts[k] for k in sorted(self.texts))

    def continuable(self, choices: int) -> bool:
        """Whether this call's answer was cut and can be continued (one message of text)."""
        return (
            self.finish_reason == LENGTH
            and len(self.texts) == 1
            and not self.tool_calls
            and not self.others
            and bool(self.text)
        )

    def next_call(self) -> None:
        """A continuation follows: the held events (the cut answer's ending) are dropped."""
        super().next_call()
        self.response = None
        self.others = False

    def end(self, report: CallReport) -> None:
        """The answer is over: the held events, carrying the whole answer, are passed."""
        if self.calls:
            text = self.text
            for event in self.held:
                self._as_first_item(event)
                _set_text(event, text)
                if getattr(event, "type", None) in _TERMINAL:
                    RESPONSES.merge(None, event.response, text, report)
        self.ready.extend(self._numbered(event) for event in self.held)
        self.held = []

    def _as_first_item(self, event: Any) -> None:
        """Name the first message in a continuation's event about its message."""
        if self.calls and self.item is not None:
            with suppress(AttributeError, TypeError, ValueError):
                event.item_id, event.output_index = self.item

    def _numbered(self, event: Any) -> Any:
        """The event, numbered on from the last one passed once a continuation began."""
        number = getattr(event, "sequence_number", None)
        if self.calls and self.number is not None:
            number = self.number + 1
            with suppress(AttributeError, TypeError, ValueError):
                event.sequence_number = number
        if isinstance(number, int):
            self.number = number
        return event


def tally_for(call: ChatCall) -> StreamTally:
    """The tally of ``call``'s protocol."""
    if call.protocol is RESPONSES:
        return ResponsesTally(call.counter)
    return ChatTally(call.counter)


def _set_text(event: Any, text: str) -> None:
    """Set the text a ``done`` event carries (of the text, the part, or the message)."""
    with suppress(AttributeError, TypeError, ValueError, IndexError):
        kind = getattr(event, "type", None)
        if kind == "response.output_text.done":
            event.text = text
        elif kind == "response.content_part.done":
            event.part.text = text
        elif kind == "response.output_item.done" and getattr(event.item, "type", None) == "message":
            event.item.content[0].text = text


def _set_usage(usage: Any, prompt: int, completion: int) -> None:
    """Set a chunk's ``usage`` to these totals, where it can be set."""
    with suppress(AttributeError, TypeError, ValueError):
        usage.prompt_tokens = prompt
        usage.completion_tokens = completion
        usage.total_tokens = prompt + completion


def _carries_output(chunk: Any) -> bool:
    for choice in getattr(chunk, "choices", None) or ():
        delta = getattr(choice, "delta", None)
        if getattr(delta, "content", None) or getattr(delta, "tool_calls", None):
            return True
    return False


def stream_steps(call: ChatCall, tally: StreamTally) -> Generator[Op, Any, CallReport]:
    """The streaming call: each ``stream`` op returns when that call's stream has ended.

    A call cut at its cap (one plain-text choice) is continued as the non-streaming call
    is (the same follow-up messages, the same extension, the same wrap-up within the
    reserve once extending is refused or used up), by follow-up streams the caller reads
    after the first; the grant is finished once, with the usage of every call.
    """
    report = call.report
    grant, messages, sent = yield from call._open()
    first_cap = grant.working_tokens
    try:
        yield Op("model", "stream", (), tally.ask_usage(call.first_params(messages, grant)))
    except GeneratorExit:  # the stream was dropped unread: its grant lapses with its lease
        raise  # or with the request's close (a stream closed by its reader is StreamClosed)
    except BaseException:
        if not tally.chunks:
            yield from call._release(grant)
            raise
        _account(report, tally, sent)
        yield from call._finish(grant, True, quiet=True)
        raise
    _account(report, tally, sent)
    refused = lapsed = False
    while tally.continuable(call.n) and report.extensions < call.max_extensions:
        base, follow = call.protocol.follow_up(
            call.params, messages, call.instructions, tally.text, tally.last
        )
        resent = call.counter.count_messages(follow, tools=call.tools)
        try:
            bigger = yield Op("req", "extend", (grant, first_cap), {"context_tokens": resent})
        except ApportionError:  # the grant lapsed ...: settle what was used
            lapsed = True
            break
        if bigger is None:
            refused = True
            break
        extra = bigger.output_tokens - grant.output_tokens
        grant = report.grant = bigger  # renewed as the continuation streams
        report.extensions += 1
        yield from _follow(call, tally, grant, call.call_params(follow, extra, base), resent)
    used_up = report.extensions >= call.max_extensions > 0
    if report.finish_reason == LENGTH and not lapsed and (refused or used_up):
        wrap = call.wrap_up_call(grant, messages, tally.text) if tally.continuable(call.n) else None
        if wrap is not None:  # conclude within the reserve instead of ending cut
            yield from _follow(call, tally, grant, *wrap)
            call.wrapped_up = True
    yield from call._finish(grant, report.finish_reason == LENGTH)
    tally.end(report)
    return report


def _follow(
    call: ChatCall, tally: StreamTally, grant: Grant, params: dict[str, Any], resent: int
) -> Generator[Op, Any, None]:
    """Stream a follow-up call (a continuation or the wrap-up) on from the calls before."""
    tally.next_call()
    try:
        yield Op("model", "stream", (), tally.ask_usage(params))
    except GeneratorExit:
        raise
    except BaseException:
        if tally.chunks:
            _account(call.report, tally, resent)
        yield from call._finish(grant, True, quiet=True)
        raise
    _account(call.report, tally, resent)


class StreamClosed(Exception):
    """What the drivers throw into :func:`stream_steps` when the reader closes the stream."""


def _account(report: CallReport, tally: StreamTally, prompt_counted: int) -> None:
    """Add the call that just streamed to the report."""
    prompt, completion, estimated = tally.settle(prompt_counted)
    report.input_tokens += prompt
    report.output_tokens += completion
    report.usage_estimated = report.usage_estimated or estimated
    report.calls += 1
    report.finish_reason = tally.finish_reason
