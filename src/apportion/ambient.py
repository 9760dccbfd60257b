"""The ambient request and agent: what a budgeted call draws on when none is passed.

``with controller.request(...) as req:`` (or ``async with controller.arequest(...)``) makes
``req`` the *current request* for the code inside the block; :func:`current_request`
returns it, and the integrations and framework adapters find it there when no request is
passed to them. ``with req.agent("reasoner"):`` also names the *current agent*
(:func:`current_agent`), for adapters whose framework does not carry the agent's name.

Both are :class:`contextvars.ContextVar` values, so they follow the code as Python's
context does:

* **Nesting**: an inner block makes its request current and the outer one is current again
  when it ends (whether it ends normally or by an error).
* **asyncio**: a task copies the context of the code that created it, so a task created
  inside the block (``asyncio.create_task``, ``asyncio.gather``) sees the request, and
  requests opened in concurrent tasks never see each other's. ``asyncio.to_thread`` copies
  the context too.
* **Threads**: a new ``threading.Thread`` starts with an empty context, and
  ``ThreadPoolExecutor.submit`` / ``loop.run_in_executor`` do not copy it: code there sees
  no current request. Wrap the function in :func:`carry` (``pool.submit(carry(fn), ...)``,
  ``Thread(target=carry(fn))``), which runs it in a copy of the context taken when it was
  wrapped; or, holding the request, open ``with req.agent(name):`` in the thread.
* **Closing**: a request closed inside its block (``req.close()``, or expired) is no longer
  current: :func:`current_request` raises :class:`~apportion.errors.NoOpenRequest` naming it.
  A request opened by hand (``req.open()`` without ``with``) is never made current.
"""

from __future__ import annotations

import contextvars
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from apportion.errors import InvalidArgument, NoOpenRequest

__all__ = [
    "OUTSIDE",
    "AgentScope",
    "UnbudgetedCall",
    "call_options_scope",
    "carry",
    "current_agent",
    "current_call_options",
    "current_request",
    "enter",
    "leave",
    "name_agent",
    "resolve_agent",
    "resolve_request",
]

P = ParamSpec("P")
T = TypeVar("T")

OUTSIDE: tuple[str, ...] = ("raise", "pass")
"""What an adapter does with a call made outside any open request: raise
:class:`~apportion.errors.NoOpenRequest` (the default), or pass the call through
unbudgeted with an :class:`UnbudgetedCall` warning (only when the user chose it)."""

_REQUEST: contextvars.ContextVar[Any] = contextvars.ContextVar("apportion_request", default=None)
_AGENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("apportion_agent", default=None)
_CALL_OPTIONS: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "apportion_call_options", default=None
)
_MISSING: Any = object()


class UnbudgetedCall(UserWarning):
    """A model call went out with no open request, unbudgeted, as the user configured."""


def current_request(default: Any = _MISSING) -> Any:
    """The request made current by the enclosing ``with controller.request(...)`` block.

    Args:
        default: returned when no open request is current (instead of raising).

    Returns:
        The current :class:`~apportion.controller.Request` or
        :class:`~apportion.controller.AsyncRequest`.

    Raises:
        NoOpenRequest: none is current, or the current one is closed (and no ``default``);
            the message says how to open one.
    """
    req = _REQUEST.get()
    if req is not None and getattr(req, "closed", False) is not True:
        return req
    if default is not _MISSING:
        return default
    raise NoOpenRequest(None if req is None else req.request_id)


def current_agent(default: str | None = None) -> str | None:
    """The agent named by the enclosing ``with req.agent(name):`` block, else ``default``."""
    agent = _AGENT.get()
    return default if agent is None else agent


def name_agent(agent: str) -> contextvars.Token[str | None]:
    """Make ``agent`` the current agent from here to the end of the current context.

    For a framework hook that runs before each model call but cannot wrap it in a ``with
    req.agent(name):`` block (the Agents SDK's ``call_model_input_filter``): the name holds
    in this task (or thread) and the tasks it creates, until it is named again, the task
    ends, or the returned token is given to ``contextvars.ContextVar.reset``.

    Raises:
        InvalidArgument: ``agent`` is not a non-empty text.
    """
    if not isinstance(agent, str) or not agent:
        raise InvalidArgument("agent", agent, "an agent name")
    return _AGENT.set(agent)


def resolve_request(req: Any = None, *, outside: str = "raise", what: str = "this call") -> Any:
    """The request a budgeted call draws on: ``req`` if given, else the current one.

    What adapters call. With no request given or current, ``outside`` decides: ``"raise"``
    raises :class:`~apportion.errors.NoOpenRequest` (saying how to open one); ``"pass"``
    warns with :class:`UnbudgetedCall` and returns ``None``: the adapter then makes the
    call unbudgeted.

    Args:
        req: a request passed explicitly (it wins), or ``None``.
        outside: one of :data:`OUTSIDE`.
        what: the call, named in the warning (``"chat.completions.create"``).

    Raises:
        NoOpenRequest: no request, and ``outside="raise"``.
        InvalidArgument: ``outside`` is not one of :data:`OUTSIDE`.
    """
    if outside not in OUTSIDE:
        raise InvalidArgument("outside", outside, "one of: " + ", ".join(OUTSIDE))
    if req is not None:
        return req
    try:
        return current_request()
    except NoOpenRequest as missing:
        if outside == "raise":
            raise
        warnings.warn(f"{what} is not budgeted: {missing.message}", UnbudgetedCall, stacklevel=3)
        return None


def resolve_agent(agent: str | None = None) -> str:
    """The agent a budgeted call is for: ``agent`` if given, else the current agent.

    What adapters call when their framework may not carry the agent's name.

    Raises:
        InvalidArgument: no agent given and none current (the message says how to name one).
    """
    if agent is None:
        agent = _AGENT.get()
    if agent is None:
        raise InvalidArgument(
            "agent", None, "no agent named: pass agent=..., or call inside `with req.agent(name):`"
        )
    return agent


def carry(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn``, run in the context of the code that wrapped it: its request and agent.

    For threads, which do not inherit the context: ``pool.submit(carry(fn), ...)``,
    ``pool.map(carry(fn), ...)``, ``Thread(target=carry(fn))``,
    ``loop.run_in_executor(None, carry(fn))``. The context is taken when ``carry`` is
    called; each run works in its own copy of it, so the wrapper may run in several
    threads at once, and what one run sets is not seen by the others. (asyncio tasks and
    ``asyncio.to_thread`` copy the context by themselves.)

    Raises:
        InvalidArgument: ``fn`` is not callable.
    """
    if not callable(fn):
        raise InvalidArgument("fn", fn, "a function to run with the current request")
    context = contextvars.copy_context()

    @functools.wraps(fn)
    def carried(*args: P.args, **kwargs: P.kwargs) -> T:
        return context.copy().run(fn, *args, **kwargs)

    return carried


Tokens = tuple["contextvars.Token[Any]", "contextvars.Token[str | None] | None"]


def enter(req: Any, agent: str | None = None) -> Tokens:
    """Make ``req`` (and ``agent``, if given) current; :func:`leave` undoes it."""
    return _REQUEST.set(req), None if agent is None else _AGENT.set(agent)


def leave(tokens: Tokens) -> None:
    """Make current again what was before :func:`enter` returned ``tokens``.

    An ``async with`` may end in another context than it began (an async generator driven
    by another task): the variables are then set back to their earlier values there.
    """
    request_token, agent_token = tokens
    if agent_token is not None:
        _reset(_AGENT, agent_token)
    _reset(_REQUEST, request_token)


def _reset(var: contextvars.ContextVar[Any], token: contextvars.Token[Any]) -> None:
    try:
        var.reset(token)
    except (ValueError, RuntimeError):  # made in another context, or reset already
        old = token.old_value
        var.set(None if old is contextvars.Token.MISSING else old)


class AgentScope:
    """``with req.agent(name):`` makes ``req`` current and names its current agent."""

    __slots__ = ("_agent", "_req", "_tokens")

    def __init__(self, req: Any, agent: str) -> None:
        self._req = req
        self._agent = agent
        self._tokens: Tokens | None = None

    def __enter__(self) -> Any:
        self._tokens = enter(self._req, self._agent)
        return self._req

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tokens is not None:
            leave(self._tokens)
            self._tokens = None


def current_call_options() -> Mapping[str, Any]:
    """The call options (``wrap_up_tokens``, ``show_budget``) an adapter set for this code.

    An adapter that budgets a whole run rather than its calls (Pydantic AI's
    ``Apportion`` capability) sets them with :func:`call_options_scope`; the call engine
    uses them for a call that sets none of its own (before the controller's).
    """
    return _CALL_OPTIONS.get() or {}


@contextmanager
def call_options_scope(options: Mapping[str, Any]) -> Iterator[None]:
    """Make ``options`` (checked ``wrap_up_tokens`` / ``show_budget``) current inside the block.

    Options given are laid over those already current; an empty mapping changes nothing.
    """
    if not options:
        yield
        return
    token = _CALL_OPTIONS.set({**current_call_options(), **options})
    try:
        yield
    finally:
        _reset(_CALL_OPTIONS, token)
