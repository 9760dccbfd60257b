"""A local server that speaks the OpenAI chat-completions protocol, for tests and examples.

:class:`OpenAIServer` listens on a loopback port (``127.0.0.1``, port 0: the system picks
one) in a background thread and answers ``POST /v1/chat/completions`` (and the Responses
API's ``POST /v1/responses``, below) from a script of :class:`Reply` objects, so real
clients (``openai``, ``litellm``) make real HTTP calls to it and nothing touches an
outside network::

    with OpenAIServer([Reply("one two three four five six")]) as server:
        client = openai.OpenAI(base_url=server.url, api_key="test", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[...], max_tokens=4)
        server.requests[-1]["max_tokens"]   # 4: what the client sent

What it does, like a real provider:

* **Tokens.** The server's tokenizer is a word splitter: each run of non-space characters
  with the spaces before it is one token, so ``"one two three"`` is 3 tokens. A prompt
  costs the tokens of its messages' text, plus 3 per message, plus 3.
* **Caps.** ``max_tokens`` or ``max_completion_tokens`` cut the reply after that many
  tokens, with ``finish_reason: "length"`` (otherwise the reply's own, ``"stop"`` by
  default). With ``n`` choices each choice is one copy of the reply.
* **Continuation.** When a reply was cut, its rest is served to a later request whose
  second-to-last message is an assistant message ending with the part already delivered
  (a "continue" follow-up); any other request takes the next reply. Several cut replies
  wait at once (concurrent conversations), the newest 64.
* **Usage.** ``usage`` is reported (``Reply.usage`` overrides it, ``Reply(usage=False)``
  leaves it out). When streaming, usage comes as a last chunk with no choices only if the
  request asked for it with ``stream_options: {"include_usage": true}``. What each answer
  bills by the server's own count, whatever ``usage`` reports, is kept in
  :attr:`OpenAIServer.billed`.
* **Streaming.** ``stream: true`` answers with server-sent events, ``data: {chunk}``, one
  chunk per token, then a chunk with the ``finish_reason``, then ``data: [DONE]``. Caps
  and continuation work as above: a streamed answer is cut at ``max_tokens`` with
  ``finish_reason: "length"``, and a "continue" follow-up streams its rest. A client that
  hangs up mid-stream is let go quietly.
* **Tool calls.** ``Reply(tool_calls=(("lookup", '{"q": "x"}'),))`` answers with tool
  calls (streamed as the API streams them, one argument token per chunk); a cap cuts their
  arguments (``finish_reason: "length"``), else the finish reason is ``"tool_calls"``.
  Call ids are unique over the process.
* **Errors.** ``Reply(status=500)`` (or 429, 400 ...) answers with an OpenAI-style error
  body; ``Reply(fail_after=N)`` streams N tokens then sends an error event;
  :meth:`OpenAIServer.fail_at` fails the N-th request whatever it is. A 401's message
  quotes the key it was sent, as OpenAI's does (to test that a gateway scrubs it).
* **Keys.** The ``Authorization`` header of every ``POST`` is kept, in order, in
  :attr:`OpenAIServer.authorizations`.

**The Responses API** (``POST /v1/responses``): ``input`` (a text, or items:
messages, ``function_call`` / ``function_call_output``) and ``instructions`` (billed as a
leading message) are the prompt; ``max_output_tokens`` cuts the reply, answered with
``status: "incomplete"`` and ``incomplete_details: {"reason": "max_output_tokens"}``;
``usage`` has ``input_tokens`` / ``output_tokens``. Streamed (``stream: true``), the
answer comes as the API's typed events (``response.created``, ``response.in_progress``, the
message's ``output_item.added`` / ``content_part.added``, one ``response.output_text.delta``
per token, the ``done`` events, then ``response.completed`` or ``response.incomplete``
carrying the whole response and its usage); ``Reply(fail_after=N)`` sends an error after N
tokens. Each response gets an id
(``resp_1`` ...); a request with ``previous_response_id`` is billed that response's whole
context (its prompt and its output) on top of its own input, and continues a cut reply
when it names the cut response (a resend of the answer so far continues it too).
``chat/completions`` with ``response_format`` (the SDK's ``parse``) is answered as any
chat completion: script a JSON text for it.

Every request's JSON body is kept in :attr:`OpenAIServer.requests` (with its path in
:attr:`OpenAIServer.paths`), and what each answer bills, ``(prompt, completion)`` tokens by
the server's count (whatever ``usage`` reports), in :attr:`OpenAIServer.billed`. When the
script runs out, the server answers with ``default`` (a :class:`Reply` or a text).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_TOKEN = re.compile(r"\s*\S+")


def split_tokens(text: str) -> list[str]:
    """The server's tokens of ``text``: each run of non-spaces with the spaces before it."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """How many tokens the server counts in ``text``."""
    return len(split_tokens(text))


def prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """How many prompt tokens the server bills for ``messages``."""
    total = 3
    for message in messages:
        total += 3 + count_tokens(_text(message.get("content")))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            total += count_tokens(f"{function.get('name', '')} {function.get('arguments', '')}")
    return total


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


@dataclass
class Reply:
    """One scripted answer of :class:`OpenAIServer`.

    Attributes:
        text: the whole answer; caps and continuation cut it into pieces.
        finish_reason: the finish reason when the answer is not cut (``"stop"``).
        usage: ``True``: report the server's count; ``False``: report no usage; a mapping:
            report these numbers instead (e.g. more than the cap, to test over-use).
        status: an HTTP error status (429, 500 ...) to answer with instead of the text.
        fail_after: when streaming, send this many tokens, then an error event.
        delay: seconds to wait before answering.
        tool_calls: answer with these tool calls, ``(name, arguments)``, instead of the text:
            the arguments are the answer's tokens (a cap cuts them, ``finish_reason:
            "length"``; else ``"tool_calls"``); the Responses API answers with
            ``function_call`` items.
    """

    text: str = "This is a reply from the local test server."
    finish_reason: str = "stop"
    usage: bool | Mapping[str, int] = True
    status: int = 200
    fail_after: int | None = None
    delay: float = 0.0
    tool_calls: tuple[tuple[str, str], ...] = ()


@dataclass
class _Pending:
    """The rest of a cut reply, waiting for a continuation request."""

    reply: Reply
    delivered: str
    rest: list[str] = field(default_factory=list)
    response_id: str | None = None


class OpenAIServer:
    """An OpenAI chat-completions server on a loopback port (see the module docstring).

    Args:
        replies: the script: replies (or texts) served one per request, in order.
        default: the reply when the script is used up.
        host: the address to listen on (loopback).
    """

    def __init__(
        self,
        replies: Iterable[Reply | str] = (),
        *,
        default: Reply | str = "This is a reply from the local test server.",
        host: str = "127.0.0.1",
    ) -> None:
        self.default = _reply(default)
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.authorizations: list[str | None] = []  # the Authorization header of each POST
        self.billed: list[tuple[int, int]] = []  # (prompt, completion) of each answer sent
        self._contexts: dict[str, int] = {}  # response id -> tokens of its whole context
        self._script: deque[Reply] = deque(_reply(r) for r in replies)
        self._pending: deque[_Pending] = deque(maxlen=64)  # cut replies, newest last
        self._failures: dict[int, int] = {}
        self._lock = threading.Lock()
        self._host = host
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    @property
    def url(self) -> str:
        """The base URL clients use (``http://127.0.0.1:PORT/v1``)."""
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def queue(self, *replies: Reply | str) -> None:
        """Add replies to the end of the script."""
        with self._lock:
            self._script.extend(_reply(r) for r in replies)

    def fail_at(self, request: int, status: int = 500) -> None:
        """Answer the ``request``-th request (1-based, counting all) with an HTTP error.

        The error takes the place of whatever would have been served (the script is not
        advanced, a pending continuation is kept), e.g. to fail the follow-up of a cut call.
        """
        with self._lock:
            self._failures[request] = status

    def start(self) -> OpenAIServer:
        """Start listening in a daemon thread; returns the server."""
        if self._httpd is not None:
            return self
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer((self._host, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},  # shutdown() waits up to one interval
            name="openai-test-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and wait for the thread."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- answering

    def _next(self, body: Mapping[str, Any], path: str = "") -> tuple[Reply, list[str], bool]:
        """The reply, the tokens it may send (before the cap), whether they start it."""
        with self._lock:
            self.requests.append(json.loads(json.dumps(body)))
            self.paths.append(path)
            status = self._failures.pop(len(self.requests), None)
            if status is not None:
                return Reply(status=status), [], True
            messages = body.get("messages") or _input_items(body)
            previous = body.get("previous_response_id")
            for pending in reversed(self._pending):  # the newest first
                chained = pending.response_id is not None and previous == pending.response_id
                if chained or _continues(messages, pending.delivered):
                    self._pending.remove(pending)
                    return pending.reply, pending.rest, False
            reply = self._script.popleft() if self._script else self.default
            if reply.tool_calls:
                return reply, [t for _, a in reply.tool_calls for t in split_tokens(a)], True
            return reply, split_tokens(reply.text), True

    def _cut(
        self, reply: Reply, tokens: list[str], cap: int | None, response_id: str | None = None
    ) -> tuple[list[str], str]:
        """Keep at most ``cap`` tokens; remember the rest for a continuation."""
        if cap is None or len(tokens) <= cap:
            return tokens, reply.finish_reason
        sent, rest = tokens[:cap], tokens[cap:]
        with self._lock:
            self._pending.append(_Pending(reply, "".join(sent).strip(), rest, response_id))
        return sent, "length"

    def _context(self, body: Mapping[str, Any]) -> tuple[str, int]:
        """A new response id, and the prompt tokens of a Responses request."""
        with self._lock:
            response_id = f"resp_{len(self._contexts) + 1}"
            self._contexts[response_id] = 0
            previous = self._contexts.get(str(body.get("previous_response_id")), 0)
        prompt = prompt_tokens(_input_items(body)) + previous
        return response_id, prompt

    def _bill(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.billed.append((prompt, completion))

    def _remember(self, response_id: str, tokens: int) -> None:
        with self._lock:
            self._contexts[response_id] = tokens


def _input_items(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A Responses request's prompt as chat-like messages (``instructions`` first)."""
    items: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        items.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        return [*items, {"role": "user", "content": given}]
    for item in given if isinstance(given, list) else ():
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type")
        if kind == "function_call":
            text = f"{item.get('name', '')} {item.get('arguments', '')}"
            items.append({"role": "assistant", "content": text})
        elif kind == "function_call_output":
            items.append({"role": "tool", "content": str(item.get("output", ""))})
        else:
            items.append({"role": item.get("role", "user"), "content": item.get("content")})
    return items


def _continues(messages: list[Any], delivered: str) -> bool:
    if len(messages) < 2 or not isinstance(messages[-2], Mapping):
        return False
    previous = messages[-2]
    text = _text(previous.get("content")).strip()
    return previous.get("role") == "assistant" and bool(delivered) and text.endswith(delivered)


def _reply(reply: Reply | str) -> Reply:
    return reply if isinstance(reply, Reply) else Reply(text=reply)


class _Handler(BaseHTTPRequestHandler):
    """HTTP handler; ``owner`` is set on a per-server subclass."""

    owner: OpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
        else:
            self._error(404, f"no route {self.path}", "not_found")

    def do_POST(self) -> None:
        route = self.path.rstrip("/")
        responses = route.endswith("/responses")
        if not route.endswith("/chat/completions") and not responses:
            self._error(404, f"no route {self.path}", "not_found")
            return
        with self.owner._lock:
            self.owner.authorizations.append(self.headers.get("Authorization"))
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._error(400, "the body is not JSON", "invalid_request_error")
            return
        if responses:
            self._respond(body)
            return
        reply, tokens, first = self.owner._next(body, "/chat/completions")
        if reply.delay:
            time.sleep(reply.delay)
        if reply.status != 200:
            self._scripted(reply.status)
            return
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        sent, finish = self.owner._cut(reply, tokens, cap if isinstance(cap, int) else None)
        calls = _tool_pieces(reply, len(sent))
        if calls and finish != "length":
            finish = "tool_calls"
        n = body.get("n") or 1
        prompt = prompt_tokens(body.get("messages") or [])
        self.owner._bill(prompt, len(sent) * n)
        usage = _usage(reply, prompt, len(sent) * n)
        model = str(body.get("model", "gpt-4o-mini"))
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            if first and sent and not calls:
                sent = [sent[0].lstrip(), *sent[1:]]
            events = _events(model, sent, finish, n, usage if include else None, reply.fail_after)
            self._stream_events(
                _tool_events(model, calls, finish, usage if include else None) if calls else events
            )
            return
        text = "".join(sent)
        if first:
            text = text.lstrip()
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": _chat_calls(calls)}
        choices = [
            {
                "index": i,
                "message": message,
                "finish_reason": finish,
                "logprobs": None,
            }
            for i in range(n)
        ]
        payload: dict[str, Any] = {
            "id": "chatcmpl-local",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            payload["usage"] = usage
        self._json(200, payload)

    def _respond(self, body: Mapping[str, Any]) -> None:
        """Answer ``POST /v1/responses`` (the Responses API), streamed or not."""
        response_id, prompt = self.owner._context(body)
        reply, tokens, first = self.owner._next(body, "/responses")
        if reply.delay:
            time.sleep(reply.delay)
        if reply.status != 200:
            self._scripted(reply.status)
            return
        cap = body.get("max_output_tokens")
        sent, finish = self.owner._cut(
            reply, tokens, cap if isinstance(cap, int) else None, response_id
        )
        calls = _tool_pieces(reply, len(sent))
        if first and sent and not calls:
            sent = [sent[0].lstrip(), *sent[1:]]
        text = "".join(sent)
        self.owner._bill(prompt, len(sent))
        chat_usage = _usage(reply, prompt, len(sent))
        self.owner._remember(response_id, prompt + len(sent))
        cut = finish == "length"
        payload: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": int(time.time()),
            "model": str(body.get("model", "gpt-4o-mini")),
            "status": "incomplete" if cut else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "error": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": cap,
            "previous_response_id": body.get("previous_response_id"),
            "metadata": {},
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "top_p": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{response_id}",
                    "status": "incomplete" if cut else "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
        }
        if calls:
            status = "incomplete" if cut else "completed"
            payload["output"] = [
                {**call, "type": "function_call", "id": f"fc_{call['call_id']}", "status": status}
                for call in _response_calls(calls)
            ]
        if chat_usage is not None:
            payload["usage"] = {
                "input_tokens": chat_usage["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": chat_usage["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": chat_usage["total_tokens"],
            }
        if body.get("stream"):
            self._stream_events(_response_events(payload, sent, calls, reply.fail_after))
            return
        self._json(200, payload)

    # ------------------------------------------------------------------ writing

    def _json(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _scripted(self, status: int) -> None:
        """A scripted HTTP error; a 401 quotes the key it was sent, as OpenAI's does."""
        if status == 401:
            key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            message = f"Incorrect API key provided: {key}. You can find your API key at ..."
            self._error(401, message, "invalid_request_error")
            return
        kind = "rate_limit_error" if status == 429 else "server_error"
        self._error(status, f"scripted error {status}", kind)

    def _error(self, status: int, message: str, kind: str) -> None:
        self._json(status, {"error": {"message": message, "type": kind, "code": str(status)}})

    def _stream(
        self,
        model: str,
        tokens: list[str],
        finish: str,
        n: int,
        usage: Mapping[str, int] | None,
        fail_after: int | None,
    ) -> None:
        self._stream_events(_events(model, tokens, finish, n, usage, fail_after))

    def _stream_events(self, events: Iterator[str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            for event in events:
                self.wfile.write(f"data: {event}\n\n".encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading
            return


def _events(
    model: str,
    tokens: list[str],
    finish: str,
    n: int,
    usage: Mapping[str, int] | None,
    fail_after: int | None,
) -> Iterator[str]:
    base = {"id": "chatcmpl-local", "object": "chat.completion.chunk", "created": 0, "model": model}

    def chunk(delta: Mapping[str, Any], reason: str | None = None, i: int = 0) -> str:
        choice = {"index": i, "delta": delta, "finish_reason": reason, "logprobs": None}
        return json.dumps({**base, "choices": [choice]})

    for i in range(n):
        yield chunk({"role": "assistant", "content": ""}, i=i)
    for k, token in enumerate(tokens):
        if fail_after is not None and k >= fail_after:
            error = {"message": "scripted stream error", "type": "server_error"}
            yield json.dumps({"error": error})
            return
        for i in range(n):
            yield chunk({"content": token}, i=i)
    for i in range(n):
        yield chunk({}, finish, i=i)
    if usage is not None:
        yield json.dumps({**base, "choices": [], "usage": usage})
    yield "[DONE]"


def _response_events(
    payload: Mapping[str, Any],
    tokens: list[str],
    calls: list[tuple[int, str, str]],
    fail_after: int | None,
) -> Iterator[str]:
    """A streamed Responses answer: its events, ending with the response as a whole."""
    numbers = iter(range(1 << 30))

    def event(kind: str, **fields: Any) -> str:
        return json.dumps({"type": kind, "sequence_number": next(numbers), **fields})

    opening = {**payload, "status": "in_progress", "output": [], "incomplete_details": None}
    opening.pop("usage", None)
    yield event("response.created", response=opening)
    yield event("response.in_progress", response=opening)
    if calls:
        for index, item in enumerate(payload["output"]):
            added = {**item, "arguments": "", "status": "in_progress"}
            yield event("response.output_item.added", output_index=index, item=added)
        for number, _, piece in calls:
            index = number - calls[0][0]
            item_id = payload["output"][index]["id"]
            kind = "response.function_call_arguments.delta"
            yield event(kind, item_id=item_id, output_index=index, delta=piece)
        for index, item in enumerate(payload["output"]):
            fields = {"item_id": item["id"], "output_index": index, "name": item["name"]}
            yield event(
                "response.function_call_arguments.done", **fields, arguments=item["arguments"]
            )
            yield event("response.output_item.done", output_index=index, item=item)
        yield event(f"response.{payload['status']}", response=payload)
        return
    message = payload["output"][0]
    part = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    yield event(
        "response.output_item.added",
        output_index=0,
        item={**message, "status": "in_progress", "content": []},
    )
    empty = {"type": "output_text", "text": "", "annotations": []}
    yield event("response.content_part.added", **part, part=empty)
    for k, token in enumerate(tokens):
        if fail_after is not None and k >= fail_after:
            yield json.dumps(
                {"error": {"message": "scripted stream error", "type": "server_error"}}
            )
            return
        yield event("response.output_text.delta", **part, delta=token, logprobs=[])
    text = message["content"][0]["text"]
    yield event("response.output_text.done", **part, text=text, logprobs=[])
    yield event("response.content_part.done", **part, part=message["content"][0])
    yield event("response.output_item.done", output_index=0, item=message)
    yield event(f"response.{payload['status']}", response=payload)


def _tool_pieces(reply: Reply, sent: int) -> list[tuple[int, str, str]]:
    """The first ``sent`` tokens of a tool-call reply: ``(call number, name, token)``.

    Call numbers are unique over the server's life (frameworks refuse a reused call id).
    """
    if not reply.tool_calls:
        return []
    with _CALLS_LOCK:
        first = next(_CALL_NUMBERS)
        for _ in reply.tool_calls[1:]:
            next(_CALL_NUMBERS)
    pieces = [
        (first + i, name, token)
        for i, (name, arguments) in enumerate(reply.tool_calls)
        for token in split_tokens(arguments)
    ]
    return pieces[:sent] if sent else [(first, reply.tool_calls[0][0], "")]


_CALL_NUMBERS = itertools.count()
_CALLS_LOCK = threading.Lock()


def _joined(pieces: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """Each call's ``(index, name, arguments so far)``."""
    calls: dict[int, tuple[str, str]] = {}
    for i, name, token in pieces:
        calls[i] = (name, calls.get(i, (name, ""))[1] + token)
    return [(i, name, arguments) for i, (name, arguments) in sorted(calls.items())]


def _chat_calls(pieces: list[tuple[int, str, str]]) -> list[dict[str, Any]]:
    return [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": args}}
        for i, name, args in _joined(pieces)
    ]


def _response_calls(pieces: list[tuple[int, str, str]]) -> list[dict[str, Any]]:
    return [
        {"call_id": f"call_{i}", "name": name, "arguments": args}
        for i, name, args in _joined(pieces)
    ]


def _tool_events(
    model: str,
    pieces: list[tuple[int, str, str]],
    finish: str,
    usage: Mapping[str, int] | None,
) -> Iterator[str]:
    """A streamed chat answer of tool calls: the first chunk of a call names it."""
    base = {"id": "chatcmpl-local", "object": "chat.completion.chunk", "created": 0, "model": model}

    def chunk(delta: Mapping[str, Any], reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        return json.dumps({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": None})
    named: set[int] = set()
    first = pieces[0][0]
    for i, name, token in pieces:
        call: dict[str, Any] = {"index": i - first, "function": {"arguments": token}}
        if i not in named:
            named.add(i)
            call = {**call, "id": f"call_{i}", "type": "function"}
            call["function"] = {"name": name, "arguments": token}
        yield chunk({"tool_calls": [call]})
    yield chunk({}, finish)
    if usage is not None:
        yield json.dumps({**base, "choices": [], "usage": usage})
    yield "[DONE]"


def _usage(reply: Reply, prompt: int, completion: int) -> dict[str, int] | None:
    if reply.usage is False:
        return None
    if reply.usage is True:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    usage = {k: int(v) for k, v in reply.usage.items()}
    usage.setdefault("prompt_tokens", prompt)
    usage.setdefault("completion_tokens", completion)
    usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
    return usage
