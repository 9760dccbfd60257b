"""The calls an operation of the Redis store makes, as values (no I/O here).

Every operation is written once, as a generator of steps (:data:`_Steps`): it yields each
call it needs (a script, a command, or a list of them sent as one pipeline) and is sent
the reply. The sync and the async shells (:mod:`apportion.stores.redis.transport`) carry
the same steps out with blocking or awaited I/O.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T")


class _Eval(NamedTuple):
    """Run one operation's Lua code: ``FCALL`` (or ``EVALSHA``), loaded if the server lacks it."""

    script: str
    keys: tuple[str, ...]
    args: tuple[str | int | bytes, ...]


class _Cmd(NamedTuple):
    """Run one plain command."""

    args: tuple[str | int | bytes, ...]


class _Pause(NamedTuple):
    """Wait this many seconds (no I/O): a cluster's feed reader polls its streams."""

    seconds: float


_Call = _Eval | _Cmd | _Pause | list[_Eval | _Cmd]  # a list is one pipeline: one round trip
_Steps = Generator[_Call, Any, T]

_OK = (b"ok", "ok")
"""A script's reply code for an operation applied (as bytes or text)."""
