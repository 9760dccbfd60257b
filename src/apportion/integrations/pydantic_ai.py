"""Pydantic AI, budgeted: its OpenAI models over a budgeted client, the agent named by the run.

::

    from apportion.integrations.pydantic_ai import Apportion, budgeted_model

    model = budgeted_model("gpt-4o-mini", AsyncOpenAI())       # an OpenAIChatModel
    triage = Agent(model, name="triage", capabilities=[Apportion()])
    with controller.request(ceiling=20_000):
        result = await triage.run("...")

* :func:`budgeted_model` is Pydantic AI's ``OpenAIChatModel`` (or, ``responses=True``,
  ``OpenAIResponsesModel``) with ``OpenAIProvider(openai_client=<budgeted client>)``: every
  call goes through :func:`apportion.integrations.openai.budgeted` in the request passed,
  or the current request at the time of the call (so the model can be built once, outside
  any request). :func:`budgeted_client` is that client, for a provider of your own.
* :class:`Apportion` is a capability (``Agent(..., capabilities=[Apportion()])``) whose
  ``wrap_run`` makes the agent's ``name`` (``Agent(name=...)``, else the variable Pydantic
  AI infers it from) the current agent for the run: its model calls, and tools, are charged
  to it. An agent run inside another's tool names itself for its own run; the outer agent is
  current again after it.

``ModelSettings(max_tokens=...)`` is the most output wanted; it goes out as
``max_completion_tokens`` (chat) or ``max_output_tokens`` (Responses), capped at the grant.
A cut answer is extended. ``ModelSettings(max_retries=...)`` makes Pydantic AI call
``client.with_options(http_client=client._client, ...)``: the copy stays budgeted.

**Wrapping up and the budget line**: ``budgeted_model(..., wrap_up_tokens=N,
show_budget=True)`` sets them for every call of the model; ``Apportion(wrap_up_tokens=N,
show_budget=True)`` for every model call of the agent's runs (the model's own, when set,
win). ``None`` (the default) leaves the controller's.

**Streaming** (``agent.run_stream``) works with both models (with the chat model, usage is
asked for; a Responses stream carries it in its last event).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from typing import Any

from apportion.ambient import call_options_scope, enter, leave, resolve_request
from apportion.errors import InvalidArgument, MissingExtra
from apportion.integrations.chat import call_options
from apportion.integrations.openai import budgeted
from apportion.integrations.versions import within

EXTRA = "pydantic-ai"
SUPPORTED = ">=2.68,<3"


def import_pydantic_ai() -> Any:
    """The ``pydantic_ai`` package, checked for a supported version.

    Raises:
        MissingExtra: Pydantic AI (with its OpenAI support) is not installed.
        UnsupportedVersion: the installed version is outside :data:`SUPPORTED`.
    """
    try:
        module = importlib.import_module("pydantic_ai")
        importlib.import_module("pydantic_ai.models.openai")
    except ImportError as error:
        raise MissingExtra("pydantic-ai-slim[openai]", EXTRA) from error
    check_version(importlib.metadata.version("pydantic-ai-slim"))
    return module


def check_version(version: str) -> None:
    """Raise ``UnsupportedVersion`` unless ``version`` is in :data:`SUPPORTED`."""
    within("pydantic-ai-slim", version, SUPPORTED, EXTRA)


def budgeted_client(
    client: Any,
    req: Any = None,
    *,
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
) -> Any:
    """An ``AsyncOpenAI`` stand-in whose calls are budgeted in ``req`` or the current request.

    Args:
        client: the ``openai.AsyncOpenAI`` client.
        req: the request to budget in; ``None``: the current request at each call.
        wrap_up_tokens: the wrap-up reserve of every call (``None``: the run's
            :func:`Apportion`, else the controller's).
        show_budget: add the budget line to every call (``None``: the run's, else the
            controller's).

    Raises:
        InvalidArgument: ``client`` is not an ``openai.AsyncOpenAI``, or ``show_budget``
            is not a bool.
        InvalidTokenCount: ``wrap_up_tokens`` is not a token count.
    """
    import openai

    if not isinstance(client, openai.AsyncOpenAI):
        raise InvalidArgument("client", client, "an openai.AsyncOpenAI client")
    return _Ambient(client, req, call_options(wrap_up_tokens, show_budget))


def budgeted_model(
    model_name: str,
    client: Any,
    *,
    req: Any = None,
    responses: bool = False,
    wrap_up_tokens: int | None = None,
    show_budget: bool | None = None,
    **options: Any,
) -> Any:
    """Pydantic AI's OpenAI model over :func:`budgeted_client` (see the module docstring).

    Args:
        model_name: the model (``"gpt-4o-mini"``).
        client: the ``openai.AsyncOpenAI`` client.
        req: the request to budget in; ``None``: the current request at each call.
        responses: ``True`` for ``OpenAIResponsesModel``, else ``OpenAIChatModel``.
        wrap_up_tokens: the wrap-up reserve of every model call (``None``: the run's
            :func:`Apportion`, else the controller's).
        show_budget: add the budget line to every model call (``None``: the run's, else
            the controller's).
        **options: the model's other arguments (``settings``, ``profile`` ...).

    Raises:
        MissingExtra: Pydantic AI is not installed.
        UnsupportedVersion: the installed version is outside :data:`SUPPORTED`.
        InvalidArgument: ``client`` is not an ``openai.AsyncOpenAI``, or ``show_budget``
            is not a bool.
        InvalidTokenCount: ``wrap_up_tokens`` is not a token count.
    """
    import_pydantic_ai()
    models = importlib.import_module("pydantic_ai.models.openai")
    providers = importlib.import_module("pydantic_ai.providers.openai")
    budgeted = budgeted_client(client, req, wrap_up_tokens=wrap_up_tokens, show_budget=show_budget)
    provider = providers.OpenAIProvider(openai_client=budgeted)
    kind = models.OpenAIResponsesModel if responses else models.OpenAIChatModel
    return kind(model_name, provider=provider, **options)


class _Ambient:
    """A budgeted client over the request given, or the one current at each call."""

    def __init__(self, client: Any, req: Any, options: dict[str, Any]) -> None:
        self._client_ = client
        self._req = req
        self._options = options

    def __repr__(self) -> str:
        return f"<budgeted (current request) {self._client_!r}>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_client_", "_req", "_options"):
            raise AttributeError(name)
        if name in ("with_options", "copy"):
            copy = getattr(self._client_, name)
            return lambda *args, **kwargs: _Ambient(copy(*args, **kwargs), self._req, self._options)
        if name in ("chat", "beta", "responses"):  # the budgeted resources: looked up per call
            return _Path(self, (name,))
        return getattr(budgeted(self._client_, self._req or _Unresolved), name)

    def _budgeted(self, method: str) -> Any:
        req = resolve_request(self._req, what=f"{method} (Pydantic AI)")
        return budgeted(self._client_, req, **self._options)


class _Path:
    """A resource or method of :class:`_Ambient`, found in the request current when called."""

    def __init__(self, root: _Ambient, path: tuple[str, ...]) -> None:
        self._root = root
        self._path = path

    def __repr__(self) -> str:
        return f"<budgeted {'.'.join(self._path)} (current request)>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_root", "_path"):
            raise AttributeError(name)
        return _Path(self._root, (*self._path, name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        target = self._root._budgeted(".".join(self._path))
        for name in self._path:
            target = getattr(target, name)
        return target(*args, **kwargs)


class _UnresolvedRequest:
    """Stands for a request not looked up yet: attributes that make no call need none."""


_Unresolved = _UnresolvedRequest()


def _capability_base() -> Any:
    import_pydantic_ai()
    return importlib.import_module("pydantic_ai.capabilities").AbstractCapability


@functools.cache
def _budget_class() -> type:
    base = _capability_base()

    class Apportion(base):  # type: ignore[misc,valid-type]
        """A capability naming the agent for the run (see ``Apportion``)."""

        def __init__(self, req: Any = None, options: dict[str, Any] | None = None) -> None:
            self.req = req
            self.options = options or {}

        async def wrap_run(self, ctx: Any, *, handler: Any) -> Any:
            name = getattr(getattr(ctx, "agent", None), "name", None)
            req = resolve_request(self.req, what="a Pydantic AI run")
            tokens = enter(req, name if isinstance(name, str) and name else None)
            try:
                with call_options_scope(self.options):
                    return await handler()
            finally:
                leave(tokens)

    return Apportion


def Apportion(
    req: Any = None, *, wrap_up_tokens: int | None = None, show_budget: bool | None = None
) -> Any:
    """The capability naming the agent for each run: ``Agent(..., capabilities=[Apportion()])``.

    Args:
        req: the request to budget in; ``None``: the current request when a run starts.
        wrap_up_tokens: the wrap-up reserve of every model call of the agent's runs
            (``None``: the model's :func:`budgeted_model` keyword, else the controller's).
        show_budget: add the budget line to every model call of the agent's runs
            (``None``: the model's, else the controller's).

    Raises:
        MissingExtra: Pydantic AI is not installed.
        UnsupportedVersion: the installed version is outside :data:`SUPPORTED`.
        InvalidArgument: ``show_budget`` is not a bool.
        InvalidTokenCount: ``wrap_up_tokens`` is not a token count.
    """
    options = call_options(wrap_up_tokens, show_budget)
    return _budget_class()(req, options)
