"""The Redis store through Redis Sentinel: ``redis+sentinel://host:port,.../service``.

One primary, one replica and three sentinels (``redis_sentinel_server``): the store finds
the primary through the sentinels, sync and async, and after the primary is killed and the
replica promoted, it reaches the new primary (the call in flight may fail, as any call whose
connection drops: ``StoreUnavailable``) with the replicated ledgers intact.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from failover_load import load_during_failover
from redis_sentinel_server import RedisSentinel, redis_sentinel

from apportion.errors import BudgetExceeded, InvalidArgument, StoreUnavailable, UnknownRequest
from apportion.stores import open_store
from apportion.stores.redis import RedisStore
from apportion.testing.store_conformance import RANKS, check_invariants

__all__ = ["redis_sentinel"]  # the fixture used here


def test_the_store_follows_the_sentinels_through_a_failover(redis_sentinel: RedisSentinel) -> None:
    store = open_store(redis_sentinel.url + "?prefix=sent")
    assert isinstance(store, RedisStore) and store.topology == "sentinel"
    store.open("r1", RANKS, 1_000, 0.0)
    grant, _ = store.begin("r1", "lead", 100, 50, 1.0, 30.0)
    store.finish("r1", grant, 80, 40, 2.0)

    async def on_the_loop() -> int:
        state = await store.aget("r1")
        return state.consumed

    assert asyncio.run(on_the_loop()) == 120
    redis_sentinel.wait_replicated()  # the replica has every write

    killed = redis_sentinel.kill_primary()
    redis_sentinel.wait_failover(killed)
    deadline = time.monotonic() + 30.0
    while True:  # the connection to the dead primary fails once, then the new one is found
        try:
            grant, _ = store.begin("r1", "lead", 10, 10, 3.0, 30.0)
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    state = store.finish("r1", grant, 5, 5, 4.0)
    assert state.consumed == 130
    check_invariants(store, "r1")
    assert redis_sentinel.primary().port != killed.port
    assert asyncio.run(on_the_loop()) == 130


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:1/",
        "redis+sentinel://127.0.0.1:x/apportion",
        "redis+sentinel://127.0.0.1:1,:2/apportion",
        "redis+sentinel://127.0.0.1:1/apportion/not-a-db",
    ],
)
def test_bad_sentinel_urls(url: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        RedisStore(url)
    assert caught.value.argument == "url"


CEILING = 2_000
"""Each request's ceiling in the failover-under-load test: 20 grants of 50 + 50 tokens."""


def test_a_failover_under_load_overspends_only_what_it_lost(redis_sentinel: RedisSentinel) -> None:
    """Four threads open requests and begin grants until each is full while the primary is
    killed. Replication is asynchronous, so the promoted replica may lack the last writes the
    old primary acknowledged: their tokens are free again and may be granted twice. That is
    the only overspend: per request, the tokens the clients were granted beyond the ceiling
    are at most the acknowledged tokens the new primary does not hold, and every ledger's
    invariants hold. The worst overspend is printed (``-s``) and quoted in the README."""
    redis_sentinel.heal()
    # a replica that never synced would lose everything: the loss measured is the lag's
    redis_sentinel.wait_replicated()
    store = open_store(redis_sentinel.url + "?prefix=load")
    current: dict[int, int] = {}  # thread -> its request number (the next one once full)
    held: dict[str, int] = {}  # request -> tokens the clients were granted
    opened: set[str] = set()

    def operation(thread: int, n: int) -> str:
        rid = f"t{thread}-{current.setdefault(thread, 0)}"
        now = time.time()
        if rid not in opened:
            store.open(rid, RANKS, CEILING, now, op_id=f"open:{thread}:{n}")
            opened.add(rid)
            return "open"
        try:
            store.begin(rid, "lead", 50, 50, now, 600.0, op_id=f"begin:{thread}:{n}")
        except BudgetExceeded:
            current[thread] += 1  # this one is full: the next
            return "full"
        except UnknownRequest:  # its open was acknowledged, then lost in the failover
            current[thread] += 1
            return "gone"
        held[rid] = held.get(rid, 0) + 100
        return "granted"

    report = load_during_failover(
        operation,
        redis_sentinel.kill_primary,
        redis_sentinel.wait_failover,
        threads=4,
        warmup=30,
        settle=60,
        retry_on=(StoreUnavailable,),
    )
    overspend = lost = 0
    worst = 0
    for rid in sorted(opened):
        try:
            state = store.get(rid)
        except UnknownRequest:  # its open was lost with the old primary: all of it is lost
            lost += held.get(rid, 0)
            continue
        check_invariants(store, rid)
        kept = state.reserved + state.consumed
        assert kept <= state.ceiling == CEILING
        over = max(0, held.get(rid, 0) - CEILING)
        missing = max(0, held.get(rid, 0) - kept)
        assert over <= missing, (rid, held.get(rid), kept)
        overspend += over
        lost += missing
        worst = max(worst, over)
    assert len(report.after()) >= 4 * 60  # the load went on through the new primary
    print(
        json.dumps(
            {
                "requests": len(opened),
                "granted_tokens": sum(held.values()),
                "lost_acknowledged_tokens": lost,
                "overspend_tokens": overspend,
                "worst_overspend_per_request": worst,
                **report.summary(),
            }
        )
    )
