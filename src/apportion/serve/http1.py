"""The direct sender's HTTP/1.1 client: one-shot JSON POSTs on pooled keep-alive connections.

A proxied call that is not a stream is one POST and one answer read whole: this client
does only that, on an :class:`asyncio.Protocol` per connection, about a fifth of the CPU
of a general client's request (``aiohttp``: its request, response and payload objects,
and a task per request). Streams go through ``aiohttp`` (or ``httpx``):
:func:`apportion.serve.upstream_http.post`.

* **Connections** are kept per event loop and origin (scheme, host, port), reused newest
  first, and closed when idle for :data:`IDLE_SECONDS` (below the 5 s keep-alive of
  uvicorn and Node servers, so a connection the server is about to close is not reused).
  A request is never retried: a POST may have been applied.
* **Answers**: a ``Content-Length`` body, a chunked one, or one read until the server
  closes; ``Accept-Encoding: identity`` is asked for, and a ``gzip`` or ``deflate`` body
  sent anyway is decoded; interim ``1xx`` answers are skipped; a head over
  :data:`MAX_HEAD_BYTES` is an error.
* **Timeouts**: :data:`CONNECT_SECONDS` to connect, the caller's to read the answer; both
  raise :class:`UpstreamTimeout` (whose name says ``Timeout``: the proxy answers 504).
  An upstream that cannot be reached, or closes without a whole answer, raises
  :class:`UpstreamConnectionError` (502).
* ``https`` URLs are sent over TLS (the system's certificates, the host checked).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import weakref
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "CONNECT_SECONDS",
    "IDLE_SECONDS",
    "MAX_HEAD_BYTES",
    "Answer",
    "UpstreamConnectionError",
    "UpstreamTimeout",
    "aclose_pool",
    "post",
]

CONNECT_SECONDS = 5.0
"""How long connecting (TLS included) may take."""

IDLE_SECONDS = 4.0
"""How long an idle connection is kept for reuse."""

MAX_HEAD_BYTES = 65_536
"""The largest status line and headers taken."""


class UpstreamTimeout(Exception):
    """Connecting to the upstream, or reading its answer, timed out."""


class UpstreamConnectionError(ConnectionError):
    """The upstream could not be reached, or sent no whole answer."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer read whole.

    Attributes:
        status: the HTTP status.
        headers: the header fields, names in lower case (repeated ones joined by ``, ``).
        body: the body, decoded from ``gzip`` or ``deflate`` if it was sent so.
    """

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class _Target:
    origin: tuple[str, str, int]  # scheme, host, port
    path: str
    host_header: str


def _target(url: str) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise UpstreamConnectionError(f"not an http(s) URL: {scheme or '?'}://...")
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target((scheme, host, port), path, shown if port == default else f"{shown}:{port}")


_target_of = functools.lru_cache(maxsize=1024)(_target)
""":func:`_target`, kept per URL."""


@functools.cache
def _tls() -> ssl.SSLContext:
    """The TLS context of every ``https`` connection (the system's certificates), made once."""
    return ssl.create_default_context()


# --------------------------------------------------------------------------- one connection


class _Connection(asyncio.Protocol):
    """One connection: sends a request, parses its answer as bytes arrive."""

    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.closed = False
        self.idle_since = 0.0
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self._head: tuple[int, dict[str, str]] | None = None
        self._length: int | None = None  # a Content-Length body
        self._chunked = False
        self._chunks: list[bytes] = []
        self._to_close = False  # read until the server closes
        self._eof = False
        self._keep = True

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None and not self._waiter.done():
            self._parse()

    def eof_received(self) -> bool:
        self._lost()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    # the exchange

    async def exchange(self, request: bytes, timeout: float) -> Answer:
        """Send ``request``; its answer (the connection is closed on any failure)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._waiter = waiter
        self._head = self._length = None
        self._chunked = self._to_close = self._eof = False
        self._chunks = []
        self._keep = True
        self.transport.write(request)
        timer = loop.call_later(timeout, self._timed_out)
        try:
            answer = await waiter
        except BaseException:
            self.close()
            raise
        finally:
            timer.cancel()
            self._waiter = None
        if not self._keep or self._buffer:
            self.close()  # the server will close it, or sent more than one answer
        return answer

    def close(self) -> None:
        """Close the connection."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _timed_out(self) -> None:
        self._fail(UpstreamTimeout("the upstream did not answer in time"))

    def _fail(self, error: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.close()

    def reusable(self, now: float) -> bool:
        """Whether the connection may carry another request (open, quiet, not idle long)."""
        return not self.closed and not self._buffer and now - self.idle_since < IDLE_SECONDS

    def _lost(self) -> None:
        self.closed = self._eof = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head is not None and self._to_close:
            self._parse()  # the body is what came until the close
            return
        self._fail(UpstreamConnectionError("the upstream closed the connection before answering"))

    def _parse(self) -> None:
        try:
            while self._head is None:
                if not self._parse_head():
                    return
            if self._length is not None:
                if len(self._buffer) >= self._length:
                    body = bytes(self._buffer[: self._length])
                    del self._buffer[: self._length]
                    self._done(body)
            elif self._chunked:
                self._parse_chunks()
            elif self._eof:
                body = bytes(self._buffer)
                self._buffer.clear()
                self._done(body)
        except (ValueError, zlib.error) as error:
            self._fail(UpstreamConnectionError(f"the upstream's answer is not HTTP/1.1: {error}"))

    def _parse_head(self) -> bool:
        """Read the status line and headers once all came; False while they have not."""
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise ValueError("its head is too long")
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        del self._buffer[: end + 4]
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError("no status line")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise ValueError("a header line without a colon")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if 100 <= status < 200:
            return False if not self._buffer else self._parse_head()  # interim: the next head
        self._head = (status, headers)
        connection = headers.get("connection", "").lower()
        self._keep = version == "HTTP/1.1" and "close" not in connection
        if status in (204, 304):
            self._length = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in headers:
            length = int(headers["content-length"].split(",")[0])
            if length < 0:
                raise ValueError("a negative Content-Length")
            self._length = length
        else:
            self._to_close = True
            self._keep = False
        return True

    def _parse_chunks(self) -> None:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\r\n")
            if end < 0:
                return
            size = int(bytes(buffer[:end]).split(b";")[0].strip(), 16)
            if size == 0:  # the last chunk, then trailers up to an empty line
                trailers = buffer.find(b"\r\n\r\n", end)
                if trailers < 0:
                    return
                del buffer[: trailers + 4]
                self._done(b"".join(self._chunks))
                return
            if len(buffer) < end + 2 + size + 2:
                return
            self._chunks.append(bytes(buffer[end + 2 : end + 2 + size]))
            del buffer[: end + 2 + size + 2]

    def _done(self, body: bytes) -> None:
        assert self._head is not None and self._waiter is not None
        status, headers = self._head
        coding = headers.get("content-encoding", "identity").lower()
        if coding in ("gzip", "x-gzip"):
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            try:
                body = zlib.decompress(body)
            except zlib.error:  # raw deflate, as some servers send it
                body = zlib.decompress(body, -zlib.MAX_WBITS)
        elif coding not in ("identity", ""):
            raise ValueError(f"a body in {coding}, not asked for")
        self._waiter.set_result(Answer(status, headers, body))


# --------------------------------------------------------------------------- the pool


class _Pool:
    """An event loop's idle connections per origin."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, str, int], deque[_Connection]] = {}

    async def take(self, origin: tuple[str, str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        idle = self.idle.get(origin)
        now = loop.time()
        while idle:
            connection = idle.pop()
            if connection.reusable(now):
                return connection
            connection.close()
        scheme, host, port = origin
        tls = _tls() if scheme == "https" else None
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    _Connection, host, port, ssl=tls, server_hostname=host if tls else None
                ),
                CONNECT_SECONDS,
            )
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as error:
            raise UpstreamConnectionError(f"cannot connect to {host}:{port}: {error}") from None
        return connection

    def give_back(self, origin: tuple[str, str, int], connection: _Connection) -> None:
        now = asyncio.get_running_loop().time()
        idle = self.idle.setdefault(origin, deque())
        while idle and not idle[0].reusable(now):
            idle.popleft().close()  # the oldest first: those the server may close soon
        connection.idle_since = now
        idle.append(connection)

    def close(self) -> None:
        for idle in self.idle.values():
            while idle:
                idle.pop().close()
        self.idle.clear()


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()


def _pool() -> _Pool:
    loop = asyncio.get_running_loop()
    pool = _POOLS.get(loop)
    if pool is None:
        pool = _POOLS[loop] = _Pool()
    return pool


def _request(target: _Target, headers: Mapping[str, str], body: bytes) -> bytes:
    lines = [
        f"POST {target.path} HTTP/1.1",
        f"Host: {target.host_header}",
        f"Content-Length: {len(body)}",
        "Accept-Encoding: identity",
    ]
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n") or not name:
            raise ValueError(f"a header field that cannot be sent: {name[:40]!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def post(url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> Answer:
    """POST ``body`` to ``url``; the answer, read whole.

    Args:
        url: an ``http`` or ``https`` URL.
        headers: the header fields to send (``Host``, ``Content-Length`` and
            ``Accept-Encoding`` are set here).
        body: the body.
        timeout: seconds the answer may take once the request is sent.

    Raises:
        UpstreamTimeout: connecting or answering took too long.
        UpstreamConnectionError: the upstream could not be reached or sent no whole answer.
        ValueError: a header field with a line break (nothing is sent).
    """
    target = _target_of(url)
    request = _request(target, headers, body)
    pool = _pool()
    connection = await pool.take(target.origin)
    answer = await connection.exchange(request, timeout)
    if not connection.closed:
        pool.give_back(target.origin, connection)
    return answer


async def aclose_pool() -> None:
    """Close this event loop's idle connections."""
    try:
        pool = _POOLS.pop(asyncio.get_running_loop(), None)
    except RuntimeError:
        return
    if pool is not None:
        pool.close()
