"""Scripts that reach several requests of a tree declare every key they touch in KEYS (what
Redis Cluster requires): checked against the keys the real server reports written
(keyspace notifications), for ``close`` and ``reap`` of request trees."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from redis_server import RedisServer

from apportion.errors import StoreUnavailable
from apportion.stores.redis import RedisStore
from apportion.stores.redis.scripts import _FUNCTIONS, _SHAS
from apportion.testing.store_conformance import RANKS, check_invariants

PRIORITIES = ["standard"]
DONE = "apportion-test-audit-done"


def fresh(server: RedisServer) -> RedisStore:
    store = RedisStore(server.url)
    store._client.flushdb()
    return store


class Audit:
    """The keys each script call declared, and the keys the server says were written."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.calls: list[tuple[str, set[str]]] = []
        names = {code: name for codes in (_SHAS, _FUNCTIONS) for name, code in codes.items()}
        plain = store._command

        def command(*args: Any) -> Any:
            if args[0] in ("FCALL", "EVALSHA"):
                count = int(args[2])
                self.calls.append((names[args[1]], {str(k) for k in args[3 : 3 + count]}))
            return plain(*args)

        store._command = command  # type: ignore[method-assign]

    @contextmanager
    def written(self) -> Iterator[set[str]]:
        """The keys written inside the block (by any command), read back in order."""
        client = self.store._client
        client.config_set("notify-keyspace-events", "KA")
        pubsub = client.pubsub()
        pubsub.psubscribe("__keyspace@0__:*")
        pubsub.subscribe(DONE)
        confirmed = 0
        for message in pubsub.listen():  # the two subscriptions' confirmations
            confirmed += message["type"] in ("psubscribe", "subscribe")
            if confirmed == 2:
                break
        keys: set[str] = set()
        self.calls.clear()
        try:
            yield keys
        finally:
            client.publish(DONE, "1")
            for message in pubsub.listen():
                channel = message["channel"].decode()
                if channel == DONE and message["type"] == "message":
                    break
                if message["type"] == "pmessage":
                    keys.add(channel.split(":", 1)[1])
            pubsub.close()

    def check(self, written: set[str], script: str) -> None:
        """Every key written was declared by the last call of ``script`` (which wrote)."""
        declared = [keys for name, keys in self.calls if name == script]
        assert declared, f"no {script} call"
        assert written, "nothing was written"
        assert written <= declared[-1], sorted(written - declared[-1])


def tree(store: RedisStore, root: str, ttl: float = 100.0, child_ttl: float = 100.0) -> None:
    """``root`` with two children, one of them with a child; each spent a little (every
    operation with an operation id, so that every request has its operation record)."""
    store.open(root, RANKS, 10_000, 0.0, ttl=ttl, op_id=f"open-{root}")
    kw: dict[str, Any] = {"ttl": child_ttl, "op_id": f"kids-{root}"}
    two = [f"{root}::a", f"{root}::b"]
    store.open_children(root, two, RANKS, 0.0, priorities=PRIORITIES * 2, ceiling=2_000, **kw)
    one = [f"{root}::a::x"]
    store.open_children(f"{root}::a", one, RANKS, 0.0, priorities=PRIORITIES, ceiling=500, **kw)
    for rid in (root, f"{root}::a", f"{root}::b", f"{root}::a::x"):
        grant, _ = store.begin(rid, "lead", 50, 50, 0.0, 30.0, op_id=f"begin-{rid}")
        store.finish(rid, grant, 40, 40, 1.0, op_id=f"finish-{rid}")


@pytest.fixture
def audit(own_redis_server: RedisServer) -> Audit:
    return Audit(fresh(own_redis_server))


def test_closing_a_tree_declares_every_request_it_touches(audit: Audit) -> None:
    store = audit.store
    tree(store, "r")
    with audit.written() as written:
        store.close("r::a::x", 2.0)  # folds back into its open parent
    audit.check(written, "close")
    with audit.written() as written:
        store.close("r", 3.0)  # closes r::a and r::b first
    audit.check(written, "close")
    for rid in ("r", "r::a", "r::b", "r::a::x"):
        assert store.get(rid).status == "closed"
    state = store.get("r")
    assert state.consumed == 4 * 80 and state.free == 10_000 - 320
    check_invariants(store, "r")


def test_reaping_trees_declares_every_request_it_touches(audit: Audit) -> None:
    store = audit.store
    tree(store, "s", ttl=10.0, child_ttl=10.0)  # the whole tree expires
    tree(store, "t", ttl=1_000.0, child_ttl=10.0)  # only the children expire
    store.open("flat", RANKS, 1_000, 0.0, ttl=10.0)
    with audit.written() as written:
        reaped = store.reap_expired(20.0)
    audit.check(written, "reap")
    assert {"s", "s::a", "s::b", "s::a::x", "t::a", "t::b", "t::a::x", "flat"} == set(
        reaped.expired
    )
    assert store.get("t").status == "open" and store.get("t").consumed == 4 * 80
    for rid in ("s", "t"):
        check_invariants(store, rid)


def test_a_tree_that_keeps_changing_is_given_up_on_unchanged(
    audit: Audit, own_redis_server: RedisServer
) -> None:
    store = audit.store
    tree(store, "r")
    other = RedisStore(own_redis_server.url)  # another process, opening children meanwhile
    plain: Callable[..., Any] = store._command
    spawned = iter(range(1_000))

    def racing(*args: Any) -> Any:
        if args[0] in ("FCALL", "EVALSHA") and args[1] in (_FUNCTIONS["close"], _SHAS["close"]):
            other.open_children(
                "r::a::x", [f"r::a::x::n{next(spawned)}"], RANKS, 0.0, priorities=PRIORITIES,
                ceiling=1,
            )  # fmt: skip
        return plain(*args)

    store._command = racing  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable, match="kept changing"):
        store.close("r", 2.0)
    store._command = plain  # type: ignore[method-assign]
    assert store.get("r").status == "open" and store.get("r::a").status == "open"
    check_invariants(store, "r")
    store.close("r", 3.0)  # once it holds still, it closes
    assert store.get("r::a::x::n0").status == "closed"
    check_invariants(store, "r")


def test_operation_records_live_as_long_as_their_requests(own_redis_server: RedisServer) -> None:
    store = RedisStore(own_redis_server.url, retention_seconds=50.0)
    store._client.flushdb()
    client = store._client
    tree(store, "u", ttl=math.inf, child_ttl=math.inf)  # no TTL while open
    ids = ("u", "u::a", "u::b", "u::a::x")
    for rid in ids:
        assert client.exists(store._ops_key(rid)) == 1
        assert client.pttl(store._ops_key(rid)) == client.pttl(store._keys(rid)[0]) == -1
    store.close("u", 2.0, op_id="close-u")  # the tree closes: kept for the retention
    for rid in ids:
        ledger_ms, ops_ms = client.pttl(store._keys(rid)[0]), client.pttl(store._ops_key(rid))
        assert 40_000 < ledger_ms <= 50_000 and abs(ops_ms - ledger_ms) < 1_000, rid
    assert client.hexists(store._ops_key("u"), "close-u")
