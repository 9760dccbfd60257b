"""A fast fake upstream speaking OpenAI's chat-completions protocol, for benchmarks and load tests.

:class:`~apportion.testing.openai_server.OpenAIServer` plays a script with a thread per
connection (tens of milliseconds a call under load): too slow to measure the few
milliseconds a gateway adds. :class:`FastUpstream` is one asyncio event loop with a
minimal HTTP/1.1 parser (keep-alive, ``Content-Length`` bodies) that answers every
``POST .../chat/completions`` at once:

* the answer is ``reply_tokens`` words (``"ok ok ..."``), cut at the request's
  ``max_completion_tokens`` / ``max_tokens`` (``finish_reason: "length"``), else
  ``"stop"``;
* ``usage`` is reported, counted as :class:`OpenAIServer` counts
  (:func:`~apportion.testing.openai_server.prompt_tokens`: one token per word, 3 per
  message, 3 more; one per answer word);
* what each answer bills (prompt + completion tokens) is added up per *tag*, the first
  word of the first message's text (:attr:`FastUpstream.billed`), so a test can name its
  request in the prompt and read what the provider billed it;
* ``GET /stats`` answers ``{"calls": N, "billed": {tag: tokens}}``; ``GET /healthz``
  answers ``{}``; any other path is a 404. Streams are refused (400).

In a thread (tests)::

    with FastUpstream() as upstream:
        ...  # base_url=upstream.url
        upstream.billed["ticket-1"]

or as a process (benchmarks), which prints its port when it listens::

    python -m apportion.testing.fast_upstream [--port 0] [--reply-tokens 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from types import TracebackType
from typing import Any

from apportion.testing.openai_server import prompt_tokens

__all__ = ["FastUpstream", "answer_body"]

_OK = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n"
_STATUS = {200: "OK", 400: "Bad Request", 404: "Not Found"}


def answer_body(body: Any, reply_tokens: int, number: int) -> tuple[int, bytes, str, int]:
    """The answer to one chat-completions body: status, JSON bytes, tag, tokens billed.

    Args:
        body: the request's parsed JSON.
        reply_tokens: the words of a whole answer.
        number: the call's number (its id).
    """
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return 400, _error("messages: a list of chat messages is required"), "", 0
    if body.get("stream"):
        return 400, _error("stream: this fake upstream does not stream"), "", 0
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    count = reply_tokens
    finish = "stop"
    if isinstance(cap, int) and 0 < cap < reply_tokens:
        count, finish = cap, "length"
    prompt = prompt_tokens(messages)
    first = messages[0].get("content") if messages else None
    tag = first.split(maxsplit=1)[0] if isinstance(first, str) and first.strip() else ""
    answer = {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": str(body.get("model", "")),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(["ok"] * count)},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": count,
            "total_tokens": prompt + count,
        },
    }
    return 200, json.dumps(answer, separators=(",", ":")).encode(), tag, prompt + count


def _error(message: str) -> bytes:
    error = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    return json.dumps(error).encode()


class _Connection(asyncio.Protocol):
    """One client connection: requests parsed from the buffer, answered in order."""

    def __init__(self, owner: FastUpstream) -> None:
        self.owner = owner
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            fields = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
            if "chunked" in fields.get("transfer-encoding", "").lower():
                self._send(400, _error("chunked bodies are not read here"), close=True)
                return
            length = int(fields.get("content-length", "0") or 0)
            if len(self.buffer) < end + 4 + length:
                return
            raw = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            method, _, rest = head[0].partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            status, out = self.owner.answer(method, path, raw)
            self._send(status, out, close=fields.get("connection", "").lower() == "close")

    def _send(self, status: int, body: bytes, *, close: bool) -> None:
        assert self.transport is not None
        line = _OK if status == 200 else f"HTTP/1.1 {status} {_STATUS.get(status, 'Error')}\r\n"
        if status != 200:
            line += "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n"
        self.transport.write(line.format(len(body)).encode() + body)
        if close:
            self.transport.close()
            self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class FastUpstream:
    """The fake upstream (see the module docstring), in a daemon thread of its own.

    Args:
        reply_tokens: words in a whole answer (cut at the request's cap).
        host: the address to listen on.
        port: the port (0: a free one).

    Attributes:
        calls: chat completions answered.
        billed: tokens billed per tag (the first word of the first message).
    """

    def __init__(self, reply_tokens: int = 8, *, host: str = "127.0.0.1", port: int = 0) -> None:
        if reply_tokens < 1:
            raise ValueError("reply_tokens must be at least 1")
        self.reply_tokens = reply_tokens
        self.host = host
        self.port = port
        self.calls = 0
        self.billed: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL clients use (``http://127.0.0.1:PORT/v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def answer(self, method: str, path: str, raw: bytes) -> tuple[int, bytes]:
        """The status and JSON body answering one HTTP request."""
        if method == "GET" and path == "/healthz":
            return 200, b"{}"
        if method == "GET" and path == "/stats":
            with self._lock:
                return 200, json.dumps({"calls": self.calls, "billed": self.billed}).encode()
        if method != "POST" or not path.endswith("/chat/completions"):
            return 404, _error(f"no route {method} {path}")
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, _error("the body is not JSON")
        with self._lock:
            self.calls += 1
            number = self.calls
        status, out, tag, tokens = answer_body(body, self.reply_tokens, number)
        if status == 200:
            with self._lock:
                self.billed[tag] = self.billed.get(tag, 0) + tokens
        return status, out

    async def serve(self, ready: threading.Event | None = None) -> asyncio.Server:
        """Listen on the running loop (the port is known once this returns)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _Connection(self), self.host, self.port, backlog=1024
        )
        self.port = int(server.sockets[0].getsockname()[1])
        self._server = server
        if ready is not None:
            ready.set()
        return server

    def start(self) -> FastUpstream:
        """Listen in a daemon thread (returns once the port is bound)."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.serve(ready))
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fast-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the fake upstream did not start")
        return self

    def stop(self) -> None:
        """Stop listening and the thread."""
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._server = self._thread = None

    def __enter__(self) -> FastUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve in this process until killed, printing the port once listening."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reply-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    upstream = FastUpstream(args.reply_tokens, host=args.host, port=args.port)

    async def run() -> None:
        server = await upstream.serve()
        print(upstream.port, flush=True)
        await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
