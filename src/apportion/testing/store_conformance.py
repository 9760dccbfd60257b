"""The store conformance suite: every store passes these very tests.

Subclass :class:`StoreConformance` in a pytest module and implement ``make_store``::

    class TestMyStore(StoreConformance):
        def make_store(self) -> Store:
            return MyStore(...)

It checks the contract of :mod:`apportion.stores.base` and the ledger invariants, with
unit tests and a Hypothesis state machine that drives random interleavings of open, begin,
extend, finish, release, expiry and close (and refused operations) over several requests,
checking every invariant after every step against an independent model of the accounting,
and a second one over request trees (open, child, fan-out, begin, finish, close, expiry),
checking after every step that every ledger of the tree conserves its tokens and that no
child holds more than its parent gave it.
Needs ``pytest`` and ``hypothesis`` (the ``dev`` extra).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from apportion.errors import (
    ApportionError,
    BudgetExceeded,
    ChildBudgetExceeded,
    CostExceeded,
    DuplicateRequest,
    ForeignGrant,
    GrantExpired,
    GrantSettled,
    InvalidArgument,
    InvalidCeiling,
    InvalidPrice,
    InvalidTokenCount,
    OperationConflict,
    RequestClosed,
    TreeTooDeep,
    UnknownAgent,
    UnknownRequest,
    WrapUpTooLarge,
)
from apportion.ledger import Event, Grant
from apportion.stores.base import Store
from apportion.stores.feed import FeedEvent

RANKS = {"lead": 2, "helper": 1, "notes": 0, "format": 0}
"""A four-agent pipeline: one critical, one standard, two peripheral."""

LEASE = 30.0

BAD_COUNTS = (-1, float("nan"), 1.5, 10.0, True, 10**13, "12", None)


def snapshot(store: Store, request_id: str) -> tuple[dict[str, Any], int]:
    """State and event count of a request, to check that a refused operation changed nothing."""
    return store.get(request_id).to_dict(), len(store.events(request_id))


class FeedReader:
    """Reads a store's event feed page by page, keeping every request's events in order."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cursor: str | None = None
        self.by_request: dict[str, list[FeedEvent]] = {}

    def catch_up(self) -> None:
        """Read every event appended since the last read."""
        while True:
            page = self.store.feed(self.cursor, limit=500)
            for item in page.events:
                self.by_request.setdefault(item.request_id, []).append(item)
            if not page.events and page.cursor == self.cursor:
                return
            self.cursor = page.cursor

    def check(self, request_id: str) -> None:
        """The feed carried the request's events, in order, and its last state is current."""
        items = self.by_request.get(request_id, [])
        changes = [item.event for item in items if item.kind != "refused"]
        assert changes == self.store.events(request_id)
        state = self.store.get(request_id)
        last = items[-1]
        assert (last.status, last.free, last.consumed) == (state.status, state.free, state.consumed)
        if last.agent is None:
            assert (last.granted, last.used) == (state.reserved, state.consumed)
        else:
            assert last.granted == state.reserved_by[last.agent]
            assert last.used == state.consumed_by[last.agent]


def check_invariants(store: Store, request_id: str) -> None:
    """The ledger invariants that hold after every operation.

    Open children's draws count in ``reserved`` (and their cost in ``cost_reserved``),
    closed children's usage in ``consumed`` (``children_consumed``), beside the agents'.
    """
    state = store.get(request_id)
    drawn = sum(tokens for tokens, _ in state.children.values())
    drawn_cost = sum(cost for _, cost in state.children.values())
    assert state.free + state.reserved + state.consumed == state.ceiling
    assert 0 <= state.consumed <= state.ceiling
    assert state.reserved >= 0 and state.free >= 0
    grants = sum(g.context_tokens + g.output_tokens for g in state.grants.values())
    assert state.reserved == grants + drawn
    assert state.consumed == sum(state.consumed_by.values()) + state.children_consumed
    assert grants == sum(state.reserved_by.values())
    if state.status != "open":
        assert state.reserved == 0 and not state.grants and not state.children
    assert state.cost_reserved == sum(state.grant_cost(g) for g in state.grants) + drawn_cost
    assert state.cost_consumed == sum(state.cost_by.values()) + state.children_cost_consumed


class StoreConformance:
    """Tests every store must pass; subclasses implement :meth:`make_store`.

    Attributes:
        interleavings: the random interleavings the state machines try (flat requests,
            then trees): a store that shares its logic with one already run at full
            count (the same scripts on a Redis Cluster) may try fewer.
    """

    interleavings: tuple[int, int] = (200, 100)

    def make_store(self) -> Store:
        """A new, empty store."""
        raise NotImplementedError

    @pytest.fixture
    def store(self) -> Store:
        """A new store for one test."""
        return self.make_store()

    # ------------------------------------------------------------ cost

    def test_cost_accounted_per_agent(self, store: Store) -> None:
        store.open("r1", RANKS, 10_000, 0.0)  # no cost ceiling: accounted, never refused
        grant, state = store.begin(
            "r1", "lead", 1000, 500, 0.0, LEASE, model="large", prices=(3000, 15000)
        )
        assert grant.model == "large"
        assert state.cost_reserved == 1000 * 3000 + 500 * 15000
        state = store.finish("r1", grant, 900, 200, 1.0)
        assert state.cost_reserved == 0
        assert state.cost_consumed == 900 * 3000 + 200 * 15000
        assert state.cost_by["lead"] == 900 * 3000 + 200 * 15000
        plain, _ = store.begin("r1", "notes", 10, 10, 1.0, LEASE)  # unpriced: costs nothing
        assert plain.model is None
        state = store.finish("r1", plain, 10, 10, 1.0)
        assert state.cost_by["notes"] == 0
        assert state.to_dict()["agents"]["lead"]["cost_usd"] == 0.0057
        check_invariants(store, "r1")

    def test_cost_ceiling_refuses_full_size(self, store: Store) -> None:
        store.open("r1", RANKS, 100_000, 0.0, ceiling_usd=10_000_000)  # 0.01 USD
        grant, _ = store.begin("r1", "lead", 1000, 200, 0.0, LEASE, prices=(3000, 15000))
        # reserved 6,000,000 nano-USD: 4,000,000 left
        before = snapshot(store, "r1")
        with pytest.raises(CostExceeded) as info:
            store.begin("r1", "helper", 1000, 100, 0.0, LEASE, model="large", prices=(3000, 15000))
        assert isinstance(info.value, BudgetExceeded)
        assert info.value.agent == "helper"
        assert info.value.requested_usd == pytest.approx(0.0045)
        assert info.value.available_usd == pytest.approx(0.004)
        assert info.value.model == "large"
        assert snapshot(store, "r1") == before
        with pytest.raises(InvalidPrice):  # a cost ceiling needs prices
            store.begin("r1", "helper", 10, 10, 0.0, LEASE)
        with pytest.raises(InvalidPrice):
            store.begin("r1", "helper", 10, 10, 0.0, LEASE, prices=(-1, 5))
        assert snapshot(store, "r1") == before
        with pytest.raises(CostExceeded) as info:  # an extension is judged the same way
            store.extend("r1", grant, 300, 0, 0.0, LEASE)
        assert info.value.requested_usd == pytest.approx(0.0045)
        assert snapshot(store, "r1") == before
        cheap, _ = store.begin("r1", "helper", 1000, 100, 0.0, LEASE, prices=(150, 600))
        state = store.finish("r1", grant, 1000, 100, 1.0)  # real cost: 4,500,000
        assert state.cost_consumed == 4_500_000
        state = store.release("r1", cheap, 1.0)
        assert state.cost_reserved == 0
        assert state.to_dict()["ceiling_usd"] == 0.01
        check_invariants(store, "r1")

    def test_bad_cost_ceiling(self, store: Store) -> None:
        bad: Any
        for bad in (0, -5, 1.5, True, 10**16):
            with pytest.raises(InvalidPrice):
                store.open("r1", RANKS, 1000, 0.0, ceiling_usd=bad)
        with pytest.raises(UnknownRequest):
            store.get("r1")

    # ------------------------------------------------------------ basic life

    def test_open_get_close(self, store: Store) -> None:
        state = store.open("r1", RANKS, 1000, 0.0, allocation={"lead": 600}, reserve={"lead": 500})
        assert (state.ceiling, state.free, state.reserved, state.consumed) == (1000, 1000, 0, 0)
        assert store.get("r1").allocation["lead"] == 600
        assert store.get("r1").reserve == {"lead": 500}
        final = store.close("r1", 1.0, outcome=0.75)
        assert final.status == "closed" and final.outcome == 0.75
        assert store.get("r1").status == "closed"
        kinds = [e.kind for e in store.events("r1")]
        assert kinds == ["open", "close"]

    def test_duplicate_and_unknown(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        with pytest.raises(DuplicateRequest):
            store.open("r1", RANKS, 1000, 0.0)
        with pytest.raises(UnknownRequest):
            store.get("nope")
        with pytest.raises(UnknownRequest):
            store.begin("nope", "lead", 1, 1, 0.0, LEASE)

    @pytest.mark.parametrize("ceiling", [0, -5, 1.5, float("nan"), True, 10**13])
    def test_bad_ceiling(self, store: Store, ceiling: Any) -> None:
        with pytest.raises(InvalidCeiling):
            store.open("r1", RANKS, ceiling, 0.0)
        with pytest.raises(UnknownRequest):
            store.get("r1")

    def test_reservations_above_ceiling_refused(self, store: Store) -> None:
        with pytest.raises(BudgetExceeded):
            store.open("r1", RANKS, 100, 0.0, reserve={"lead": 80, "helper": 30})
        with pytest.raises(UnknownAgent):
            store.open("r1", RANKS, 100, 0.0, allocation={"ghost": 5})

    def test_begin_finish_reclaims(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        grant, state = store.begin("r1", "lead", 300, 200, 0.0, LEASE)
        assert isinstance(grant, Grant)
        assert (grant.context_tokens, grant.output_tokens, grant.agent) == (300, 200, "lead")
        assert (state.reserved, state.free) == (500, 500)
        state = store.finish("r1", grant, 300, 50, 1.0, truncated=False, allocation={"notes": 7})
        assert (state.reserved, state.consumed, state.free) == (0, 350, 650)
        assert state.allocation["notes"] == 7
        assert [e.kind for e in store.events("r1")] == ["open", "begin", "finish"]
        check_invariants(store, "r1")

    def test_extend_grows_grant(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        grant, _ = store.begin("r1", "lead", 100, 100, 0.0, LEASE)
        grown, state = store.extend("r1", grant, 50, 20, 5.0, LEASE)
        assert grown.grant_id == grant.grant_id
        assert (grown.context_tokens, grown.output_tokens) == (120, 150)
        assert grown.lease_expires_at == 5.0 + LEASE
        assert state.reserved == 270
        with pytest.raises(BudgetExceeded) as info:
            store.extend("r1", grown, 10_000, 0, 5.0, LEASE)
        assert info.value.requested == 10_000 and info.value.available == 730

    def test_wrap_up_reserve_rides_with_the_grant(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        grant, state = store.begin("r1", "lead", 100, 200, 0.0, LEASE, wrap_up_tokens=50)
        assert (grant.output_tokens, grant.wrap_up_tokens, grant.working_tokens) == (200, 50, 150)
        assert state.reserved == 300  # the reserve is inside the grant: nothing beside it
        grown, state = store.extend("r1", grant, 40, 10, 1.0, LEASE)
        assert (grown.output_tokens, grown.wrap_up_tokens, grown.working_tokens) == (240, 50, 190)
        assert store.extend("r1", grown, 0, 0, 2.0, LEASE)[0].wrap_up_tokens == 50  # renewed
        state = store.finish("r1", grown, 110, 240, 3.0, truncated=False)
        assert (state.consumed, state.reserved, state.overuse_by["lead"]) == (350, 0, 0)
        plain, _ = store.begin("r1", "helper", 10, 10, 3.0, LEASE)
        assert plain.wrap_up_tokens == 0 and plain.working_tokens == 10
        check_invariants(store, "r1")

    @pytest.mark.parametrize("bad", (-1, 1.5, True, "3", None))
    def test_wrap_up_reserve_larger_than_the_grant_is_refused(self, store: Store, bad: Any) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        before = snapshot(store, "r1")
        with pytest.raises(WrapUpTooLarge) as info:
            store.begin("r1", "lead", 100, 40, 0.0, LEASE, wrap_up_tokens=41)
        assert (info.value.agent, info.value.wrap_up_tokens, info.value.output_tokens) == (
            "lead",
            41,
            40,
        )
        assert snapshot(store, "r1") == before
        with pytest.raises(InvalidTokenCount) as bad_info:
            store.begin("r1", "lead", 100, 40, 0.0, LEASE, wrap_up_tokens=bad)
        assert bad_info.value.field == "wrap_up_tokens"
        assert snapshot(store, "r1") == before
        store.close("r1", 1.0)
        with pytest.raises(WrapUpTooLarge):  # bad input is refused before the request's state
            store.begin("r1", "lead", 100, 40, 1.0, LEASE, wrap_up_tokens=41)

    def test_hard_cap_and_error_fields(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        store.begin("r1", "helper", 500, 0, 0.0, LEASE)
        before = snapshot(store, "r1")
        with pytest.raises(BudgetExceeded) as info:
            store.begin("r1", "notes", 400, 200, 0.0, LEASE)
        assert (info.value.agent, info.value.requested, info.value.available) == ("notes", 600, 500)
        assert snapshot(store, "r1") == before

    def test_critical_reservation_cannot_be_drained(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0, reserve={"lead": 600})
        for agent in ("notes", "helper"):
            before = snapshot(store, "r1")
            with pytest.raises(BudgetExceeded) as info:
                store.begin("r1", agent, 401, 0, 0.0, LEASE)
            assert info.value.available == 400
            assert snapshot(store, "r1") == before
        grant, _ = store.begin("r1", "notes", 300, 100, 0.0, LEASE)
        assert store.get("r1").available_for("lead") == 600
        store.release("r1", grant, 0.0)
        _, state = store.begin("r1", "lead", 900, 100, 0.0, LEASE)  # critical draws first
        assert state.free == 0 and not state.reserve

    def test_higher_priority_draws_on_lower_reservation(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0, reserve={"notes": 400})
        assert store.get("r1").available_for("helper") == 1000
        assert store.get("r1").available_for("format") == 600

    def test_settle_exactly_once(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        grant, _ = store.begin("r1", "lead", 100, 100, 0.0, LEASE)
        store.finish("r1", grant, 50, 50, 0.0)
        before = snapshot(store, "r1")
        for settle in (
            lambda: store.finish("r1", grant, 50, 50, 0.0),
            lambda: store.release("r1", grant, 0.0),
            lambda: store.extend("r1", grant, 10, 0, 0.0, LEASE),
        ):
            with pytest.raises(GrantSettled) as info:
                settle()
            assert info.value.settled_by == "finish" and info.value.grant_id == grant.grant_id
            assert snapshot(store, "r1") == before

    def test_foreign_grant(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        store.open("r2", RANKS, 1000, 0.0)
        grant, _ = store.begin("r1", "lead", 10, 10, 0.0, LEASE)
        before = snapshot(store, "r2")
        with pytest.raises(ForeignGrant) as info:
            store.finish("r2", grant, 1, 1, 0.0)
        assert info.value.grant_request_id == "r1" and info.value.request_id == "r2"
        forged = grant._replace(request_id="r2", grant_id=99)
        with pytest.raises(ForeignGrant):
            store.finish("r2", forged, 1, 1, 0.0)
        assert snapshot(store, "r2") == before

    @pytest.mark.parametrize("bad", BAD_COUNTS)
    def test_bad_counts_change_nothing(self, store: Store, bad: Any) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        grant, _ = store.begin("r1", "lead", 10, 10, 0.0, LEASE)
        before = snapshot(store, "r1")
        for op in (
            lambda: store.begin("r1", "helper", bad, 10, 0.0, LEASE),
            lambda: store.begin("r1", "helper", 10, bad, 0.0, LEASE),
            lambda: store.extend("r1", grant, bad, 0, 0.0, LEASE),
            lambda: store.finish("r1", grant, bad, 1, 0.0),
            lambda: store.finish("r1", grant, 1, bad, 0.0),
        ):
            with pytest.raises(InvalidTokenCount) as info:
                op()
            assert info.value.value is bad or (
                isinstance(bad, float) and math.isnan(bad) and info.value.value != info.value.value
            )
            assert snapshot(store, "r1") == before

    def test_unknown_agent(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        before = snapshot(store, "r1")
        with pytest.raises(UnknownAgent) as info:
            store.begin("r1", "ghost", 1, 1, 0.0, LEASE)
        assert info.value.agent == "ghost" and set(info.value.known) == set(RANKS)
        assert snapshot(store, "r1") == before

    def test_overuse_recorded_and_capped(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        grant, _ = store.begin("r1", "lead", 100, 100, 0.0, LEASE)
        state = store.finish("r1", grant, 150, 150, 0.0)
        assert state.overuse_by["lead"] == 100 and state.consumed == 300 and state.overflow == 0
        big, _ = store.begin("r1", "notes", 600, 100, 0.0, LEASE)
        state = store.finish("r1", big, 900, 200, 0.0)
        assert state.consumed == 1000 and state.overflow == 400 and state.free == 0
        assert state.overuse_by["notes"] == 400
        with pytest.raises(BudgetExceeded):
            store.begin("r1", "helper", 1, 0, 0.0, LEASE)
        finish = store.events("r1")[-1]
        assert (finish.kind, finish.overuse, finish.context_tokens) == ("finish", 400, 900)

    def test_lease_expiry_reclaims(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        grant, _ = store.begin("r1", "lead", 300, 300, 0.0, LEASE)
        other, _ = store.begin("r1", "helper", 100, 100, 20.0, LEASE)
        assert store.reap(LEASE) == 1  # the first lease ends at 30.0
        state = store.get("r1")
        assert state.reserved == 200 and grant.grant_id not in state.grants
        before = snapshot(store, "r1")
        with pytest.raises(GrantExpired):
            store.extend("r1", grant, 10, 0, LEASE + 1, LEASE)
        assert snapshot(store, "r1") == before
        # any later operation expires ended leases first
        store.begin("r1", "notes", 10, 10, 100.0, LEASE)
        assert other.grant_id not in store.get("r1").grants
        assert [e.kind for e in store.events("r1")].count("expire") == 2

    def test_late_finish_is_recorded(self, store: Store) -> None:
        """A call that outlived its lease still settles: its usage is over-use, never lost."""
        store.open("r1", RANKS, 1000, 0.0)
        grant, _ = store.begin("r1", "lead", 300, 300, 0.0, LEASE)
        store.begin("r1", "helper", 100, 100, 0.0, 10 * LEASE)
        store.reap(LEASE)
        state = store.finish("r1", grant, 500, 200, LEASE + 1, truncated=True)
        assert state.consumed == 700 and state.overflow == 0 and state.free == 100
        assert state.overuse_by["lead"] == 700 and state.consumed_by["lead"] == 700
        assert state.truncated_calls["lead"] == 1
        late = store.events("r1")[-1]
        assert (late.kind, late.note, late.overuse, late.grant_id) == (
            "finish",
            "late",
            700,
            grant.grant_id,
        )
        check_invariants(store, "r1")
        before = snapshot(store, "r1")
        with pytest.raises(GrantSettled):
            store.finish("r1", grant, 1, 1, LEASE + 2)
        assert snapshot(store, "r1") == before
        # beyond what the pool holds, the rest is overflow: the ceiling still holds
        second, _ = store.begin("r1", "notes", 50, 50, LEASE + 2, LEASE)
        store.reap(3 * LEASE)
        state = store.finish("r1", second, 400, 0, 3 * LEASE)  # 100 free, 200 still granted
        assert state.consumed == 800 and state.overflow == 300 and state.free == 0
        check_invariants(store, "r1")

    def test_renew_keeps_a_long_call(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        grant, _ = store.begin("r1", "lead", 100, 100, 0.0, LEASE)
        renewed, _ = store.extend("r1", grant, 0, 0, LEASE - 1, LEASE)
        assert renewed.lease_expires_at == 2 * LEASE - 1 and renewed.total == 200
        assert store.reap(LEASE + 1) == 0
        state = store.finish("r1", grant, 100, 100, 2 * LEASE - 2)
        assert state.consumed == 200 and state.overuse_by["lead"] == 0

    def test_input_cuts_counted(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        store.begin("r1", "lead", 300, 100, 0.0, LEASE, asked=300)
        store.begin("r1", "lead", 200, 100, 0.0, LEASE, asked=450)
        store.begin("r1", "notes", 10, 10, 0.0, LEASE)
        state = store.get("r1")
        assert dict(state.input_cut_calls) == {"lead": 1, "helper": 0, "notes": 0, "format": 0}
        begins = [e.asked for e in store.events("r1") if e.kind == "begin"]
        assert begins == [300, 450, 10]
        before = snapshot(store, "r1")
        with pytest.raises(InvalidTokenCount):
            store.begin("r1", "lead", 1, 1, 0.0, LEASE, asked=-1)
        assert snapshot(store, "r1") == before

    def test_reap_names_expired_requests(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0, ttl=60.0)
        store.open("r2", RANKS, 1000, 0.0, ttl=600.0)
        store.begin("r2", "lead", 10, 10, 0.0, LEASE)
        reaped = store.reap_expired(60.0)
        assert reaped.expired == ("r1",) and reaped.settled == 2
        assert store.reap_expired(61.0).expired == ()

    def test_request_ttl(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0, ttl=60.0)
        store.begin("r1", "lead", 10, 10, 0.0, 1000.0)
        assert store.reap(59.0) == 0
        assert store.reap(60.0) == 1
        state = store.get("r1")
        assert state.status == "expired" and state.reserved == 0

    def test_policy_state_compare_and_set(self, store: Store) -> None:
        assert store.get_state("learned") is None
        assert store.put_state("learned", b"one", 1) is None  # absent is version 0
        assert store.put_state("learned", b"one", 0) == 1
        assert store.put_state("learned", b"stale", 0) is None  # another writer won
        assert store.get_state("learned") == (1, b"one")
        assert store.put_state("learned", b"\x00two\xff", 1) == 2
        assert store.get_state("learned") == (2, b"\x00two\xff")
        assert store.get_state("other") is None

    def test_close_releases_and_refuses_more(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        grant, _ = store.begin("r1", "lead", 10, 10, 0.0, LEASE)
        state = store.close("r1", 1.0, status="failed")
        assert state.status == "failed" and state.reserved == 0 and state.free == 1000
        before = snapshot(store, "r1")
        for op in (
            lambda: store.begin("r1", "lead", 1, 1, 2.0, LEASE),
            lambda: store.finish("r1", grant, 1, 1, 2.0),
            lambda: store.close("r1", 2.0),
        ):
            with pytest.raises(RequestClosed):
                op()
        assert snapshot(store, "r1") == before

    def test_async_variants(self, store: Store) -> None:
        import asyncio

        async def scenario() -> None:
            await store.aopen("r1", RANKS, 1000, 0.0)
            grant, _ = await store.abegin("r1", "lead", 100, 100, 0.0, LEASE)
            grant, _ = await store.aextend("r1", grant, 10, 0, 0.0, LEASE)
            await store.afinish("r1", grant, 100, 110, 0.0)
            other, _ = await store.abegin("r1", "notes", 1, 1, 0.0, LEASE)
            await store.arelease("r1", other, 0.0)
            state = await store.aclose("r1", 1.0)
            assert state.consumed == 210 and (await store.aget("r1")).status == "closed"

        asyncio.run(scenario())

    # ------------------------------------------------------------ features

    FEATURES: dict[str, Any] = {  # noqa: RUF012 - read only
        "messages": 12,
        "doc_tokens": 3400.5,
        "tier": "gold/eu",
        "urgent": True,
        "note": None,
        "naïve \u2603": -(2**63 - 1),
    }

    def test_features_are_kept_with_the_request(self, store: Store) -> None:
        state = store.open("r1", RANKS, 1000, 0.0, features=self.FEATURES)
        assert state.ceiling == 1000
        assert store.features("r1") == self.FEATURES
        opened = store.events("r1")[0]
        assert opened.kind == "open" and json.loads(opened.note) == self.FEATURES
        store.open("r2", RANKS, 1000, 0.0)
        assert store.features("r2") == {}
        assert store.events("r2")[0].note == ""
        state, features = store.get_with_features("r1")
        assert (state.to_dict(), features) == (store.get("r1").to_dict(), self.FEATURES)
        store.close("r1", 1.0)
        assert store.features("r1") == self.FEATURES  # a closed request still held
        assert store.get_with_features("r1")[1] == self.FEATURES
        for read in (store.features, store.get_with_features):
            with pytest.raises(UnknownRequest):
                read("nope")

    @pytest.mark.parametrize(
        "bad",
        [
            [("messages", 1)],
            {1: 2},
            {"x": float("inf")},
            {"x": float("nan")},
            {"x": [1, 2]},
            {"x": {"y": 1}},
            {"x": 2**64},
            {"x": "\ud800"},
            {"x": "y" * 70_000},
        ],
    )
    def test_features_a_store_cannot_keep_are_refused(self, store: Store, bad: Any) -> None:
        with pytest.raises(InvalidArgument):
            store.open("r1", RANKS, 1000, 0.0, features=bad)
        with pytest.raises(UnknownRequest):
            store.get("r1")
        store.open("r1", RANKS, 1000, 0.0)
        before = snapshot(store, "r1")
        with pytest.raises(InvalidArgument):
            store.open_children(
                "r1", ["r1::a"], RANKS, 0.0, priorities=["standard"], ceiling=10, features=bad
            )
        assert snapshot(store, "r1") == before
        with pytest.raises(UnknownRequest):
            store.get("r1::a")

    def test_children_keep_their_features(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0, features={"messages": 3})
        self._kids(store, "r1", ["r1::a", "r1::b"], share=0.5, features={"topic": "law"})
        (plain,) = self._kids(store, "r1", ["r1::c"], ceiling=10)
        assert store.features("r1::a") == store.features("r1::b") == {"topic": "law"}
        assert store.features(plain.request_id) == {}
        assert store.features("r1") == {"messages": 3}

    def test_async_features(self, store: Store) -> None:
        import asyncio

        async def scenario() -> None:
            await store.aopen("r1", RANKS, 1000, 0.0, features={"messages": 4})
            assert await store.afeatures("r1") == {"messages": 4}
            await store.aopen_children(
                "r1",
                ["r1::a"],
                RANKS,
                0.0,
                priorities=["standard"],
                ceiling=5,
                features={"messages": 5},
            )
            assert await store.afeatures("r1::a") == {"messages": 5}
            state, features = await store.aget_with_features("r1::a")
            assert (state.request_id, features) == ("r1::a", {"messages": 5})

        asyncio.run(scenario())

    # ---------------------------------------------------------- child budgets

    def _kids(self, store: Store, parent: str, ids: list[str], now: float = 0.0, **kw: Any) -> Any:
        kw.setdefault("priorities", ["standard"] * len(ids))
        parent_state, kids = store.open_children(parent, ids, RANKS, now, **kw)
        assert parent_state.request_id == parent
        assert set(ids) <= set(parent_state.children)
        return kids

    def test_child_draws_from_its_parent_and_folds_back_once(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        (kid,) = self._kids(store, "r1", ["r1::a"], ceiling=400, ttl=100.0)
        assert (kid.ceiling, kid.free, kid.parent_id, kid.depth) == (400, 400, "r1", 1)
        assert kid.expires_at == 100.0
        parent = store.get("r1")
        assert (parent.free, parent.reserved, dict(parent.children)) == (
            600,
            400,
            {"r1::a": (400, 0)},
        )
        check_invariants(store, "r1")
        grant, _ = store.begin("r1::a", "helper", 100, 100, 0.0, LEASE)
        store.finish("r1::a", grant, 100, 50, 1.0)
        closed = store.close("r1::a", 2.0)
        assert closed.status == "closed" and closed.consumed == 150
        parent = store.get("r1")
        assert (parent.free, parent.reserved, parent.consumed) == (850, 0, 150)
        assert parent.children_consumed == 150 and not parent.children
        check_invariants(store, "r1")
        check_invariants(store, "r1::a")
        kinds = [(e.kind, e.note) for e in store.events("r1")]
        assert kinds == [("open", ""), ("child", "r1::a"), ("child_close", "r1::a")]
        back = store.events("r1")[-1]
        assert (back.context_tokens, back.output_tokens) == (150, 400)
        with pytest.raises(RequestClosed):
            store.close("r1::a", 3.0)
        assert store.get("r1").free == 850  # folded back exactly once

    def test_child_refused_changes_nothing(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        store.begin("r1", "lead", 300, 0, 0.0, LEASE)
        before = snapshot(store, "r1")
        with pytest.raises(ChildBudgetExceeded) as info:
            self._kids(store, "r1", ["r1::a"], ceiling=701)
        error = info.value
        assert isinstance(error, BudgetExceeded)
        assert (error.parent_id, error.child, error.requested, error.available) == (
            "r1",
            "r1::a",
            701,
            700,
        )
        with pytest.raises(ChildBudgetExceeded) as info:
            self._kids(store, "r1", ["r1::a", "r1::b"], ceiling=351)
        assert (info.value.requested, info.value.available) == (702, 700)
        with pytest.raises(UnknownRequest):
            store.get("r1::a")
        with pytest.raises(UnknownRequest):
            self._kids(store, "nope", ["nope::a"], ceiling=1)
        self._kids(store, "r1", ["r1::a"], ceiling=1, max_depth=1)
        with pytest.raises(TreeTooDeep) as deep:
            self._kids(store, "r1::a", ["r1::a::b"], ceiling=1, max_depth=1)
        assert (deep.value.depth, deep.value.max_depth) == (2, 1)
        store.close("r1::a", 0.0)
        before = snapshot(store, "r1")
        bad: Any
        for bad in (
            {"ceiling": None},
            {"share": 0.0},
            {"share": 1.01},
            {"share": True},
            {"ceiling": 1, "priorities": ["urgent"]},
            {"ceiling": 1, "priorities": []},
            {"ceiling": 1, "max_depth": 0},
            {"ceiling": 1, "ttl": -1.0},
        ):
            with pytest.raises(InvalidArgument):
                self._kids(store, "r1", ["r1::b"], **bad)
        with pytest.raises(InvalidCeiling):
            self._kids(store, "r1", ["r1::b"], ceiling=0)
        for ids in ([], ["r1::b", "r1::b"], ["r1"]):
            with pytest.raises(InvalidArgument):
                self._kids(store, "r1", ids, ceiling=1)
        with pytest.raises(UnknownAgent):
            self._kids(store, "r1", ["r1::b"], ceiling=1, allocation={"ghost": 1})
        assert snapshot(store, "r1") == before
        self._kids(store, "r1", ["r1::c"], ceiling=10)
        with pytest.raises(DuplicateRequest):
            self._kids(store, "r1", ["r1::c"], ceiling=10)

    def test_share_and_fan_out_split_by_priority(self, store: Store) -> None:
        store.open("r1", RANKS, 7000, 0.0, reserve={"lead": 1000, "helper": 500})
        spare = {}
        for rank, name in ((2, "critical"), (1, "standard"), (0, "peripheral")):
            (kid,) = self._kids(store, "r1", [f"r1::{name}"], share=1.0, priorities=[name])
            spare[rank] = kid.ceiling
            store.close(kid.request_id, 0.0)
        assert spare == {2: 7000, 1: 6000, 0: 5500}
        kids = self._kids(
            store,
            "r1",
            ["r1::a", "r1::b", "r1::c"],
            share=0.5,
            priorities=["critical", "standard", "peripheral"],
        )
        assert [k.ceiling for k in kids] == [1571, 785, 392]  # 2750 split 4:2:1, rounded down
        assert store.get("r1").free == 7000 - 1571 - 785 - 392
        capped = self._kids(store, "r1", ["r1::d", "r1::e"], share=1.0, ceiling=100)
        assert [k.ceiling for k in capped] == [100, 100]
        check_invariants(store, "r1")
        with pytest.raises(ChildBudgetExceeded):
            self._kids(store, "r1", [f"r1::x{i}" for i in range(5000)], share=1.0)
        state = store.get("r1")
        with pytest.raises(ChildBudgetExceeded):
            self._kids(store, "r1", ["r1::f"], share=1 / (state.free + 1))
        check_invariants(store, "r1")

    def test_a_reserve_that_does_not_fit_a_child_is_dropped(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        small, big = self._kids(
            store,
            "r1",
            ["r1::s", "r1::b"],
            share=0.3,
            reserve={"lead": 200},
            priorities=["peripheral", "critical"],
        )
        assert (small.ceiling, big.ceiling) == (60, 240)
        assert dict(small.reserve) == {} and dict(big.reserve) == {"lead": 200}

    def test_closing_a_parent_closes_its_tree_depth_first(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        self._kids(store, "r1", ["r1::a"], ceiling=500)
        self._kids(store, "r1::a", ["r1::a::b"], ceiling=200)
        grant, _ = store.begin("r1::a::b", "lead", 50, 50, 0.0, LEASE)
        used, _ = store.begin("r1::a", "lead", 10, 10, 0.0, LEASE)
        store.finish("r1::a", used, 10, 10, 0.0)
        store.finish("r1::a::b", grant, 30, 30, 0.0)
        store.begin("r1::a::b", "lead", 5, 5, 0.0, LEASE)  # left open: released at close
        final = store.close("r1", 1.0, status="failed")
        assert final.status == "failed" and final.consumed == 80 and final.free == 920
        for request_id in ("r1", "r1::a", "r1::a::b"):
            assert store.get(request_id).status == "failed"
            check_invariants(store, request_id)
        assert store.get("r1::a").consumed == 80
        notes = [e.note for e in store.events("r1::a") if e.kind == "child_close"]
        assert notes == ["r1::a::b"]
        with pytest.raises(RequestClosed):
            store.begin("r1::a::b", "lead", 1, 1, 2.0, LEASE)
        with pytest.raises(RequestClosed):
            self._kids(store, "r1", ["r1::z"], ceiling=1)

    def test_a_child_overusing_is_charged_to_its_parent(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        self._kids(store, "r1", ["r1::a"], ceiling=100)
        grant, _ = store.begin("r1::a", "lead", 50, 50, 0.0, LEASE)
        kid = store.finish("r1::a", grant, 100, 150, 0.0)
        assert kid.consumed == 100 and kid.overflow == 150
        store.begin("r1", "lead", 800, 0, 0.0, LEASE)
        store.close("r1::a", 0.0)
        parent = store.get("r1")  # 250 used: 100 drawn + 100 free, 50 beyond: overflow
        assert (parent.consumed, parent.free, parent.overflow) == (200, 0, 50)
        back = store.events("r1")[-1]
        assert (back.kind, back.overuse, back.context_tokens) == ("child_close", 150, 250)
        check_invariants(store, "r1")

    def test_expired_children_are_reaped_and_return_their_draw(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0, ttl=1000.0)
        self._kids(store, "r1", ["r1::a"], ceiling=300, ttl=50.0)
        self._kids(store, "r1::a", ["r1::a::b"], ceiling=100, ttl=500.0)
        grant, _ = store.begin("r1::a::b", "lead", 20, 20, 0.0, 10_000.0)
        store.finish("r1::a::b", grant, 20, 20, 1.0)
        reaped = store.reap_expired(50.0)
        assert set(reaped.expired) == {"r1::a", "r1::a::b"}
        assert store.get("r1::a::b").status == "expired"
        parent = store.get("r1")
        assert (parent.status, parent.free, parent.consumed) == ("open", 960, 40)
        check_invariants(store, "r1")
        self._kids(store, "r1", ["r1::c"], ceiling=100, ttl=10_000.0)
        assert set(store.reap_expired(1000.0).expired) == {"r1::c", "r1"}
        assert store.get("r1::c").status == "expired" and store.get("r1").status == "expired"
        check_invariants(store, "r1")

    def test_children_draw_cost_when_the_parent_has_a_cost_ceiling(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0, ceiling_usd=10_000)
        grant, _ = store.begin("r1", "lead", 100, 0, 0.0, LEASE, prices=(20, 20))
        a, b = self._kids(store, "r1", ["r1::a", "r1::b"], share=1.0)  # 900 spare, 8000 left
        assert (a.ceiling, b.ceiling) == (450, 450)
        assert (a.cost_ceiling, b.cost_ceiling) == (4000, 4000)
        assert store.get("r1").cost_reserved == 2000 + 8000
        spent, _ = store.begin("r1::a", "lead", 100, 50, 0.0, LEASE, prices=(20, 20))
        store.finish("r1::a", spent, 10, 10, 0.0)
        store.close("r1::a", 0.0)
        parent = store.get("r1")
        assert parent.cost_consumed == 400 and parent.children_cost_consumed == 400
        assert parent.cost_reserved == 2000 + 4000
        check_invariants(store, "r1")
        (plain,) = self._kids(store, "r1", ["r1::p"], ceiling=10)
        assert plain.cost_ceiling == 83  # 10/430 of the 3600 nano-USD left
        store.release("r1", grant, 0.0)
        store.close("r1", 1.0)
        check_invariants(store, "r1")

    def test_async_open_children(self, store: Store) -> None:
        import asyncio

        async def scenario() -> None:
            await store.aopen("r1", RANKS, 1000, 0.0)
            _, kids = await store.aopen_children(
                "r1", ["r1::a", "r1::b"], RANKS, 0.0, priorities=["standard"] * 2, share=1.0
            )
            assert [k.ceiling for k in kids] == [500, 500]
            await store.aclose("r1", 1.0)
            assert (await store.aget("r1::b")).status == "closed"

        asyncio.run(scenario())

    # ---------------------------------------------------------- event feed

    def test_feed_carries_every_change_in_order(self, store: Store) -> None:
        start = store.feed_cursor()
        assert store.feed(start).events == ()
        store.open("t/r1", RANKS, 1000, 0.0)
        store.open("u/r2", RANKS, 500, 0.0)
        grant, _ = store.begin("t/r1", "lead", 100, 50, 1.0, LEASE)
        grant, _ = store.extend("t/r1", grant, 20, 0, 2.0, LEASE)
        store.finish("t/r1", grant, 90, 60, 3.0)
        store.begin("t/r1", "helper", 10, 10, 4.0, 1.0)  # its lease lapses
        with pytest.raises(BudgetExceeded):  # refused, yet it expires the lapsed lease first
            store.begin("t/r1", "helper", 5000, 0, 10.0, LEASE)
        released, _ = store.begin("t/r1", "notes", 10, 10, 11.0, LEASE)
        store.release("t/r1", released, 12.0)
        store.open_children("t/r1", ["t/r1::k"], RANKS, 13.0, priorities=["standard"], ceiling=100)
        store.close("t/r1", 14.0, status="failed")
        page = store.feed(start, prefix="t/")
        kinds = [(e.kind, e.agent) for e in page.events if e.request_id == "t/r1"]
        assert kinds == [
            ("open", None),
            ("begin", "lead"),
            ("extend", "lead"),
            ("finish", "lead"),
            ("begin", "helper"),
            ("expire", "helper"),
            ("begin", "notes"),
            ("release", "notes"),
            ("child", None),
            ("child_close", None),
            ("close", None),
        ]
        child = [e.kind for e in page.events if e.request_id == "t/r1::k"]
        assert child == ["open", "close"]
        assert len(page.events) == len(kinds) + len(child)
        cursors = [e.cursor for e in page.events]
        assert len(set(cursors)) == len(cursors)
        assert page.cursor == store.feed_cursor()
        begun, extended, finished = page.events[1:4]
        assert (begun.granted, begun.used, begun.free, begun.status) == (150, 0, 850, "open")
        assert (extended.granted, extended.free) == (170, 830)
        assert (finished.granted, finished.used, finished.free) == (0, 150, 850)
        assert finished.consumed == 150 and begun.consumed == 0
        assert finished.event.context_tokens == 90 and finished.at == 3.0
        assert page.events[-1].status == "failed" and page.events[-1].tenant == "t"
        assert [e.request_id for e in store.feed(start, prefix="u/").events] == ["u/r2"]
        reader = FeedReader(store)
        reader.catch_up()
        for request_id in ("t/r1", "u/r2", "t/r1::k"):
            reader.check(request_id)

    def test_notes_reach_the_feed_and_change_no_ledger(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        grant, _ = store.begin("r1", "helper", 300, 100, 1.0, LEASE)
        start = store.feed_cursor()
        store.note("r1", Event("refused", 2.0, "notes", 0, 700, 0, note="begin"))
        store.note("r1", Event("refused", 3.0, "helper", grant.grant_id, 0, 900, note="extend"))
        events = store.feed(start).events
        told = [(e.kind, e.agent, e.event.note, e.event.output_tokens, e.granted) for e in events]
        assert told == [
            ("refused", "notes", "begin", 0, 0),
            ("refused", "helper", "extend", 900, 400),
        ]
        assert (events[0].event.context_tokens, events[0].free, events[0].at) == (700, 600, 2.0)
        assert events[1].event.grant_id == grant.grant_id
        assert [e.kind for e in store.events("r1")] == ["open", "begin"]
        with pytest.raises(UnknownRequest):
            store.note("nope", Event("refused", 2.0, "notes", 0, 1, 0, note="begin"))
        with pytest.raises(UnknownAgent):
            store.note("r1", Event("refused", 2.0, "nobody", 0, 1, 0, note="begin"))
        for bad in (
            Event("begin", 2.0, "notes", 0, 1, 0),
            Event("refused", 2.0, None, 0, 1, 0),
            Event("refused", float("nan"), "notes", 0, 1, 0),
            Event("refused", 2.0, "notes", 0, -1, 0),
            "refused",
        ):
            with pytest.raises(InvalidArgument):
                store.note("r1", bad)  # type: ignore[arg-type]
        assert store.feed(start).cursor == events[-1].cursor  # nothing more was appended

    def test_notes_are_kept_with_the_request_in_their_places(self, store: Store) -> None:
        import asyncio

        store.open("r1", RANKS, 1000, 0.0)
        grant, _ = store.begin("r1", "helper", 300, 100, 1.0, LEASE)
        store.note("r1", Event("refused", 2.0, "notes", 0, 700, 0, note="begin"))
        store.note("r1", Event("refused", 3.0, "helper", grant.grant_id, 0, 900, note="extend"))
        with pytest.raises(InvalidArgument):
            store.note("r1", Event("begin", 3.5, "notes", 0, 1, 0))  # refused: nothing kept
        store.finish("r1", grant, 300, 100, 4.0)
        store.note("r1", Event("refused", 5.0, "notes", 0, 800, 0, note="begin"))
        kinds = ["open", "begin", "refused", "refused", "finish", "refused"]
        history = store.history("r1")
        assert [(e.kind, e.agent, e.note) for e in history if e.kind == "refused"] == [
            ("refused", "notes", "begin"),
            ("refused", "helper", "extend"),
            ("refused", "notes", "begin"),
        ]
        assert [e.kind for e in history] == kinds
        assert [e for e in history if e.kind != "refused"] == store.events("r1")
        assert asyncio.run(store.ahistory("r1")) == history
        store.close("r1", 6.0)
        assert [e.kind for e in store.history("r1")] == [*kinds, "close"]  # kept after close
        store.open("r1", RANKS, 500, 7.0)  # replaces the closed request: its notes go with it
        assert [e.kind for e in store.history("r1")] == ["open"]
        with pytest.raises(UnknownRequest):
            store.history("nope")

    def test_feed_pages_follow_on(self, store: Store) -> None:
        start = store.feed_cursor()
        for i in range(7):
            store.open(f"r{i}", RANKS, 100, 0.0)
        seen: list[str] = []
        cursor = start
        while True:
            page = store.feed(cursor, limit=3)
            assert len(page.events) <= 3
            if not page.events:
                break
            seen += [e.request_id for e in page.events]
            cursor = page.cursor
        assert seen == [f"r{i}" for i in range(7)]
        assert store.feed(None).events[-1].request_id == "r6"  # None: from the oldest kept
        from apportion.stores.feed import cursor_key

        keys = [cursor_key(start), *(cursor_key(e.cursor) for e in store.feed(start).events)]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)  # cursors order events

    def test_feed_reader_waits_for_the_next_event(self, store: Store) -> None:
        import threading

        start = store.feed_cursor()
        got: list[Any] = []
        reader = threading.Thread(target=lambda: got.append(store.feed(start, timeout=30.0)))
        reader.start()
        store.open("r1", RANKS, 100, 0.0)
        reader.join(60)
        assert [e.kind for e in got[0].events] == ["open"]
        assert store.feed(got[0].cursor, timeout=0.0).events == ()

    def test_async_feed_waits_without_blocking_the_loop(self, store: Store) -> None:
        import asyncio

        async def scenario() -> None:
            start = await store.afeed_cursor()
            reading = asyncio.ensure_future(store.afeed(start, timeout=30.0))
            for _ in range(3):
                await asyncio.sleep(0)  # the reader is waiting now
            await store.aopen("r1", RANKS, 100, 0.0)
            page = await asyncio.wait_for(reading, 60)
            assert [(e.request_id, e.kind) for e in page.events] == [("r1", "open")]

        asyncio.run(scenario())

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("limit", 0),
            ("limit", 10**6),
            ("limit", True),
            ("prefix", 3),
            ("timeout", -1.0),
            ("timeout", float("nan")),
            ("timeout", float("inf")),
            ("after", "not a cursor"),
            ("after", 5),
        ],
    )
    def test_bad_feed_arguments(self, store: Store, field: str, value: Any) -> None:
        kwargs: dict[str, Any] = {"after": store.feed_cursor(), field: value}
        with pytest.raises(InvalidArgument):
            store.feed(**kwargs)

    def test_open_requests_are_listed_by_prefix(self, store: Store) -> None:
        assert store.open_requests() == []
        for request_id in ("t/b", "t/a", "u/c", "t/d"):
            store.open(request_id, RANKS, 100, 0.0)
        store.open_children("t/a", ["t/a::k"], RANKS, 0.0, priorities=["standard"], ceiling=10)
        store.close("t/d", 1.0)
        assert store.open_requests("t/") == ["t/a", "t/a::k", "t/b"]
        assert store.open_requests() == ["t/a", "t/a::k", "t/b", "u/c"]
        store.close("t/a", 2.0)
        assert store.open_requests("t/") == ["t/b"]
        with pytest.raises(InvalidArgument):
            store.open_requests(3)  # type: ignore[arg-type]

    # ---------------------------------------------------------- operation ids

    def test_a_repeated_op_id_returns_the_first_outcome_and_changes_nothing(
        self, store: Store
    ) -> None:
        store.open("r1", RANKS, 1000, 0.0, op_id="o-open")
        again = store.open("r1", RANKS, 1000, 0.5, op_id="o-open")  # no DuplicateRequest
        assert (again.request_id, again.status, again.ceiling) == ("r1", "open", 1000)
        grant, _ = store.begin("r1", "lead", 300, 200, 0.0, LEASE, op_id="o-begin")
        before = snapshot(store, "r1")
        same, state = store.begin("r1", "lead", 300, 200, 0.5, LEASE, op_id="o-begin")
        assert same == grant and state.reserved == 500
        # what a policy decides may differ on a retry: still the first grant
        same, _ = store.begin("r1", "lead", 250, 100, 1.0, LEASE, asked=300, op_id="o-begin")
        assert same == grant
        assert snapshot(store, "r1") == before
        grown, _ = store.extend("r1", grant, 50, 10, 1.0, LEASE, op_id="o-extend")
        before = snapshot(store, "r1")
        again_grown, state = store.extend("r1", grant, 50, 10, 2.0, LEASE, op_id="o-extend")
        assert again_grown == grown and (grown.context_tokens, grown.output_tokens) == (310, 250)
        assert grown.lease_expires_at == 1.0 + LEASE and state.reserved == 560
        assert snapshot(store, "r1") == before
        state = store.finish("r1", grown, 300, 100, 2.0, op_id="o-finish")
        before = snapshot(store, "r1")
        state = store.finish("r1", grown, 300, 100, 3.0, op_id="o-finish")  # no GrantSettled
        assert (state.consumed, state.reserved) == (400, 0)
        assert snapshot(store, "r1") == before
        other, _ = store.begin("r1", "notes", 10, 10, 3.0, LEASE, op_id="o-begin-2")
        store.release("r1", other, 3.0, op_id="o-release")
        before = snapshot(store, "r1")
        state = store.release("r1", other, 4.0, op_id="o-release")
        assert state.free == 600 and snapshot(store, "r1") == before
        store.close("r1", 5.0, outcome=0.5, op_id="o-close")
        before = snapshot(store, "r1")
        state = store.close("r1", 6.0, outcome=0.5, op_id="o-close")  # no RequestClosed
        assert (state.status, state.outcome) == ("closed", 0.5)
        state = store.open("r1", RANKS, 1000, 7.0, op_id="o-open")  # not opened again
        assert state.status == "closed"
        assert snapshot(store, "r1") == before
        assert [e.kind for e in store.events("r1")].count("begin") == 2
        check_invariants(store, "r1")

    def test_a_conflicting_op_id_is_refused_and_changes_nothing(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0, op_id="o1")
        grant, _ = store.begin("r1", "lead", 100, 100, 0.0, LEASE, op_id="o2")
        before = snapshot(store, "r1")
        with pytest.raises(OperationConflict) as info:
            store.begin("r1", "helper", 100, 100, 0.0, LEASE, op_id="o2")
        error = info.value
        assert (error.op_id, error.operation, error.first, error.request_id) == (
            "o2",
            "begin",
            "begin",
            "r1",
        )
        with pytest.raises(OperationConflict) as info:
            store.finish("r1", grant, 10, 10, 1.0, op_id="o2")
        assert (info.value.operation, info.value.first) == ("finish", "begin")
        with pytest.raises(OperationConflict):
            store.open("r1", RANKS, 2000, 0.0, op_id="o1")
        assert snapshot(store, "r1") == before
        store.finish("r1", grant, 10, 10, 1.0, op_id="o3")
        before = snapshot(store, "r1")
        with pytest.raises(OperationConflict):
            store.finish("r1", grant, 10, 11, 1.0, op_id="o3")
        with pytest.raises(OperationConflict):
            store.close("r1", 2.0, op_id="o3")
        assert snapshot(store, "r1") == before

    def test_a_refused_operation_records_no_op_id(self, store: Store) -> None:
        store.open("r1", RANKS, 100, 0.0)
        before = snapshot(store, "r1")
        with pytest.raises(BudgetExceeded):
            store.begin("r1", "lead", 100, 100, 0.0, LEASE, op_id="o1")
        assert snapshot(store, "r1") == before
        grant, state = store.begin("r1", "lead", 50, 50, 0.0, LEASE, asked=100, op_id="o1")
        assert state.reserved == 100  # the retry ran anew
        again, _ = store.begin("r1", "lead", 100, 100, 0.0, LEASE, op_id="o1")
        assert again == grant

    @pytest.mark.parametrize("bad", ["", "has space", "x" * 256, 5, b"bytes", "caf\u00e9"])
    def test_bad_op_id_changes_nothing(self, store: Store, bad: Any) -> None:
        with pytest.raises(InvalidArgument) as info:
            store.open("r1", RANKS, 1000, 0.0, op_id=bad)
        assert info.value.argument == "op_id"
        with pytest.raises(UnknownRequest):
            store.get("r1")
        store.open("r1", RANKS, 1000, 0.0)
        grant, _ = store.begin("r1", "lead", 10, 10, 0.0, LEASE)
        before = snapshot(store, "r1")
        with pytest.raises(InvalidArgument):
            store.begin("r1", "lead", 10, 10, 0.0, LEASE, op_id=bad)
        with pytest.raises(InvalidArgument):
            store.extend("r1", grant, 10, 0, 0.0, LEASE, op_id=bad)
        with pytest.raises(InvalidArgument):
            store.finish("r1", grant, 10, 10, 0.0, op_id=bad)
        with pytest.raises(InvalidArgument):
            store.release("r1", grant, 0.0, op_id=bad)
        with pytest.raises(InvalidArgument):
            store.close("r1", 0.0, op_id=bad)
        assert snapshot(store, "r1") == before

    def test_op_ids_expire_with_their_request(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0, op_id="first-open")
        store.close("r1", 1.0, op_id="first-close")
        state = store.open("r1", RANKS, 500, 2.0, op_id="second-open")  # replaces it
        assert (state.status, state.ceiling) == ("open", 500)
        # the ids of the request replaced are forgotten with it
        store.begin("r1", "lead", 10, 10, 2.0, LEASE, op_id="first-close")
        assert store.get("r1").reserved == 20
        state = store.close("r1", 3.0, op_id="first-open")
        assert state.status == "closed"

    def test_repeated_op_id_of_children(self, store: Store) -> None:
        store.open("r1", RANKS, 1000, 0.0)
        store.open_children(
            "r1", ["r1::a", "r1::b"], RANKS, 0.0, priorities=["standard"] * 2, ceiling=200,
            op_id="kids",
        )  # fmt: skip
        before = snapshot(store, "r1")
        again, again_kids = store.open_children(
            "r1", ["r1::a", "r1::b"], RANKS, 1.0, priorities=["standard"] * 2, ceiling=200,
            op_id="kids",
        )  # fmt: skip
        assert [k.request_id for k in again_kids] == ["r1::a", "r1::b"]
        assert [k.ceiling for k in again_kids] == [200, 200]
        assert (again.free, again.reserved) == (600, 400)
        assert snapshot(store, "r1") == before
        with pytest.raises(OperationConflict):
            store.open_children(
                "r1", ["r1::a", "r1::b"], RANKS, 1.0, priorities=["standard"] * 2, ceiling=300,
                op_id="kids",
            )  # fmt: skip
        assert snapshot(store, "r1") == before
        store.close("r1", 2.0, op_id="close-tree")
        assert store.close("r1", 3.0, op_id="close-tree").status == "closed"
        check_invariants(store, "r1")

    def test_async_op_ids(self, store: Store) -> None:
        import asyncio

        async def scenario() -> None:
            await store.aopen("r1", RANKS, 1000, 0.0, op_id="a1")
            await store.aopen("r1", RANKS, 1000, 0.0, op_id="a1")
            grant, _ = await store.abegin("r1", "lead", 100, 100, 0.0, LEASE, op_id="a2")
            same, _ = await store.abegin("r1", "lead", 100, 100, 0.0, LEASE, op_id="a2")
            assert same == grant
            grown, _ = await store.aextend("r1", grant, 10, 0, 0.0, LEASE, op_id="a3")
            assert (await store.aextend("r1", grant, 10, 0, 0.0, LEASE, op_id="a3"))[0] == grown
            await store.afinish("r1", grown, 100, 110, 0.0, op_id="a4")
            await store.afinish("r1", grown, 100, 110, 0.0, op_id="a4")
            other, _ = await store.abegin("r1", "notes", 1, 1, 0.0, LEASE, op_id="a5")
            await store.arelease("r1", other, 0.0, op_id="a6")
            await store.arelease("r1", other, 0.0, op_id="a6")
            await store.aclose("r1", 1.0, op_id="a7")
            state = await store.aclose("r1", 1.0, op_id="a7")
            assert (state.consumed, state.free) == (210, 790)
            with pytest.raises(OperationConflict):
                await store.afinish("r1", grown, 100, 110, 0.0, op_id="a7")

        asyncio.run(scenario())

    # ---------------------------------------------------------- state machine

    def test_random_interleavings(self) -> None:
        factory = self.make_store

        class Machine(_LedgerMachine):
            def make_store(self) -> Store:
                return factory()

        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=self.interleavings[0],
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )

    def test_random_trees(self) -> None:
        """Request trees: open, child, fan-out, begin, finish, close and expiry, any order."""
        factory = self.make_store

        class Machine(_TreeMachine):
            def make_store(self) -> Store:
                return factory()

        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=self.interleavings[1],
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )


class _LedgerMachine(RuleBasedStateMachine):
    """Random interleavings of every operation over a few requests, checked step by step."""

    grants = Bundle("grants")
    settled = Bundle("settled")

    def make_store(self) -> Store:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.store = self.make_store()
        self.feed = FeedReader(self.store)
        self.now = 0.0
        self.requests: dict[str, int] = {}  # open request -> ceiling
        self.closed: set[str] = set()
        self.used: dict[str, int] = {}  # request -> tokens providers reported
        self.open_grants: dict[tuple[str, int], Grant] = {}
        self.lapsed: set[tuple[str, int]] = set()  # leases ended, never settled by the caller
        self.counter = 0
        self.ops = 0
        self.last: tuple[str, Any, Grant | None] | None = None  # the last op with its id

    def _op(self) -> str:
        """A new operation id (every successful change of the machine carries one)."""
        self.ops += 1
        return f"op-{self.ops}"

    def _done(self, request_id: str, again: Any, first: Grant | None = None) -> None:
        """Keep the call just made (with its id) for :meth:`repeat_last`."""
        self.last = (request_id, again, first)

    def _lapse(self) -> None:
        ended = [k for k, g in self.open_grants.items() if g.lease_expires_at <= self.now]
        for key in ended:
            del self.open_grants[key]
            self.lapsed.add(key)

    def _refused(self, request_id: str, op: Any, error: type[ApportionError]) -> None:
        before = snapshot(self.store, request_id)
        with pytest.raises(error):
            op()
        assert snapshot(self.store, request_id) == before

    def _sync_expiry(self) -> None:
        """Reap ended leases in the store and the model alike, before the next operation.

        (Lazy reaping inside operations is tested on its own; here the machine checks that
        refused operations change nothing, so expiry happens explicitly first.)
        """
        if any(g.lease_expires_at <= self.now for g in self.open_grants.values()):
            self.store.reap(self.now)
            self._lapse()

    @rule(ceiling=st.integers(1, 5000), share=st.floats(0, 0.9))
    def open_request(self, ceiling: int, share: float) -> None:
        self.counter += 1
        request_id = f"r{self.counter}"
        reserve = {"lead": int(ceiling * share)}
        op_id, now = self._op(), self.now

        def again() -> Any:
            kw: Any = {"reserve": reserve, "ttl": 10_000.0, "op_id": op_id}
            return self.store.open(request_id, RANKS, ceiling, now, **kw)

        again()
        self._done(request_id, again)
        self.requests[request_id] = ceiling
        self.used[request_id] = 0

    @precondition(lambda self: bool(self.requests))
    @rule(
        target=grants,
        data=st.data(),
        agent=st.sampled_from(sorted(RANKS)),
        ctx=st.integers(0, 3000),
        out=st.integers(0, 3000),
    )
    def begin(self, data: Any, agent: str, ctx: int, out: int) -> Any:
        request_id = data.draw(st.sampled_from(sorted(self.requests)))
        wrap = data.draw(st.sampled_from([0, 0, out // 2, out, out + 1]), label="wrap_up")
        self._sync_expiry()
        state = self.store.get(request_id)
        available = state.available_for(agent)
        critical_held = sum(t for a, t in state.reserve.items() if RANKS[a] == 2 and a != agent)

        op_id, now = self._op(), self.now

        def begin() -> tuple[Grant, Any]:
            kwargs: Any = {"wrap_up_tokens": wrap} if wrap else {}
            return self.store.begin(request_id, agent, ctx, out, now, LEASE, op_id=op_id, **kwargs)

        if wrap > out:  # a reserve larger than the grant's output
            self._refused(request_id, begin, WrapUpTooLarge)
            return multiple()
        if ctx + out > available:
            self._refused(request_id, begin, BudgetExceeded)
            return multiple()
        free_before = state.free
        grant, state = begin()
        self._done(request_id, begin, grant)
        assert (grant.context_tokens, grant.output_tokens) == (ctx, out)
        assert grant.wrap_up_tokens == wrap  # inside the grant: the ledger counts it as before
        if RANKS[agent] < 2:  # invariant 5: a lower agent never eats a critical reservation
            # (over-use charged earlier may already have; then the grant takes nothing)
            assert state.free >= min(critical_held, free_before)
        self.open_grants[(request_id, grant.grant_id)] = grant
        return grant

    @rule(grant=grants, extra=st.integers(0, 2000), ctx=st.integers(0, 500))
    def extend(self, grant: Grant, extra: int, ctx: int) -> None:
        key = (grant.request_id, grant.grant_id)
        if grant.request_id not in self.requests or key not in self.open_grants:
            return
        self._sync_expiry()
        if key not in self.open_grants:
            self._refused(
                grant.request_id,
                lambda: self.store.extend(grant.request_id, grant, extra, ctx, self.now, LEASE),
                GrantExpired,
            )
            return
        available = self.store.get(grant.request_id).available_for(grant.agent)
        if extra + ctx > available:
            self._refused(
                grant.request_id,
                lambda: self.store.extend(grant.request_id, grant, extra, ctx, self.now, LEASE),
                BudgetExceeded,
            )
            return
        op_id, now = self._op(), self.now

        def grow() -> tuple[Grant, Any]:
            return self.store.extend(grant.request_id, grant, extra, ctx, now, LEASE, op_id=op_id)

        grown, _ = grow()
        self._done(grant.request_id, grow, grown)
        assert grown.output_tokens == self.open_grants[key].output_tokens + extra
        assert grown.wrap_up_tokens == grant.wrap_up_tokens  # the reserve stays with the grant
        self.open_grants[key] = grown

    @rule(target=settled, grant=consumes(grants), data=st.data())
    def finish(self, grant: Grant, data: Any) -> Any:
        key = (grant.request_id, grant.grant_id)
        request_id = grant.request_id
        if request_id not in self.requests:
            return grant
        self._sync_expiry()
        if key in self.lapsed:  # its lease ran out: a late finish is recorded all the same
            state = self.store.finish(request_id, grant, 1, 1, self.now)
            self.lapsed.discard(key)
            self.used[request_id] += 2
            assert state.consumed + state.overflow == self.used[request_id]
            return grant
        current = self.open_grants.get(key)
        if current is None:
            return grant
        limit = int(current.total * 1.5) + 2
        inp = data.draw(st.integers(0, limit))
        out = data.draw(st.integers(0, limit))
        before = self.store.get(request_id)
        room = before.free + current.total
        overflow_before = before.overflow
        op_id, now, cut = self._op(), self.now, out >= current.output_tokens

        def settle() -> Any:
            return self.store.finish(request_id, grant, inp, out, now, truncated=cut, op_id=op_id)

        state = settle()
        self._done(request_id, settle)
        del self.open_grants[key]
        self.used[request_id] += inp + out
        assert state.overflow - overflow_before == max(0, inp + out - room)
        assert state.consumed + state.overflow == self.used[request_id]
        return grant

    @rule(target=settled, grant=consumes(grants))
    def release(self, grant: Grant) -> Any:
        key = (grant.request_id, grant.grant_id)
        if grant.request_id not in self.requests:
            return grant
        self._sync_expiry()
        if key in self.lapsed:
            self._refused(
                grant.request_id,
                lambda: self.store.release(grant.request_id, grant, self.now),
                GrantExpired,
            )
            return multiple()  # still open to a late finish
        if key not in self.open_grants:
            return grant
        op_id, now = self._op(), self.now

        def free() -> Any:
            return self.store.release(grant.request_id, grant, now, op_id=op_id)

        free()
        self._done(grant.request_id, free)
        del self.open_grants[key]
        return grant

    @rule(grant=settled)
    def settle_twice(self, grant: Grant) -> None:
        if grant.request_id not in self.requests or (grant.request_id, grant.grant_id) in (
            self.lapsed
        ):
            return
        self._sync_expiry()
        self._refused(
            grant.request_id,
            lambda: self.store.finish(grant.request_id, grant, 1, 1, self.now),
            GrantSettled,
        )

    @precondition(lambda self: bool(self.requests))
    @rule(data=st.data(), bad=st.sampled_from(BAD_COUNTS))
    def bad_count(self, data: Any, bad: Any) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.requests)))
        self._sync_expiry()
        self._refused(
            request_id,
            lambda: self.store.begin(request_id, "notes", bad, 1, self.now, LEASE),
            InvalidTokenCount,
        )

    @rule(seconds=st.sampled_from([1.0, 10.0, LEASE, 45.0]))
    def advance_clock(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def reap(self) -> None:
        self.store.reap(self.now)
        self._lapse()

    @precondition(lambda self: bool(self.requests))
    @rule(data=st.data(), failed=st.booleans())
    def close(self, data: Any, failed: bool) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.requests)))
        self._sync_expiry()
        op_id, now, status = self._op(), self.now, "failed" if failed else "closed"

        def shut() -> Any:
            return self.store.close(request_id, now, status=status, op_id=op_id)

        state = shut()
        self._done(request_id, shut)
        assert state.reserved == 0
        for key in [k for k in self.open_grants if k[0] == request_id]:
            del self.open_grants[key]
        self.lapsed = {k for k in self.lapsed if k[0] != request_id}
        del self.requests[request_id]
        self.closed.add(request_id)
        self._refused(
            request_id,
            lambda: self.store.begin(request_id, "lead", 0, 1, self.now, LEASE),
            RequestClosed,
        )

    @precondition(lambda self: self.last is not None)
    @rule()
    def repeat_last(self) -> None:
        """The last change made again with its operation id, maybe later.

        As a retry after a lost reply: the first outcome, nothing changed (no lease
        expires, no event).
        """
        assert self.last is not None
        request_id, again, first = self.last
        before = snapshot(self.store, request_id)
        result = again()
        assert snapshot(self.store, request_id) == before
        if first is not None:
            assert result[0] == first

    @invariant()
    def ledgers_hold(self) -> None:
        self.feed.catch_up()
        for request_id in [*self.requests, *self.closed]:
            self.feed.check(request_id)
        for request_id in self.requests:
            check_invariants(self.store, request_id)
            state = self.store.get(request_id)
            assert state.consumed + state.overflow == self.used[request_id]
            ours = {k[1] for k in self.open_grants if k[0] == request_id}
            assert set(state.grants) == ours


PRIORITIES = {"critical": 2, "standard": 1, "peripheral": 0}
TREE_DEPTH = 3
TREE_LEASE = 1e9  # grants never lapse here: the tree machine is about draws and folding back


class _TreeMachine(RuleBasedStateMachine):
    """Random request trees over one store, checked after every step.

    Roots open with reservations; children draw by ceiling, by share or in fan-outs of up to
    four with mixed priorities; agents begin and finish in any node; any node closes
    (closing its subtree) or expires (``reap``). After every step, every ledger of every
    tree conserves its tokens (:func:`check_invariants`), every open child holds exactly
    what its open parent recorded giving it, and every node's ``consumed + overflow`` is
    what its own calls used plus what its closed children used (usage is never lost).
    """

    def make_store(self) -> Store:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.store = self.make_store()
        self.feed = FeedReader(self.store)
        self.now = 0.0
        self.counter = 0
        self.parent: dict[str, str | None] = {}
        self.depth: dict[str, int] = {}
        self.expires: dict[str, float] = {}
        self.used: dict[str, int] = {}  # tokens a node's own calls reported
        self.rolled: dict[str, int] = {}  # tokens its closed children (and theirs) used
        self.live: set[str] = set()  # open nodes, as the model has it
        self.grants: dict[str, list[Grant]] = {}

    def _refused(self, request_id: str, op: Any, error: type[ApportionError]) -> None:
        before = snapshot(self.store, request_id)
        with pytest.raises(error):
            op()
        assert snapshot(self.store, request_id) == before

    def _add(self, request_id: str, parent: str | None, ttl: float) -> None:
        self.parent[request_id] = parent
        self.depth[request_id] = 0 if parent is None else self.depth[parent] + 1
        self.expires[request_id] = self.now + ttl
        self.used[request_id] = self.rolled[request_id] = 0
        self.live.add(request_id)
        self.grants[request_id] = []

    def _closed(self, request_id: str) -> None:
        """The model of a close: the subtree closes, deepest first, folding usage back."""
        for kid in [k for k, p in self.parent.items() if p == request_id and k in self.live]:
            self._closed(kid)
        self.live.discard(request_id)
        self.grants[request_id] = []
        parent = self.parent[request_id]
        if parent is not None and parent in self.live:
            self.rolled[parent] += self.used[request_id] + self.rolled[request_id]

    @rule(
        ceiling=st.integers(1, 5000),
        held=st.floats(0, 0.6),
        ttl=st.sampled_from([40.0, 10_000.0]),
    )
    def open_root(self, ceiling: int, held: float, ttl: float) -> None:
        self.counter += 1
        request_id = f"t{self.counter}"
        reserve = {"lead": int(ceiling * held / 2), "helper": int(ceiling * held / 2)}
        self.store.open(request_id, RANKS, ceiling, self.now, reserve=reserve, ttl=ttl)
        self._add(request_id, None, ttl)

    @precondition(lambda self: bool(self.live))
    @rule(
        data=st.data(),
        by_share=st.booleans(),
        cap=st.one_of(st.none(), st.integers(1, 3000)),
        share=st.floats(0.01, 1.0),
        priorities=st.lists(st.sampled_from(sorted(PRIORITIES)), min_size=1, max_size=4),
        ttl=st.sampled_from([40.0, 10_000.0]),
        child_reserve=st.sampled_from([None, {"lead": 50}]),
    )
    def child(
        self,
        data: Any,
        by_share: bool,
        cap: int | None,
        share: float,
        priorities: list[str],
        ttl: float,
        child_reserve: dict[str, int] | None,
    ) -> None:
        parent = data.draw(st.sampled_from(sorted(self.live)))
        ceiling = cap if cap is not None or by_share else 1 + int(share * 2000)
        part = share if by_share else None
        ids = [f"{parent}::k{self.counter + i}" for i in range(1, len(priorities) + 1)]
        self.counter += len(ids)
        state = self.store.get(parent)
        ranks = [PRIORITIES[p] for p in priorities]
        low = min(ranks)
        held = sum(t for a, t in state.reserve.items() if RANKS[a] > low)
        free = state.free  # (a memory store's state is live: read it now)
        spare = max(0, free - held)
        if part is None:
            assert ceiling is not None
            expected = [ceiling] * len(ids)
            fits = ceiling * len(ids) <= spare
        else:
            total = math.floor(spare * part)
            expected = [total * 2**r // sum(2**q for q in ranks) for r in ranks]
            if ceiling is not None:
                expected = [min(t, ceiling) for t in expected]
            fits = min(expected) > 0

        def op() -> Any:
            return self.store.open_children(
                parent,
                ids,
                RANKS,
                self.now,
                priorities=priorities,
                ceiling=ceiling,
                share=part,
                reserve=child_reserve,
                ttl=ttl,
                max_depth=TREE_DEPTH,
            )

        if self.depth[parent] + 1 > TREE_DEPTH:
            self._refused(parent, op, TreeTooDeep)
            return
        if not fits:
            self._refused(parent, op, ChildBudgetExceeded)
            return
        after, kids = op()
        assert [k.ceiling for k in kids] == expected
        assert after.free == free - sum(expected)
        for kid, request_id in zip(kids, ids, strict=True):
            assert (kid.request_id, kid.parent_id, kid.depth) == (
                request_id,
                parent,
                self.depth[parent] + 1,
            )
            assert after.children[request_id][0] == kid.ceiling
            self._add(request_id, parent, ttl)

    @precondition(lambda self: bool(self.live))
    @rule(
        data=st.data(),
        agent=st.sampled_from(sorted(RANKS)),
        ctx=st.integers(0, 1500),
        out=st.integers(0, 1500),
    )
    def begin(self, data: Any, agent: str, ctx: int, out: int) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.live)))
        available = self.store.get(request_id).available_for(agent)

        def op() -> Any:
            return self.store.begin(request_id, agent, ctx, out, self.now, TREE_LEASE)

        if ctx + out > available:
            self._refused(request_id, op, BudgetExceeded)
            return
        grant, _ = op()
        self.grants[request_id].append(grant)

    @precondition(lambda self: any(self.grants[r] for r in self.live))
    @rule(data=st.data())
    def finish(self, data: Any) -> None:
        request_id = data.draw(st.sampled_from(sorted(r for r in self.live if self.grants[r])))
        grant = self.grants[request_id].pop(
            data.draw(st.integers(0, 99)) % len(self.grants[request_id])
        )
        limit = int(grant.total * 1.5) + 2
        inp = data.draw(st.integers(0, limit))
        out = data.draw(st.integers(0, limit))
        self.store.finish(request_id, grant, inp, out, self.now)
        self.used[request_id] += inp + out

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), failed=st.booleans())
    def close(self, data: Any, failed: bool) -> None:
        request_id = data.draw(st.sampled_from(sorted(self.live)))
        status = "failed" if failed else "closed"
        state = self.store.close(request_id, self.now, status=status)
        assert state.status == status and state.reserved == 0
        self._closed(request_id)
        self._refused(
            request_id,
            lambda: self.store.open_children(
                request_id,
                [f"{request_id}::late"],
                RANKS,
                self.now,
                priorities=["critical"],
                share=1.0,
            ),
            RequestClosed,
        )

    @rule(seconds=st.sampled_from([5.0, 20.0, 45.0]))
    def advance_clock(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def reap(self) -> None:
        reaped = self.store.reap_expired(self.now)
        due = [
            r for r in sorted(self.live, key=self.depth.__getitem__) if self.expires[r] <= self.now
        ]
        before = set(self.live)
        for request_id in due:
            if request_id in self.live:
                self._closed(request_id)
        assert set(reaped.expired) == before - self.live

    @invariant()
    def trees_hold(self) -> None:
        self.feed.catch_up()
        for request_id in self.parent:
            self.feed.check(request_id)
        for request_id in self.parent:
            check_invariants(self.store, request_id)
            state = self.store.get(request_id)
            assert (state.status == "open") == (request_id in self.live)
            if request_id not in self.live:
                continue
            assert state.consumed + state.overflow == (
                self.used[request_id] + self.rolled[request_id]
            )
            assert set(state.grants) == {g.grant_id for g in self.grants[request_id]}
            kids = {k for k, p in self.parent.items() if p == request_id and k in self.live}
            assert set(state.children) == kids
            parent = self.parent[request_id]
            if parent is not None:  # no child holds more than its parent gave it
                assert parent in self.live
                given = self.store.get(parent).children[request_id][0]
                assert given == state.ceiling
                assert state.consumed + state.reserved <= given
