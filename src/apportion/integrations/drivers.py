"""The sync and async drivers that carry out a :class:`~apportion.integrations.chat.ChatCall`.

:class:`~apportion.integrations.chat.ChatCall` yields :class:`~apportion.integrations.chat.Op`
values (a request operation, or a model call); the drivers here carry them out: :func:`run`
and :func:`arun` with blocking or awaited calls, and :class:`BudgetedStream` /
:class:`AsyncBudgetedStream` for streaming (the semantics are described in
:mod:`apportion.integrations.chat`).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextlib import suppress
from types import TracebackType
from typing import Any

from apportion.errors import ApportionError, InvalidArgument
from apportion.integrations.chat import ChatCall, Op
from apportion.integrations.streams import StreamClosed, stream_steps, tally_for
from apportion.ledger import Grant


def is_async_request(req: Any) -> bool:
    """Whether ``req`` is an async request (its ``begin`` is awaited: an ``AsyncRequest``).

    The request says so (``is_async``); any other request-like object is asked whether
    its ``begin`` is a coroutine function. So the engine needs nothing from
    :mod:`apportion.controller` (which sits above it).
    """
    said = getattr(type(req), "is_async", None)
    if isinstance(said, bool):
        return said
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
        self._tally = tally_for(call)
        self._steps = stream_steps(call, self._tally)
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
        """The chunks of the first call, then of each continuation, as one stream."""
        kind = "stream"
        while kind == "stream":
            try:
                yield from self._tally.drain()
                for chunk in self._stream:
                    if _renewal_due(self._req, self.report.grant):
                        with suppress(ApportionError):  # expired: the finish is recorded late
                            self.report.grant = self._req.renew(self.report.grant)
                    yield from self._tally.add(chunk)
            except BaseException as exc:  # an error, or the caller closed the stream early
                _close(self._stream)
                with suppress(StreamClosed):
                    _drive(self._steps, self._req, self._send, _thrown(exc))
                raise
            kind, self._stream = _drive(self._steps, self._req, self._send, None)
        yield from self._tally.drain()

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
        self._tally = tally_for(call)
        self._steps = stream_steps(call, self._tally)
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
        """The chunks of the first call, then of each continuation, as one stream."""
        kind = "stream"
        while kind == "stream":
            try:
                for ready in self._tally.drain():
                    yield ready
                async for chunk in self._stream:
                    if _renewal_due(self._req, self.report.grant):
                        with suppress(ApportionError):  # expired: the finish is recorded late
                            renewed = self._req.renew(self.report.grant)
                            if inspect.isawaitable(renewed):
                                renewed = await renewed
                            self.report.grant = renewed
                    for passed in self._tally.add(chunk):
                        yield passed
            except BaseException as exc:
                await _aclose(self._stream)
                with suppress(StreamClosed):
                    await _adrive(self._steps, self._req, self._send, _thrown(exc))
                raise
            kind, self._stream = await _adrive(self._steps, self._req, self._send, None)
        for ready in self._tally.drain():
            yield ready

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


def _thrown(exc: BaseException) -> BaseException:
    """What to throw into the steps for ``exc``: a reader's close is :class:`StreamClosed`.

    (``GeneratorExit`` thrown into the steps would read as the steps themselves being
    closed unread, which settles nothing.)
    """
    return StreamClosed() if isinstance(exc, GeneratorExit) else exc


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
