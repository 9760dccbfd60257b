"""The Redis store, given bad input, raises only ``ApportionError`` subclasses and changes
nothing (the same property as tests/test_bad_input.py, against a real redis-server)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis_server import RedisServer

from apportion.errors import ApportionError, InvalidArgument, UnknownAgent, UnknownRequest
from apportion.stores.redis import RedisStore
from apportion.testing.store_conformance import RANKS
from test_bad_input import BAD, STORE_SLOTS, calls_cleanly, check_store_operation


@pytest.fixture(scope="module")
def store(redis_server: RedisServer) -> RedisStore:
    return RedisStore(redis_server.url)


@given(slot=st.sampled_from(STORE_SLOTS), value=BAD)
def test_redis_store_operations(store: RedisStore, slot: tuple[str, str], value: Any) -> None:
    store._client.flushdb()
    check_store_operation(store, slot, value)


OPTIONS = {
    "prefix": "apportion",
    "buckets": 16,
    "retention_seconds": 60.0,
    "socket_timeout": 5.0,
    "connect_timeout": 1.0,
    "fail_open": False,
    "emergency_cap": 0,
    "open_grace_seconds": 10.0,
    "clock_skew_seconds": 1.0,
}


@given(name=st.sampled_from(sorted(OPTIONS)), value=BAD)
def test_redis_store_options(redis_server: RedisServer, name: str, value: Any) -> None:
    calls_cleanly(lambda: RedisStore(redis_server.url, **{**OPTIONS, name: value}))


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("request_id", InvalidArgument),
        ("agent", UnknownAgent),
        ("model", InvalidArgument),
        ("reason", InvalidArgument),
        ("ranks", InvalidArgument),
    ],
)
def test_a_lone_surrogate_in_a_name_is_a_clear_error(
    store: RedisStore, where: str, error: type[ApportionError]
) -> None:
    """Found by fuzzing: a UnicodeEncodeError from deep inside redis-py, nothing refused."""
    store._client.flushdb()
    odd = "le\ud800ad"
    if where not in ("request_id", "ranks"):
        store.open("r", RANKS, 100, 0.0)
        grant, _ = store.begin("r", "lead", 1, 1, 0.0, 10.0)
    with pytest.raises(error) as caught:
        if where == "request_id":
            store.open(odd, RANKS, 100, 0.0)
        elif where == "ranks":
            store.open("r", {**RANKS, odd: 1}, 100, 0.0)
        elif where == "agent":
            store.begin("r", odd, 1, 1, 0.0, 10.0)
        elif where == "model":
            store.begin("r", "lead", 1, 1, 0.0, 10.0, model=odd)
        else:
            store.release("r", grant, 1.0, reason=odd)
    assert "\\ud800" in str(caught.value)  # named, escaped
    if where in ("request_id", "ranks"):
        assert store._client.dbsize() == 0  # nothing was written
    else:
        state = store.get("r")
        assert list(state.grants) == [grant.grant_id] and state.free == 98
        assert [e.kind for e in store.events("r")] == ["open", "begin"]
    with pytest.raises(UnknownRequest):
        store.get(odd)
