"""The Redis store through Redis Sentinel: ``redis+sentinel://host:port,.../service``.

One primary, one replica and three sentinels (``redis_sentinel_server``): the store finds
the primary through the sentinels, sync and async, and after the primary is killed and the
replica promoted, it reaches the new primary (the call in flight may fail, as any call whose
connection drops: ``StoreUnavailable``) with the replicated ledgers intact.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis_process import command
from redis_sentinel_server import RedisSentinel, redis_sentinel

from apportion.errors import InvalidArgument, StoreUnavailable
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
    primary = redis_sentinel.primary()
    assert command(primary.port, "WAIT", 1, 2000) == 1  # the replica has every write

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
