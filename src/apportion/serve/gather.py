"""Many store reads at once, but never more than a connection pool can carry.

An async Redis client holds one connection per command in flight, from a pool of at most
100 (redis-py's default): ``asyncio.gather`` over a thousand reads (the live page's
requests and their events) fails with "Too many connections". :func:`gather_bounded` runs
them with at most :data:`STORE_READS` in flight, results in the order given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Final, Literal, TypeVar, overload

__all__ = ["STORE_READS", "gather_bounded"]

T = TypeVar("T")

STORE_READS: Final = 32
"""The most store reads one page has in flight at once."""


@overload
async def gather_bounded(
    awaitables: Iterable[Awaitable[T]],
    *,
    limit: int = ...,
    return_exceptions: Literal[False] = ...,
) -> list[T]: ...


@overload
async def gather_bounded(
    awaitables: Iterable[Awaitable[T]],
    *,
    limit: int = ...,
    return_exceptions: Literal[True],
) -> list[T | BaseException]: ...


async def gather_bounded(
    awaitables: Iterable[Awaitable[T]],
    *,
    limit: int = STORE_READS,
    return_exceptions: bool = False,
) -> list[T] | list[T | BaseException]:
    """Await every item with at most ``limit`` in flight; their results, in order.

    Args:
        awaitables: what to await (a coroutine starts only when a slot is free).
        limit: the most in flight at once (at least 1).
        return_exceptions: an item's exception is its result (else the first one raises,
            as ``asyncio.gather`` does).
    """
    gate = asyncio.Semaphore(max(1, limit))

    async def one(item: Awaitable[T]) -> T:
        async with gate:
            return await item

    tasks = [one(item) for item in awaitables]
    return list(await asyncio.gather(*tasks, return_exceptions=return_exceptions))
