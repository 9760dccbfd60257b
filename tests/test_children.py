"""Child budgets and fan-out (issue 17): a child's ceiling is drawn from its parent.

Memory store here; the same store-level behaviour runs on Redis in the conformance suite
(:mod:`apportion.testing.store_conformance`) and in ``tests/stores/test_children_race.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apportion import (
    Agent,
    AsyncController,
    ChildBudgetExceeded,
    Controller,
    InvalidArgument,
    MemoryStore,
    Pipeline,
    Policy,
    RequestClosed,
    TreeTooDeep,
    UnknownRequest,
    current_request,
)
from apportion.policies.base import Observation, Plan

PIPELINE = Pipeline(
    [
        Agent("lead", priority="critical"),
        Agent("researcher"),
        Agent("notes", priority="peripheral"),
    ]
)


class Fixed(Policy):
    """Grants what is asked (capped by what the agent may draw); reserves ``held``."""

    name = "fixed-children"

    def __init__(self, held: dict[str, int] | None = None) -> None:
        self.held = held or {}

    def plan(self, obs: Observation) -> Plan:
        if sum(self.held.values()) > obs.ceiling:
            return Plan()
        return Plan(reserve=dict(self.held))

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        available = obs.state.available_for(agent.name)
        out = min(output_tokens or 100, max(0, available - input_tokens))
        return min(input_tokens, available), out


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ctl(**kwargs: Any) -> Controller:
    kwargs.setdefault("policy", Fixed())
    return Controller(PIPELINE, **kwargs)


def conserved(state: Any) -> None:
    assert state.free + state.reserved + state.consumed == state.ceiling
    grants = sum(g.context_tokens + g.output_tokens for g in state.grants.values())
    assert state.reserved == grants + sum(t for t, _ in state.children.values())
    assert state.consumed == sum(state.consumed_by.values()) + state.children_consumed


def use(req: Any, agent: str, inp: int, out: int) -> None:
    grant = req.begin(agent, inp, out)
    req.finish(grant, input_tokens=inp, output_tokens=out)


def test_a_child_draws_its_ceiling_from_the_parent_and_returns_the_rest_at_close():
    store = MemoryStore()
    with ctl(store=store).request(10_000) as req:
        with req.child("research", ceiling=4_000) as kid:
            assert current_request() is kid
            assert kid.parent_id == req.request_id and kid.depth == 1
            assert kid.ceiling == 4_000
            parent = store.get(req.request_id)
            assert (parent.free, parent.reserved) == (6_000, 4_000)
            assert parent.children == {kid.request_id: (4_000, 0)}
            use(kid, "researcher", 300, 200)
            conserved(store.get(req.request_id))
        assert current_request() is req
        parent = store.get(req.request_id)
        assert (parent.free, parent.reserved, parent.consumed) == (9_500, 0, 500)
        assert parent.children_consumed == 500 and parent.children == {}
        conserved(parent)
        kinds = [e.kind for e in store.events(req.request_id)]
        assert kinds.count("child") == 1 and kinds.count("child_close") == 1
        summary = req.summary()
        assert summary.consumed == 500 and summary.children_consumed == 500
        assert [c.request_id for c in summary.children] == [kid.request_id]
        assert summary.children[0].agents["researcher"].consumed == 500
        assert kid.request_id in str(summary)


def test_a_child_asking_more_than_the_parent_can_spare_is_refused_and_nothing_changes():
    store = MemoryStore()
    with ctl(store=store).request(10_000) as req:
        use(req, "lead", 3_000, 1_000)
        before = store.get(req.request_id).to_dict(), len(store.events(req.request_id))
        kid = req.child("big", ceiling=6_001)
        with pytest.raises(ChildBudgetExceeded) as refused:
            kid.open()
        error = refused.value
        assert (error.parent_id, error.requested, error.available) == (
            req.request_id,
            6_001,
            6_000,
        )
        assert error.child == kid.request_id
        assert (store.get(req.request_id).to_dict(), len(store.events(req.request_id))) == before
        assert req.children == ()
        with req.child("fits", ceiling=6_000) as fits:
            assert fits.ceiling == 6_000


def test_a_share_gets_what_is_available():
    with ctl().request(10_000) as req:
        use(req, "lead", 1_000, 1_000)
        with req.child("half", share=0.5) as half:
            assert half.ceiling == 4_000
            with half.child("all", share=1.0) as inner:
                assert inner.ceiling == 4_000 and inner.depth == 2
            with half.child("capped", share=1.0, ceiling=100) as capped:
                assert capped.ceiling == 100


def test_closing_the_parent_closes_open_children_depth_first_and_releases_their_grants():
    store = MemoryStore()
    with ctl(store=store).request(10_000) as req:
        kid = req.child("a", ceiling=5_000).open()
        grandkid = kid.child("b", ceiling=2_000).open()
        grant = grandkid.begin("researcher", 500, 500)
        use(kid, "researcher", 100, 100)
    assert req.closed and kid.closed and grandkid.closed
    parent = store.get(req.request_id)
    assert (parent.free, parent.reserved, parent.consumed) == (9_800, 0, 200)
    assert store.get(kid.request_id).status == "closed"
    assert store.get(grandkid.request_id).status == "closed"
    conserved(parent)
    closes = [e.note for e in store.events(req.request_id) if e.kind == "child_close"]
    assert closes == [kid.request_id]
    kid_closes = [e.note for e in store.events(kid.request_id) if e.kind == "child_close"]
    assert kid_closes == [grandkid.request_id]
    with pytest.raises(RequestClosed):
        grandkid.finish(grant, input_tokens=1, output_tokens=1)
    with pytest.raises(RequestClosed):
        kid.begin("researcher", 1, 1)
    with pytest.raises(RequestClosed):
        req.child("late", ceiling=1)


def test_a_child_made_before_its_parent_closed_is_refused_when_opened_after():
    with ctl().request(10_000) as req:
        kid = req.child("late", ceiling=10)
    with pytest.raises(RequestClosed) as closed:
        kid.open()
    assert closed.value.request_id == req.request_id


def test_an_expired_child_is_reaped_and_its_draw_returns():
    clock = Clock()
    store = MemoryStore()
    controller = ctl(store=store, clock=clock, request_ttl=60.0, reap_every=1e9)
    with controller.request(10_000) as req:
        clock.now += 30
        kid = req.child("slow", ceiling=3_000).open()
        use(kid, "researcher", 100, 100)
        kid.begin("researcher", 100, 100)  # left open
        clock.now += 45  # the parent is at 75 s of 60: reap closes the tree
        assert controller.reap() >= 2
        assert store.get(kid.request_id).status == "expired"
        parent = store.get(req.request_id)
        assert parent.status == "expired"
        assert parent.consumed == 200 and parent.reserved == 0
        conserved(parent)


def test_an_expired_child_alone_returns_its_draw_to_the_open_parent():
    clock = Clock()
    store = MemoryStore()
    controller = ctl(store=store, clock=clock, request_ttl=60.0, reap_every=1e9)
    with controller.request(10_000) as req:
        clock.now += 50
        kid = req.child("slow", ceiling=3_000).open()
        use(kid, "researcher", 100, 100)
        clock.now += 20  # the parent's ttl passed too, but only reap the child:
        store.close(kid.request_id, clock.now, status="expired")
        parent = store.get(req.request_id)
        assert (parent.free, parent.consumed, parent.status) == (9_800, 200, "open")
        with pytest.raises(RequestClosed):
            kid.begin("researcher", 1, 1)


def test_depth_is_bounded_with_a_clear_error():
    with (
        ctl(max_depth=2).request(1_000) as req,
        req.child("a", share=1.0) as a,
        a.child("b", share=1.0) as b,
    ):
        with pytest.raises(TreeTooDeep) as deep:
            b.child("c", share=1.0)
        assert (deep.value.parent_id, deep.value.depth, deep.value.max_depth) == (
            b.request_id,
            3,
            2,
        )
    with pytest.raises(InvalidArgument):
        ctl(max_depth=0)
    store = MemoryStore()
    with ctl(store=store).request(1_000) as req:  # the store enforces it too
        ranks = {"lead": 2}
        kid = f"{req.request_id}::x"
        store.open_children(
            req.request_id, [kid], ranks, 1.0, priorities=["standard"], share=1.0, max_depth=1
        )
        with pytest.raises(TreeTooDeep):
            store.open_children(
                kid, [kid + "::y"], ranks, 1.0, priorities=["standard"], share=1.0, max_depth=1
            )


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "a::b"}, "name"),
        ({"name": 3}, "name"),
        ({"share": 0}, "share"),
        ({"share": 1.5}, "share"),
        ({"share": float("nan")}, "share"),
        ({"priority": "urgent"}, "priority"),
        ({"share": None}, "ceiling"),
    ],
)
def test_bad_child_arguments_are_refused_with_fields(bad: dict[str, Any], field: str):
    with ctl().request(1_000) as req:
        kwargs: dict[str, Any] = {"name": "kid", "share": 0.5} | bad
        name = kwargs.pop("name")
        with pytest.raises(InvalidArgument) as error:
            req.child(name, **kwargs)
        assert error.value.argument == field
        with pytest.raises(InvalidArgument):
            req.fan_out(0)
        with pytest.raises(InvalidArgument):
            req.fan_out(["a", "b"], priority=["critical"])
        assert req.children == ()


def test_priority_decides_which_reservations_a_child_may_draw_on():
    policy = Fixed(held={"lead": 3_000, "researcher": 2_000})
    with ctl(policy=policy).request(10_000) as req:
        spare = {}
        for priority in ("critical", "standard", "peripheral"):
            with req.child(priority, share=1.0, priority=priority) as kid:
                spare[priority] = kid.ceiling
        assert spare == {"critical": 10_000, "standard": 7_000, "peripheral": 5_000}
        with pytest.raises(ChildBudgetExceeded):
            req.child("p", ceiling=5_001, priority="peripheral").open()


def test_fan_out_splits_fairly_by_priority_in_one_step():
    store = MemoryStore()
    with ctl(store=store).request(7_000) as req:
        kids = req.fan_out(["a", "b", "c"], priority=["critical", "standard", "peripheral"])
        assert [k.ceiling for k in kids] == [4_000, 2_000, 1_000]
        assert store.get(req.request_id).free == 0
        with kids[0] as a:
            use(a, "researcher", 1_000, 0)
        assert store.get(req.request_id).free == 3_000
        late = req.fan_out(2)  # children started later get what others returned
        assert [k.ceiling for k in late] == [1_500, 1_500]
        assert len({k.request_id for k in (*kids, *late)}) == 5
        for kid in (*kids[1:], *late):
            kid.close()
        assert store.get(req.request_id).free == 6_000
        with pytest.raises(ChildBudgetExceeded):
            req.fan_out(7_000, share=1.0)  # one token each is 7000 > 6000 spare: refused
        assert store.get(req.request_id).free == 6_000


def test_child_names_stay_distinct():
    with ctl().request(1_000) as req:
        first = req.child("r", ceiling=10).open()
        second = req.child("r", ceiling=10).open()
        assert first.request_id != second.request_id
        assert first.request_id == f"{req.request_id}::r"
        tricky = req.child("r#2", ceiling=10).open()  # a name that looks like a suffix
        third = req.child("r", ceiling=10).open()
        ids = {first.request_id, second.request_id, tricky.request_id, third.request_id}
        assert len(ids) == 4


def test_a_child_overusing_is_charged_to_the_parent():
    store = MemoryStore()
    with ctl(store=store).request(1_000) as req:
        with req.child("greedy", ceiling=100) as kid:
            grant = kid.begin("researcher", 50, 50)
            kid.finish(grant, input_tokens=50, output_tokens=150)
            assert store.get(kid.request_id).overflow == 100
        parent = store.get(req.request_id)
        assert parent.consumed == 200 and parent.free == 800 and parent.overflow == 0
        conserved(parent)


def test_a_child_of_a_cost_capped_parent_draws_cost_too():
    pipeline = Pipeline([Agent("lead", model="gpt-4o-mini")])
    controller = Controller(pipeline, policy="uniform")
    with controller.request(10_000, ceiling_usd=0.01) as req:
        with req.child("half", share=0.5) as kid:
            state = kid._steps.obs.state
            assert state.cost_ceiling == 5_000_000  # half of 0.01 USD in nano-USD
            assert req._steps.obs.state.cost_reserved == 5_000_000
            grant = kid.begin("lead", 100, 100)
            kid.finish(grant, input_tokens=100, output_tokens=100)
            spent = kid._steps.obs.state.cost_consumed
            assert spent > 0
        parent = req._steps.obs.state
        assert parent.cost_reserved == 0 and parent.cost_consumed == spent


def test_async_children_and_fan_out():
    controller = AsyncController(PIPELINE, policy=Fixed())

    async def worker(parent: Any, name: str) -> int:
        async with parent.child(name, share=1 / 64) as kid:
            assert current_request() is kid
            grant = await kid.begin("researcher", 10, 10)
            await asyncio.sleep(0)
            await kid.finish(grant, input_tokens=10, output_tokens=5)
            return int(kid.ceiling)

    async def main() -> None:
        async with controller.request(10_000) as req:
            granted = await asyncio.gather(*(worker(req, f"w{i}") for i in range(64)))
            assert sum(granted) <= 10_000
            state = req._steps.obs.state
            assert (state.consumed, state.free) == (64 * 15, 10_000 - 64 * 15)
            free = state.free
            kids = await req.fan_out(4)
            assert sum(k.ceiling for k in kids) == free
            async with kids[0]:
                pass
        assert all(k.closed for k in kids)

    asyncio.run(main())


def test_attach_to_a_request_opened_elsewhere_and_draw_children():
    store = MemoryStore()
    opener, worker = ctl(store=store), ctl(store=store)  # two processes, one store
    with opener.request(5_000) as req:
        parent = worker.attach(req.request_id)
        assert (parent.request_id, parent.ceiling, parent.depth) == (req.request_id, 5_000, 0)
        with parent.child("remote", share=0.5) as kid:
            assert kid.parent_id == req.request_id and kid.ceiling == 2_500
            use(kid, "researcher", 100, 100)
        (one,) = parent.fan_out(1, share=0.1)
        with one:  # open already: ``with`` only enters
            assert current_request() is one
        assert store.get(req.request_id).consumed == 200
        assert one.closed
        with pytest.raises(RequestClosed):
            worker.attach(one.request_id)
        deeper = worker.attach(req.child("deep", ceiling=10).open().request_id)
        assert deeper.depth == 1
    with pytest.raises(RequestClosed):
        worker.attach(req.request_id)
    with pytest.raises(UnknownRequest):
        worker.attach("nobody")
    with pytest.raises(InvalidArgument):
        worker.attach(42)  # type: ignore[arg-type]

    async def main() -> None:
        async with AsyncController(PIPELINE, policy=Fixed(), store=store).request(100) as areq:
            handle = await AsyncController(PIPELINE, store=store).aattach(areq.request_id)
            (kid,) = await handle.fan_out(["a"])
            assert kid.ceiling == 100

    asyncio.run(main())


def test_the_pure_ledger_settles_a_child_exactly_once():
    from apportion import Ledger

    ranks = {"lead": 2, "worker": 1}
    parent = Ledger("p", ranks, 1_000, 0.0, reserve={"lead": 300})
    assert (parent.spare(2), parent.spare(1), parent.spare(0)) == (1_000, 700, 700)
    draws = parent.split(["p::a", "p::b"], [2, 1], 0.0, share=1.0)
    assert draws == [(466, None), (233, None)]  # 700 for the lower rank, split 4:2
    kid = Ledger("p::a", ranks, 466, 0.0)
    kid.adopt(parent, 2, None)
    parent.draw("p::a", 466, None, 0.0)
    grant = kid.begin("worker", 100, 100, 0.0, 60.0)
    kid.finish(grant, 100, 20, 1.0)
    kid.close(2.0)
    parent.settle_child(kid, 2.0)
    parent.settle_child(kid, 3.0)  # a second fold-back changes nothing
    assert (parent.free, parent.reserved, parent.consumed) == (880, 0, 120)
    assert [e.kind for e in parent.events] == ["open", "child", "child_close"]
    with pytest.raises(ChildBudgetExceeded):
        parent.split(["p::c"], [0], 4.0, ceiling=581)  # 880 free, 300 held from rank 0
    deep = Ledger("p::d", ranks, 10, 0.0)
    deep.adopt(parent, 1, None)
    with pytest.raises(TreeTooDeep):
        deep.split(["p::d::x"], [1], 4.0, ceiling=1, max_depth=1)


def test_a_child_knows_its_name_and_a_root_has_none() -> None:
    ctl = Controller(Pipeline([Agent("a")]), policy="uniform")
    with ctl.request(ceiling=1_000) as req:
        kids = req.fan_out(["web", "papers"], share=0.5)
        with req.child("writer", ceiling=100) as writer:
            assert writer.name == "writer" and writer.child("x", ceiling=10).name == "x"
        assert [k.name for k in kids] == ["web", "papers"] and req.name is None
