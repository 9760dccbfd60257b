"""Many workers drawing from one pool across window boundaries, for tests and benchmarks.

Each worker (a process, on a Redis store) opens requests drawn from a pool as fast as it
can, with its clock off by its own offset, uses most of each ceiling, closes, and records
the window the store charged each draw to (the draw script's reply) and the tokens used.
:func:`overspend` then says how far each window went beyond its capacity: never, if the
store holds its windows.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

from apportion.errors import PoolExhausted
from apportion.stores.redis import RedisStore
from apportion.stores.redis.calls import _Call, _Eval


class ChargedStore(RedisStore):
    """A Redis store that remembers the window its last pool draw was charged to."""

    charged = -1

    def _call(self, call: _Call) -> Any:
        reply = super()._call(call)
        if isinstance(call, _Eval) and call.script == "pool_draw" and reply[0] in (b"ok", "ok"):
            self.charged = int(reply[1])
        return reply


def clock_offsets(skew: float, n: int) -> list[float]:
    """Each worker's clock offset, spread over ``[-skew, +skew]`` (all 0 without skew)."""
    if not skew or n < 2:
        return [0.0] * n
    return [-skew + 2 * skew * i / (n - 1) for i in range(n)]


def draw_until(
    url: str,
    pool: str,
    ranks: Mapping[str, int],
    index: int,
    offset: float,
    seconds: float,
    start: Any,
    out: Any,
) -> None:
    """One worker: draw, use, close for ``seconds``; put its ``(window, used)`` records.

    Args:
        url: the Redis store's URL.
        pool: the pool to draw from.
        ranks: the agents of the requests (the highest-ranked one makes the calls).
        index: the worker's number (seeds its choices; names its requests).
        offset: seconds added to its clock.
        seconds: how long to run (bounds the run only; nothing is timed).
        start: an event to wait for, so that every worker starts at once.
        out: a queue to put the records on.
    """
    store = ChargedStore(url)
    agent = max(ranks, key=lambda a: ranks[a])
    rng = random.Random(index)
    records: list[tuple[int, int]] = []
    start.wait()
    stop = time.monotonic() + seconds
    i = 0
    while time.monotonic() < stop:
        i += 1
        request_id = f"{pool}-{index}-{i}"
        ceiling = rng.randint(500, 3_000)
        try:
            store.open(request_id, ranks, ceiling, time.time() + offset, pool=pool)
        except PoolExhausted:
            continue
        used = ceiling if rng.random() < 0.7 else rng.randint(0, ceiling)
        if used:
            now = time.time() + offset
            grant, _ = store.begin(request_id, agent, used, 0, now, 60.0)
            store.finish(request_id, grant, used, 0, now)
        store.close(request_id, time.time() + offset)
        records.append((store.charged, used))
    out.put(records)


def overspend(records: Iterable[tuple[int, int]], capacity: int) -> dict[int, int]:
    """Tokens used beyond ``capacity`` in each window charged (0 where it held)."""
    used: dict[int, int] = {}
    for window, tokens in records:
        used[window] = used.get(window, 0) + tokens
    return {w: max(0, used[w] - capacity) for w in sorted(used)}
