"""Orphaned pool draws on Redis come back, and the same tokens are never used twice.

On Redis a pooled open takes two steps in two hash slots: the draw (the pool's script),
then the open (the request's script). A draw whose open never lands (the connection cut
after the draw, the process killed between the steps, the server restarted) has to come
back once its open deadline has passed; the open, if it ever comes later, must then be
refused. A request that did open keeps its keys while it is open, so its draw is settled
from its ledger, never guessed.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from typing import Any

import pytest
from redis_server import RedisServer

from apportion.errors import PoolDrawExpired, StoreUnavailable, UnknownRequest
from apportion.ledger import Ledger
from apportion.pools import Pool
from apportion.stores.redis import RedisStore
from apportion.stores.redis.calls import _Call, _Eval, _Steps
from apportion.testing.store_conformance import RANKS

FORK = multiprocessing.get_context("fork")
T0 = 1_000.0
LATE = T0 + 600.0  # long past any open deadline, still in the same hour-long window


def fresh(server: RedisServer, **options: Any) -> RedisStore:
    store = RedisStore(server.url, **options)
    store._client.flushdb()
    return store


def _draw_only(
    store: RedisStore, request_id: str, ceiling: int, now: float
) -> tuple[_Steps[Ledger], Any]:
    """The first step of a pooled open, the draw, and no more: the connection is cut."""
    steps = store._open_steps(
        request_id, RANKS, ceiling, now, None, None, math.inf, "p", "standard"
    )
    return steps, store._call(next(steps))


def _resume(store: RedisStore, steps: _Steps[Ledger], reply: Any) -> Ledger:
    """Carry out the rest of an open started by :func:`_draw_only`."""
    try:
        while True:
            reply = store._call(steps.send(reply))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def _spend(store: RedisStore, request_id: str, tokens: int, now: float) -> None:
    grant, _ = store.begin(request_id, "lead", tokens, 0, now, 30.0)
    store.finish(request_id, grant, tokens, 0, now)


@pytest.mark.parametrize("window", [math.inf, 3_600.0])
def test_a_draw_never_opened_comes_back_and_its_late_open_is_refused(
    redis_server: RedisServer, window: float
) -> None:
    store = fresh(redis_server)
    store.define_pool(Pool("p", 50_000, window))
    store.open("live", RANKS, 5_000, T0, pool="p")  # opened: settled from its ledger
    steps, reply = _draw_only(store, "cut", 20_000, T0)
    assert store.get_pool("p", T0).remaining == 25_000
    store.reap(T0 + 1.0)  # within the grace: its open may still be on its way
    assert store.get_pool("p", T0 + 1.0).remaining == 25_000
    store.reap(LATE)
    status = store.get_pool("p", LATE)
    assert (status.remaining, status.open_draws) == (45_000, 1)
    with pytest.raises(PoolDrawExpired) as info:  # the late open: nothing charged twice
        _resume(store, steps, reply)
    assert (info.value.request_id, info.value.pool) == ("cut", "p")
    with pytest.raises(UnknownRequest):
        store.get("cut")
    store.reap(LATE + 1.0)
    assert store.get_pool("p", LATE).remaining == 45_000
    _spend(store, "live", 1_000, LATE)
    store.close("live", LATE)
    assert store.get_pool("p", LATE).remaining == 49_000


def test_an_open_within_the_grace_goes_through(redis_server: RedisServer) -> None:
    store = fresh(redis_server)
    store.define_pool(Pool("p", 50_000, math.inf))
    steps, reply = _draw_only(store, "slow", 20_000, T0)
    store.reap(T0 + 1.0)
    state = _resume(store, steps, reply)
    assert state.status == "open"
    store.reap(LATE)  # opened: its draw stays out until it closes
    assert store.get_pool("p", LATE).remaining == 30_000
    _spend(store, "slow", 2_000, LATE)
    store.close("slow", LATE)
    assert store.get_pool("p", LATE).remaining == 48_000


def _draw_then_hang(url: str, ready: Any) -> None:
    store = RedisStore(url)
    _draw_only(store, "killed", 20_000, T0)
    ready.set()
    time.sleep(60)  # killed long before


def test_a_process_killed_between_draw_and_open(redis_server: RedisServer) -> None:
    store = fresh(redis_server)
    store.define_pool(Pool("p", 50_000, math.inf))
    ready = FORK.Event()
    worker = FORK.Process(target=_draw_then_hang, args=(redis_server.url, ready))
    worker.start()
    assert ready.wait(10)
    os.kill(worker.pid or 0, signal.SIGKILL)
    worker.join(10)
    assert store.get_pool("p", T0).remaining == 30_000
    store.reap(LATE)
    assert store.get_pool("p", LATE).remaining == 50_000


class _CutAfterDraw(RedisStore):
    """A store whose server goes down right after the draw (as in a restart)."""

    server: RedisServer

    def _call(self, call: _Call) -> Any:
        reply = super()._call(call)
        if isinstance(call, _Eval) and call.script == "pool_draw":
            self.server.stop()
        return reply


def test_a_restart_between_draw_and_open(own_redis_server: RedisServer) -> None:
    store = _CutAfterDraw(own_redis_server.url)
    store.server = own_redis_server
    store.define_pool(Pool("p", 50_000, math.inf))
    with pytest.raises(StoreUnavailable):
        store.open("r", RANKS, 20_000, T0, pool="p")
    own_redis_server.start()
    assert store.get_pool("p", T0).remaining == 30_000
    store.reap(LATE)
    assert store.get_pool("p", LATE).remaining == 50_000


def test_pooled_requests_keep_their_keys_while_open(redis_server: RedisServer) -> None:
    store = fresh(redis_server, retention_seconds=100.0)
    store.define_pool(Pool("p", 50_000, math.inf))
    store.open("pooled", RANKS, 1_000, T0, ttl=50.0, pool="p")
    store.open("plain", RANKS, 1_000, T0, ttl=50.0)
    pooled, plain = store._keys("pooled")[:2], store._keys("plain")[:2]
    assert [store._client.pttl(k) for k in pooled] == [-1, -1]  # never lost while open
    assert all(149_000 < store._client.pttl(k) <= 150_000 for k in plain)
    assert store.reap(T0 + 50.0) >= 2  # expired and closed: its unused tokens come back
    assert all(99_000 < store._client.pttl(k) <= 100_000 for k in pooled)
    assert store.get_pool("p", T0 + 50.0).remaining == 50_000


def test_a_reopened_id_keeps_the_old_draws_debt(redis_server: RedisServer) -> None:
    store = fresh(redis_server)
    store.define_pool(Pool("p", 50_000, math.inf))
    store.open("x", RANKS, 10_000, T0, pool="p")
    _spend(store, "x", 4_000, T0)
    steps = store._close_steps("x", T0, "closed", None)
    store._call(next(steps))  # closed, then the connection is cut: no give-back yet
    store.open("x", RANKS, 5_000, T0 + 1.0, pool="p")  # the same id again, a new draw
    store.reap(LATE)  # the first draw's unused 6,000 come back, not its 10,000
    assert store.get_pool("p", LATE).remaining == 50_000 - 4_000 - 5_000
    store.close("x", LATE)
    assert store.get_pool("p", LATE).remaining == 50_000 - 4_000


def test_the_deadline_and_the_skew_bound(redis_server: RedisServer) -> None:
    store = RedisStore.from_url(redis_server.url + "?open_grace_seconds=5&clock_skew_seconds=2.5")
    store._client.flushdb()
    assert (store.open_grace_seconds, store.clock_skew_seconds) == (5.0, 2.5)
    store.define_pool(Pool("p", 50_000, math.inf))
    _draw_only(store, "cut", 20_000, T0)
    store.reap(T0 + 7.4)  # the deadline (T0 + 5) passed, but not by the skew bound
    assert store.get_pool("p", T0 + 7.4).remaining == 30_000
    store.reap(T0 + 7.5)
    assert store.get_pool("p", T0 + 7.5).remaining == 50_000
    for bad in (-1.0, math.inf, math.nan, "5"):
        with pytest.raises(ValueError):
            RedisStore(redis_server.url, open_grace_seconds=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            RedisStore(redis_server.url, clock_skew_seconds=bad)  # type: ignore[arg-type]
