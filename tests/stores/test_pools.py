"""Shared pools: the configuration, the pure accounting, and the memory store's pools."""

from __future__ import annotations

import math

import pytest

from apportion import Agent, Controller, Pipeline
from apportion.errors import BudgetExceeded, InvalidTokenCount, PoolExhausted
from apportion.pools import Pool, PoolAccount, check_priority
from apportion.stores import MemoryStore, Store
from apportion.testing.pool_conformance import PoolConformance


class TestMemoryPools(PoolConformance):
    def make_store(self) -> Store:
        return MemoryStore()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "", "capacity": 10},
        {"name": "a{b}", "capacity": 10},
        {"name": "a", "capacity": 10, "window_seconds": 0},
        {"name": "a", "capacity": 10, "window_seconds": float("nan")},
        {"name": "a", "capacity": 10, "reserve": {"urgent": 1}},
        {"name": "a", "capacity": 10, "reserve": {"critical": 11}},
    ],
)
def test_bad_pools_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Pool(**kwargs)  # type: ignore[arg-type]


def test_bad_capacity_is_a_token_count_error() -> None:
    with pytest.raises(InvalidTokenCount):
        Pool("a", 0)
    with pytest.raises(InvalidTokenCount):
        Pool("a", 10, reserve={"critical": -1})


def test_endless_window_and_errors_keep_their_fields() -> None:
    account = PoolAccount(Pool("e", 100, math.inf))
    assert account.draw("x", 100, "peripheral", 1e9) == 0
    with pytest.raises(PoolExhausted) as info:
        account.draw("y", 1, "critical", 2e9)
    assert isinstance(info.value, BudgetExceeded)
    assert info.value.fields["pool"] == "e" and info.value.available == 0
    assert account.give_back("x", 40, 0, 3e9) == 40
    assert account.give_back("x", 40, 0, 3e9) == 0  # exactly once
    assert account.status(3e9).remaining == 40
    with pytest.raises(ValueError):
        check_priority("urgent")


def test_controller_draws_from_a_pool() -> None:
    pipeline = Pipeline([Agent("only", priority="critical")])
    store = MemoryStore()
    store.define_pool(Pool("tenant-a", 5_000, 60.0))
    clock = iter(float(i) for i in range(100))
    controller = Controller(pipeline, policy="uniform", store=store, clock=lambda: next(clock))
    with controller.request(2_000, pool="tenant-a") as req:
        grant = req.begin("only", input_tokens=500, output_tokens=300)
        req.finish(grant, input_tokens=500, output_tokens=250)
    assert store.get_pool("tenant-a", 50.0).remaining == 5_000 - 750
    with pytest.raises(PoolExhausted), controller.request(4_251, pool="tenant-a"):
        pass
    with pytest.raises(ValueError):
        controller.request(10, pool="tenant-a", pool_priority="urgent")
