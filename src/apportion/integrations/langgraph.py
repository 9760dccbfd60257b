"""Budgeted chat models for LangGraph nodes: ``budgeted(model)``.

::

    from apportion.integrations.langgraph import budgeted

    llm = budgeted(ChatOpenAI(model="gpt-4o-mini"))      # a LangChain chat model
    def reasoner(state):                                 # a node of a StateGraph
        return {"messages": [llm.invoke(state["messages"])]}
    with controller.request(ceiling=20_000):
        graph.invoke({"messages": [...]})

:func:`budgeted` wraps any LangChain chat model in a ``BaseChatModel`` whose every call
(``invoke``, ``stream``, ``ainvoke``, ``astream``, and LangGraph's ``stream_mode="messages"``)
goes through apportion's call engine (:mod:`apportion.integrations.engine`): the messages
and the bound tools are counted, a grant is begun, the messages are fitted, the inner
model is called with ``max_tokens`` at the grant, a cut answer of plain text is continued
(an answer with tool calls never is) and the grant is settled with the usage the model
reported. ``bind_tools`` and ``with_structured_output`` return budgeted runnables (the
tools are formatted by the inner model and bound on the wrapper).

The agent is ``budgeted(..., agent=...)``, else ``create_agent``'s name (``lc_agent_name``),
else the LangGraph node calling the model (``langgraph_node``), else the current agent.
The request is ``budgeted(..., req=...)``, else the current request, else the run config's
``configurable["apportion_request"]``.

A streamed call runs the engine in a helper thread (sync) or task (async) and yields the
inner model's chunks as they come, follow-up calls included, at the reader's pace (the
call runs at most one chunk ahead). A reader that stops early stops the model call at its
next chunk, and no follow-up is sent; the grant is settled with what arrived (counted,
marked estimated: the provider's usage comes at the end). An async stream LangChain leaves
unclosed waits for its reader until its event loop cancels the call's task, which settles
what arrived before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

from apportion.ambient import carry, current_request, resolve_agent, resolve_request
from apportion.errors import InvalidArgument, MissingExtra
from apportion.integrations.chat import MAX_EXTENSIONS
from apportion.integrations.engine import acall, call
from apportion.integrations.langchain import (
    _as_chat_response,
    _model_name,
    check_options,
    import_langchain,
    restore_messages,
)
from apportion.integrations.versions import installed, within

SUPPORTED = ">=1.2,<1.3"
"""The LangGraph versions this adapter supports."""

_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_DONE = object()


def _import() -> Any:
    try:
        chat_models = importlib.import_module("langchain_core.language_models.chat_models")
        outputs = importlib.import_module("langchain_core.outputs")
        importlib.import_module("langgraph")
    except ImportError as error:
        raise MissingExtra("langgraph", "langgraph") from error
    within("langgraph", installed("langgraph", "langgraph"), SUPPORTED, "langgraph")
    lc = import_langchain()
    lc.BaseChatModel = chat_models.BaseChatModel
    lc.outputs = outputs
    return lc


def _metadata(lc: Any, run_manager: Any) -> dict[str, Any]:
    metadata = dict(getattr(run_manager, "metadata", None) or {})
    try:
        config = lc.get_config()
    except RuntimeError:  # not inside a runnable context
        return metadata
    return {
        **(config.get("metadata") or {}),
        **metadata,
        "_configurable": config.get("configurable"),
    }


@functools.cache
def _class() -> type:
    lc = _import()

    class BudgetedChatModel(lc.BaseChatModel):  # type: ignore[misc,name-defined]
        """A chat model whose calls are budgeted (see :func:`budgeted`)."""

        inner: Any
        agent: str | None = None
        req: Any = None
        model_id: str | None = None
        counter: Any = None
        fit: str = "keep-recent"
        max_extensions: int = MAX_EXTENSIONS
        outside: str = "raise"
        options: Any = None  # the engine's wrap_up_tokens / show_budget (check_options)

        @property
        def _llm_type(self) -> str:
            return "apportion-budgeted"

        def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
            bound = self.inner.bind_tools(tools, tool_choice=tool_choice, **kwargs)
            return self.bind(**bound.kwargs)

        # ------------------------------------------------------------ the call

        def _prepare(self, messages: Any, run_manager: Any, kwargs: dict[str, Any]) -> Any:
            metadata = _metadata(lc, run_manager)
            req = self.req
            if req is None:
                req = current_request(default=None)
            if req is None:
                configurable = metadata.get("_configurable") or {}
                req = configurable.get("apportion_request")
            req = resolve_request(req, outside=self.outside, what="a LangGraph model call")
            if req is None:  # outside="pass" and no request: not budgeted
                return None
            named = metadata.get("lc_agent_name") or metadata.get("langgraph_node")
            agent = resolve_agent(self.agent or named)
            model = self.model_id or _model_name(self.inner)
            if model is None:
                raise InvalidArgument("model_id", None, "the model's name: pass model_id=...")
            originals = list(messages)
            dicts = list(lc.messages.convert_to_openai_messages(originals))
            params = {k: v for k, v in kwargs.items() if k not in _CAPS}
            engine: dict[str, Any] = {
                "model": model,
                "counter": self.counter,
                "fit": self.fit,
                "max_extensions": self.max_extensions,
                **(self.options or {}),
            }
            if params.get("tools"):
                engine["tools"] = list(params["tools"])
            wanted = next((kwargs[k] for k in _CAPS if kwargs.get(k) is not None), None)
            if wanted is None:
                wanted = getattr(self.inner, "max_tokens", None)
            if isinstance(wanted, int) and not isinstance(wanted, bool):
                engine["max_tokens"] = wanted
            if params.get("response_format") is not None:
                engine["response_format"] = {"type": "json_schema"}
            inner = self.inner
            if hasattr(inner, "stream_usage") and inner.stream_usage is not True:
                inner = inner.model_copy(update={"stream_usage": True})

            def args(fitted: list[Any], sent: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
                cap = int(next(sent[k] for k in _CAPS if sent.get(k) is not None))
                rebuilt = restore_messages(lc, dicts, originals, fitted)
                return rebuilt, {**params, "max_tokens": cap}

            return SimpleNamespace(
                req=req, agent=agent, dicts=dicts, engine=engine, inner=inner, args=args
            )

        def _result(self, merged: Any, message: Any) -> Any:
            report = merged.apportion
            if report.calls > 1:
                metadata = dict(getattr(message, "response_metadata", None) or {})
                metadata["finish_reason"] = report.finish_reason
                message = message.model_copy(
                    update={
                        "content": merged.choices[0].message.content,
                        "response_metadata": metadata,
                        "usage_metadata": {
                            "input_tokens": report.input_tokens,
                            "output_tokens": report.output_tokens,
                            "total_tokens": report.input_tokens + report.output_tokens,
                        },
                    }
                )
            return lc.outputs.ChatResult(generations=[lc.outputs.ChatGeneration(message=message)])

        def _generate(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
        ) -> Any:
            p = self._prepare(messages, run_manager, kwargs)
            if p is None:
                answer = self.inner.invoke(messages, stop=stop, config={"callbacks": []}, **kwargs)
                return lc.outputs.ChatResult(
                    generations=[lc.outputs.ChatGeneration(message=answer)]
                )

            def send(*, model: str, messages: list[Any], **sent: Any) -> Any:
                fitted, params = p.args(messages, sent)
                answer = p.inner.invoke(fitted, stop=stop, config={"callbacks": []}, **params)
                return _as_chat_response(SimpleNamespace(result=[answer]))

            merged = call(p.req, p.agent, p.dicts, send=send, **p.engine)
            return self._result(merged, merged.lc_response.result[-1])

        async def _agenerate(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
        ) -> Any:
            p = self._prepare(messages, run_manager, kwargs)
            if p is None:
                answer = await self.inner.ainvoke(
                    messages, stop=stop, config={"callbacks": []}, **kwargs
                )
                return lc.outputs.ChatResult(
                    generations=[lc.outputs.ChatGeneration(message=answer)]
                )

            async def send(*, model: str, messages: list[Any], **sent: Any) -> Any:
                fitted, params = p.args(messages, sent)
                answer = await p.inner.ainvoke(
                    fitted, stop=stop, config={"callbacks": []}, **params
                )
                return _as_chat_response(SimpleNamespace(result=[answer]))

            merged = await acall(p.req, p.agent, p.dicts, send=send, **p.engine)
            return self._result(merged, merged.lc_response.result[-1])

        def _stream(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
        ) -> Iterator[Any]:
            p = self._prepare(messages, run_manager, kwargs)
            if p is None:
                for chunk in self.inner.stream(
                    messages, stop=stop, config={"callbacks": []}, **kwargs
                ):
                    yield lc.outputs.ChatGenerationChunk(message=chunk)
                return
            chunks: queue.Queue[Any] = queue.Queue()
            credits = threading.Semaphore(1)  # the call runs at most one chunk ahead
            stopped = threading.Event()  # the reader stopped: stop the model call too

            def send(*, model: str, messages: list[Any], **sent: Any) -> Any:
                if stopped.is_set():  # a continuation after the reader stopped: not sent
                    raise _ReaderStopped
                fitted, params = p.args(messages, sent)
                whole = None
                stream = p.inner.stream(fitted, stop=stop, config={"callbacks": []}, **params)
                try:
                    for chunk in stream:
                        credits.acquire()
                        chunks.put(chunk)
                        whole = chunk if whole is None else whole + chunk
                        if stopped.is_set():
                            break
                finally:
                    stream.close()
                return _as_chat_response(SimpleNamespace(result=[whole]))

            def work() -> None:
                try:
                    call(p.req, p.agent, p.dicts, send=send, **p.engine)
                except BaseException as error:  # handed to the reading thread
                    chunks.put(error)
                else:
                    chunks.put(_DONE)

            thread = threading.Thread(target=carry(work), daemon=True)
            thread.start()
            try:
                while (item := chunks.get()) is not _DONE:
                    if isinstance(item, BaseException):
                        raise item
                    credits.release()
                    yield lc.outputs.ChatGenerationChunk(message=item)
            finally:  # done, failed, or the reader stopped early (settled with what arrived)
                stopped.set()
                credits.release()  # a call waiting to hand over a chunk sees the stop
                thread.join()

        async def _astream(
            self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
        ) -> AsyncIterator[Any]:
            p = self._prepare(messages, run_manager, kwargs)
            if p is None:
                async for chunk in self.inner.astream(
                    messages, stop=stop, config={"callbacks": []}, **kwargs
                ):
                    yield lc.outputs.ChatGenerationChunk(message=chunk)
                return
            chunks: asyncio.Queue[Any] = asyncio.Queue()
            credits = asyncio.Semaphore(1)
            stopped = asyncio.Event()
            cancelled: list[BaseException] = []

            async def send(*, model: str, messages: list[Any], **sent: Any) -> Any:
                if stopped.is_set():
                    raise _ReaderStopped
                fitted, params = p.args(messages, sent)
                whole = None
                stream = p.inner.astream(fitted, stop=stop, config={"callbacks": []}, **params)
                try:
                    try:
                        async for chunk in stream:
                            await credits.acquire()
                            await chunks.put(chunk)
                            whole = chunk if whole is None else whole + chunk
                            if stopped.is_set():
                                break
                    finally:
                        await stream.aclose()
                except asyncio.CancelledError as cancel:  # after chunks came: settle them first
                    if whole is None:
                        raise
                    cancelled.append(cancel)
                return _as_chat_response(SimpleNamespace(result=[whole]))

            async def work() -> None:
                try:
                    await acall(p.req, p.agent, p.dicts, send=send, **p.engine)
                except BaseException as error:  # handed to the reader
                    await chunks.put(error)
                else:
                    await chunks.put(_DONE)
                if cancelled:  # settled: now the cancellation goes on
                    raise cancelled[0]

            task = asyncio.ensure_future(work())
            try:
                while (item := await chunks.get()) is not _DONE:
                    if isinstance(item, BaseException):
                        raise item
                    credits.release()
                    yield lc.outputs.ChatGenerationChunk(message=item)
            finally:
                stopped.set()
                credits.release()
                await task

    return BudgetedChatModel


class _ReaderStopped(Exception):
    """A continuation not sent: the reader of the stream stopped (the grant is settled)."""


def budgeted(
    model: Any,
    *,
    agent: str | None = None,
    req: Any = None,
    model_id: str | None = None,
    counter: Any = None,
    fit: str = "keep-recent",
    max_extensions: int = MAX_EXTENSIONS,
    outside: str = "raise",
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
) -> Any:
    """A budgeted ``BaseChatModel`` calling ``model``.

    Args:
        model: a LangChain chat model (``ChatOpenAI`` ...).
        agent: the agent (default: ``lc_agent_name``, the LangGraph node, the current agent).
        req: the request (default: the current one, else the run config's
            ``configurable["apportion_request"]``).
        model_id: the model's name for counting and pricing (default: ``model.model_name``).
        counter: ``None`` (the model's tokenizer), ``"approximate"``, or a counter.
        fit: how to fit messages over the context grant.
        max_extensions: follow-up calls allowed for a cut answer.
        outside: with no request: ``"raise"`` (``NoOpenRequest``) or ``"pass"`` (the call
            is made unbudgeted, with an ``UnbudgetedCall`` warning).
        wrap_up_tokens: the wrap-up reserve of every call's grant (``None``: the
            controller's): a plain-text answer cut with its extension refused is concluded
            by a "wrap up now" call within it.
        show_budget: add the budget line to every call's prompt (``None``: the
            controller's).

    Raises:
        MissingExtra: LangGraph is not installed.
        UnsupportedVersion: LangGraph is outside :data:`SUPPORTED`.
        InvalidArgument: a bad argument.
        InvalidTokenCount: ``wrap_up_tokens`` is not a token count.
    """
    cls = _class()
    if not isinstance(model, cls.__bases__[0]):
        raise InvalidArgument("model", model, "a LangChain chat model")
    options = check_options(
        agent, max_extensions, outside, wrap_up_tokens=wrap_up_tokens, show_budget=show_budget
    )
    return cls(
        inner=model,
        agent=agent,
        req=req,
        model_id=model_id,
        counter=counter,
        fit=fit,
        max_extensions=max_extensions,
        outside=outside,
        options=options,
    )
