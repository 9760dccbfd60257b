"""The Redis store on a real Redis Cluster (three primaries, three replicas).

The store conformance and pool conformance suites run against the cluster (one cluster for
the session: ``redis_cluster_server``), and the 16-process children race; then what makes a
cluster work: every key of a request, its children, its operation record and its feed in
one hash slot, pools in their own, ``reap`` one script per bucket, and a cluster URL
against a standalone server (and the reverse) refused with an error naming what it found.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis_cluster_server import RedisCluster, key_slot, redis_cluster
from redis_server import RedisServer
from test_children_race import sixteen_process_race

from apportion.errors import InvalidArgument
from apportion.pools import Pool
from apportion.stores import Store, open_store
from apportion.stores.redis import RedisStore
from apportion.testing.pool_conformance import PoolConformance
from apportion.testing.store_conformance import RANKS, StoreConformance

__all__ = ["redis_cluster"]  # the fixture used here


def fresh(cluster: RedisCluster, **options: Any) -> RedisStore:
    """A store on the emptied cluster (16 buckets unless asked: spread over every primary,
    and a feed read or a reap of 16 streams and indexes, not 256)."""
    cluster.flushall()
    return RedisStore(cluster.url, **{"buckets": 16, **options})


_SHARED: dict[str, RedisStore] = {}


def reused(cluster: RedisCluster) -> RedisStore:
    """One store for the conformance tests, on the emptied cluster (a new cluster client
    reads the slots and connects to every primary: 40 ms, for each Hypothesis example)."""
    cluster.flushall()
    store = _SHARED.get(cluster.url)
    if store is None:
        store = _SHARED[cluster.url] = RedisStore(cluster.url, buckets=16)
    return store


class TestRedisClusterStore(StoreConformance):
    # the scripts are the standalone server's, run there at full count: here what differs
    # is where the keys live (a fifth of the interleavings: about 17 s instead of 85)
    interleavings = (40, 20)

    @pytest.fixture(autouse=True)
    def _cluster(self, redis_cluster: RedisCluster) -> None:
        self.cluster = redis_cluster

    def make_store(self) -> Store:
        return reused(self.cluster)


class TestRedisClusterPools(PoolConformance):
    @pytest.fixture(autouse=True)
    def _cluster(self, redis_cluster: RedisCluster) -> None:
        self.cluster = redis_cluster

    def make_store(self) -> Store:
        return fresh(self.cluster)


def test_16_processes_fan_out_from_one_parent_on_a_cluster(redis_cluster: RedisCluster) -> None:
    redis_cluster.flushall()
    sixteen_process_race(redis_cluster.url, rounds=10)


def test_a_request_its_children_and_records_share_one_slot(redis_cluster: RedisCluster) -> None:
    store = fresh(redis_cluster, buckets=16)
    assert store.topology == "cluster" and isinstance(open_store(redis_cluster.url), RedisStore)
    store.define_pool(Pool("shared", 10_000, 60.0))
    slots: dict[str, set[int]] = {}
    for root in ("a", "b", "c", "t/d"):
        store.open(root, RANKS, 1_000, 0.0, pool="shared", op_id=f"open-{root}")
        store.open_children(root, [f"{root}::k"], RANKS, 0.0, priorities=["standard"], ceiling=10)
        grant, _ = store.begin(f"{root}::k", "lead", 1, 1, 0.0, 30.0, op_id=f"begin-{root}")
        store.finish(f"{root}::k", grant, 1, 1, 1.0, op_id=f"finish-{root}")
        keys = [*store._request_keys(root), *store._request_keys(f"{root}::k")]
        keys.append(store._marker_key(f"{root}#x"))
        slots[root] = {key_slot(key) for key in keys}
        assert len(slots[root]) == 1, keys
    pool_slots = {key_slot(key) for key in store._pool_keys("shared")}
    assert len(pool_slots) == 1
    owners = {redis_cluster.owner(next(iter(s))).port for s in slots.values()}
    assert len(owners) >= 2  # the requests are spread over the primaries
    # reap: due requests in several buckets, on several nodes, one script per bucket
    for root in ("a", "b", "c", "t/d"):
        store.begin(root, "lead", 5, 5, 1.0, 1.0)
    reaped = store.reap_expired(10.0)
    assert reaped.settled == 4
    assert all(store.get(root).free == 1_000 - 10 for root in ("a", "b", "c", "t/d"))


def test_cluster_children_must_share_their_roots_slot(redis_cluster: RedisCluster) -> None:
    store = fresh(redis_cluster)
    store.open("r1", RANKS, 1_000, 0.0)
    apart = next(f"x{i}" for i in range(100) if store._keys(f"x{i}")[2] != store._keys("r1")[2])
    with pytest.raises(InvalidArgument) as caught:
        store.open_children("r1", [apart], RANKS, 0.0, priorities=["standard"], ceiling=10)
    assert caught.value.argument == "request_ids" and "hash slot" in caught.value.reason
    assert not store.get("r1").children


def test_async_operations_on_a_cluster(redis_cluster: RedisCluster) -> None:
    store = fresh(redis_cluster)

    async def scenario() -> None:
        start = await store.afeed_cursor()
        await store.aopen("r1", RANKS, 1_000, 0.0)
        grant, _ = await store.abegin("r1", "lead", 10, 10, 0.0, 30.0)
        await store.afinish("r1", grant, 5, 5, 1.0)
        await store.aclose("r1", 2.0)
        page = await store.afeed(start)
        assert [e.kind for e in page.events] == ["open", "begin", "finish", "close"]
        assert (await store.aget("r1")).consumed == 10

    asyncio.run(scenario())


def test_a_cluster_url_against_a_standalone_server(redis_server: RedisServer) -> None:
    url = redis_server.url.replace("redis://", "redis+cluster://").rsplit("/", 1)[0]
    store = RedisStore(url)  # no I/O yet
    with pytest.raises(InvalidArgument) as caught:
        store.open("r1", RANKS, 100, 0.0)
    assert "standalone" in caught.value.reason and "redis://" in caught.value.reason

    async def scenario() -> None:
        with pytest.raises(InvalidArgument, match="standalone"):
            await store.aopen("r1", RANKS, 100, 0.0)

    asyncio.run(scenario())


def test_a_plain_url_against_a_cluster_node(redis_cluster: RedisCluster) -> None:
    url = redis_cluster.url.replace("redis+cluster://", "redis://")
    store = RedisStore(url)
    for _ in range(2):  # refused every time, not only the first
        with pytest.raises(InvalidArgument) as caught:
            store.open("r1", RANKS, 100, 0.0)
        assert "Cluster node" in caught.value.reason and "redis+cluster://" in caught.value.reason

    async def scenario() -> None:
        with pytest.raises(InvalidArgument, match="Cluster node"):
            await store.aopen("r1", RANKS, 100, 0.0)

    asyncio.run(scenario())


def test_a_cluster_has_database_0_only(redis_cluster: RedisCluster) -> None:
    with pytest.raises(InvalidArgument, match="database 0"):
        RedisStore(redis_cluster.url + "/3")


def test_gateway_idempotency_records_on_a_cluster(redis_cluster: RedisCluster) -> None:
    from apportion.serve.idempotency import open_records

    records = open_records(redis_cluster.url + "?prefix=gwtest")

    async def scenario() -> None:
        for i in range(6):  # keys in several slots
            await records.put_value(f"k{i}", f"v{i}", 30.0)
        assert [await records.get_value(f"k{i}") for i in range(6)] == [f"v{i}" for i in range(6)]
        assert await records.get_value("missing") is None
        await records.aclose()

    asyncio.run(scenario())


def test_durability_is_the_weakest_primary_s(redis_cluster: RedisCluster) -> None:
    store = RedisStore(redis_cluster.url)
    primaries = redis_cluster.primaries()
    assert store.durability() == "off"  # the test cluster writes no AOF
    try:
        for node in primaries:
            node.command("CONFIG", "SET", "appendonly", "yes", "appendfsync", "always")
        assert store.durability() == "always"
        primaries[1].command("CONFIG", "SET", "appendfsync", "everysec")
        assert store.durability() == "everysec"  # one primary may lose its last second
        primaries[2].command("CONFIG", "SET", "appendonly", "no")
        assert store.durability() == "off"  # one primary without an AOF
    finally:
        for node in primaries:
            node.command("CONFIG", "SET", "appendonly", "no", "appendfsync", "everysec")
