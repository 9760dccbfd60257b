"""The direct sender's HTTP: raw JSON to an OpenAI-protocol upstream, one pooled client.

The proxy's direct sender (:func:`apportion.serve.forward.direct_sender`) sends the
call's parameters as JSON bytes and reads the answer's JSON once: a call that is not a
stream through :mod:`apportion.serve.http1` (pooled keep-alive connections per event loop
and upstream), a stream through one shared ``aiohttp`` session (``httpx`` without
aiohttp) per event loop; both are closed by :func:`aclose_clients` at the app's
shutdown. No SDK
model object is built: the engine reads the answer through :class:`JSONView`, an
attribute view over the parsed JSON (``response.choices[0].message.content``,
``response.usage.prompt_tokens``), whose writes (an extended answer's joined text and
summed usage) go to the JSON itself. An answer the engine did not change is passed to
the client as the very bytes the upstream sent (:func:`raw_bytes`).

A stream is read as server-sent events (:class:`EventStream`): each ``data:`` line's JSON
is one chunk (a :class:`JSONView`), ``[DONE]`` ends it, and an event carrying ``error``
raises :class:`UpstreamStatusError` (as the OpenAI SDK raises ``APIError``). An answer
with an HTTP error status raises :class:`UpstreamStatusError` with that status and the
provider's message (``error.message`` of its JSON body, else its text).

JSON is read and written with ``orjson`` when it is installed (imported on first use),
else with the standard library.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Any

__all__ = [
    "EventStream",
    "JSONView",
    "UpstreamStatusError",
    "aclose_clients",
    "dumps",
    "loads",
    "post",
    "raw_bytes",
]

DEFAULT_BASE = "https://api.openai.com/v1"
"""Where an upstream without ``api_base`` is (``OPENAI_BASE_URL`` overrides it, as in the SDK)."""

TIMEOUT_SECONDS = 600.0
"""An upstream call's read timeout (the OpenAI SDK's default); connecting: 5 seconds."""

_json: tuple[Callable[[Any], Any], Callable[[Any], bytes]] | None = None


def _codec() -> tuple[Callable[[Any], Any], Callable[[Any], bytes]]:
    """``(loads, dumps)``: orjson's when installed, else the standard library's."""
    global _json
    if _json is None:
        try:
            import orjson
        except ImportError:

            def std_dumps(data: Any) -> bytes:
                return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()

            _json = (json.loads, std_dumps)
        else:
            _json = (orjson.loads, orjson.dumps)
    return _json


def loads(raw: bytes | str) -> Any:
    """JSON bytes (or text) as Python data.

    Raises:
        ValueError: not JSON (``orjson.JSONDecodeError`` is a ``ValueError`` too).
    """
    return _codec()[0](raw)


def dumps(data: Any) -> bytes:
    """Python data as compact JSON bytes (UTF-8)."""
    return _codec()[1](data)


class UpstreamStatusError(Exception):
    """The upstream answered an HTTP error (or an error event mid-stream).

    Attributes:
        status_code: the upstream's HTTP status.
        message: the provider's message.
        body: the answer's JSON (or text), as sent.
    """

    def __init__(self, status_code: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.body = body


def _error_of(status: int, raw: bytes) -> UpstreamStatusError:
    """The error of an HTTP error answer: its status, the provider's message."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body: Any = loads(raw) if raw else None
    except ValueError:
        body = text
    message = _message_of(body) or text or f"Error code: {status}"
    return UpstreamStatusError(status, message, body)


def _message_of(body: Any) -> str | None:
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        message = error.get("message")
        return message if isinstance(message, str) and message else None
    if isinstance(error, str) and error:
        return error
    message = body.get("message") if isinstance(body, Mapping) else None
    return message if isinstance(message, str) and message else None


# --------------------------------------------------------------------------- views


class JSONView:
    """An attribute view over a JSON object: ``view.usage.prompt_tokens``.

    A missing key reads as ``None``; an object reads as a view, an array as a list of
    views (of its objects); setting an attribute sets the key in the JSON. The root view
    keeps the bytes the upstream sent, passed on as they are until something is set.
    """

    __slots__ = ("_data", "_root", "apportion", "changed", "raw")

    def __init__(self, data: dict[str, Any], root: JSONView | None = None) -> None:
        object.__setattr__(self, "_data", data)
        object.__setattr__(self, "_root", root)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in JSONView.__slots__:
            raise AttributeError(name)
        return _view(self._data.get(name), self._root or self)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("apportion", "raw", "changed"):
            object.__setattr__(self, name, value)
            return
        self._data[name] = _plain(value)
        root = self._root or self
        object.__setattr__(root, "changed", True)

    def __getitem__(self, name: str) -> Any:
        return _view(self._data[name], self._root or self)

    def __repr__(self) -> str:
        return f"JSONView({self._data!r})"

    @property
    def data(self) -> dict[str, Any]:
        """The JSON object (changes included)."""
        data: dict[str, Any] = self._data
        return data


def _view(value: Any, root: JSONView) -> Any:
    if isinstance(value, dict):
        return JSONView(value, root)
    if isinstance(value, list):
        return [JSONView(v, root) if isinstance(v, dict) else v for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, JSONView):
        return value.data
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def view_of(raw: bytes) -> JSONView:
    """The root view of an answer's JSON bytes (which it keeps).

    Raises:
        UpstreamStatusError: the answer is not a JSON object (502).
    """
    try:
        data = loads(raw)
    except ValueError:
        raise UpstreamStatusError(502, "the upstream answered something not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamStatusError(502, "the upstream answered JSON that is not an object")
    root = JSONView(data)
    object.__setattr__(root, "raw", raw)
    object.__setattr__(root, "changed", False)
    return root


def raw_bytes(view: JSONView) -> bytes:
    """The answer's JSON bytes: the upstream's own when nothing was changed."""
    raw = getattr(view, "raw", None) if view._root is None else None
    if isinstance(raw, bytes) and not getattr(view, "changed", True):
        return raw
    return dumps(view.data)


# --------------------------------------------------------------------------- streams


class EventStream:
    """A streamed answer: its server-sent events' JSON, as :class:`JSONView` chunks.

    Iterate it (``async for``); :meth:`aclose` lets the connection go.

    Args:
        lines: the answer's lines (bytes or text, line ends kept or not).
        status: the answer's HTTP status.
        close: lets the answer's connection go (awaited once).
    """

    def __init__(
        self, lines: AsyncIterator[Any], status: int, close: Callable[[], Awaitable[Any]]
    ) -> None:
        self._lines = lines
        self._status = status
        self._close: Callable[[], Awaitable[Any]] | None = close
        self._chunks = self._read()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> JSONView:
        return await self._chunks.__anext__()

    async def _read(self) -> AsyncGenerator[JSONView, None]:
        event: str | None = None
        data: list[str] = []
        try:
            async for got in self._lines:
                line = got.decode("utf-8") if isinstance(got, bytes) else got
                line = line.rstrip("\r\n")
                if line:
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    continue
                if not data:  # a comment or a lone event line
                    event = None
                    continue
                text = "\n".join(data)
                kind, event, data = event, None, []
                if text.startswith("[DONE]"):
                    break
                try:
                    chunk = loads(text)
                except ValueError:
                    continue
                if isinstance(chunk, dict) and chunk.get("error") and kind in (None, "error"):
                    raise UpstreamStatusError(self._status, _message_of(chunk) or text, chunk)
                if isinstance(chunk, dict):
                    yield JSONView(chunk)
                    # the lines may all be buffered already: let the loop run (a client
                    # that hung up is noticed, other calls go on)
                    await asyncio.sleep(0)
        finally:
            await self._let_go()

    async def _let_go(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            await close()

    async def aclose(self) -> None:
        """Stop reading; the connection goes back to the pool (or is closed)."""
        with suppress(Exception):
            await self._chunks.aclose()
        await self._let_go()


# --------------------------------------------------------------------------- clients


_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = (
    weakref.WeakKeyDictionary()
)
"""Each event loop's client, and the async generator that closes it when the loop ends."""


def _aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError:
        return None
    return aiohttp


async def _client() -> Any:
    """The shared client of this event loop (made on first use).

    An ``aiohttp.ClientSession`` when aiohttp is installed (about a tenth of httpx's CPU
    per call), else an ``httpx.AsyncClient``; either keeps its connections open until
    :func:`aclose_clients`, or the loop's end (``asyncio.run`` closes the loop's async
    generators as it ends: one of them closes the client).
    """
    loop = asyncio.get_running_loop()
    found = _CLIENTS.get(loop)
    if found is not None and not found[0].closed:
        return found[0]
    aiohttp = _aiohttp()
    if aiohttp is not None:
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=TIMEOUT_SECONDS),
            skip_auto_headers=("User-Agent",),
        )
    else:
        import httpx

        client = _HttpxClient(
            httpx.AsyncClient(
                timeout=httpx.Timeout(TIMEOUT_SECONDS, connect=5.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            )
        )
    keeper = _keeper(client)
    await keeper.__anext__()
    _CLIENTS[loop] = (client, keeper)
    return client


async def _keeper(client: Any) -> AsyncIterator[None]:
    """Suspended while the loop runs; closes ``client`` when the loop closes it."""
    try:
        yield
    finally:
        with suppress(Exception):
            await client.close()


class _HttpxClient:
    """httpx's client, answering as the direct sender reads an aiohttp session."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @property
    def closed(self) -> bool:
        return bool(self.client.is_closed)

    async def close(self) -> None:
        await self.client.aclose()


async def aclose_clients() -> None:
    """Close this event loop's shared client and pooled connections (at the app's shutdown)."""
    from apportion.serve import http1

    await http1.aclose_pool()
    with suppress(RuntimeError):
        found = _CLIENTS.pop(asyncio.get_running_loop(), None)
        if found is not None:
            with suppress(Exception):
                await found[1].aclose()


def base_url(api_base: str | None) -> str:
    """The upstream's base URL (no trailing slash)."""
    return (api_base or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE).rstrip("/")


async def post(
    url: str, headers: Mapping[str, str], params: Mapping[str, Any], *, stream: bool
) -> JSONView | EventStream:
    """POST ``params`` as JSON to ``url``: the answer's view, or its event stream (``stream``).

    ``extra_body`` (a mapping) is merged into the JSON, as the OpenAI SDK does.

    Raises:
        UpstreamStatusError: the upstream answered an HTTP error (its status and message).
        Exception: the upstream could not be reached, or timed out (the HTTP library's
            error: its name says ``Timeout`` for a timeout).
    """
    body = dict(params)
    extra = body.pop("extra_body", None)
    if isinstance(extra, Mapping):
        body.update(extra)
    content = dumps(body)
    if not stream:
        from apportion.serve import http1

        answer = await http1.post(url, headers, content, TIMEOUT_SECONDS)
        if answer.status >= 400:
            raise _error_of(answer.status, answer.body)
        return view_of(answer.body)
    client = await _client()
    if isinstance(client, _HttpxClient):
        return await _post_httpx(client.client, url, headers, content)
    response = await client.post(url, data=content, headers=headers)
    status = int(response.status)
    if status >= 400:
        try:
            raw = await response.read()
        finally:
            response.release()
        raise _error_of(status, raw)

    async def close() -> None:
        response.release()

    return EventStream(response.content.__aiter__(), status, close)


async def _post_httpx(
    client: Any, url: str, headers: Mapping[str, str], content: bytes
) -> EventStream:
    request = client.build_request("POST", url, content=content, headers=headers)
    response = await client.send(request, stream=True)
    status = int(response.status_code)
    if status >= 400:
        try:
            raw = await response.aread()
        finally:
            await response.aclose()
        raise _error_of(status, raw)
    return EventStream(response.aiter_lines(), status, response.aclose)
