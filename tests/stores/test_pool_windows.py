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

import pytest
from redis_server import RedisServer

from apportion.errors import PoolExhausted
from apportion.pools import Pool, PoolAccount
from apportion.stores import MemoryStore
from apportion.stores.redis import RedisStore
from apportion.testing.pool_windows import clock_offsets, draw_until, overspend
from apportion.testing.store_conformance import RANKS

FORK = multiprocessing.get_context("fork")
CAPACITY = 30_000
WORKERS = 16


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
            for i, o in enumerate(clock_offsets(skew, WORKERS))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    over = overspend((r for records in results for r in records), CAPACITY)
    assert len(over) >= 8
    assert sum(over.values()) == 0, f"tokens over capacity per window: {over}"


# ---------------------------------------------------------------- Redis: processes


@pytest.mark.parametrize("skew", [0.0, 0.05])
def test_sixteen_processes_never_overspend_a_window(redis_server: RedisServer, skew: float) -> None:
    store = RedisStore(redis_server.url)
    store._client.flushdb()
    store.define_pool(Pool("w", CAPACITY, 0.25))  # 12 windows or so in 3 s
    start, results = FORK.Event(), FORK.Queue()
    workers = [
        FORK.Process(
            target=draw_until,
            args=(redis_server.url, "w", RANKS, i, offset, 3.0, start, results),
        )
        for i, offset in enumerate(clock_offsets(skew, WORKERS))
    ]
    for worker in workers:
        worker.start()
    start.set()
    records = [r for _ in workers for r in results.get(timeout=120)]
    for worker in workers:
        worker.join(10)
    over = overspend(records, CAPACITY)
    assert len(over) >= 4
    assert sum(over.values()) == 0, f"tokens over capacity per window: {over}"
