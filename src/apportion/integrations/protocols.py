"""Wire protocols of a budgeted call: OpenAI chat completions and the Responses API.

A :class:`Protocol` says what differs between the two for the call engine
(:class:`~apportion.integrations.chat.ChatCall`): where the messages are (``messages``, or
``input`` plus ``instructions``), which parameters cap the output, how usage and
truncation are reported, and how a cut answer is continued.

* **messages**: chat: ``messages``. Responses: ``input`` (a text is one user message) and
  ``instructions`` (counted as a leading system message, never dropped by fitting).
* **cap parameters**: chat: ``max_tokens``, ``max_completion_tokens``. Responses:
  ``max_output_tokens``.
* **usage**: chat: ``prompt_tokens``, ``completion_tokens``. Responses: ``input_tokens``,
  ``output_tokens``.
* **cut at the cap**: chat: ``finish_reason == "length"``. Responses: ``status ==
  "incomplete"`` with ``incomplete_details.reason == "max_output_tokens"``.
* **continuation**: chat: resend the messages, the answer so far (assistant) and
  :data:`CONTINUE_PROMPT` (user); the response returned is the first one with the joined
  text and the summed usage. Responses: ``previous_response_id`` = the cut response's id,
  with :data:`CONTINUE_PROMPT` as the input (or, with ``store=False``, a resend as for
  chat); the response returned is the last one (its id chains the whole answer) with the
  joined text and the summed usage. The context a ``previous_response_id`` or
  ``conversation`` given by the caller brings is not seen here: it is not counted before
  the call, and the provider's usage settles it.

The caller's cap parameter name is kept: a call given ``max_completion_tokens`` is sent
``max_completion_tokens`` (capped at the grant). With no cap given, chat completions get
``max_tokens`` (``max_completion_tokens`` for OpenAI reasoning models, which refuse
``max_tokens``; a ``max_tokens`` given for them is sent as ``max_completion_tokens``).

The OpenAI SDK's placeholders for an absent parameter (``openai.omit``, ``openai.NOT_GIVEN``)
are treated as absent, whichever protocol (see :func:`is_absent`). A cap parameter inside
``extra_body`` (which the SDK would send over the grant's) is taken out of it and read as
the caller's.

Truncation is reported to the engine as the finish reason ``"length"`` whatever the
protocol, so the engine's extension loop is written once.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

from apportion.errors import InvalidArgument

CONTINUE_PROMPT = "Continue exactly where you stopped."
"""The user turn that asks a cut answer to go on (after the answer so far)."""

LENGTH = "length"
"""The finish reason of an answer cut at its cap, whatever the protocol."""

_REASONING = re.compile(r"^(o\d+|gpt-5)([-.:_].*)?$")


def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` is an OpenAI reasoning model, capped by ``max_completion_tokens``."""
    return bool(_REASONING.match(model.rsplit("/", 1)[-1].lower()))


def is_absent(value: Any) -> bool:
    """Whether ``value`` is the OpenAI SDK's placeholder for an absent parameter.

    ``openai.omit`` / ``openai.NOT_GIVEN`` (types ``Omit`` / ``NotGiven``); checked only
    when ``openai`` is already imported, so this never imports it.
    """
    sdk = sys.modules.get("openai")
    if sdk is None:
        return False
    kinds = tuple(
        kind for kind in (getattr(sdk, "Omit", None), getattr(sdk, "NotGiven", None)) if kind
    )
    return bool(kinds) and isinstance(value, kinds)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Protocol:
    """What the engine needs to know of one wire protocol (see the module docstring).

    Attributes:
        name: ``"chat"`` or ``"responses"``.
        messages_key: the parameter holding the messages.
        caps: the parameters that cap the output, in order of preference.
        usage_keys: the usage fields of prompt and completion tokens.
        choices: whether the protocol has ``n`` choices.
    """

    name = ""
    messages_key = "messages"
    caps: tuple[str, ...] = ()
    usage_keys = ("prompt_tokens", "completion_tokens")
    choices = True

    def __repr__(self) -> str:
        return f"<protocol {self.name}>"

    # ----------------------------------------------------------------- request

    def read(self, messages: Any, params: dict[str, Any]) -> tuple[list[Any], bool]:
        """The messages to count and fit, and whether the first is the ``instructions``."""
        if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
            raise InvalidArgument(self.messages_key, messages, "a list of chat messages")
        return list(messages), False

    def cap_keys(self, given: Sequence[str], model: str) -> tuple[str, ...]:
        """The parameters to send the cap in, given the caller's cap parameters."""
        raise NotImplementedError

    def structured(self, params: Mapping[str, Any]) -> bool:
        """Whether the call asks for structured output (JSON): such answers are not continued."""
        format_ = params.get("response_format")
        return format_ is not None and not (
            isinstance(format_, Mapping) and format_.get("type") == "text"
        )

    def request(
        self, params: dict[str, Any], messages: list[Any], instructions: bool
    ) -> dict[str, Any]:
        """``params`` with the (fitted) messages in place."""
        params[self.messages_key] = messages
        return params

    # ---------------------------------------------------------------- response

    def usage(self, response: Any) -> tuple[int | None, int | None]:
        """``(prompt, completion)`` tokens the provider reported (``None``: not reported)."""
        usage = getattr(response, "usage", None)
        prompt, completion = self.usage_keys
        return _int(getattr(usage, prompt, None)), _int(getattr(usage, completion, None))

    def text(self, response: Any) -> str:
        """The answer's text (the first choice)."""
        raise NotImplementedError

    def finish_reason(self, response: Any) -> str | None:
        """Why the answer ended: :data:`LENGTH` when cut at its cap."""
        raise NotImplementedError

    def written(self, counter: Any, response: Any) -> int:
        """Output tokens of the response counted here (text and tool-call arguments)."""
        raise NotImplementedError

    def continuable(self, response: Any) -> bool:
        """Whether a cut answer can be continued (one choice of plain text, no tool call)."""
        raise NotImplementedError

    def follow_up(
        self,
        params: dict[str, Any],
        messages: list[Any],
        instructions: bool,
        answer: str,
        last: Any,
    ) -> tuple[dict[str, Any], list[Any]]:
        """The follow-up call's parameters (cap not set), and the messages it counts as read.

        Args:
            params: the call's parameters, without messages or cap.
            messages: the fitted messages of the first call (instructions first if any).
            instructions: whether ``messages[0]`` is the ``instructions``.
            answer: the answer so far.
            last: the last (cut) response.
        """
        follow = [
            *messages,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": CONTINUE_PROMPT},
        ]
        return self.request(dict(params), follow, instructions), follow

    def merge(self, first: Any, last: Any, text: str, report: Any) -> Any:
        """The response returned for a continued answer: the joined text, summed usage."""
        raise NotImplementedError


def _set_usage(usage: Any, keys: tuple[str, str], report: Any) -> None:
    if usage is None:
        return
    with suppress(AttributeError, TypeError, ValueError):
        setattr(usage, keys[0], report.input_tokens)
        setattr(usage, keys[1], report.output_tokens)
        usage.total_tokens = report.input_tokens + report.output_tokens


class _Chat(Protocol):
    """OpenAI chat completions (also LiteLLM's ``completion``)."""

    name = "chat"
    messages_key = "messages"
    caps = ("max_tokens", "max_completion_tokens")

    def cap_keys(self, given: Sequence[str], model: str) -> tuple[str, ...]:
        reasoning = is_reasoning_model(model)
        if not given:
            return ("max_completion_tokens",) if reasoning else ("max_tokens",)
        keys = {"max_completion_tokens" if reasoning else key for key in given}
        return tuple(key for key in self.caps if key in keys)

    def text(self, response: Any) -> str:
        choices = list(getattr(response, "choices", None) or ())
        content = getattr(getattr(choices[0], "message", None), "content", None) if choices else ""
        return content if isinstance(content, str) else ""

    def finish_reason(self, response: Any) -> str | None:
        choices = list(getattr(response, "choices", None) or ())
        return getattr(choices[0], "finish_reason", None) if choices else None

    def written(self, counter: Any, response: Any) -> int:
        choices = getattr(response, "choices", None) or ()
        return sum(_written(counter, getattr(c, "message", None)) for c in choices)

    def continuable(self, response: Any) -> bool:
        choices = list(getattr(response, "choices", None) or ())
        if len(choices) != 1:
            return False
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        return isinstance(content, str) and bool(content) and not getattr(message, "tool_calls", 0)

    def merge(self, first: Any, last: Any, text: str, report: Any) -> Any:
        choice = first.choices[0]
        choice.message.content = text
        choice.finish_reason = report.finish_reason
        _set_usage(getattr(first, "usage", None), self.usage_keys, report)
        return first


def _written(counter: Any, message: Any) -> int:
    """Tokens of a chat message's text and tool-call arguments, counted here."""
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


class _Responses(Protocol):
    """The OpenAI Responses API (``client.responses.create``)."""

    name = "responses"
    messages_key = "input"
    caps = ("max_output_tokens",)
    usage_keys = ("input_tokens", "output_tokens")
    choices = False

    def read(self, messages: Any, params: dict[str, Any]) -> tuple[list[Any], bool]:
        """Chat-shaped views of the input items, to count and fit (see :func:`_views`)."""
        items: list[Any]
        if isinstance(messages, str):
            items = [{"role": "user", "content": messages}]
        elif isinstance(messages, bytes) or not isinstance(messages, Sequence):
            raise InvalidArgument("input", messages, "a text or a list of input items")
        else:
            items = list(messages)
        views = _views(items)
        instructions = params.get("instructions")
        if instructions is None:
            return views, False
        if not isinstance(instructions, str):
            raise InvalidArgument("instructions", instructions, "a text")
        return [{"role": "system", "content": instructions, _ITEMS: ()}, *views], True

    def cap_keys(self, given: Sequence[str], model: str) -> tuple[str, ...]:
        return self.caps

    def structured(self, params: Mapping[str, Any]) -> bool:
        if params.get("text_format") is not None:  # ``responses.parse``
            return True
        text = params.get("text")
        format_ = text.get("format") if isinstance(text, Mapping) else None
        return isinstance(format_, Mapping) and format_.get("type") in (
            "json_schema",
            "json_object",
        )

    def request(
        self, params: dict[str, Any], messages: list[Any], instructions: bool
    ) -> dict[str, Any]:
        """The input items back from their (fitted) views; ``instructions`` left out."""
        params["input"] = [
            item
            for view in (messages[1:] if instructions else messages)
            for item in _items_of(view)
        ]
        return params

    def _items(self, response: Any, kind: str) -> list[Any]:
        return [i for i in getattr(response, "output", None) or () if _kind(i) == kind]

    def text(self, response: Any) -> str:
        return "".join(
            part_text
            for item in self._items(response, "message")
            for part in getattr(item, "content", None) or ()
            if isinstance(part_text := getattr(part, "text", None), str)
        )

    def finish_reason(self, response: Any) -> str | None:
        status = getattr(response, "status", None)
        if status != "incomplete":
            return status if isinstance(status, str) else None
        reason = getattr(getattr(response, "incomplete_details", None), "reason", None)
        return LENGTH if reason == "max_output_tokens" else reason or status

    def written(self, counter: Any, response: Any) -> int:
        total = 0
        text = self.text(response)
        if text:
            total += counter.count_text(text)
        for call in self._items(response, "function_call"):
            name = getattr(call, "name", None) or ""
            args = getattr(call, "arguments", None) or ""
            total += counter.count_text(f"{name} {args}")
        return total

    def continuable(self, response: Any) -> bool:
        output = list(getattr(response, "output", None) or ())
        messages = self._items(response, "message")
        others = [i for i in output if _kind(i) not in ("message", "reasoning")]
        return len(messages) == 1 and not others and bool(self.text(response))

    def follow_up(
        self,
        params: dict[str, Any],
        messages: list[Any],
        instructions: bool,
        answer: str,
        last: Any,
    ) -> tuple[dict[str, Any], list[Any]]:
        follow = [
            *messages,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": CONTINUE_PROMPT},
        ]
        previous = getattr(last, "id", None)
        if not isinstance(previous, str) or not previous or params.get("store") is False:
            return self.request(dict(params), follow, instructions), follow
        chained = dict(params)
        chained["previous_response_id"] = previous
        chained.pop("conversation", None)
        chained["input"] = [{"role": "user", "content": CONTINUE_PROMPT}]
        return chained, follow

    def merge(self, first: Any, last: Any, text: str, report: Any) -> Any:
        """The last response (its id chains the whole answer) with the joined text."""
        messages = self._items(last, "message")
        parts = [p for p in getattr(messages[0], "content", None) or ()] if messages else []
        texts = [p for p in parts if isinstance(getattr(p, "text", None), str)]
        with suppress(AttributeError, TypeError, ValueError):
            if texts:
                texts[0].text = text
                for part in texts[1:]:
                    part.text = ""
        _set_usage(getattr(last, "usage", None), self.usage_keys, report)
        return last


_ITEMS = "_apportion_items"
"""The key of a view holding the input items it stands for (never sent)."""


def _views(items: list[Any]) -> list[dict[str, Any]]:
    """Chat-shaped views of Responses input items, so that counting and fitting apply.

    A message item is its own view; consecutive ``function_call`` items become one
    assistant message with ``tool_calls`` and each ``function_call_output`` a ``tool``
    message, so fitting keeps a call with its output; any other item (``reasoning``,
    ``item_reference`` ...) is an assistant message holding its JSON (counted, high). Each
    view keeps the items it stands for under :data:`_ITEMS`, and :func:`_items_of` gives
    them back after fitting.
    """
    views: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, Mapping):
            raise InvalidArgument("input", item, "an input item must be a mapping")
        kind = item.get("type")
        if kind == "function_call":
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {"name": item.get("name", ""), "arguments": item.get("arguments")},
            }
            last = views[-1] if views else None
            if last is not None and last.get("tool_calls") and last.get("content") is None:
                last["tool_calls"].append(call)
                last[_ITEMS] = (*last[_ITEMS], item)
                continue
            views.append(
                {"role": "assistant", "content": None, "tool_calls": [call], _ITEMS: (item,)}
            )
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output, default=str)
            call_id = str(item.get("call_id", ""))
            views.append(
                {"role": "tool", "tool_call_id": call_id, "content": text, _ITEMS: (item,)}
            )
        elif isinstance(item.get("role"), str) and item.get("role"):
            views.append({**item, _ITEMS: (item,)})
        else:
            text = json.dumps(dict(item), default=str, separators=(",", ":"))
            views.append({"role": "assistant", "content": text, _ITEMS: (item,)})
    return views


def _items_of(view: Any) -> list[Any]:
    """The input items a (fitted) view stands for.

    A view fitting left whole gives its items back; one it shortened gives its message
    item (or tool output) with the shortened content; a view fitting made (the note of
    what was dropped) is sent as the message it is.
    """
    if not isinstance(view, Mapping) or _ITEMS not in view:
        return [view]
    items = list(view[_ITEMS])
    if len(items) != 1:
        return items
    item = items[0]
    if item.get("type") == "function_call_output":
        if view.get("content") != item.get("output") and isinstance(view.get("content"), str):
            return [{**item, "output": view["content"]}]
        return [item]
    if "role" in item and view.get("content") is not item.get("content"):
        return [{**item, "content": view.get("content")}]
    return [item]


def _kind(item: Any) -> Any:
    return item.get("type") if isinstance(item, Mapping) else getattr(item, "type", None)


CHAT: Protocol = _Chat()
"""OpenAI chat completions (``messages``, ``max_tokens`` / ``max_completion_tokens``)."""

RESPONSES: Protocol = _Responses()
"""The OpenAI Responses API (``input``, ``instructions``, ``max_output_tokens``)."""

PROTOCOLS: Mapping[str, Protocol] = {"chat": CHAT, "responses": RESPONSES}
"""The protocols by name."""


def protocol_named(value: Any) -> Protocol:
    """A :class:`Protocol` from itself or its name (``"chat"``, ``"responses"``).

    Raises:
        InvalidArgument: neither.
    """
    if isinstance(value, Protocol):
        return value
    if isinstance(value, str) and value in PROTOCOLS:
        return PROTOCOLS[value]
    return _refuse(value)


def _refuse(value: Any) -> Protocol:
    raise InvalidArgument("protocol", value, f"one of {', '.join(PROTOCOLS)}")
