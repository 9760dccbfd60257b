"""The direct sender's HTTP/1.1 client against real sockets: a scripted asyncio server.

Each test's server reads one request head and body at a time and answers with the bytes
the test scripted (sent in pieces when asked), so every way an HTTP/1.1 answer can be
framed reaches the client as a real server would send it. TLS runs against a certificate
made by ``openssl`` for the test.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import shutil
import ssl
import subprocess
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.serve import http1
from apportion.serve.http1 import UpstreamConnectionError, UpstreamTimeout

Script = Callable[[bytes, bytes], Awaitable[list[bytes] | None]]
"""(request head, request body) -> the pieces to send (None: close without answering)."""

CLOSE = b""
"""A piece that closes the connection once the pieces before it are sent."""


class Scripted:
    """A loopback server answering each request through ``script``; counts connections."""

    def __init__(self, script: Script, *, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await http1.aclose_pool()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def url(self, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}/v1/chat/completions?x=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                pieces = await self.script(head, body)
                if pieces is None:
                    break
                if CLOSE in pieces:
                    pieces = [*pieces[: pieces.index(CLOSE)], CLOSE]
                for piece in pieces:
                    if piece == CLOSE:
                        return
                    writer.write(piece)
                    await writer.drain()
                    if len(pieces) > 1:
                        await asyncio.sleep(0.005)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def fixed(*pieces: bytes) -> Script:
    async def script(head: bytes, body: bytes) -> list[bytes]:
        return list(pieces)

    return script


def delayed(seconds: float, *pieces: bytes) -> Script:
    """:func:`fixed`, sent after ``seconds``."""

    async def script(head: bytes, body: bytes) -> list[bytes]:
        await asyncio.sleep(seconds)
        return list(pieces)

    return script


def run(coroutine: Awaitable[object]) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}


def test_a_content_length_answer_and_the_request_sent():
    async def main() -> None:
        async with Scripted(fixed(answer(b'{"ok":1}', "Content-Type: application/json"))) as s:
            got = await http1.post(s.url(), HEADERS, b'{"a":1}', 5.0)
            assert (got.status, got.body) == (200, b'{"ok":1}')
            assert got.headers["content-type"] == "application/json"
            head, body = s.requests[0]
            assert body == b'{"a":1}'
            lines = head.decode().split("\r\n")
            assert lines[0] == "POST /v1/chat/completions?x=1 HTTP/1.1"
            assert f"Host: 127.0.0.1:{s.port}" in lines
            assert "Authorization: Bearer sk-test" in lines
            assert "Accept-Encoding: identity" in lines

    run(main())


def test_keep_alive_reuses_one_connection_and_connection_close_does_not():
    async def main() -> None:
        async with Scripted(fixed(answer(b"{}"))) as s:
            for _ in range(5):
                assert (await http1.post(s.url(), HEADERS, b"{}", 5.0)).body == b"{}"
            assert s.connections == 1
        async with Scripted(fixed(answer(b"{}", "Connection: close"))) as s:
            for _ in range(3):
                assert (await http1.post(s.url(), HEADERS, b"{}", 5.0)).body == b"{}"
            assert s.connections == 3

    run(main())


def test_concurrent_calls_each_get_their_own_answer():
    async def script(head: bytes, body: bytes) -> list[bytes]:
        await asyncio.sleep(0.01)
        return [answer(body)]

    async def main() -> None:
        async with Scripted(script) as s:
            bodies = [b'{"n":%d}' % n for n in range(20)]
            got = await asyncio.gather(*(http1.post(s.url(), HEADERS, b, 5.0) for b in bodies))
            assert [g.body for g in got] == bodies
            assert s.connections == 20
            again = await asyncio.gather(*(http1.post(s.url(), HEADERS, b, 5.0) for b in bodies))
            assert [g.body for g in again] == bodies
            assert s.connections == 20  # all reused

    run(main())


def test_chunked_answers_in_pieces_with_extensions_and_trailers():
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4;ext=1\r\n{"a"\r\n'
        b"6\r\n:12345\r\n"
        b"1\r\n}\r\n"
        b"0\r\nX-Trailer: yes\r\n\r\n"
    )
    pieces = [chunked[i : i + 7] for i in range(0, len(chunked), 7)]

    async def main() -> None:
        async with Scripted(fixed(*pieces)) as s:
            for _ in range(2):  # and the connection is fit for the next
                got = await http1.post(s.url(), HEADERS, b"{}", 5.0)
                assert got.body == b'{"a":12345}'
            assert s.connections == 1

    run(main())


def test_a_body_read_until_the_server_closes():
    async def main() -> None:
        async with Scripted(fixed(b'HTTP/1.1 200 OK\r\n\r\n{"until":', b'"close"}', CLOSE)) as s:
            got = await http1.post(s.url(), HEADERS, b"{}", 5.0)
            assert got.body == b'{"until":"close"}'

    run(main())


def test_gzip_and_deflate_bodies_are_decoded_and_interim_answers_skipped():
    text = b'{"text":"' + b"ok " * 200 + b'"}'
    deflated = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_deflate = deflated.compress(text) + deflated.flush()
    answers = [
        answer(gzip.compress(text), "Content-Encoding: gzip"),
        answer(zlib.compress(text), "Content-Encoding: deflate"),
        answer(raw_deflate, "Content-Encoding: deflate"),
        b"HTTP/1.1 100 Continue\r\n\r\n" + answer(text),
    ]

    async def main() -> None:
        for sent in answers:
            async with Scripted(fixed(sent)) as s:
                assert (await http1.post(s.url(), HEADERS, b"{}", 5.0)).body == text

    run(main())


@pytest.mark.parametrize(
    "sent",
    [
        answer(b"x", "Content-Encoding: br"),
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * (http1.MAX_HEAD_BYTES + 10),
    ],
    ids=["brotli", "no-status", "bad-header", "bad-chunk", "huge-head"],
)
def test_an_answer_that_is_not_http_is_a_connection_error(sent):
    async def main() -> None:
        async with Scripted(fixed(sent)) as s:
            with pytest.raises(UpstreamConnectionError, match=r"not HTTP/1\.1"):
                await http1.post(s.url(), HEADERS, b"{}", 5.0)

    run(main())


def test_a_server_that_closes_without_answering_or_midway():
    async def silent(head: bytes, body: bytes) -> None:
        return None

    async def main() -> None:
        async with Scripted(silent) as s:
            with pytest.raises(UpstreamConnectionError, match="closed the connection"):
                await http1.post(s.url(), HEADERS, b"{}", 5.0)
        half = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"
        async with Scripted(fixed(half, CLOSE)) as s:
            with pytest.raises(UpstreamConnectionError, match="closed the connection"):
                await http1.post(s.url(), HEADERS, b"{}", 5.0)

    run(main())


def test_timeouts_and_unreachable_upstreams():
    async def main() -> None:
        async with Scripted(delayed(5, answer(b"{}"))) as s:
            with pytest.raises(UpstreamTimeout):
                await http1.post(s.url(), HEADERS, b"{}", 0.2)
            port = s.port
        with pytest.raises(UpstreamConnectionError, match="cannot connect"):
            await http1.post(f"http://127.0.0.1:{port}/v1", HEADERS, b"{}", 1.0)

    run(main())
    assert "timeout" in UpstreamTimeout.__name__.lower()  # the proxy answers 504 by the name


def test_an_idle_connection_is_not_reused_past_its_time(monkeypatch):
    monkeypatch.setattr(http1, "IDLE_SECONDS", 0.05)

    async def main() -> None:
        async with Scripted(fixed(answer(b"{}"))) as s:
            await http1.post(s.url(), HEADERS, b"{}", 5.0)
            await asyncio.sleep(0.1)
            await http1.post(s.url(), HEADERS, b"{}", 5.0)
            assert s.connections == 2

    run(main())


def test_a_connection_the_server_closed_while_idle_is_not_reused():
    async def main() -> None:
        async with Scripted(fixed(answer(b"{}"), CLOSE)) as s:
            await http1.post(s.url(), HEADERS, b"{}", 5.0)
            await asyncio.sleep(0.05)  # the server's close has arrived
            s.script = fixed(answer(b'{"second":1}'))
            got = await http1.post(s.url(), HEADERS, b"{}", 5.0)
            assert got.body == b'{"second":1}' and s.connections == 2

    run(main())


def test_a_cancelled_call_closes_its_connection():
    async def main() -> None:
        async with Scripted(delayed(0.3, answer(b'{"late":1}'))) as s:
            call = asyncio.ensure_future(http1.post(s.url(), HEADERS, b"{}", 5.0))
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            s.script = fixed(answer(b'{"fresh":1}'))
            got = await http1.post(s.url(), HEADERS, b"{}", 5.0)
            assert got.body == b'{"fresh":1}'  # never the cancelled call's late answer
            assert s.connections == 2

    run(main())


def test_header_fields_with_line_breaks_are_refused_before_sending():
    async def main() -> None:
        async with Scripted(fixed(answer(b"{}"))) as s:
            with pytest.raises(ValueError, match="cannot be sent"):
                await http1.post(s.url(), {"X-Evil": "a\r\nHost: elsewhere"}, b"{}", 5.0)
            assert s.connections == 0

    run(main())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_https_checks_the_certificate_and_the_host(tmp_path: Path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)

    async def main() -> None:
        async with Scripted(fixed(answer(b'{"tls":1}')), tls=server_tls) as s:
            # the system's store: not trusted
            with pytest.raises(UpstreamConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await http1.post(s.url("https", "localhost"), HEADERS, b"{}", 5.0)
            trusting = ssl.create_default_context(cafile=str(cert))
            monkeypatch.setattr(http1, "_tls", lambda: trusting)
            got = await http1.post(s.url("https", "localhost"), HEADERS, b"{}", 5.0)
            assert got.body == b'{"tls":1}'
            with pytest.raises(UpstreamConnectionError, match=r"match"):
                await http1.post(s.url("https", "127.0.0.1"), HEADERS, b"{}", 5.0)

    run(main())


def test_not_an_http_url():
    with pytest.raises(UpstreamConnectionError, match="not an http"):
        run(http1.post("ftp://example.com/x", HEADERS, b"{}", 1.0))


class _Transport:
    """Enough of a transport for a connection fed by hand."""

    def __init__(self) -> None:
        self.sent = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closed = True


def _framed(body: bytes, framing: str, sizes: list[int]) -> bytes:
    if framing == "length":
        return answer(body)
    if framing == "close":
        return b"HTTP/1.1 200 OK\r\n\r\n" + body
    chunks, at = [], 0
    for size in [*sizes, len(body)]:
        piece = body[at : at + max(1, size)]
        at += len(piece)
        if piece:
            chunks.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(chunks) + b"0\r\n\r\n"


@settings(max_examples=150, deadline=None)
@given(
    body=st.binary(max_size=300),
    framing=st.sampled_from(["length", "chunked", "close"]),
    sizes=st.lists(st.integers(1, 40), max_size=8),
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_any_split_of_an_answer_reads_the_same_body(body, framing, sizes, cuts):
    """However the bytes arrive, the body is the one sent, and nothing is left over."""
    sent = _framed(body, framing, sizes)
    points = sorted({0, len(sent), *(c for c in cuts if c < len(sent))})

    async def main() -> http1.Answer:
        connection = http1._Connection()
        connection.connection_made(_Transport())  # type: ignore[arg-type]
        exchange = asyncio.ensure_future(connection.exchange(b"POST / HTTP/1.1\r\n\r\n", 5.0))
        await asyncio.sleep(0)
        for start, end in itertools.pairwise(points):
            connection.data_received(sent[start:end])
        if framing == "close":
            connection.eof_received()
        got = await exchange
        assert connection.closed == (framing == "close")
        return got

    got = asyncio.run(main())
    assert (got.status, got.body) == (200, body)
