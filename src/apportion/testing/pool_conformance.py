"""The shared-pool conformance suite: every store with pools passes these very tests.

Subclass :class:`PoolConformance` in a pytest module and implement ``make_store``, as for
:mod:`apportion.testing.store_conformance`. It checks the pool contract of
:mod:`apportion.stores.base`: the ceiling is drawn atomically at open, a refused open changes
nothing, unused tokens return exactly once at close (or when ``reap`` closes an overdue
request), priority classes hold their reserves, windows start full, and over random
sequences of opens and closes the pool's count equals an independent model's, also when the
callers' clocks disagree (a draw stamped with an earlier window is charged to the newest
one, and no window ever grants more than its capacity).
Needs ``pytest`` and ``hypothesis`` (the ``dev`` extra).
"""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apportion.errors import (
    DuplicateRequest,
    OperationConflict,
    PoolExhausted,
    RequestClosed,
    UnknownPool,
    UnknownRequest,
)
from apportion.pools import Pool
from apportion.stores.base import Store

RANKS = {"lead": 2, "helper": 1, "notes": 0}
LEASE = 30.0
MINUTE = 60.0


class PoolConformance:
    """Pool tests every store with shared pools must pass; implement :meth:`make_store`."""

    def make_store(self) -> Store:
        """A new, empty store."""
        raise NotImplementedError

    @pytest.fixture
    def store(self) -> Store:
        """A new store with a pool ``t`` of 1000 tokens a minute."""
        store = self.make_store()
        store.define_pool(Pool("t", 1000, MINUTE))
        return store

    def _spend(self, store: Store, request_id: str, tokens: int, now: float = 0.0) -> None:
        grant, _ = store.begin(request_id, "lead", tokens, 0, now, LEASE)
        store.finish(request_id, grant, tokens, 0, now)

    def test_define_and_read(self, store: Store) -> None:
        status = store.get_pool("t", 0.0)
        assert (status.pool.capacity, status.pool.window_seconds) == (1000, MINUTE)
        assert (status.drawn, status.remaining, status.open_draws) == (0, 1000, 0)
        assert status.returned == 0
        assert status.available_to("peripheral") == 1000
        with pytest.raises(UnknownPool) as info:
            store.get_pool("nope", 0.0)
        assert info.value.pool == "nope"

    def test_pool_names_lists_the_defined_pools_by_prefix(self, store: Store) -> None:
        store.define_pool(Pool("acme/b", 10))
        store.define_pool(Pool("acme/a", 10))
        store.define_pool(Pool("acme/a", 20))  # a resize names it once
        store.define_pool(Pool("globex/a", 10))
        assert store.pool_names("acme/") == ["acme/a", "acme/b"]
        assert store.pool_names() == ["acme/a", "acme/b", "globex/a", "t"]
        assert store.pool_names("nobody/") == []

    def test_open_draws_the_ceiling_and_close_returns_the_rest(self, store: Store) -> None:
        store.open("r1", RANKS, 300, 0.0, pool="t")
        assert store.get_pool("t", 1.0).remaining == 700
        assert store.get_pool("t", 1.0).open_draws == 1
        self._spend(store, "r1", 120, 1.0)
        state = store.close("r1", 2.0)
        assert (state.consumed, state.free) == (120, 180)
        status = store.get_pool("t", 2.0)
        assert (status.drawn, status.remaining, status.open_draws) == (120, 880, 0)
        assert (status.returned, status.to_dict()["returned"]) == (180, 180)

    def test_refused_open_changes_nothing(self, store: Store) -> None:
        store.open("r1", RANKS, 800, 0.0, pool="t")
        with pytest.raises(PoolExhausted) as info:
            store.open("r2", RANKS, 201, 0.0, pool="t")
        error = info.value
        assert (error.pool, error.requested, error.available, error.priority) == (
            "t",
            201,
            200,
            "standard",
        )
        with pytest.raises(UnknownRequest):
            store.get("r2")
        assert store.get_pool("t", 0.0).remaining == 200
        with pytest.raises(UnknownPool):
            store.open("r3", RANKS, 10, 0.0, pool="nope")
        with pytest.raises(UnknownRequest):
            store.get("r3")
        store.open("r2", RANKS, 200, 0.0, pool="t")  # exactly what is left
        assert store.get_pool("t", 0.0).remaining == 0

    def test_duplicate_open_gives_its_draw_back(self, store: Store) -> None:
        store.open("r1", RANKS, 300, 0.0, pool="t")
        with pytest.raises(DuplicateRequest):
            store.open("r1", RANKS, 300, 0.0, pool="t")
        assert store.get_pool("t", 0.0).remaining == 700
        store.close("r1", 1.0)
        assert store.get_pool("t", 1.0).remaining == 1000

    def test_returned_exactly_once(self, store: Store) -> None:
        store.open("r1", RANKS, 300, 0.0, pool="t")
        self._spend(store, "r1", 100)
        store.close("r1", 1.0)
        with pytest.raises(RequestClosed):
            store.close("r1", 1.0)
        store.reap(2.0)
        assert store.get_pool("t", 2.0).remaining == 900
        assert store.get_pool("t", 2.0).returned == 200

    def test_priority_classes_hold_their_reserves(self) -> None:
        store = self.make_store()
        store.define_pool(Pool("p", 1000, MINUTE, reserve={"critical": 300, "standard": 200}))
        status = store.get_pool("p", 0.0)
        assert [status.available_to(c) for c in ("critical", "standard", "peripheral")] == [
            1000,
            700,
            500,
        ]
        with pytest.raises(PoolExhausted) as info:
            store.open("low", RANKS, 501, 0.0, pool="p", pool_priority="peripheral")
        assert info.value.available == 500 and info.value.priority == "peripheral"
        store.open("low", RANKS, 500, 0.0, pool="p", pool_priority="peripheral")
        with pytest.raises(PoolExhausted):
            store.open("mid", RANKS, 201, 0.0, pool="p")
        store.open("mid", RANKS, 200, 0.0, pool="p")
        store.open("top", RANKS, 300, 0.0, pool="p", pool_priority="critical")
        assert store.get_pool("p", 0.0).remaining == 0

    def test_windows_start_full(self, store: Store) -> None:
        store.open("r1", RANKS, 600, 0.0, pool="t")
        self._spend(store, "r1", 100)
        store.open("r0", RANKS, 100, 0.0, pool="t")
        store.close("r0", 1.0)
        assert store.get_pool("t", 59.0).remaining == 400
        assert store.get_pool("t", 59.0).returned == 100
        status = store.get_pool("t", 60.0)  # the next minute
        assert (status.window, status.window_start, status.remaining) == (1, 60.0, 1000)
        assert status.returned == 0
        store.open("r2", RANKS, 1000, 61.0, pool="t")
        store.close("r1", 62.0)  # drew from the last window: nothing comes back now
        assert store.get_pool("t", 62.0).remaining == 0
        assert store.get_pool("t", 62.0).returned == 0

    def test_a_late_draw_is_charged_to_the_newest_window(self, store: Store) -> None:
        store.open("ahead", RANKS, 700, 60.5, pool="t")  # window 1 has begun
        with pytest.raises(PoolExhausted) as info:  # a clock behind: still window 1
            store.open("late", RANKS, 301, 59.9, pool="t")
        assert info.value.available == 300
        store.open("late", RANKS, 300, 59.9, pool="t")
        status = store.get_pool("t", 59.9)
        assert (status.window, status.window_start, status.drawn) == (1, 60.0, 1000)
        assert (status.remaining, status.open_draws) == (0, 2)
        with pytest.raises(PoolExhausted):
            store.open("later", RANKS, 1, 0.0, pool="t")  # far behind: the same
        store.open("next", RANKS, 1000, 120.0, pool="t")  # window 2 starts full once

    def test_give_back_goes_only_to_the_window_charged(self, store: Store) -> None:
        store.open("old", RANKS, 400, 59.0, pool="t")  # window 0
        store.open("new", RANKS, 300, 60.0, pool="t")  # window 1
        store.close("old", 59.5)  # a clock behind; window 0 has ended: nothing back
        assert store.get_pool("t", 60.0).remaining == 700
        store.open("late", RANKS, 200, 59.8, pool="t")  # charged to window 1
        self._spend(store, "late", 50, 59.8)
        store.close("late", 59.9)  # window 1 is still current: 150 back
        assert store.get_pool("t", 60.0).remaining == 650
        assert store.get_pool("t", 60.0).returned == 150
        store.close("new", 120.0)  # window 1 has ended by this clock: nothing back
        store.open("next", RANKS, 10, 119.0, pool="t")  # still window 1
        assert store.get_pool("t", 119.0).remaining == 640
        assert store.get_pool("t", 120.0).remaining == 1000

    def test_reap_returns_what_expired_requests_left(self, store: Store) -> None:
        store.open("r1", RANKS, 500, 0.0, pool="t", ttl=10.0)
        self._spend(store, "r1", 50)
        store.begin("r1", "helper", 100, 100, 1.0, LEASE)  # never settled
        assert store.reap(10.0) >= 1
        assert store.get("r1").status == "expired"
        assert store.get_pool("t", 10.0).remaining == 950

    def test_overflow_is_recorded(self, store: Store) -> None:
        store.open("r1", RANKS, 100, 0.0, pool="t")
        grant, _ = store.begin("r1", "lead", 50, 50, 0.0, LEASE)
        store.finish("r1", grant, 90, 60, 0.0)  # 150 used, 100 allowed
        store.close("r1", 1.0)
        status = store.get_pool("t", 1.0)
        assert (status.overflow, status.remaining) == (50, 900)

    def test_redefine_keeps_what_is_drawn(self, store: Store) -> None:
        store.open("r1", RANKS, 400, 0.0, pool="t")
        store.define_pool(Pool("t", 2000, MINUTE))
        assert store.get_pool("t", 0.0).remaining == 1600

    def test_a_repeated_pooled_open_and_close_draw_and_give_back_once(self, store: Store) -> None:
        store.open("r1", RANKS, 300, 0.0, pool="t", op_id="open-1")
        store.open("r1", RANKS, 300, 0.5, pool="t", op_id="open-1")
        status = store.get_pool("t", 1.0)
        assert (status.remaining, status.open_draws) == (700, 1)
        self._spend(store, "r1", 100, 1.0)
        store.close("r1", 2.0, op_id="close-1")
        store.close("r1", 2.5, op_id="close-1")
        assert store.get_pool("t", 3.0).remaining == 900
        store.open("r1", RANKS, 300, 3.0, pool="t", op_id="open-1")  # closed: no new draw
        assert store.get_pool("t", 3.0).remaining == 900
        with pytest.raises(OperationConflict):
            store.open("r1", RANKS, 400, 3.0, pool="t", op_id="close-1")
        assert store.get_pool("t", 3.0).remaining == 900

    def test_async_variants(self, store: Store) -> None:
        async def scenario() -> None:
            await store.adefine_pool(Pool("a", 500, MINUTE))
            await store.aopen("r1", RANKS, 200, 0.0, pool="a")
            assert (await store.aget_pool("a", 0.0)).remaining == 300
            await store.aclose("r1", 1.0)
            assert (await store.aget_pool("a", 1.0)).remaining == 500

        asyncio.run(scenario())

    def test_random_sequences_keep_the_count(self) -> None:
        factory = self.make_store
        ops = st.lists(
            st.tuples(st.sampled_from(["open", "close", "tick"]), st.integers(1, 400)),
            max_size=25,
        )

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(ops)
        def run(steps: list[tuple[str, int]]) -> None:
            store = factory()
            store.define_pool(Pool("m", 1000, 100.0))
            now, window, drawn = 0.0, 0, 0
            open_: dict[str, tuple[int, int, int]] = {}  # id -> ceiling, used, window
            for i, (op, n) in enumerate(steps):
                if op == "tick":
                    now += n / 4
                    if int(now // 100) != window:
                        window, drawn = int(now // 100), 0
                elif op == "open":
                    try:
                        store.open(f"r{i}", RANKS, n, now, pool="m")
                    except PoolExhausted as exc:
                        assert exc.available == 1000 - drawn < n
                        continue
                    drawn += n
                    used = n // 3
                    if used:
                        self._spend(store, f"r{i}", used, now)
                    open_[f"r{i}"] = (n, used, window)
                elif open_:
                    request_id = sorted(open_)[n % len(open_)]
                    ceiling, used, drawn_in = open_.pop(request_id)
                    store.close(request_id, now)
                    if drawn_in == window:
                        drawn -= ceiling - used
                status = store.get_pool("m", now)
                assert status.drawn == drawn and status.remaining == 1000 - drawn
                assert status.open_draws == sum(1 for *_, w in open_.values() if w == window)

        run()

    def test_skewed_clocks_never_overspend_a_window(self) -> None:
        factory = self.make_store
        ops = st.lists(
            st.tuples(
                st.sampled_from(["open", "open", "close", "tick"]),
                st.integers(1, 400),
                st.integers(-30, 30),  # this caller's clock, off by up to 30 s
            ),
            max_size=30,
        )

        @settings(
            max_examples=80,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(ops)
        def run(steps: list[tuple[str, int, int]]) -> None:
            store = factory()
            store.define_pool(Pool("m", 1000, 100.0))
            true_time, newest, drawn = 500.0, -1, 0
            open_: dict[str, tuple[int, int, int]] = {}  # id -> ceiling, used, window
            for i, (op, n, skew) in enumerate(steps):
                now = true_time + skew
                seen = max(newest, math.floor(now / 100))
                if op == "tick":
                    true_time += n / 4
                elif op == "open":
                    before = drawn if seen == newest else 0  # a new window starts at 0
                    try:
                        store.open(f"r{i}", RANKS, n, now, pool="m")
                    except PoolExhausted as exc:  # refused: changes nothing
                        assert exc.available == 1000 - before < n
                        continue
                    newest, drawn = seen, before + n
                    used = n // 3
                    if used:
                        self._spend(store, f"r{i}", used, now)
                    open_[f"r{i}"] = (n, used, newest)
                elif open_:
                    request_id = sorted(open_)[n % len(open_)]
                    ceiling, used, charged = open_.pop(request_id)
                    store.close(request_id, now)
                    if charged == newest == seen:
                        drawn -= ceiling - used
                status = store.get_pool("m", now)
                if seen == newest:
                    assert (status.window, status.drawn) == (newest, drawn)
                else:
                    assert (status.window, status.drawn) == (seen, 0)
                assert 0 <= status.drawn <= 1000 and status.remaining == 1000 - status.drawn

        run()
