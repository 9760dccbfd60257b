"""The controller retries a store call whose outcome is unknown, with the same operation id."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apportion import Agent, AsyncController, Controller, Pipeline
from apportion.controller import operation_ids
from apportion.errors import InvalidArgument, StoreOutcomeUnknown, StoreUnavailable
from apportion.retry import StoreRetry
from apportion.stores.memory import MemoryStore

PIPELINE = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
    ]
)


class LossyStore(MemoryStore):
    """A memory store whose replies are lost: the first ``lose`` calls of an operation are
    carried out, then raise ``StoreOutcomeUnknown`` (as a connection dropped after the
    server ran the command). Records every call's operation id."""

    replies_may_be_lost = True

    def __init__(self, lose: int, before: bool = False) -> None:
        super().__init__()
        self.lose = lose
        self.before = before  # lose the call before carrying it out (nothing sent)
        self.calls: list[tuple[str, str | None]] = []
        self.lost: dict[str, int] = {}

    def _lossy(self, name: str, run: Any, kwargs: dict[str, Any]) -> Any:
        self.calls.append((name, kwargs.get("op_id")))
        lost = self.lost.get(name, 0)
        if lost < self.lose:
            self.lost[name] = lost + 1
            if self.before:
                raise StoreUnavailable(self.url, "connection refused")
            run()
            raise StoreOutcomeUnknown(self.url, "connection closed by server")
        return run()

    def open(self, *args: Any, **kwargs: Any) -> Any:
        return self._lossy("open", lambda: super(LossyStore, self).open(*args, **kwargs), kwargs)

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        return self._lossy("begin", lambda: super(LossyStore, self).begin(*args, **kwargs), kwargs)

    def extend(self, *args: Any, **kwargs: Any) -> Any:
        run = lambda: super(LossyStore, self).extend(*args, **kwargs)  # noqa: E731
        return self._lossy("extend", run, kwargs)

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        run = lambda: super(LossyStore, self).finish(*args, **kwargs)  # noqa: E731
        return self._lossy("finish", run, kwargs)

    def release(self, *args: Any, **kwargs: Any) -> Any:
        run = lambda: super(LossyStore, self).release(*args, **kwargs)  # noqa: E731
        return self._lossy("release", run, kwargs)

    def close(self, *args: Any, **kwargs: Any) -> Any:
        return self._lossy("close", lambda: super(LossyStore, self).close(*args, **kwargs), kwargs)


class Waits:
    """An injected sleep that records the delays asked for."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)

    async def wait(self, seconds: float) -> None:
        self.delays.append(seconds)


def controller(store: MemoryStore, attempts: int = 3, waits: Waits | None = None) -> Controller:
    waits = waits or Waits()
    retry = StoreRetry(attempts, 0.02, sleep=waits, asleep=waits.wait)
    return Controller(PIPELINE, "elastic", store, clock=lambda: 100.0, store_retry=retry)


def test_lost_replies_are_retried_with_the_same_id_and_applied_once() -> None:
    store = LossyStore(lose=2)
    waits = Waits()
    ctl = controller(store, attempts=3, waits=waits)
    with ctl.request(ceiling=10_000, request_id="r") as req:
        grant = req.begin("reasoner", input_tokens=1_000)
        grown = req.extend(grant, 200)
        assert grown is not None
        req.finish(grown, input_tokens=1_000, output_tokens=300)
        other = req.begin("triage", input_tokens=100)
        req.release(other)
    state = store.get("r")
    assert state.status == "closed"
    assert (state.consumed, state.reserved, state.free) == (1_300, 0, 8_700)
    kinds = [e.kind for e in store.events("r")]
    assert kinds == ["open", "begin", "extend", "finish", "begin", "release", "close"]
    for name in ("open", "begin", "extend", "finish", "release", "close"):
        ids = [op for called, op in store.calls if called == name]
        assert ids and all(op is not None for op in ids)
    begins = [op for called, op in store.calls if called == "begin"]
    assert len(begins) == 4 and begins[0] == begins[1] == begins[2] != begins[3]
    assert waits.delays[:2] == [0.02, 0.04]


def test_after_the_last_attempt_the_store_is_unavailable() -> None:
    store = LossyStore(lose=5)
    ctl = controller(store, attempts=3)
    req = ctl.request(ceiling=10_000, request_id="r")
    with pytest.raises(StoreUnavailable) as info:
        req.open()
    assert isinstance(info.value, StoreOutcomeUnknown)
    assert "after 3 attempts" in info.value.reason
    assert [name for name, _ in store.calls] == ["open"] * 3
    assert store.get("r").status == "open"  # it was carried out (once)


def test_a_call_that_was_never_sent_is_not_retried() -> None:
    store = LossyStore(lose=1, before=True)
    ctl = controller(store)
    with pytest.raises(StoreUnavailable) as info:
        ctl.request(ceiling=10_000, request_id="r").open()
    assert not isinstance(info.value, StoreOutcomeUnknown)
    assert len(store.calls) == 1


def test_async_retries() -> None:
    store = LossyStore(lose=1)
    waits = Waits()
    retry = StoreRetry(2, 0.01, sleep=waits, asleep=waits.wait)
    ctl = AsyncController(PIPELINE, "elastic", store, clock=lambda: 5.0, store_retry=retry)

    async def scenario() -> None:
        async with ctl.request(ceiling=5_000, request_id="a") as req:
            grant = await req.begin("reasoner", input_tokens=500)
            await req.finish(grant, input_tokens=500, output_tokens=100)

    asyncio.run(scenario())
    assert [e.kind for e in store.events("a")] == ["open", "begin", "finish", "close"]
    assert store.get("a").consumed == 600
    assert waits.delays == [0.01] * 4


def test_operation_ids_derive_from_a_key() -> None:
    store = LossyStore(lose=0)
    ctl = controller(store)
    with operation_ids("k1"):
        ctl.request(ceiling=10_000, request_id="r").open()
    with operation_ids("kb"):
        grant = ctl.attach("r").begin("reasoner", input_tokens=1_000)
    with operation_ids("kb"):  # the same call again (a client's retry with its key)
        again = ctl.attach("r").begin("reasoner", input_tokens=1_000)
    assert again == grant
    assert [op for _, op in store.calls] == ["k1.1", "kb.1", "kb.1"]
    assert [e.kind for e in store.events("r")] == ["open", "begin"]
    with pytest.raises(InvalidArgument), operation_ids("has space"):
        pass


def test_store_retry_checks_its_arguments() -> None:
    for bad in ({"attempts": 0}, {"attempts": 1.5}, {"first_delay": -1}, {"factor": 0.5}):
        with pytest.raises(InvalidArgument):
            StoreRetry(**bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        Controller(PIPELINE, store_retry=3)  # type: ignore[arg-type]
    retry = StoreRetry(5, 0.02, 2.0, 0.05)
    assert [retry.delay(n) for n in (1, 2, 3, 4)] == [0.02, 0.04, 0.05, 0.05]
