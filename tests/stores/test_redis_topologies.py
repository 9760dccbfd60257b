"""The Redis Cluster and Sentinel fixtures themselves, driven with redis-py directly.

Cluster: keys in many slots written and read back through ``redis.cluster.RedisCluster``,
then a primary killed: its replica takes over and every acknowledged, replicated key is still
there; then writes from four threads while a primary is killed, none lost once acknowledged
after the kill. Sentinel: a replicated write through ``redis.sentinel.Sentinel``, the primary
killed under the same load, the sentinels promote the replica, and the same client writes
again. Each load test prints its :class:`failover_load.LoadReport` summary as JSON (``-s``).
"""

from __future__ import annotations

import json
import time

import redis
from failover_load import load_during_failover
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as ClusterClient
from redis.sentinel import Sentinel
from redis_cluster_server import RedisCluster, healed_redis_cluster, key_slot, redis_cluster
from redis_sentinel_server import RedisSentinel, redis_sentinel

__all__ = ["healed_redis_cluster", "redis_cluster", "redis_sentinel"]  # the fixtures used here


RETRY_ON = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,  # the cluster still electing (CLUSTERDOWN, TRYAGAIN)
    redis.exceptions.ReadOnlyError,
)


def _client(cluster: RedisCluster) -> ClusterClient:
    nodes = [ClusterNode(host, port) for host, port in cluster.addresses if port]
    return ClusterClient(startup_nodes=nodes, decode_responses=True, socket_timeout=1.0)


def test_key_slot_matches_the_cluster(redis_cluster: RedisCluster) -> None:
    node = redis_cluster.live_nodes()[0]
    for key in ["a", "foo", "{user1}.x", "{}b", "{{x}}", "request:{42}:grant:7", "é"]:
        assert key_slot(key) == node.command("CLUSTER", "KEYSLOT", key)


def test_cluster_is_three_primaries_with_a_replica_each(redis_cluster: RedisCluster) -> None:
    primaries = redis_cluster.primaries()
    assert len(primaries) == 3
    assert len(redis_cluster.replicas()) == 3
    for primary in primaries:
        assert len(redis_cluster.replicas_of(primary)) == 1
    assert redis_cluster.url.startswith("redis+cluster://127.0.0.1:")
    owners = {redis_cluster.owner(slot).port for slot in (0, 8000, 16383)}
    assert owners == {p.port for p in primaries}


def test_cluster_keys_survive_a_killed_primary(healed_redis_cluster: RedisCluster) -> None:
    cluster = healed_redis_cluster
    cluster.flushall()
    client = _client(cluster)
    try:
        keys = {f"key:{index}": str(index) for index in range(300)}
        for key, value in keys.items():
            client.set(key, value)
        slots = {key_slot(key) for key in keys}
        assert len({cluster.owner(slot).port for slot in slots}) == 3  # every primary holds some
        assert {key: client.get(key) for key in keys} == keys
        cluster.wait_replicated()

        victim_key = "key:0"
        replica = cluster.replicas_of(cluster.owner(victim_key))[0]
        killed = cluster.kill_primary(victim_key)
        cluster.wait_failover(killed)
        assert cluster.owner(victim_key).port == replica.port  # the replica was promoted

        deadline = time.monotonic() + 10.0
        while True:  # the client learns the new topology after a refused or failed call
            try:
                found = {key: client.get(key) for key in keys}
                break
            except (redis.exceptions.ConnectionError, redis.exceptions.ClusterError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert found == keys
        client.set(victim_key, "after")
        assert client.get(victim_key) == "after"
    finally:
        client.close()
    cluster.heal()
    assert len(cluster.primaries()) == 3 and len(cluster.replicas()) == 3


def test_cluster_serves_writes_through_a_failover_under_load(
    healed_redis_cluster: RedisCluster,
) -> None:
    cluster = healed_redis_cluster
    cluster.flushall()
    client = _client(cluster)
    try:

        def write(thread: int, number: int) -> str:
            key = f"load:{thread}:{number}"
            client.set(key, number)
            return key

        victim = cluster.owner("load:0:0")
        victim_slots = cluster.slots_of(victim)

        def on_victim(key: str) -> bool:
            return any(low <= key_slot(key) <= high for low, high in victim_slots)

        report = load_during_failover(
            write,
            lambda: cluster.kill_primary("load:0:0"),
            cluster.wait_failover,
            retry_on=RETRY_ON,
        )
        print(json.dumps({"cluster_failover_under_load": report.summary()}))
        assert report.gave_up == 0
        assert len(report.before()) >= 4 * 20 and len(report.after()) >= 4 * 20
        # The kill met the load: the victim's slots took writes before it and after.
        assert any(on_victim(ack.result) for ack in report.before())
        assert any(on_victim(ack.result) for ack in report.after())
        assert cluster.owner("load:0:0") is not victim
        # Every write sent after the kill went to a live primary: none may be lost.
        values = {ack.result: str(ack.number) for ack in report.sent_after_kill()}
        assert {key: client.get(key) for key in values} == values
    finally:
        client.close()


def test_sentinel_fails_over_under_load_and_the_client_writes_again(
    redis_sentinel: RedisSentinel,
) -> None:
    setup = redis_sentinel
    sentinel = Sentinel(setup.sentinel_addresses, socket_timeout=1.0)
    assert sentinel.discover_master(setup.service) == ("127.0.0.1", setup.primary().port)
    client = sentinel.master_for(setup.service, socket_timeout=1.0, decode_responses=True)
    try:
        client.set("before", "1")
        assert client.wait(1, 2000) == 1  # replicated before the crash
        old = setup.primary()
        replica = setup.replicas()[0]

        def write(thread: int, number: int) -> str:
            key = f"load:{thread}:{number}"
            client.set(key, number)
            return key

        report = load_during_failover(
            write, setup.kill_primary, setup.wait_failover, retry_on=RETRY_ON
        )
        lost = [ack.result for ack in report.before() if client.get(ack.result) is None]
        print(json.dumps({"sentinel_failover_under_load": report.summary(), "lost": len(lost)}))
        assert setup.primary() is replica
        assert sentinel.discover_master(setup.service) == ("127.0.0.1", replica.port)
        assert client.connection_pool.get_master_address() == ("127.0.0.1", replica.port)
        assert report.gave_up == 0
        assert sum(report.errors.values()) > 0  # the kill met the load
        assert len(report.after()) >= 4 * 20  # the same client writes to the new primary
        values = {ack.result: str(ack.number) for ack in report.sent_after_kill()}
        assert {key: client.get(key) for key in values} == values
        assert client.get("before") == "1"

        setup.heal()  # the killed primary comes back as the new primary's replica
        assert setup.replicas() == [old]
        assert old.command("GET", "after:heal") is None
        client.set("after:heal", "3")
        assert client.wait(1, 2000) == 1
        assert old.command("GET", "after:heal") == "3"
    finally:
        client.close()
