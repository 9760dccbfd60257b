"""A pool's window never grants more than its capacity, whatever the interleaving and skew.

Many workers draw from one pool with short windows across many window boundaries, each with
its own clock (optionally off by up to 50 ms), and record, per successful draw, the window
the store charged it to and the tokens its request used. The tokens used per window must
stay within the capacity: a late draw (a clock behind, or a clock read before another
worker's draw landed) must never reopen a window that has already been left.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import pytest
from redis_server import RedisServer

from apportion.errors import PoolExhausted
from apportion.pools import Pool, PoolAccount
from apportion.stores import MemoryStore
from apportion.stores.redis import RedisStore, _Call, _Eval
from apportion.testing.store_conformance import RANKS

FORK = multiprocessing.get_context("fork")
CAPACITY = 30_000
WORKERS = 16


def _overspend(records: Iterable[tuple[int, int]]) -> tuple[dict[int, int], int]:
    """Tokens used per window charged, and the total beyond the capacity."""
    per_window: dict[int, int] = defaultdict(int)
    for window, used in records:
        per_window[window] += used
    return dict(per_window), sum(max(0, t - CAPACITY) for t in per_window.values())


def _offsets(skew: float, n: int) -> list[float]:
    """Each worker's clock offset: spread over [-skew, +skew] (all 0 without skew)."""
    if not skew:
        return [0.0] * n
    return [-skew + 2 * skew * i / (n - 1) for i in range(n)]


# ---------------------------------------------------------------- memory: threads


class _RecordingAccount(PoolAccount):
    """A pool account that remembers the window each draw was charged to."""

    __slots__ = ("charged",)

    def __init__(self, pool: Pool) -> None:
        super().__init__(pool)
        self.charged: dict[str, int] = {}

    def draw(self, key: str, tokens: int, priority: str, now: float) -> int:
        window = super().draw(key, tokens, priority, now)
        self.charged[key] = window  # under the store's lock
        return window


@pytest.mark.parametrize("skew", [0.0, 0.05])
def test_threads_never_overspend_a_window(skew: float) -> None:
    window_seconds, tick, ticks = 0.25, 0.0005, 8_000  # 4 s of a shared clock, 16 windows
    store = MemoryStore()
    account = _RecordingAccount(Pool("w", CAPACITY, window_seconds))
    store._pools["w"] = account
    clock = itertools.count()  # the shared true clock: one tick per reading

    def work(index: int, offset: float) -> list[tuple[int, int]]:
        rng = random.Random(index)
        records = []
        for i in itertools.count():
            now = next(clock) * tick
            if now > ticks * tick:
                return records
            request_id = f"t{index}-{i}"
            ceiling = rng.randint(500, 3_000)
            try:
                store.open(request_id, RANKS, ceiling, now + offset, pool="w")
            except PoolExhausted:
                continue
            used = ceiling if rng.random() < 0.7 else rng.randint(0, ceiling)
            now = next(clock) * tick + offset
            if used:
                grant, _ = store.begin(request_id, "lead", used, 0, now, 30.0)
                store.finish(request_id, grant, used, 0, now)
            store.close(request_id, next(clock) * tick + offset)
            records.append((account.charged[request_id], used))
        return records

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: between a clock reading and a draw
    try:
        results: list[list[tuple[int, int]]] = [[] for _ in range(WORKERS)]
        threads = [
            threading.Thread(target=lambda i=i, o=o: results[i].extend(work(i, o)))
            for i, o in enumerate(_offsets(skew, WORKERS))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    per_window, over = _overspend(r for records in results for r in records)
    assert len(per_window) >= 8
    assert over == 0, f"{over} tokens over capacity: {per_window}"


# ---------------------------------------------------------------- Redis: processes


class _RecordingStore(RedisStore):
    """A Redis store that remembers the window its last draw was charged to."""

    charged = -1

    def _call(self, call: _Call) -> Any:
        reply = super()._call(call)
        if isinstance(call, _Eval) and call.script == "pool_draw" and reply[0] in (b"ok", "ok"):
            self.charged = int(reply[1])
        return reply


def _draw_until(
    url: str, index: int, offset: float, seconds: float, start: Any, results: Any
) -> None:
    store = _RecordingStore(url)
    rng = random.Random(index)
    records = []
    start.wait()
    stop = time.monotonic() + seconds  # bounds the run only; nothing is timed
    i = 0
    while time.monotonic() < stop:
        i += 1
        request_id = f"p{index}-{i}"
        ceiling = rng.randint(500, 3_000)
        try:
            store.open(request_id, RANKS, ceiling, time.time() + offset, pool="w")
        except PoolExhausted:
            continue
        used = ceiling if rng.random() < 0.7 else rng.randint(0, ceiling)
        if used:
            now = time.time() + offset
            grant, _ = store.begin(request_id, "lead", used, 0, now, 30.0)
            store.finish(request_id, grant, used, 0, now)
        store.close(request_id, time.time() + offset)
        records.append((store.charged, used))
    results.put(records)


@pytest.mark.parametrize("skew", [0.0, 0.05])
def test_sixteen_processes_never_overspend_a_window(redis_server: RedisServer, skew: float) -> None:
    store = RedisStore(redis_server.url)
    store._client.flushdb()
    store.define_pool(Pool("w", CAPACITY, 0.25))  # 12 windows or so in 3 s
    start, results = FORK.Event(), FORK.Queue()
    workers = [
        FORK.Process(target=_draw_until, args=(redis_server.url, i, offset, 3.0, start, results))
        for i, offset in enumerate(_offsets(skew, WORKERS))
    ]
    for worker in workers:
        worker.start()
    start.set()
    records = [r for _ in workers for r in results.get(timeout=120)]
    for worker in workers:
        worker.join(10)
    per_window, over = _overspend(records)
    assert len(per_window) >= 4
    assert over == 0, f"{over} tokens over capacity: {per_window}"
