"""Lost replies: a proxy between the client and Redis closes the connection after the server
ran a command, instead of relaying its reply. The controller retries with the same operation
id; over thousands of operations nothing is granted, drawn or settled twice and nothing
leaks: every ledger conserves its tokens, and the pool gets back all that was not used."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from redis_server import RedisServer

from apportion import Agent, AsyncController, Controller, Pipeline
from apportion.errors import ApportionError
from apportion.pools import Pool
from apportion.retry import StoreRetry
from apportion.stores.redis import RedisStore
from apportion.testing.fault_proxy import FaultProxy
from apportion.testing.store_conformance import check_invariants

PIPELINE = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
    ]
)
NOW = 1_000.0
CAPACITY = 10_000_000
THREADS = 4
PER_THREAD = 60  # requests; each makes 12 store calls or so
USED = 800 + 150 + 100 + 20  # what each request consumes (its child's 120 included)


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    RedisStore(redis_server.url)._client.flushdb()
    with FaultProxy(redis_server.port, drop_after=0.05, seed=20) as running:
        yield running


def controller(url: str, cls: type[Controller] = Controller) -> Controller:
    store = RedisStore(url)
    store.define_pool(Pool("shared", CAPACITY, math.inf))
    retry = StoreRetry.immediate(attempts=10)
    return cls(PIPELINE, "elastic", store, clock=lambda: NOW, store_retry=retry)


def run_request(ctl: Controller, request_id: str) -> dict[str, int]:
    """One request of every operation; the events it should leave, by kind."""
    with ctl.request(ceiling=5_000, request_id=request_id, pool="shared") as req:
        first = req.begin("reasoner", input_tokens=800)
        grown = req.extend(first, 100)
        req.finish(grown or first, input_tokens=800, output_tokens=150)
        other = req.begin("triage", input_tokens=200)
        req.release(other)
        with req.child("sub", ceiling=1_000) as kid:
            grant = kid.begin("triage", input_tokens=100)
            kid.finish(grant, input_tokens=100, output_tokens=20)
    return {"begin": 2, "extend": int(grown is not None), "finish": 1, "release": 1, "child": 1}


def check_ledgers(store: RedisStore, expected: dict[str, dict[str, int]]) -> None:
    """Every request closed, conserving, with each operation applied once; the pool whole."""
    for request_id, counts in expected.items():
        state = store.get(request_id)
        assert state.status == "closed", request_id
        assert (state.reserved, state.consumed) == (0, USED), request_id
        assert not state.grants and not state.children, request_id
        check_invariants(store, request_id)
        kinds = [event.kind for event in store.events(request_id)]
        for kind, count in {**counts, "open": 1, "close": 1, "child_close": 1}.items():
            assert kinds.count(kind) == count, (request_id, kind, kinds)
        kid = store.get(f"{request_id}::sub")
        assert (kid.status, kid.reserved, kid.consumed) == ("closed", 0, 120)
        kid_kinds = [event.kind for event in store.events(f"{request_id}::sub")]
        assert kid_kinds == ["open", "begin", "finish", "close"], kid_kinds
    status = store.get_pool("shared", NOW)
    assert status.open_draws == 0
    assert status.remaining == CAPACITY - USED * len(expected)
    assert status.overflow == 0


def test_lost_replies_settle_everything_exactly_once(
    proxy: FaultProxy, redis_server: RedisServer
) -> None:
    ctl = controller(proxy.url)
    expected: dict[str, dict[str, int]] = {}
    failures: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for i in range(PER_THREAD):
                request_id = f"t{thread}-{i}"
                expected[request_id] = run_request(ctl, request_id)
        except BaseException as exc:  # reported below, with what it was
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert len(expected) == THREADS * PER_THREAD
    assert proxy.dropped_after >= 50, proxy.dropped_after  # the faults did happen
    calls = ctl.store.round_trips  # type: ignore[attr-defined]
    assert calls >= 2_500  # thousands of operations
    check_ledgers(RedisStore(redis_server.url), expected)  # read past the proxy


def test_lost_replies_async(proxy: FaultProxy, redis_server: RedisServer) -> None:
    ctl = controller(proxy.url, AsyncController)
    expected: dict[str, dict[str, int]] = {}

    async def one(request_id: str) -> None:
        req: Any = ctl.request(ceiling=5_000, request_id=request_id, pool="shared")
        async with req:
            first = await req.begin("reasoner", input_tokens=800)
            grown = await req.extend(first, 100)
            await req.finish(grown or first, input_tokens=800, output_tokens=150)
            other = await req.begin("triage", input_tokens=200)
            await req.release(other)
            async with req.child("sub", ceiling=1_000) as kid:
                grant = await kid.begin("triage", input_tokens=100)
                await kid.finish(grant, input_tokens=100, output_tokens=20)
        counts = {"begin": 2, "extend": int(grown is not None), "finish": 1, "release": 1}
        expected[request_id] = {**counts, "child": 1}

    async def scenario() -> None:
        for batch in range(10):
            await asyncio.gather(*(one(f"a{batch}-{i}") for i in range(4)))

    try:
        asyncio.run(scenario())
    except ApportionError as exc:  # pragma: no cover - shown with the faults seen
        raise AssertionError(f"{exc!r} (dropped {proxy.dropped_after})") from exc
    assert proxy.dropped_after >= 5, proxy.dropped_after
    check_ledgers(RedisStore(redis_server.url), expected)
