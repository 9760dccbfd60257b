"""The chat logic of a budgeted call, written once for every client (LiteLLM, OpenAI; sync, async).

:class:`ChatCall` holds the semantics of one budgeted call as a generator that yields
:class:`Op` values (a request operation, or a model call) and receives their results or
errors, like :mod:`apportion.controller`'s ``_Steps``. The shells in
:mod:`apportion.integrations.drivers` only carry those operations out: ``run`` and
``arun`` with blocking or awaited calls, and ``BudgetedStream`` / ``AsyncBudgetedStream``
for streaming. The client modules
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
4. **Cap** the output at the grant: ``max_tokens`` = ``grant.working_tokens`` (the
   output granted less its wrap-up reserve, ``wrap_up_tokens``; divided by ``n`` when
   several choices are asked for). OpenAI reasoning models (``o1``, ``o3``,
   ``o4-mini``, ``gpt-5`` ..., any provider prefix) get ``max_completion_tokens`` instead,
   which caps reasoning and answer together. When Anthropic extended thinking is on
   (``thinking={"type": "enabled", "budget_tokens": B}``), ``max_tokens`` covers thinking
   and answer, so the thinking budget becomes ``min(B, 3/4 of the cap)``, leaving at least
   a quarter for the answer; when that is below Anthropic's minimum of 1,024 tokens,
   thinking is left off for the call (``CallReport.thinking_budget`` is then 0).
5. **Call** the model; read ``usage`` and ``finish_reason``.
6. **Extend** when ``finish_reason == "length"`` and the answer is plain text (one choice,
   no tool calls, no structured output: a JSON schema or JSON mode would make the
   follow-up a second JSON document, so such an answer is settled as cut): ask the policy
   for as many output tokens again as the first call was granted, declaring as
   ``context_tokens`` the follow-up prompt, which is the fitted messages, then an
   assistant message holding the answer so far, then a user message
   :data:`CONTINUE_PROMPT`. If granted, make that follow-up call capped at what was granted
   and append its text to the answer; repeat up to ``max_extensions`` times (3 by default).
   (A follow-up ends with a user turn, so it works with every provider; it is not
   Anthropic's assistant prefill.) The caller's ``max_tokens`` thus caps each call, not the
   whole answer: pass ``max_extensions=0`` to stop at the first cap.
   **Wrap up** when the answer is still cut because the policy refused the extension
   (``extend`` returns ``None``) or ``max_extensions`` follow-ups were made (not with
   ``max_extensions=0``), and the grant carries a wrap-up reserve (``wrap_up_tokens=N``
   per call, or the controller's):
   instead of continuing, one follow-up asks the model to conclude
   (:data:`WRAP_UP_PROMPT`, "at most N/2 tokens"), capped at ``N`` and fitted, prompt and
   answer, in what the grant still holds (see :meth:`ChatCall.wrap_up_call`), so the
   ceiling never moves. Its text is appended; the report's ``status`` is ``wrapped_up``
   (``cut`` if even the conclusion was cut, or nothing could be sent).
7. **Finish** the grant with the real usage summed over all the calls (every prompt sent
   and every completion written) and ``truncated`` = the last call stopped on ``length``.
   The returned response is the first call's response with the answer's text joined, the
   last ``finish_reason``, and ``usage`` summed over the calls; its ``apportion`` attribute
   (see :func:`report_of`) is a :class:`CallReport` with the cost of the model called: the
   controller's catalog when the model is one of the user's own (a YAML catalog), else
   LiteLLM's model cost map, else the catalog (``None`` for a model nothing prices).

**The budget shown to the model** (``show_budget=True`` per call, or the controller's):
:data:`BUDGET_LINE` (what the grant lets the call read and write) is added as a system
message after the leading system messages; it is counted at ``begin`` (at its widest) and
fitted with the messages, so it never costs more than the grant. Through LiteLLM to an
Anthropic model, the advisory ``output_config.task_budget`` is set from the grant too
(:meth:`ChatCall.first_params`). Off (the default), nothing changes.

Every report says how the call ended (``CallReport.status``): ``completed``,
``wrapped_up``, ``cut``, ``refused`` (begin refused) or ``released``.

Bad input and failures:

* **No usage** from the provider (or LiteLLM's zero placeholder): the prompt is counted
  (what was sent) and the completion is counted from the returned text (and tool-call
  arguments); the report says ``usage_estimated=True``, the call record notes it
  (``req.calls[...].notes["usage_estimated"]``) and telemetry writes it (``estimated``).
  Glue that settles by hand says so to ``req.finish`` (``output_tokens=None`` with the
  answer's ``text``; see :meth:`~apportion.controller.Request.finish`).
* **Usage above the grant** is settled as reported: the ledger records the over-use and
  charges what the pool cannot cover as overflow, so the ceiling holds for later grants.
* **An error from the client** (HTTP error, timeout, cancellation): if no call has
  succeeded yet, the grant is released; otherwise it is finished with what the successful
  calls used (``truncated=True``). The error is re-raised either way. An error of the
  store while settling does not hide the client's error (the grant then lapses with its
  lease).

Streaming (``stream=True``, :mod:`apportion.integrations.streams`): the grant is begun,
the messages fitted and the call made before the stream is returned (so refusals and HTTP
errors raise at the call site). Every chat call asks the provider for its usage
(``stream_options={"include_usage": True}`` is added when the caller did not ask for it,
and the usage-only chunk is then kept from the caller); a streamed Responses answer
carries its usage in its terminal event. The returned stream yields the
client's chunks while counting their text (``output_tokens`` so far), and settles when it
ends, with the provider's usage if it sent one, else the counted text (and the prompt as
counted), marked ``usage_estimated`` (so is a completion reported as 0 beside streamed
text: a stream is never settled as 0 for an answer that arrived).

A streamed answer cut by its cap is **extended** as in step 6, and the caller reads the
continuation's chunks after the first call's as **one stream**: the chunk carrying the
first call's ``finish_reason`` is held back and dropped (passed without its reason if it
also carries text), the continuation's opening role chunk is dropped, its chunks take the
first call's ``id``, and only the last call's ``finish_reason`` reaches the caller, at the
end. When the caller asked for usage itself, one usage chunk comes last, summing every
call. A streamed Responses answer reads as one message the same way (its opening and
``done`` events are merged, the terminal event comes last, with the whole text and the
summed usage: see :class:`~apportion.integrations.streams.ResponsesTally`).
``stream.report`` then counts the calls and extensions as for a plain call; the
grant is finished once, with the usage of every call. ``max_extensions=0`` keeps a cut
stream cut (``finish_reason == "length"``, settled as truncated).

If the stream fails or is closed early (in the first call or a continuation), the grant
is finished with what arrived (``truncated=True``: the provider bills a partial stream),
or released if nothing did. Through LiteLLM, a provider that streams no usage gets a usage
chunk counted by LiteLLM itself, which cannot be told from the provider's own, so it is
not marked estimated.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence, Sized
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, NamedTuple

from apportion.calls import COMPLETED, CUT, OPEN, REFUSED, RELEASED, WRAPPED_UP
from apportion.errors import ApportionError, BudgetExceeded, InputTooLarge, InvalidArgument
from apportion.integrations.protocols import (
    CHAT,
    CONTINUE_PROMPT,
    LENGTH,
    Protocol,
    is_absent,
    is_reasoning_model,
    protocol_named,
)
from apportion.ledger import Grant, check_name, check_tokens

__all__ = [
    "BUDGET_LINE",
    "CONTINUE_PROMPT",
    "MAX_EXTENSIONS",
    "TASK_BUDGET_BETA",
    "THINKING_MIN_BUDGET",
    "WRAP_UP_PROMPT",
    "CallReport",
    "ChatCall",
    "Op",
    "is_reasoning_model",
    "report_of",
]

MAX_EXTENSIONS = 3
"""Follow-up calls made at most for one cut answer, by default."""

_LITELLM_SOURCE = "LiteLLM"

THINKING_MIN_BUDGET = 1024
"""Anthropic's smallest thinking budget; below it, thinking is left off."""

WRAP_UP_PROMPT = (
    "Budget spent: wrap up now. Conclude in at most {tokens} tokens, going on from where "
    "you stopped."
)
"""The user turn that asks a cut answer to conclude, once an extension was refused."""

WRAP_UP_HEADER = "Your answer so far (cut):"
"""Opens the one user turn a wrap-up prompt is folded into when the whole does not fit."""

BUDGET_LINE = (
    "Token budget for this reply: you may read {context} tokens of context and write at "
    "most {output} tokens; plan your answer to fit."
)
"""The line ``show_budget`` adds to the prompt (a system message after the system prompt)."""


def call_options(wrap_up_tokens: object = None, show_budget: object = None) -> dict[str, Any]:
    """The wrap-up reserve and the budget line an adapter gives its calls, checked.

    Every integration and framework adapter takes ``wrap_up_tokens=`` and ``show_budget=``
    and passes what this returns to the call engine with each call (a call's own keyword,
    where the adapter takes one per call, wins).

    Args:
        wrap_up_tokens: the wrap-up reserve of each grant, or ``None`` (the controller's).
        show_budget: add :data:`BUDGET_LINE` to each prompt, or ``None`` (the controller's).

    Returns:
        The keywords set (not ``None``): ``{"wrap_up_tokens": N, "show_budget": True}``.

    Raises:
        InvalidTokenCount: ``wrap_up_tokens`` is not a token count (an integer >= 0).
        InvalidArgument: ``show_budget`` is not ``True``, ``False`` or ``None``.
    """
    options: dict[str, Any] = {}
    if wrap_up_tokens is not None:
        options["wrap_up_tokens"] = check_tokens("wrap_up_tokens", wrap_up_tokens)
    if show_budget is not None:
        if not isinstance(show_budget, bool):
            raise InvalidArgument("show_budget", show_budget, "True, False or None")
        options["show_budget"] = show_budget
    return options


TASK_BUDGET_BETA = "task-budgets-2026-03-13"
"""Anthropic's beta header value for ``output_config.task_budget``."""

_PLACEHOLDER = 10**9 - 1  # the widest count a line may show: it is counted at begin

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
        status: how the answer ended: ``completed`` (whole: the only success),
            ``wrapped_up`` (an extension was refused and the call concluded it within
            the grant's wrap-up reserve: a partial result), ``cut`` (it ended cut at its
            cap), ``refused`` (``begin`` was refused: no call made), ``released`` (the
            call failed before any answer), ``open`` until settled.
        wrap_up_tokens: the grant's wrap-up reserve (:attr:`Grant.wrap_up_tokens`).
        budget_line: the line ``show_budget`` added to the prompt, or ``None``.
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
    status: str = OPEN
    wrap_up_tokens: int = 0
    budget_line: str | None = None


def report_of(response: Any) -> CallReport | None:
    """The :class:`CallReport` attached to a response (or stream), if any."""
    report = getattr(response, "apportion", None)
    return report if isinstance(report, CallReport) else None


# ----------------------------------------------------------------------- the core


class ChatCall:
    """The semantics of one budgeted chat completion (see the module docstring).

    Args:
        agent: the agent calling.
        model: the model name, as the client takes it.
        messages: the chat messages (for the Responses API: its ``input``, a text or a list
            of items).
        params: the rest of the client's parameters (the protocol's cap parameters,
            ``max_tokens`` ..., are read as the most output wanted). The OpenAI SDK's
            ``omit`` / ``NOT_GIVEN`` placeholders count as absent.
        counter: ``None`` (the model's tokenizer), ``"approximate"``, or a ``TokenCounter``.
        fit: the fitting strategy (see :data:`apportion.tokens.fitting.STRATEGIES`).
        max_extensions: follow-up calls allowed for a cut answer.
        cost: prices the usage (``None``: no cost).
        protocol: the wire protocol, a :class:`~apportion.integrations.protocols.Protocol`
            or its name: ``"chat"`` (chat completions, the default) or ``"responses"``.
        wrap_up_tokens: the wrap-up reserve to begin with (``None``: the controller's).
        show_budget: add :data:`BUDGET_LINE` to the prompt (``None``: the controller's
            ``show_budget``).

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
        protocol: Protocol | str = CHAT,
        wrap_up_tokens: int | None = None,
        show_budget: bool | None = None,
    ) -> None:
        from apportion.tokens.counting import counter_for
        from apportion.tokens.fitting import STRATEGIES

        self.protocol = protocol = protocol_named(protocol)

        if not isinstance(agent, str):
            raise InvalidArgument("agent", agent, "an agent name")
        if not isinstance(model, str) or not model:
            raise InvalidArgument("model", model, "a model name")
        model = check_name("model", model)
        if fit not in STRATEGIES:
            raise InvalidArgument("fit", fit, f"one of {', '.join(STRATEGIES)}")
        if type(max_extensions) is not int or not 0 <= max_extensions <= 1000:
            raise InvalidArgument("max_extensions", max_extensions, "an integer from 0 to 1000")
        checked = call_options(wrap_up_tokens, show_budget)
        wrap_up_tokens = checked.get("wrap_up_tokens")
        params = _caps_out_of_extra_body(
            {k: v for k, v in dict(params).items() if not is_absent(v)}, protocol
        )
        self.messages, self.instructions = protocol.read(messages, params)
        self.cap_given = tuple(k for k in protocol.caps if params.get(k) is not None)
        caps = [check_tokens(k, params.pop(k)) for k in self.cap_given]
        for key in protocol.caps:
            params.pop(key, None)
        self.cap: int | None = min(caps) if caps else None
        n = params.get("n") if protocol.choices else None
        n = 1 if n is None else n
        if type(n) is not int or not 1 <= n <= 128:
            raise InvalidArgument("n", n, "a number of choices from 1 to 128")
        self.stream = bool(params.get("stream"))
        self.n = n
        self.agent = agent
        self.model = model
        self.requested = model
        self.routes = False
        self.catalog: Callable[[], Any] | None = None
        self.params = params
        self.tools = params.get("tools")
        self.counter = counter_for(model, counter)
        self.strategy = fit
        self.max_extensions = 0 if protocol.structured(params) else max_extensions
        self.cost = cost
        self.wrap_up_tokens = wrap_up_tokens
        self.show_budget = show_budget
        self.provider_budget = False  # set where the client passes a provider's budget field
        self.wrapped_up = False
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

    def call_params(
        self, messages: list[Any], cap: int, base: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The client's parameters for one call capped at ``cap`` output tokens.

        Args:
            messages: the (fitted) messages, the ``instructions`` first if any.
            cap: the output granted to the call (divided among ``n`` choices).
            base: the parameters with the messages already in place (a follow-up call);
                default: the caller's parameters with ``messages``.
        """
        if base is None:
            params = self.protocol.request(dict(self.params), messages, self.instructions)
        else:
            params = dict(base)
        params["model"] = self.model
        per_choice = max(1, cap // self.n)
        for key in self.protocol.cap_keys(self.cap_given, self.model):
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
        show = self.show_budget
        if show is None:
            try:
                options = yield Op("req", "call_options", (), {})
            except (AttributeError, TypeError):  # a request-like object without options
                options = None
            show = isinstance(options, Mapping) and options.get("show_budget") is True
        counted = self.counter.count_messages(self.messages, tools=self.tools)
        report.counted_input = counted
        messages = self.messages
        if show:  # counted at its widest: the grant it shows is not known yet
            messages = _with_line(self.messages, _PLACEHOLDER, _PLACEHOLDER)
            counted = self.counter.count_messages(messages, tools=self.tools)
        floor = min(counted, irreducible_tokens(messages, self.counter, tools=self.tools))
        begin_kwargs: dict[str, Any] = {"model": self.requested, "min_context_tokens": floor}
        if self.wrap_up_tokens is not None:
            begin_kwargs["wrap_up_tokens"] = self.wrap_up_tokens
        try:
            grant: Grant = yield Op("req", "begin", (self.agent, counted, self.cap), begin_kwargs)
        except BudgetExceeded:
            report.status = REFUSED
            raise
        report.grant = grant
        report.wrap_up_tokens = grant.wrap_up_tokens
        if show:
            messages = _with_line(self.messages, grant.context_tokens, grant.working_tokens)
            report.budget_line = _budget_line(grant.context_tokens, grant.working_tokens)
        if self.routes and grant.model and grant.model != self.model:
            self._reroute(grant.model)
        try:
            if grant.working_tokens < self.n:
                raise BudgetExceeded(
                    self.agent,
                    counted + self.n,
                    grant.total,
                    reason="the grant leaves no output tokens",
                )
            fit = fit_messages(
                messages,
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
        if report.dropped_messages:
            with suppress(AttributeError, TypeError, ApportionError):  # a request-like object
                fitted = (grant, report.dropped_messages, report.dropped_tokens)
                yield Op("req", "note_fitted", fitted, {})
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
            "wrapped_up": self.wrapped_up,
        }
        return Op("note", "annotate", (grant,), fields)

    def _release(self, grant: Grant) -> Generator[Op, Any, None]:
        yield self._note(grant)
        with suppress(ApportionError):  # the caller's error matters more; the lease reclaims
            yield Op("req", "release", (grant,), {})
        self.report.settled = "release"
        self.report.status = RELEASED

    def _finish(
        self, grant: Grant, truncated: bool, *, quiet: bool = False
    ) -> Generator[Op, Any, None]:
        report = self.report
        report.grant = grant
        report.truncated = truncated
        report.status = CUT if truncated else WRAPPED_UP if self.wrapped_up else COMPLETED
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
        protocol = self.protocol
        text = protocol.text(response)
        reason = protocol.finish_reason(response)
        prompt, completion = protocol.usage(response)
        if not prompt and prompt_counted:  # none reported (or LiteLLM's zero placeholder)
            prompt = prompt_counted
            report.usage_estimated = True
        if not completion:  # none reported, or a zero placeholder: counted here (if any)
            written = protocol.written(self.counter, response)
            if completion is None or written:
                completion = written
                report.usage_estimated = True
        report.input_tokens += prompt or 0
        report.output_tokens += completion
        report.calls += 1
        report.finish_reason = reason
        return text, reason

    def first_params(self, messages: list[Any], grant: Grant) -> dict[str, Any]:
        """The first call's parameters, capped at ``grant.working_tokens``.

        The wrap-up reserve is kept back. With ``show_budget``, where the client passes it
        (LiteLLM) and the model is Anthropic's, the advisory ``output_config.task_budget``
        is set (``total``: the grant; ``remaining``: what the call may write), with its
        beta header.
        """
        params = self.call_params(messages, grant.working_tokens)
        if self.report.budget_line is not None and self.provider_budget:
            _task_budget(params, self.model, grant)
        return params

    def wrap_up_call(
        self, grant: Grant, messages: list[Any], answer: str
    ) -> tuple[dict[str, Any], int] | None:
        """The "wrap up now" follow-up of a cut answer whose extension was refused.

        It must fit, prompt and answer, in what the grant still holds (the wrap-up reserve
        and any context the calls left unread): its answer is capped at the reserve, and
        asked to be at most half of it (at least 1 token); its prompt is the first call's
        messages, the answer so far, and :data:`WRAP_UP_PROMPT`. When that is too big, the
        other turns are left out and the answer so far is folded into the wrap-up turn
        (after the system messages), shortened inside to fit (head and tail kept). The
        stream path calls this too.

        Args:
            grant: the grant as it stands (extensions included).
            messages: the fitted messages of the first call.
            answer: the answer so far.

        Returns:
            ``(parameters of the call, prompt tokens counted)``, or ``None`` when there is
            no reserve, or not even a shortened prompt fits.
        """
        reserve = grant.wrap_up_tokens
        report = self.report
        room = grant.total - report.input_tokens - report.output_tokens
        if reserve <= 0 or room < 2:
            return None
        asked = max(1, reserve // 2)
        prompt = WRAP_UP_PROMPT.format(tokens=asked)
        follow = [
            *messages,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": prompt},
        ]
        resent = self.counter.count_messages(follow, tools=self.tools)
        if resent + asked > room:
            folded = self._folded(messages, answer, prompt, room - asked)
            if folded is None:
                return None
            follow, resent = folded
        if resent >= room:
            return None
        cap = min(reserve, room - resent)
        base = self.protocol.request(dict(self.params), follow, self.instructions)
        base.pop("previous_response_id", None)  # the prompt is resent whole
        return self.call_params(follow, cap, base), resent

    def _folded(
        self, messages: list[Any], answer: str, prompt: str, room: int
    ) -> tuple[list[Any], int] | None:
        """The system messages, then one user turn: the answer so far, then ``prompt``.

        The answer is shortened inside to fit ``room`` (head and tail kept). Returns the
        messages with their tokens, or ``None`` when they cannot fit.
        """
        from apportion.tokens.fitting import fit_messages

        head = []
        for message in messages:
            if _role(message) not in ("system", "developer"):
                break
            head.append(message)

        def turn(text: str) -> dict[str, Any]:
            return {"role": "user", "content": f"{WRAP_UP_HEADER}\n\n{text}\n\n{prompt}"}

        count = self.counter.count_messages
        left = room - count([*head, turn("")], tools=self.tools) - 2  # 2: joins re-tokenized
        if left < 1:
            return None
        alone = [{"role": "user", "content": answer}]
        try:
            fit = fit_messages(alone, left + count([{"role": "user", "content": ""}]), self.counter)
        except InputTooLarge:
            return None
        folded = [*head, turn(str(fit.messages[-1]["content"]))]
        return folded, count(folded, tools=self.tools)

    def steps(self) -> Generator[Op, Any, Any]:
        """The whole non-streaming call; returns the (merged) response."""
        report = self.report
        protocol = self.protocol
        grant, messages, sent = yield from self._open()
        first_cap = grant.working_tokens
        try:
            response = yield Op("model", "call", (), self.first_params(messages, grant))
        except BaseException:
            yield from self._release(grant)
            raise
        text, reason = self._account(response, sent)
        pieces = [text]
        last = response
        refused = lapsed = False
        while (
            reason == LENGTH
            and report.extensions < self.max_extensions
            and protocol.continuable(last)
        ):
            base, follow = protocol.follow_up(
                self.params, messages, self.instructions, "".join(pieces), last
            )
            resent = self.counter.count_messages(follow, tools=self.tools)
            try:
                bigger = yield Op("req", "extend", (grant, first_cap), {"context_tokens": resent})
            except ApportionError:  # refused (the grant lapsed ...): settle what was used
                lapsed = True
                break
            if bigger is None:
                refused = True
                break
            extra = bigger.output_tokens - grant.output_tokens
            grant = bigger
            report.extensions += 1
            try:
                last = yield Op("model", "call", (), self.call_params(follow, extra, base))
            except BaseException:
                yield from self._finish(grant, True, quiet=True)
                raise
            text, reason = self._account(last, resent)
            pieces.append(text)
        wrap = None
        used_up = report.extensions >= self.max_extensions > 0
        if reason == LENGTH and not lapsed and (refused or used_up) and protocol.continuable(last):
            wrap = self.wrap_up_call(grant, messages, "".join(pieces))
        if wrap is not None:  # conclude within the reserve instead of ending cut
            params, resent = wrap
            try:
                last = yield Op("model", "call", (), params)
            except BaseException:
                yield from self._finish(grant, True, quiet=True)
                raise
            self.wrapped_up = True
            text, reason = self._account(last, resent)
            pieces.append(text)
        yield from self._finish(grant, reason == LENGTH)
        if report.calls > 1:
            response = protocol.merge(response, last, "".join(pieces), report)
        _attach(response, report)
        return response


def _budget_line(context: int, output: int) -> str:
    return BUDGET_LINE.format(context=context, output=output)


def _with_line(messages: list[Any], context: int, output: int) -> list[Any]:
    """``messages`` with the budget line as a system message after the leading system ones."""
    at = 0
    while at < len(messages) and _role(messages[at]) in ("system", "developer"):
        at += 1
    line = {"role": "system", "content": _budget_line(context, output)}
    return [*messages[:at], line, *messages[at:]]


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, Mapping) else getattr(message, "role", None)


def _task_budget(params: dict[str, Any], model: str, grant: Grant) -> None:
    """Set Anthropic's ``output_config.task_budget`` from the grant (Anthropic models only)."""
    name = model.lower()
    if not (name.startswith("anthropic/") or name.startswith("claude")):
        return
    config = params.get("output_config")
    config = dict(config) if isinstance(config, Mapping) else {}
    config["task_budget"] = {
        "type": "tokens",
        "total": grant.total,
        "remaining": grant.working_tokens,
    }
    params["output_config"] = config
    headers = params.get("extra_headers")
    headers = dict(headers) if isinstance(headers, Mapping) else {}
    betas = [b.strip() for b in str(headers.get("anthropic-beta", "")).split(",") if b.strip()]
    if TASK_BUDGET_BETA not in betas:
        betas.append(TASK_BUDGET_BETA)
    headers["anthropic-beta"] = ",".join(betas)
    params["extra_headers"] = headers


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_ALL_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _caps_out_of_extra_body(params: dict[str, Any], protocol: Protocol) -> dict[str, Any]:
    """Cap parameters hidden in ``extra_body`` (which the SDK sends over ours) taken out.

    The protocol's own become the caller's caps (when not also given as parameters); the
    others are dropped: no cap of the caller's reaches the provider beside the grant's.
    """
    extra = params.get("extra_body")
    if not isinstance(extra, Mapping) or not any(k in extra for k in _ALL_CAPS):
        return params
    extra = dict(extra)
    for key in _ALL_CAPS:
        value = extra.pop(key, None)
        if key in protocol.caps and params.get(key) is None and not is_absent(value):
            params[key] = value
    params["extra_body"] = extra
    return params


def _attach(response: Any, report: CallReport) -> None:
    """Set ``response.apportion`` without making it part of the response's serialization."""
    with suppress(AttributeError, TypeError):
        object.__setattr__(response, "apportion", report)
