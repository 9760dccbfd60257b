"""A child request whose keys are gone while its parent is open (Redis TTLs, eviction):
its keys live as long as its parent's, and a draw the parent can no longer account for is
charged whole (DESIGN invariant 9: usage is never dropped), never handed out again."""

from __future__ import annotations

import math
from typing import Any

import pytest
from redis_server import RedisServer

from apportion.ledger import Ledger
from apportion.stores import MemoryStore, Store
from apportion.stores.redis import RedisStore
from apportion.testing.store_conformance import RANKS, check_invariants

PRIORITIES = ["standard"]


def fresh(server: RedisServer, **options: Any) -> RedisStore:
    store = RedisStore(server.url, **options)
    store._client.flushdb()
    return store


def spend_in_child(store: Store, parent_ttl: float, child_ttl: float) -> str:
    """A parent of 1,000 tokens, a child of 300 that used 100 of them (still open)."""
    store.open("p", RANKS, 1_000, 0.0, ttl=parent_ttl)
    _, (kid,) = store.open_children(
        "p", ["p::kid"], RANKS, 0.0, priorities=PRIORITIES, ceiling=300, ttl=child_ttl
    )
    grant, _ = store.begin(kid.request_id, "lead", 60, 40, 0.0, 30.0)
    store.finish(kid.request_id, grant, 60, 40, 1.0)
    return str(kid.request_id)


@pytest.mark.parametrize("parent_ttl", [math.inf, 1_000.0])
def test_a_childs_keys_live_as_long_as_its_parents(
    redis_server: RedisServer, parent_ttl: float
) -> None:
    store = fresh(redis_server, retention_seconds=100.0)
    kid = spend_in_child(store, parent_ttl, child_ttl=10.0)
    client = store._client
    parent_ttl_ms = client.pttl(store._keys("p")[0])
    for key in store._keys(kid)[:2]:
        if math.isinf(parent_ttl):
            assert client.pttl(key) == -1  # the parent has none: nor has the child
        else:
            assert client.pttl(key) >= parent_ttl_ms - 1_000  # not its own 110 s


def test_a_child_short_of_its_parents_ttl_keeps_it_after_every_operation(
    redis_server: RedisServer,
) -> None:
    store = fresh(redis_server, retention_seconds=100.0)
    kid = spend_in_child(store, 1_000.0, child_ttl=10.0)
    grant, _ = store.begin(kid, "helper", 10, 10, 2.0, 30.0)
    store.release(kid, grant, 2.0)
    parent_ttl_ms = store._client.pttl(store._keys("p")[0])
    assert store._client.pttl(store._keys(kid)[0]) >= parent_ttl_ms - 1_000


@pytest.mark.parametrize("how", ["close", "reap"])
def test_a_vanished_child_is_charged_whole_to_its_parent(
    redis_server: RedisServer, how: str
) -> None:
    store = fresh(redis_server)
    kid = spend_in_child(store, 1_000.0, child_ttl=10.0)
    store._client.delete(*store._keys(kid)[:2])  # expired unreaped, or evicted
    store.reap(20.0)  # the child is due: its keys are gone, its draw stays held
    state = store.get("p")
    assert state.status == "open" and state.reserved == 300 and state.free == 700
    check_invariants(store, "p")
    if how == "close":
        store.close("p", 30.0)
    else:
        store.reap(2_000.0)  # the parent expires
    state = store.get("p")
    assert state.status in ("closed", "expired")
    assert (state.consumed, state.free, state.children_consumed) == (300, 700, 300)
    check_invariants(store, "p")
    closing = [e for e in store.events("p") if e.kind == "child_close"]
    assert [(e.note, e.context_tokens, e.output_tokens) for e in closing] == [(kid, 300, 300)]


def test_the_ledger_charges_a_lost_child_the_same_way() -> None:
    parent = Ledger("p", RANKS, 1_000, 0.0)
    parent.draw("p::kid", 300, None, 0.0)
    parent.close(1.0)
    assert (parent.consumed, parent.free, parent.children_consumed) == (300, 700, 300)


def test_the_memory_store_never_loses_an_open_child() -> None:
    store = MemoryStore()
    kid = spend_in_child(store, 1_000.0, child_ttl=10.0)
    store.reap(20.0)  # the child expires: folded back with its usage
    assert store.get(kid).status == "expired"
    state = store.get("p")
    assert (state.consumed, state.free, state.reserved) == (100, 900, 0)
    check_invariants(store, "p")
