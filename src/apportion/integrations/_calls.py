"""Budgeted chat completions, written once for every client (LiteLLM, OpenAI; sync, async).

:class:`ChatCall` holds the semantics of one budgeted call as a generator that yields
:class:`Op` values (a request operation, or a model call) and receives their results or
errors, like :mod:`apportion.controller`'s ``_Steps``. The shells below only carry those
operations out: :func:`run` and :func:`arun` with blocking or awaited calls, and
:class:`BudgetedStream` / :class:`AsyncBudgetedStream` for streaming. The client modules
(:mod:`~apportion.integrations.litellm`, :mod:`~apportion.integrations.openai`) only say
which function makes the call and how to price it.

One call, step by step:

1. **Count** the messages (and ``tools``) with the model's tokenizer
   (:func:`~apportion.tokens.counting.counter_for`; an unknown model raises ``NoTokenizer``
   or ``UnknownModel`` before anything is reserved, unless ``counter="approximate"``).
2. **Begin** a grant with that count as ``input_tokens``; the caller's own ``max_tokens``
   (or ``max_completion_tokens``) is passed as the most output wanted, and the caller's
   ``model`` as the call's model (priced from the controller's catalog). When the
   controller's policy routes (``routes = True``) and the grant names another model
   (``grant.model``), that model is called instead and priced: the caller's model is the
   default a routing policy may override. (Counting and fitting keep the caller's model's
   tokenizer.) A non-routing policy never changes the model.
3. **Fit** the messages into the grant's ``context_tokens``
   (:func:`~apportion.tokens.fitting.fit_messages`). The begin asked for a context of at
   least the irreducible part (``min_context_tokens``, granted when the request can
   afford it); when the grant is smaller, the biggest messages of that part are shortened
   inside (head and tail kept, a marker of the tokens cut). If even that cannot fit, the
   grant is released and ``InputTooLarge`` says how many tokens that part needs.
4. **Cap** the output at the grant: ``max_tokens`` = ``grant.output_tokens`` (divided by
   ``n`` when several choices are asked for). OpenAI reasoning models (``o1``, ``o3``,
   ``o4-mini``, ``gpt-5`` ..., any provider prefix) get ``max_completion_tokens`` instead,
   which caps reasoning and answer together. When Anthropic extended thinking is on
   (``thinking={"type": "enabled", "budget_tokens": B}``), ``max_tokens`` covers thinking
   and answer, so the thinking budget becomes ``min(B, 3/4 of the cap)``, leaving at least
   a quarter for the answer; when that is below Anthropic's minimum of 1,024 tokens,
   thinking is left off for the call (``CallReport.thinking_budget`` is then 0).
5. **Call** the model; read ``usage`` and ``finish_reason``.
6. **Extend** when ``finish_reason == "length"`` and the answer is plain text (one choice,
   no tool calls): ask the policy for as many output tokens again as the first call was
   granted, declaring as ``context_tokens`` the follow-up prompt, which is the fitted
   messages, then an assistant message holding the answer so far, then a user message
   :data:`CONTINUE_PROMPT`. If granted, make that follow-up call capped at what was granted
   and append its text to the answer; repeat up to ``max_extensions`` times (3 by default).
   (A follow-up ends with a user turn, so it works with every provider; it is not
   Anthropic's assistant prefill.) The caller's ``max_tokens`` thus caps each call, not the
   whole answer: pass ``max_extensions=0`` to stop at the first cap.
7. **Finish** the grant with the real usage summed over all the calls (every prompt sent
   and every completion written) and ``truncated`` = the last call stopped on ``length``.
   The returned response is the first call's response with the answer's text joined, the
   last ``finish_reason``, and ``usage`` summed over the calls; its ``apportion`` attribute
   (see :func:`report_of`) is a :class:`CallReport` with the cost of the model called: the
   controller's catalog when the model is one of the user's own (a YAML catalog), else
   LiteLLM's model cost map, else the catalog (``None`` for a model nothing prices).

Bad input and failures:

* **No usage** from the provider (or LiteLLM's zero placeholder): the prompt is counted
  (what was sent) and the completion is counted from the returned text (and tool-call
  arguments); the report says ``usage_estimated=True``.
* **Usage above the grant** is settled as reported: the ledger records the over-use and
  charges what the pool cannot cover as overflow, so the ceiling holds for later grants.
* **An error from the client** (HTTP error, timeout, cancellation): if no call has
  succeeded yet, the grant is released; otherwise it is finished with what the successful
  calls used (``truncated=True``). The error is re-raised either way. An error of the
  store while settling does not hide the client's error (the grant then lapses with its
  lease).

Streaming (``stream=True``): the grant is begun, the messages fitted and the call made
before the stream is returned (so refusals and HTTP errors raise at the call site). The
returned stream yields the client's chunks unchanged while counting their text
(``output_tokens`` so far), and settles when the stream ends, with the provider's usage if
it sent one (``stream_options={"include_usage": True}`` is added when the caller did not
ask for it, and the usage-only chunk is then kept from the caller) or the counted text.
If the stream fails or is closed early, the grant is finished with what arrived
(``truncated=True``: the provider bills a partial stream), or released if nothing did.
Streams are not extended: a streamed answer cut by its cap is settled as truncated.
Through LiteLLM, a provider that streams no usage gets a usage chunk counted by LiteLLM
itself, which cannot be told from the provider's own, so it is not marked estimated.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
    Sized,
)
from contextlib import suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple

from apportion.errors import ApportionError, BudgetExceeded, InvalidArgument
from apportion.ledger import Grant, check_name, check_tokens

CONTINUE_PROMPT = "Continue exactly where you stopped."
"""The user turn that asks a cut answer to go on (after the answer so far)."""

MAX_EXTENSIONS = 3
"""Follow-up calls made at most for one cut answer, by default."""

_LITELLM_SOURCE = "LiteLLM"

THINKING_MIN_BUDGET = 1024
"""Anthropic's smallest thinking budget; below it, thinking is left off."""

_REASONING = re.compile(r"^(o\d+|gpt-5)([-.:_].*)?$")

Cost = Callable[[str, int, int], "float | None"]
"""Prices ``(model, prompt_tokens, completion_tokens)`` in USD, or ``None`` if unknown."""


class Op(NamedTuple):
    """One operation :class:`ChatCall` asks its shell to carry out.

    Attributes:
        target: ``"req"`` (a request method), ``"model"`` (a client call), or ``"note"``
            (``req.annotate``: optional, and its errors are ignored).
        method: the request method (``begin``, ``extend``, ``finish``, ``release``), or
            ``call`` / ``stream`` for the model.
        args: positional arguments of the request method.
        kwargs: its keyword arguments; for the model, the call's parameters.
    """

    target: str
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class CallReport:
    """What one budgeted call did (``response.apportion``; ``stream.report``).

    Attributes:
        agent: the agent that called.
        model: the model called.
        grant: the grant as it ended (extensions included), or ``None`` if refused.
        counted_input: tokens counted in the caller's messages (``input_tokens`` of begin).
        sent_input: tokens counted in the fitted messages sent by the first call.
        input_tokens: prompt tokens billed over all the calls (estimated if no usage).
        output_tokens: completion tokens billed over all the calls (estimated if no usage).
        usage_estimated: some call's usage was counted here, not reported by the provider.
        input_cut: messages were dropped or shortened to fit the context grant.
        dropped_messages: messages dropped (or shortened) by fitting.
        dropped_tokens: tokens removed by fitting.
        calls: model calls made (1 plus the follow-ups).
        extensions: extensions granted (follow-up calls).
        finish_reason: the last call's finish reason.
        truncated: the answer ended cut at its cap.
        overuse: tokens used beyond the grant (the ledger records them too).
        cost_usd: the calls' cost (the model called: the user's catalog, else LiteLLM's
            model cost map), or ``None`` if unpriced.
        thinking_budget: the Anthropic thinking budget sent on the first call (0: left
            off), or ``None`` when thinking was not asked for.
        settled: ``"finish"``, ``"release"``, or ``None`` while still open.
    """

    agent: str
    model: str
    grant: Grant | None = None
    counted_input: int = 0
    sent_input: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usage_estimated: bool = False
    input_cut: bool = False
    dropped_messages: int = 0
    dropped_tokens: int = 0
    calls: int = 0
    extensions: int = 0
    finish_reason: str | None = None
    truncated: bool = False
    overuse: int = 0
    cost_usd: float | None = None
    thinking_budget: int | None = None
    settled: str | None = None


def report_of(response: Any) -> CallReport | None:
    """The :class:`CallReport` attached to a response (or stream), if any."""
    report = getattr(response, "apportion", None)
    return report if isinstance(report, CallReport) else None


def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` is an OpenAI reasoning model, capped by ``max_completion_tokens``."""
    return bool(_REASONING.match(model.rsplit("/", 1)[-1].lower()))


# ----------------------------------------------------------------------- the core


class ChatCall:
    """The semantics of one budgeted chat completion (see the module docstring).

    Args:
        agent: the agent calling.
        model: the model name, as the client takes it.
        messages: the chat messages.
        params: the rest of the client's parameters (``max_tokens`` is read as a cap).
        counter: ``None`` (the model's tokenizer), ``"approximate"``, or a ``TokenCounter``.
        fit: the fitting strategy (see :data:`apportion.tokens.fitting.STRATEGIES`).
        max_extensions: follow-up calls allowed for a cut answer.
        cost: prices the usage (``None``: no cost).

    Raises:
        TypeError, ValueError: bad arguments; nothing is reserved.
        NoTokenizer, UnknownModel: no tokenizer for ``model``.
    """

    def __init__(
        self,
        agent: str,
        model: str,
        messages: Sequence[Any],
        params: Mapping[str, Any],
        *,
        counter: Any = None,
        fit: str = "keep-recent",
        max_extensions: int = MAX_EXTENSIONS,
        cost: Cost | None = None,
    ) -> None:
        from apportion.tokens.counting import counter_for

        if not isinstance(agent, str):
            raise InvalidArgument("agent", agent, "an agent name")
        if not isinstance(model, str) or not model:
            raise InvalidArgument("model", model, "a model name")
        model = check_name("model", model)
        if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
            raise InvalidArgument("messages", messages, "a list of chat messages")
        if type(max_extensions) is not int or not 0 <= max_extensions <= 1000:
            raise InvalidArgument("max_extensions", max_extensions, "an integer from 0 to 1000")
        params = dict(params)
        caps = [
            check_tokens(k, params.pop(k))
            for k in ("max_tokens", "max_completion_tokens")
            if params.get(k) is not None
        ]
        self.cap: int | None = min(caps) if caps else None
        n = params.get("n")
        n = 1 if n is None else n
        if type(n) is not int or not 1 <= n <= 128:
            raise InvalidArgument("n", n, "a number of choices from 1 to 128")
        self.n = n
        self.agent = agent
        self.model = model
        self.requested = model
        self.routes = False
        self.catalog: Callable[[], Any] | None = None
        self.messages = list(messages)
        self.params = params
        self.tools = params.get("tools")
        self.counter = counter_for(model, counter)
        self.strategy = fit
        self.max_extensions = max_extensions
        self.cost = cost
        self.stream = bool(params.get("stream"))
        self.report = CallReport(agent, model)

    def _reroute(self, model: str) -> None:
        """Call ``model`` (the routing policy's choice) instead of the caller's model."""
        self.model = model
        self.report.model = model

    def _price(self, input_tokens: int, output_tokens: int) -> float | None:
        """USD cost of the calls: the user's catalog first, then ``cost``, then LiteLLM's."""
        info = None
        with suppress(Exception):  # pricing is informative: it never breaks settling
            catalog = self.catalog() if self.catalog is not None else None
            info = catalog.find(self.model) if catalog is not None else None
        info = info if info is not None and info.priced else None
        if info is not None and not info.source.startswith(_LITELLM_SOURCE):
            return float(info.cost(input_tokens, output_tokens))
        price = None
        if self.cost is not None:
            with suppress(Exception):
                price = self.cost(self.model, input_tokens, output_tokens)
        if price is None and info is not None:
            price = float(info.cost(input_tokens, output_tokens))
        return price

    # -------------------------------------------------------------- parameters

    def call_params(self, messages: list[Any], cap: int) -> dict[str, Any]:
        """The client's parameters for one call capped at ``cap`` output tokens."""
        params = dict(self.params)
        params["model"] = self.model
        params["messages"] = messages
        per_choice = max(1, cap // self.n)
        key = "max_completion_tokens" if is_reasoning_model(self.model) else "max_tokens"
        params[key] = per_choice
        thinking = params.get("thinking")
        if isinstance(thinking, Mapping) and thinking.get("type") == "enabled":
            wanted = thinking.get("budget_tokens")
            room = per_choice - max(1, per_choice // 4)
            budget = room if not isinstance(wanted, int) else min(wanted, room)
            if budget >= THINKING_MIN_BUDGET:
                params["thinking"] = {**thinking, "budget_tokens": budget}
            else:
                del params["thinking"]
                budget = 0
            if self.report.thinking_budget is None:
                self.report.thinking_budget = budget
        return params

    # ------------------------------------------------------------------ steps

    def _open(self) -> Generator[Op, Any, tuple[Grant, list[Any], int]]:
        """Count, begin, fit; returns ``(grant, fitted messages, their tokens)``."""
        from apportion.tokens.fitting import fit_messages, irreducible_tokens

        report = self.report
        counted = self.counter.count_messages(self.messages, tools=self.tools)
        report.counted_input = counted
        floor = min(counted, irreducible_tokens(self.messages, self.counter, tools=self.tools))
        grant: Grant = yield Op(
            "req",
            "begin",
            (self.agent, counted, self.cap),
            {"model": self.requested, "min_context_tokens": floor},
        )
        report.grant = grant
        if self.routes and grant.model and grant.model != self.model:
            self._reroute(grant.model)
        try:
            if grant.output_tokens < self.n:
                raise BudgetExceeded(
                    self.agent,
                    counted + self.n,
                    grant.total,
                    reason="the grant leaves no output tokens",
                )
            fit = fit_messages(
                self.messages,
                grant.context_tokens,
                self.counter,
                strategy=self.strategy,
                tools=self.tools,
                agent=self.agent,
            )
        except BaseException:
            yield from self._release(grant)
            raise
        dropped = fit.dropped
        report.dropped_messages = len(dropped) if isinstance(dropped, Sized) else int(dropped)
        report.dropped_messages += fit.shortened
        report.dropped_tokens = int(fit.dropped_tokens)
        report.input_cut = bool(fit.cut) or report.dropped_messages > 0
        report.sent_input = int(fit.input_tokens)
        return grant, list(fit.messages), report.sent_input

    def _note(self, grant: Grant) -> Op:
        """Details of the call for telemetry (``req.annotate``, where the request has it)."""
        report = self.report
        fields = {
            "model": self.model,
            "calls": report.calls,
            "extensions": report.extensions,
            "usage_estimated": report.usage_estimated,
            "input_cut": report.input_cut,
            "dropped_messages": report.dropped_messages,
            "dropped_tokens": report.dropped_tokens,
            "finish_reason": report.finish_reason,
            "cost_usd": report.cost_usd,
        }
        return Op("note", "annotate", (grant,), fields)

    def _release(self, grant: Grant) -> Generator[Op, Any, None]:
        yield self._note(grant)
        with suppress(ApportionError):  # the caller's error matters more; the lease reclaims
            yield Op("req", "release", (grant,), {})
        self.report.settled = "release"

    def _finish(
        self, grant: Grant, truncated: bool, *, quiet: bool = False
    ) -> Generator[Op, Any, None]:
        report = self.report
        report.grant = grant
        report.truncated = truncated
        report.overuse = max(0, report.input_tokens + report.output_tokens - grant.total)
        report.cost_usd = self._price(report.input_tokens, report.output_tokens)
        yield self._note(grant)
        op = Op(
            "req",
            "finish",
            (grant,),
            {
                "input_tokens": report.input_tokens,
                "output_tokens": report.output_tokens,
                "truncated": truncated,
            },
        )
        if quiet:
            with suppress(ApportionError):
                yield op
        else:
            yield op
        report.settled = "finish"

    def _account(self, response: Any, prompt_counted: int) -> tuple[str, str | None]:
        """Add one response's usage to the report; return its text and finish reason."""
        report = self.report
        choices = list(getattr(response, "choices", None) or ())
        first = choices[0] if choices else None
        message = getattr(first, "message", None)
        text = getattr(message, "content", None)
        text = text if isinstance(text, str) else ""
        reason = getattr(first, "finish_reason", None)
        usage = getattr(response, "usage", None)
        prompt = _int(getattr(usage, "prompt_tokens", None))
        completion = _int(getattr(usage, "completion_tokens", None))
        written = sum(_written(self.counter, getattr(c, "message", None)) for c in choices)
        if not prompt and prompt_counted:  # none reported (or LiteLLM's zero placeholder)
            prompt = prompt_counted
            report.usage_estimated = True
        if completion is None or (completion == 0 and written):
            completion = written
            report.usage_estimated = True
        report.input_tokens += prompt or 0
        report.output_tokens += completion
        report.calls += 1
        report.finish_reason = reason
        return text, reason

    def _continuable(self, response: Any) -> bool:
        choices = list(getattr(response, "choices", None) or ())
        if len(choices) != 1:
            return False
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        return isinstance(content, str) and bool(content) and not getattr(message, "tool_calls", 0)

    def steps(self) -> Generator[Op, Any, Any]:
        """The whole non-streaming call; returns the (merged) response."""
        report = self.report
        grant, messages, sent = yield from self._open()
        first_cap = grant.output_tokens
        try:
            response = yield Op("model", "call", (), self.call_params(messages, first_cap))
        except BaseException:
            yield from self._release(grant)
            raise
        text, reason = self._account(response, sent)
        pieces = [text]
        last = response
        while (
            reason == "length"
            and report.extensions < self.max_extensions
            and self._continuable(last)
        ):
            follow = [
                *messages,
                {"role": "assistant", "content": "".join(pieces)},
                {"role": "user", "content": CONTINUE_PROMPT},
            ]
            resent = self.counter.count_messages(follow, tools=self.tools)
            try:
                bigger = yield Op("req", "extend", (grant, first_cap), {"context_tokens": resent})
            except ApportionError:  # refused (the grant lapsed ...): settle what was used
                bigger = None
            if bigger is None:
                break
            extra = bigger.output_tokens - grant.output_tokens
            grant = bigger
            report.extensions += 1
            try:
                last = yield Op("model", "call", (), self.call_params(follow, extra))
            except BaseException:
                yield from self._finish(grant, True, quiet=True)
                raise
            text, reason = self._account(last, resent)
            pieces.append(text)
        yield from self._finish(grant, reason == "length")
        if report.calls > 1:
            _merge(response, "".join(pieces), reason, report)
        _attach(response, report)
        return response

    def stream_steps(self, tally: StreamTally) -> Generator[Op, Any, CallReport]:
        """The streaming call: the ``stream`` op returns when the caller's stream ends."""
        report = self.report
        grant, messages, sent = yield from self._open()
        params = self.call_params(messages, grant.output_tokens)
        options = dict(params.get("stream_options") or {})
        if not options.get("include_usage"):
            options["include_usage"] = True
            params["stream_options"] = options
            tally.hide_usage = True
        try:
            yield Op("model", "stream", (), params)
        except BaseException:
            if not tally.chunks:
                yield from self._release(grant)
                raise
            self._settle_tally(tally, sent)
            yield from self._finish(grant, True, quiet=True)
            raise
        self._settle_tally(tally, sent)
        yield from self._finish(grant, report.finish_reason == "length")
        return report

    def _settle_tally(self, tally: StreamTally, sent: int) -> None:
        report = self.report
        report.calls = 1
        report.finish_reason = tally.finish_reason
        prompt = _int(getattr(tally.usage, "prompt_tokens", None))
        completion = _int(getattr(tally.usage, "completion_tokens", None))
        if not prompt:
            prompt = sent
            report.usage_estimated = True
        if completion is None:
            completion = sum(self.counter.count_text(t) for t in tally.texts.values())
            report.usage_estimated = True
        report.input_tokens = prompt or 0
        report.output_tokens = completion


@dataclass
class StreamTally:
    """What a stream delivered so far: text per choice, finish reason, usage."""

    counter: Any
    hide_usage: bool = False
    chunks: int = 0
    output_tokens: int = 0
    texts: dict[int, str] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Any = None

    def add(self, chunk: Any) -> bool:
        """Count one chunk; return whether to pass it on to the caller."""
        self.chunks += 1
        usage = getattr(chunk, "usage", None)
        if usage is not None and getattr(usage, "completion_tokens", None) is not None:
            self.usage = usage
        passes = False
        for choice in getattr(chunk, "choices", None) or ():
            delta = getattr(choice, "delta", None)
            piece = getattr(delta, "content", None)
            index = getattr(choice, "index", 0) or 0
            if isinstance(piece, str) and piece:
                self.texts[index] = self.texts.get(index, "") + piece
                self.output_tokens += self.counter.count_text(piece)
                passes = True
            for call in getattr(delta, "tool_calls", None) or ():
                args = getattr(getattr(call, "function", None), "arguments", None)
                if isinstance(args, str) and args:
                    self.texts[index] = self.texts.get(index, "") + args
                    self.output_tokens += self.counter.count_text(args)
                passes = True
            reason = getattr(choice, "finish_reason", None)
            if reason:
                self.finish_reason = reason
                passes = True
            if getattr(delta, "role", None):
                passes = True
        return passes or usage is None or not self.hide_usage


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _written(counter: Any, message: Any) -> int:
    """Tokens of a message's text and tool-call arguments, counted here."""
    total = 0
    content = getattr(message, "content", None)
    if isinstance(content, str) and content:
        total += counter.count_text(content)
    for call in getattr(message, "tool_calls", None) or ():
        function = getattr(call, "function", None)
        name = getattr(function, "name", None) or ""
        args = getattr(function, "arguments", None) or ""
        if not isinstance(args, str):
            args = json.dumps(args)
        total += counter.count_text(f"{name} {args}")
    return total


def _merge(response: Any, text: str, reason: str | None, report: CallReport) -> None:
    """Put the joined answer, the last finish reason and the summed usage on ``response``."""
    choice = response.choices[0]
    choice.message.content = text
    choice.finish_reason = reason
    usage = getattr(response, "usage", None)
    if usage is not None:
        with suppress(AttributeError, TypeError, ValueError):
            usage.prompt_tokens = report.input_tokens
            usage.completion_tokens = report.output_tokens
            usage.total_tokens = report.input_tokens + report.output_tokens


def _attach(response: Any, report: CallReport) -> None:
    """Set ``response.apportion`` without making it part of the response's serialization."""
    with suppress(AttributeError, TypeError):
        object.__setattr__(response, "apportion", report)


# ----------------------------------------------------------------------- the shells


def is_async_request(req: Any) -> bool:
    """Whether ``req`` is an async request (its ``begin`` is awaited: an ``AsyncRequest``).

    Asked of the request's own methods, so the engine drives any request-like object and
    needs nothing from :mod:`apportion.controller` (which sits above it).
    """
    return inspect.iscoroutinefunction(getattr(type(req), "begin", None))


def _check_sync(req: Any) -> None:
    if is_async_request(req):
        raise InvalidArgument(
            "req", req, "an AsyncRequest needs the async call: use `await req.acompletion(...)`"
        )


def _routes(req: Any, call: ChatCall) -> bool:
    """Whether ``req``'s policy routes (then the grant's model is the one called).

    Also gives ``call`` the request's catalog (read when the call is priced).
    """
    if call.catalog is None and hasattr(type(req), "catalog"):
        call.catalog = lambda: req.catalog
    return getattr(req, "routes", False) is True


def _annotate(req: Any, op: Op) -> None:
    annotate = getattr(req, op.method, None)
    if callable(annotate):
        with suppress(Exception):  # telemetry details never break a call
            annotate(*op.args, **op.kwargs)


def run(call: ChatCall, req: Any, send: Callable[..., Any]) -> Any:
    """Carry out a non-streaming :class:`ChatCall` with blocking calls.

    Args:
        call: the call.
        req: a :class:`~apportion.controller.Request`.
        send: the client function, called with the call's parameters as keywords.
    """
    _check_sync(req)
    call.routes = _routes(req, call)
    return _drive(call.steps(), req, send, None)[1]


def _drive(
    steps: Generator[Op, Any, Any],
    req: Any,
    send: Callable[..., Any],
    error: BaseException | None,
    result: Any = None,
) -> tuple[str, Any]:
    """Carry ops out until the steps return (``"done"``) or a stream opens (``"stream"``)."""
    while True:
        try:
            op = steps.throw(error) if error is not None else steps.send(result)
        except StopIteration as stop:
            return "done", stop.value
        error = result = None
        try:
            if op.target == "model":
                result = send(**op.kwargs)
                if op.method == "stream":
                    return "stream", result
            elif op.target == "note":
                _annotate(req, op)
            else:
                result = getattr(req, op.method)(*op.args, **op.kwargs)
        except BaseException as exc:
            error = exc


async def arun(call: ChatCall, req: Any, send: Callable[..., Awaitable[Any]]) -> Any:
    """Carry out a non-streaming :class:`ChatCall` with awaited calls.

    Args:
        call: the call.
        req: an :class:`~apportion.controller.AsyncRequest` (or a sync ``Request``).
        send: the async client function, called with the call's parameters as keywords.
    """
    call.routes = _routes(req, call)
    return (await _adrive(call.steps(), req, send, None))[1]


async def _adrive(
    steps: Generator[Op, Any, Any],
    req: Any,
    send: Callable[..., Awaitable[Any]],
    error: BaseException | None,
    result: Any = None,
) -> tuple[str, Any]:
    """Async :func:`_drive`."""
    while True:
        try:
            op = steps.throw(error) if error is not None else steps.send(result)
        except StopIteration as stop:
            return "done", stop.value
        error = result = None
        try:
            if op.target == "model":
                result = await send(**op.kwargs)
                if op.method == "stream":
                    return "stream", result
            elif op.target == "note":
                _annotate(req, op)
            else:
                result = getattr(req, op.method)(*op.args, **op.kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except BaseException as exc:
            error = exc


class BudgetedStream:
    """A streamed answer: iterate it for the client's chunks; it settles when it ends.

    Attributes:
        report: the :class:`CallReport` (complete once the stream is settled).
        apportion: the same report.
    """

    def __init__(self, call: ChatCall, req: Any, send: Callable[..., Any]) -> None:
        _check_sync(req)
        call.routes = _routes(req, call)
        self._tally = StreamTally(call.counter)
        self._steps = call.stream_steps(self._tally)
        self._req = req
        self._send = send
        self.report = self.apportion = call.report
        kind, self._stream = _drive(self._steps, req, send, None)
        self._chunks = self._iterate() if kind == "stream" else iter(())

    @property
    def output_tokens(self) -> int:
        """Output tokens counted so far, as the chunks arrived."""
        return self._tally.output_tokens

    def _iterate(self) -> Iterator[Any]:
        try:
            for chunk in self._stream:
                if _renewal_due(self._req, self.report.grant):
                    with suppress(ApportionError):  # expired: the finish is recorded late
                        self.report.grant = self._req.renew(self.report.grant)
                if self._tally.add(chunk):
                    yield chunk
        except BaseException as exc:  # an error, or the caller closed the stream early
            _close(self._stream)
            _drive(self._steps, self._req, self._send, exc)
            raise  # pragma: no cover  (the steps re-raise ``exc``)
        _drive(self._steps, self._req, self._send, None)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._chunks)

    def close(self) -> None:
        """Stop early: the grant is settled with what arrived."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> BudgetedStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncBudgetedStream:
    """The async twin of :class:`BudgetedStream`; build it with :meth:`open`."""

    def __init__(self, call: ChatCall, req: Any, send: Callable[..., Awaitable[Any]]) -> None:
        call.routes = _routes(req, call)
        self._tally = StreamTally(call.counter)
        self._steps = call.stream_steps(self._tally)
        self._req = req
        self._send = send
        self.report = self.apportion = call.report
        self._stream: Any = None
        self._chunks: AsyncIterator[Any] | None = None

    async def open(self) -> AsyncBudgetedStream:
        """Begin, fit and make the call; returns the stream, ready to iterate."""
        kind, self._stream = await _adrive(self._steps, self._req, self._send, None)
        self._chunks = self._iterate() if kind == "stream" else _empty()
        return self

    @property
    def output_tokens(self) -> int:
        """Output tokens counted so far, as the chunks arrived."""
        return self._tally.output_tokens

    async def _iterate(self) -> AsyncIterator[Any]:
        try:
            async for chunk in self._stream:
                if _renewal_due(self._req, self.report.grant):
                    with suppress(ApportionError):  # expired: the finish is recorded late
                        renewed = self._req.renew(self.report.grant)
                        if inspect.isawaitable(renewed):
                            renewed = await renewed
                        self.report.grant = renewed
                if self._tally.add(chunk):
                    yield chunk
        except BaseException as exc:
            await _aclose(self._stream)
            await _adrive(self._steps, self._req, self._send, exc)
            raise  # pragma: no cover  (the steps re-raise ``exc``)
        await _adrive(self._steps, self._req, self._send, None)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._chunks is None:
            raise RuntimeError("the stream is not open: await its open() first")
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Stop early: the grant is settled with what arrived."""
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> AsyncBudgetedStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _renewal_due(req: Any, grant: Grant | None) -> bool:
    """Whether the stream's grant has used half its lease (a request that can renew)."""
    due = getattr(req, "renewal_due", None)
    return grant is not None and callable(due) and due(grant) is True


async def _empty() -> AsyncIterator[Any]:
    return
    yield  # pragma: no cover


def _close(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if callable(close):
        with suppress(Exception):
            close()


async def _aclose(stream: Any) -> None:
    for name in ("aclose", "close"):
        close = getattr(stream, name, None)
        if callable(close):
            with suppress(Exception):
                result = close()
                if inspect.isawaitable(result):
                    await result
            return
