"""The fail-open wrapper: conformance over memory and Redis, and its fallback rules."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from redis_server import RedisServer

from apportion.errors import InvalidArgument, InvalidTokenCount, StoreUnavailable
from apportion.ledger import Event
from apportion.stores import MemoryStore, Store
from apportion.stores.fail_open import FailOpenStore
from apportion.stores.redis import RedisStore
from apportion.testing.pool_conformance import PoolConformance
from apportion.testing.store_conformance import RANKS, StoreConformance


class TestFailOpenOverMemory(StoreConformance):
    def make_store(self) -> Store:
        return FailOpenStore(MemoryStore(), emergency_cap=1_000)


class TestFailOpenPoolsOverMemory(PoolConformance):
    def make_store(self) -> Store:
        return FailOpenStore(MemoryStore(), emergency_cap=1_000)


class TestFailOpenOverRedis(StoreConformance):
    """``RedisStore(fail_open=True)`` is the wrapper around the Redis store."""

    @pytest.fixture(autouse=True)
    def _server(self, redis_server: RedisServer) -> None:
        self.server = redis_server

    def make_store(self) -> Store:
        store = RedisStore(self.server.url, fail_open=True, emergency_cap=1_000)
        store._client.flushdb()
        return store

    # The state machines run on the wrapper over memory and on the plain Redis store (with
    # Redis up, every operation goes to it): not a third time here, where they take minutes.
    @pytest.mark.skip(reason="runs on FailOpenStore over memory and on RedisStore")
    def test_random_interleavings(self) -> None: ...

    @pytest.mark.skip(reason="runs on FailOpenStore over memory and on RedisStore")
    def test_random_trees(self) -> None: ...


class Flaky(MemoryStore):
    """A memory store that raises ``StoreUnavailable`` from every operation while down."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def __getattribute__(self, name: str) -> Any:
        if (
            not name.startswith("_")
            and name not in ("down", "url")
            and super().__getattribute__("down")
        ):
            raise StoreUnavailable("flaky://", "down")
        return super().__getattribute__(name)


def test_requests_opened_while_down_stay_in_the_fallback() -> None:
    primary = Flaky()
    store = FailOpenStore(primary, emergency_cap=1_000)
    store.open("remote", RANKS, 500, 0.0)
    primary.down = True
    with pytest.raises(StoreUnavailable):  # its ledger is in the primary: fail closed
        store.begin("remote", "lead", 1, 1, 0.0, 10.0)
    with pytest.warns(RuntimeWarning, match="emergency budget of 1000 tokens"):
        store.open("local", RANKS, 600, 0.0)
    grant, _ = store.begin("local", "lead", 100, 50, 0.0, 10.0)
    store.finish("local", grant, 100, 0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(StoreUnavailable, match="400 tokens left, 600 asked"):
            store.open("too-big", RANKS, 600, 0.0)
        parent, kids = store.open_children(
            "local", ["local::a"], RANKS, 0.5, priorities=["standard"], ceiling=50
        )
        assert parent.reserved == 50 and kids[0].ceiling == 50
        store.note("local::a", Event("refused", 0.5, "lead", 0, 0, 10, False, 0, "begin"))
        assert store.close("local", 1.0).consumed == 100  # its child folded back, unused
        assert [e.kind for e in store.events("local::a")][-1] == "close"
        store.open("again", RANKS, 900, 1.0)  # the 500 unused came back
        with pytest.raises(StoreUnavailable, match="0 tokens left"):
            store.open("over", RANKS, 1, 1.0)
    assert store.reap(2.0) == 0  # the fallback's; the primary's is unreachable
    primary.down = False
    assert store.open_requests() == ["again", "remote"]
    assert store.get("remote").status == "open" and store.get("again").ceiling == 900
    store.open("back", RANKS, 10, 3.0)  # the primary again: no warning, no budget drawn
    assert "back" in primary.open_requests()


def test_async_operations_route_the_same_way() -> None:
    primary = Flaky()
    store = FailOpenStore(primary, emergency_cap=100)

    async def run() -> None:
        primary.down = True
        with pytest.warns(RuntimeWarning):
            await store.aopen("local", RANKS, 60, 0.0)
        grant, _ = await store.abegin("local", "lead", 10, 10, 0.0, 5.0)
        await store.afinish("local", grant, 10, 5, 0.0)
        await store.aopen_children(
            "local", ["local::k"], RANKS, 0.0, priorities=["critical"], ceiling=5
        )
        assert (await store.aget("local::k")).ceiling == 5
        assert (await store.aclose("local", 1.0)).consumed == 15
        assert len(await store.aevents("local")) > 3
        assert (await store.areap_expired(2.0)).settled == 0
        primary.down = False
        assert await store.aopen_requests() == []

    asyncio.run(run())


def test_no_emergency_budget_fails_closed() -> None:
    primary = Flaky()
    primary.down = True
    store = FailOpenStore(primary, emergency_cap=0)
    with pytest.raises(StoreUnavailable, match=r"emergency_cap=0"):
        store.open("r", RANKS, 10, 0.0)
    with pytest.raises(StoreUnavailable):  # nothing fell back: the primary's error
        store.reap(0.0)


def test_a_given_fallback_store_is_used() -> None:
    primary, fallback = Flaky(), MemoryStore()
    store = FailOpenStore(primary, fallback, emergency_cap=50)
    primary.down = True
    with pytest.warns(RuntimeWarning):
        store.open("r", RANKS, 20, 0.0)
    assert fallback.get("r").ceiling == 20
    assert fallback.get_pool("emergency", 0.0).remaining == 30


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("not a store",), InvalidArgument),
        ((MemoryStore(), "not a store"), InvalidArgument),
    ],
)
def test_bad_stores_are_refused(args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        FailOpenStore(*args, emergency_cap=10)


@pytest.mark.parametrize("cap", [-1, 1.5, "10", None])
def test_a_bad_emergency_cap_is_refused(cap: Any) -> None:
    with pytest.raises(InvalidTokenCount):
        FailOpenStore(MemoryStore(), emergency_cap=cap)


def test_redis_fail_open_is_the_wrapper(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, fail_open=True, emergency_cap=10)
    assert isinstance(store, FailOpenStore) and isinstance(store, RedisStore)
    assert repr(store) == repr(RedisStore(redis_server.url))
    assert not isinstance(RedisStore(redis_server.url), FailOpenStore)
    store._client.flushdb()
    store.open("r", RANKS, 10, 0.0)
    assert store.round_trips >= 1 and store.get("r").ceiling == 10


def test_a_subclass_of_the_redis_store_fails_open_wrapped(redis_server: RedisServer) -> None:
    class Mine(RedisStore):
        pass

    with pytest.raises(InvalidArgument, match="FailOpenStore"):
        Mine(redis_server.url, fail_open=True)
    store = FailOpenStore(Mine(redis_server.url), emergency_cap=5)
    assert store.url == redis_server.url and isinstance(store.primary, Mine)
