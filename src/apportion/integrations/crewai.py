"""Budgeted CrewAI: an LLM whose every call draws on the current request, per agent role.

::

    from apportion.integrations.crewai import budgeted_llm

    llm = budgeted_llm("gpt-4o-mini")                 # what LLM("gpt-4o-mini") takes
    triage = Agent(role="triage", goal=..., backstory=..., llm=llm)
    ...
    with controller.request(ceiling=20_000):
        crew.kickoff()                                # or await crew.kickoff_async()

:func:`budgeted_llm` builds CrewAI's own native OpenAI LLM (``OpenAICompletion``, what
``LLM("gpt-4o-mini", ...)`` builds; the same keywords: ``base_url``, ``api_key``,
``max_tokens``, ``stream`` ...) whose client is apportion's drop-in OpenAI client
(:meth:`~apportion.controller.Request.openai`): each call is counted, fitted, capped under
the LLM's own cap parameter (``max_tokens`` / ``max_completion_tokens``), extended when
cut, and settled on the provider's usage (streams ask for it). CrewAI puts the whole task,
with any conversation history, in ONE user message: when it does not fit the grant, it is
shortened inside (head and tail kept around a ``[... N tokens cut ...]`` line).

The agent is the calling CrewAI agent's ``role`` (``from_agent.role``; it must be an agent
of the request's pipeline), else the current agent (``with req.agent(name):``). The request
is ``req=`` if given, else the current request at each call, which must be a synchronous
one (``controller.request``): CrewAI calls its synchronous client even from
``kickoff_async`` (in a thread, with the context copied, so the request opened around it
is found there).

Not budgeted (raise :class:`~apportion.errors.UnsupportedCall`, never an uncapped call):
a streamed structured answer (``stream=True`` with ``response_model`` /
``output_pydantic``) and streamed Responses API calls (``api="responses"``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from apportion.ambient import current_agent, resolve_request
from apportion.errors import InvalidArgument, MissingExtra, UnsupportedVersion
from apportion.integrations.chat import call_options

SUPPORTED = ">=1.15,<2"
"""The ``crewai`` versions this adapter supports."""


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise MissingExtra(name, "crewai") from error


def check_version() -> None:
    """Raise :class:`UnsupportedVersion` when crewai is outside :data:`SUPPORTED`."""
    try:
        version = importlib.metadata.version("crewai")
    except importlib.metadata.PackageNotFoundError as error:
        raise MissingExtra("crewai", "crewai") from error
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    if not (1, 15) <= parts < (2, 0):
        raise UnsupportedVersion("crewai", version, SUPPORTED)


def budgeted_llm(
    model: str = "gpt-4o-mini",
    *,
    req: Any = None,
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
    **kwargs: Any,
) -> Any:
    """CrewAI's native OpenAI LLM for ``model``, every call budgeted.

    Args:
        model: the OpenAI model (as for ``crewai.LLM``).
        req: the request to draw on (default: the current request at each call).
        wrap_up_tokens: the wrap-up reserve of every call's grant (``None``: the
            controller's): an answer cut with its extension refused is concluded by a
            "wrap up now" call within it.
        show_budget: add the budget line to every call's prompt (``None``: the
            controller's).
        **kwargs: what ``crewai.LLM`` takes for an OpenAI model (``base_url``,
            ``api_key``, ``max_tokens``, ``temperature``, ``stream`` ...).

    Raises:
        MissingExtra: CrewAI is not installed.
        UnsupportedVersion: crewai is outside :data:`SUPPORTED`.
        InvalidArgument: ``model`` is not a model name, or ``show_budget`` is not a bool.
        InvalidTokenCount: ``wrap_up_tokens`` is not a token count.
    """
    check_version()
    if not isinstance(model, str) or not model:
        raise InvalidArgument("model", model, "a model name")
    options = call_options(wrap_up_tokens, show_budget)
    llm = _llm_class()(model=model, **kwargs)
    llm._apportion_req = req
    llm._apportion_options = options
    return llm


_CLASS: Any = None


def _llm_class() -> Any:
    """Build the LLM class on first use (CrewAI is imported lazily)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    base: Any = _import("crewai.llms.providers.openai.completion").OpenAICompletion
    private: Any = _import("pydantic").PrivateAttr

    class BudgetedLLM(base):  # type: ignore[misc]
        """CrewAI's ``OpenAICompletion`` with apportion's budgeted client."""

        _apportion_req: Any = private(default=None)
        _apportion_options: Any = private(default_factory=dict)

        @contextmanager
        def _scope(self, from_agent: Any) -> Iterator[None]:
            req = resolve_request(self._apportion_req, what="CrewAI LLM.call")
            role = getattr(from_agent, "role", None) or current_agent()
            if not role:
                raise InvalidArgument(
                    "agent",
                    None,
                    "the call names no agent: give the CrewAI Agent a role that is an agent "
                    "of the pipeline, or call inside `with req.agent(name):`",
                )
            with req.agent(role):
                yield

        def call(
            self,
            messages: Any,
            tools: Any = None,
            callbacks: Any = None,
            available_functions: Any = None,
            from_task: Any = None,
            from_agent: Any = None,
            response_model: Any = None,
        ) -> Any:
            with self._scope(from_agent):
                return super().call(
                    messages,
                    tools,
                    callbacks,
                    available_functions,
                    from_task,
                    from_agent,
                    response_model,
                )

        async def acall(
            self,
            messages: Any,
            tools: Any = None,
            callbacks: Any = None,
            available_functions: Any = None,
            from_task: Any = None,
            from_agent: Any = None,
            response_model: Any = None,
        ) -> Any:
            with self._scope(from_agent):
                return await super().acall(
                    messages,
                    tools,
                    callbacks,
                    available_functions,
                    from_task,
                    from_agent,
                    response_model,
                )

        def _get_sync_client(self) -> Any:
            req = resolve_request(self._apportion_req, what="CrewAI LLM.call")
            return req.openai(super()._get_sync_client(), **self._apportion_options)

        def _get_async_client(self) -> Any:
            req = resolve_request(self._apportion_req, what="CrewAI LLM.acall")
            return req.openai(super()._get_async_client(), **self._apportion_options)

    _CLASS = BudgetedLLM
    return _CLASS
