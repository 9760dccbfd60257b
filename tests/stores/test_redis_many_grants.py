"""A request with thousands of open grants on the Redis store: close and reap settle all
of them, atomically, in one pass (no wall-clock thresholds: correctness and completeness)."""

from __future__ import annotations

from typing import Any

import pytest
from redis_server import RedisServer

from apportion.stores.redis import RedisStore
from apportion.testing.many_grants import seed_open_grants
from apportion.testing.store_conformance import RANKS, check_invariants

MANY = 10_000


def fresh(server: RedisServer, **options: Any) -> RedisStore:
    store = RedisStore(server.url, **options)
    store._client.flushdb()
    return store


def _seeded(server: RedisServer, lease_ends: float) -> RedisStore:
    store = fresh(server)
    store.open("r", RANKS, 10**9, 0.0, reserve={"helper": 100})
    first, _ = store.begin("r", "lead", 10, 5, 0.0, 10**6)
    store.finish("r", first, 7, 3, 0.0)
    seed_open_grants(store, "r", "lead", MANY, 1.0, lease_ends, context_tokens=3)
    state = store.get("r")
    assert len(state.grants) == MANY and state.reserved == 4 * MANY
    check_invariants(store, "r")
    return store


def test_close_settles_ten_thousand_open_grants_at_once(redis_server: RedisServer) -> None:
    store = _seeded(redis_server, lease_ends=10**6)
    before = len(store.events("r"))
    state = store.close("r", 2.0, outcome=0.5)
    assert state.status == "closed" and state.outcome == 0.5
    assert not state.grants and state.reserved == 0 and state.reserved_by["lead"] == 0
    assert state.consumed == 10 and state.free == 10**9 - 10
    check_invariants(store, "r")
    events = store.events("r")
    assert len(events) == before + MANY + 1  # one release per grant, then the close
    released = events[before:-1]
    assert [e.kind for e in released] == ["release"] * MANY
    assert [e.grant_id for e in released] == list(range(2, MANY + 2))  # oldest first
    assert {(e.context_tokens, e.output_tokens, e.note) for e in released} == {(3, 1, "closed")}
    assert events[-1].kind == "close"
    _, _, index = store._keys("r")
    assert store._client.zscore(index, "r") is None  # no longer open for the reaper


def test_reap_expires_thousands_of_grants_and_keeps_the_rest(redis_server: RedisServer) -> None:
    store = _seeded(redis_server, lease_ends=5.0)
    late, _ = store.begin("r", "lead", 1, 1, 1.0, 100.0)  # outlives the reap
    before = len(store.events("r"))
    assert store.reap(6.0) == MANY
    state = store.get("r")
    assert list(state.grants) == [late.grant_id]
    assert state.reserved == 2 and state.free == 10**9 - 10 - 2
    check_invariants(store, "r")
    expired = store.events("r")[before:]
    assert [e.kind for e in expired] == ["expire"] * MANY
    assert [e.grant_id for e in expired] == list(range(2, MANY + 2))
    state = store.close("r", 7.0)
    assert not state.grants and state.reserved == 0
    check_invariants(store, "r")


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_settling_one_grant_among_many_keeps_the_others(
    redis_server: RedisServer, where: str
) -> None:
    store = fresh(redis_server)
    store.open("r", RANKS, 10_000, 0.0)
    grants = [store.begin("r", "lead", 10, 10, 0.0, 100.0)[0] for _ in range(5)]
    pick = {"first": 0, "middle": 2, "last": 4}[where]
    state = store.finish("r", grants[pick], 5, 5, 1.0)
    assert sorted(state.grants) == sorted(g.grant_id for i, g in enumerate(grants) if i != pick)
    assert all(state.grants[g.grant_id] == g for i, g in enumerate(grants) if i != pick)
    check_invariants(store, "r")
    state = store.release("r", grants[(pick + 1) % 5], 1.0)
    assert len(state.grants) == 3
    check_invariants(store, "r")
