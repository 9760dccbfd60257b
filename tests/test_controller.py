"""Controller and AsyncController: the public API, context managers, summaries, leases,
review loops, extensions, bad input (with fields, changing nothing), over-use, learning.

No real sleeps: time is a fake clock (``clock=lambda: now[0]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from apportion import (
    POLICIES,
    Agent,
    ApportionError,
    AsyncController,
    AsyncRequest,
    BudgetExceeded,
    Controller,
    DuplicateRequest,
    ForeignGrant,
    Grant,
    GrantExpired,
    GrantSettled,
    InvalidCeiling,
    InvalidTokenCount,
    Observation,
    Pipeline,
    Policy,
    Request,
    RequestClosed,
    UnknownAgent,
    UnknownPolicy,
    UnknownStore,
)


class Boom(Exception):
    """An error raised by user code inside a request block."""


def support() -> Pipeline:
    return Pipeline(
        [
            Agent("triage", priority="peripheral", output_kind="structured"),
            Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
            Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="structured"),
        ]
    )


def solo(**kwargs: Any) -> Pipeline:
    return Pipeline([Agent("solo", **kwargs)])


def snapshot(controller: Controller, request_id: str) -> tuple[Any, ...]:
    """Everything observable about a request's ledger, to check that nothing changed."""
    state = controller.store.get(request_id)
    return (
        state.to_dict(),  # type: ignore[attr-defined]
        controller.store.events(request_id),
        len(controller.store.events(request_id)),
        dict(state.grants),
        state.next_grant_id,  # type: ignore[attr-defined]
    )


def assert_conserved(controller: Controller, request_id: str) -> None:
    state = controller.store.get(request_id)
    assert state.free + state.reserved + state.consumed == state.ceiling
    assert 0 <= state.consumed <= state.ceiling
    assert state.free >= 0
    assert state.reserved == sum(g.total for g in state.grants.values())
    assert state.reserved == sum(state.reserved_by.values())
    assert state.consumed == sum(state.consumed_by.values())


def same_value(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


class Clock:
    """A fake clock: ``clock.now`` is what the controller reads."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------- the public API example


def test_design_example_sync() -> None:
    pipeline = Pipeline(
        [
            Agent("triage", priority="peripheral", output_kind="structured"),
            Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
            Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="structured"),
        ]
    )
    controller = Controller(pipeline, policy="elastic", store="memory://")
    out = io.StringIO()
    with controller.request(ceiling=20_000, features={"messages": 40}) as req:
        grant = req.begin("reasoner", input_tokens=7_900)
        first = grant
        grant = req.extend(grant, 500) or grant
        req.finish(grant, input_tokens=7_900, output_tokens=1_312, truncated=False)
    with contextlib.redirect_stdout(out):
        print(req.summary())

    assert isinstance(req, Request)
    assert isinstance(first, Grant)
    assert first.agent == "reasoner" and first.context_tokens == 7_900
    assert grant.grant_id == first.grant_id
    assert grant.output_tokens == first.output_tokens + 500
    summary = req.summary()
    assert summary.status == "closed" and req.closed
    assert summary.consumed == 7_900 + 1_312
    assert summary.agents["reasoner"].consumed == 9_212
    assert summary.reserved == 0 and summary.free == 20_000 - 9_212
    text = out.getvalue()
    for name in ("triage", "reasoner", "formatter", "total"):
        assert name in text
    assert_conserved(controller, req.request_id)


def test_design_example_async() -> None:
    controller = Controller(support(), policy="elastic", store="memory://")

    async def main() -> AsyncRequest:
        async with controller.arequest(ceiling=20_000) as req:
            grant = await req.begin("reasoner", input_tokens=7_900)
            grown = await req.extend(grant, 500) or grant
            assert grown.output_tokens == grant.output_tokens + 500
            await req.finish(grown, input_tokens=7_900, output_tokens=1_312, truncated=False)
        return req

    req = asyncio.run(main())
    assert isinstance(req, AsyncRequest)
    summary = req.summary()
    assert summary.status == "closed" and req.closed
    assert summary.consumed == 9_212 and summary.agents["reasoner"].calls == 1
    assert "reasoner" in str(summary)
    assert_conserved(controller, req.request_id)


# ---------------------------------------------------------------- context managers


def test_with_normal_exit_closes_and_releases_open_grants() -> None:
    controller = Controller(support(), policy="uniform")
    with controller.request(30_000) as req:
        done = req.begin("triage", 1_000, 500)
        req.finish(done, input_tokens=1_000, output_tokens=200)
        left_open = req.begin("reasoner", 2_000, 1_000)
        assert controller.store.get(req.request_id).reserved == left_open.total
        assert not req.closed
    state = controller.store.get(req.request_id)
    assert req.closed and state.status == "closed"
    assert state.reserved == 0 and state.consumed == 1_200 and state.free == 30_000 - 1_200
    events = controller.store.events(req.request_id)
    assert events[-1].kind == "close" and events[-1].note == "closed"
    released = [e for e in events if e.kind == "release"]
    assert [(e.grant_id, e.note) for e in released] == [(left_open.grant_id, "closed")]
    assert_conserved(controller, req.request_id)


def test_with_exception_releases_fails_and_reraises() -> None:
    controller = Controller(support(), policy="uniform")
    with pytest.raises(Boom, match="model call failed"), controller.request(30_000) as req:
        done = req.begin("triage", 1_000, 500)
        req.finish(done, input_tokens=1_000, output_tokens=400)
        a = req.begin("reasoner", 2_000, 1_000)
        b = req.begin("formatter", 500, 300)
        assert controller.store.get(req.request_id).reserved == a.total + b.total
        raise Boom("model call failed")
    state = controller.store.get(req.request_id)
    assert req.closed and state.status == "failed"
    assert state.reserved == 0 and state.grants == {}
    assert state.consumed == 1_400 and state.free == 30_000 - 1_400
    assert all(v == 0 for v in state.reserved_by.values())
    events = controller.store.events(req.request_id)
    assert {(e.grant_id, e.note) for e in events if e.kind == "release"} == {
        (a.grant_id, "failed"),
        (b.grant_id, "failed"),
    }
    assert events[-1].kind == "close" and events[-1].note == "failed"
    with pytest.raises(RequestClosed) as info:
        req.finish(a, input_tokens=1, output_tokens=1)
    assert info.value.status == "failed"
    assert_conserved(controller, req.request_id)


ASYNC_MAKERS: dict[str, tuple[type[Controller], Callable[[Any, int], AsyncRequest]]] = {
    "Controller.arequest": (Controller, lambda c, ceiling: c.arequest(ceiling)),
    "AsyncController.request": (AsyncController, lambda c, ceiling: c.request(ceiling)),
    "AsyncController.arequest": (AsyncController, lambda c, ceiling: c.arequest(ceiling)),
}


@pytest.mark.parametrize("how", list(ASYNC_MAKERS))
def test_async_with_normal_exit_closes(how: str) -> None:
    cls, make = ASYNC_MAKERS[how]
    controller = cls(support(), policy="uniform")

    async def main() -> tuple[AsyncRequest, Grant]:
        async with make(controller, 30_000) as req:
            assert isinstance(req, AsyncRequest)
            done = await req.begin("triage", 1_000, 500)
            await req.finish(done, input_tokens=1_000, output_tokens=200)
            left_open = await req.begin("reasoner", 2_000, 1_000)
        return req, left_open

    req, left_open = asyncio.run(main())
    state = controller.store.get(req.request_id)
    assert req.closed and state.status == "closed"
    assert state.reserved == 0 and state.consumed == 1_200
    events = controller.store.events(req.request_id)
    assert [e.grant_id for e in events if e.kind == "release"] == [left_open.grant_id]
    assert_conserved(controller, req.request_id)


@pytest.mark.parametrize("how", list(ASYNC_MAKERS))
def test_async_with_exception_releases_fails_and_reraises(how: str) -> None:
    cls, make = ASYNC_MAKERS[how]
    controller = cls(support(), policy="uniform")
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with make(controller, 30_000) as req:
            seen["req"] = req
            done = await req.begin("triage", 1_000, 500)
            await req.finish(done, input_tokens=1_000, output_tokens=400)
            seen["open"] = [await req.begin("reasoner", 2_000, 1_000)]
            seen["open"].append(await req.begin("formatter", 500, 300))
            await asyncio.sleep(0)
            raise Boom("cancelled by the orchestrator")

    with pytest.raises(Boom, match="orchestrator"):
        asyncio.run(main())
    req = seen["req"]
    state = controller.store.get(req.request_id)
    assert req.closed and state.status == "failed"
    assert state.reserved == 0 and state.grants == {} and state.consumed == 1_400
    assert state.free == 30_000 - 1_400
    released = {e.grant_id for e in controller.store.events(req.request_id) if e.kind == "release"}
    assert released == {g.grant_id for g in seen["open"]}
    assert_conserved(controller, req.request_id)


def test_request_must_be_opened() -> None:
    controller = Controller(support(), policy="uniform")
    req = controller.request(1_000)
    with pytest.raises(RuntimeError, match="not open"):
        req.begin("triage", 10)
    with pytest.raises(RuntimeError, match="never opened"):
        req.summary()
    req.open()
    with pytest.raises(RuntimeError, match="already open"):
        req.open()
    req.close()
    assert req.closed


# ------------------------------------------------------------------------- summary


def test_summary_per_agent_and_totals() -> None:
    controller = Controller(support(), policy="uniform")
    with controller.request(30_000) as req:
        s0 = req.summary()
        assert s0.status == "open" and s0.ceiling == 30_000
        assert (s0.reserved, s0.consumed, s0.free, s0.overflow) == (0, 0, 30_000, 0)
        for usage in s0.agents.values():
            assert (usage.allocated, usage.reserved, usage.consumed, usage.remaining) == (
                10_000,
                0,
                0,
                10_000,
            )

        grant = req.begin("triage", input_tokens=1_000, output_tokens=500)
        assert (grant.context_tokens, grant.output_tokens) == (1_000, 500)
        s1 = req.summary()
        triage = s1.agents["triage"]
        assert (triage.allocated, triage.reserved, triage.consumed, triage.remaining) == (
            10_000,
            1_500,
            0,
            8_500,
        )
        assert triage.calls == 1
        assert (s1.reserved, s1.consumed, s1.free) == (1_500, 0, 28_500)
        assert s1.agents["reasoner"].reserved == 0

        req.finish(grant, input_tokens=1_000, output_tokens=300, truncated=True)
        s2 = req.summary()
        triage = s2.agents["triage"]
        assert (triage.reserved, triage.consumed, triage.remaining) == (0, 1_300, 8_700)
        assert triage.truncated_calls == 1 and triage.overuse == 0
        assert (s2.reserved, s2.consumed, s2.free) == (0, 1_300, 28_700)

        open_grant = req.begin("reasoner", input_tokens=2_000, output_tokens=1_000)
        assert req.summary().reserved == open_grant.total == 3_000

    s3 = req.summary()
    assert s3.status == "closed"
    assert (s3.reserved, s3.consumed, s3.free) == (0, 1_300, 28_700)
    assert s3.agents["reasoner"].reserved == 0 and s3.agents["reasoner"].calls == 1
    assert s3.to_dict()["agents"]["triage"]["consumed"] == 1_300

    text = str(s3)
    lines = text.splitlines()
    assert req.request_id in lines[0] and "closed" in lines[0]
    for name in ("triage", "reasoner", "formatter"):
        assert any(line.split()[0] == name for line in lines), name
    assert "ceiling 30000 = consumed 1300 + open 0 + free 28700" in lines[0]
    total = next(line for line in lines if line.startswith("total")).split()
    # held, open and consumed add up to the request's totals; the plan is not summed
    assert total == ["total", "0", "0", "1300", "2", "0", "1", "0"]


def test_summary_columns_add_up_and_show_input_cuts() -> None:
    controller = Controller(support(), policy="elastic")
    with controller.request(12_000) as req:
        g = req.begin("triage", 600)
        req.finish(g, input_tokens=600, output_tokens=60)
        g = req.begin("reasoner", 30_000)  # far more input than the ceiling: cut
        assert g.context_tokens < 30_000
        req.finish(g, input_tokens=g.context_tokens, output_tokens=10)
        summary = req.summary()
        assert summary.agents["reasoner"].input_cut_calls == 1
        assert req.calls[g.grant_id].input_cut and req.calls[g.grant_id].input_asked == 30_000
        assert summary.held == sum(u.held for u in summary.agents.values())
        assert summary.held <= summary.free
        assert summary.consumed == sum(u.consumed for u in summary.agents.values())
        total = next(r for r in str(summary).splitlines() if r.startswith("total")).split()
        assert total[-3] == "1"  # one input cut in all


def test_summary_reflects_policy_plan() -> None:
    controller = Controller(support(), policy="elastic")
    with controller.request(20_000) as req:
        summary = req.summary()
        state = controller.store.get(req.request_id)
        for name, usage in summary.agents.items():
            assert usage.allocated == state.allocation[name]
        assert state.reserve.get("reasoner", 0) > 0  # critical agent protected


# -------------------------------------------------------------------------- leases


def test_expired_grant_is_reclaimed_on_next_operation() -> None:
    clock = Clock()
    controller = Controller(support(), policy="uniform", clock=clock, lease_seconds=10)
    with controller.request(30_000) as req:
        stale = req.begin("triage", 1_000, 500)
        assert stale.lease_expires_at == 1010.0
        clock.now = 1009.5
        assert controller.reap() == 0  # not yet
        assert controller.store.get(req.request_id).reserved == stale.total

        clock.now = 1010.0
        fresh = req.begin("reasoner", 2_000, 1_000)
        state = controller.store.get(req.request_id)
        assert state.reserved == fresh.total and stale.grant_id not in state.grants
        assert state.reserved_by["triage"] == 0 and state.consumed == 0
        expired = [e for e in controller.store.events(req.request_id) if e.kind == "expire"]
        assert [(e.grant_id, e.context_tokens, e.output_tokens) for e in expired] == [
            (stale.grant_id, 1_000, 500)
        ]

        before = snapshot(controller, req.request_id)
        with pytest.raises(GrantExpired) as info:
            req.renew(stale)
        assert isinstance(info.value, GrantSettled)
        assert info.value.settled_by == "expire"
        assert info.value.grant_id == stale.grant_id and info.value.agent == "triage"
        assert snapshot(controller, req.request_id) == before
        # the call outlived its lease: its usage is still recorded, late, as over-use
        req.finish(stale, input_tokens=1_000, output_tokens=400)
        state = controller.store.get(req.request_id)
        assert state.consumed == 1_400 and state.overuse_by["triage"] == 1_400
        late = req.calls[stale.grant_id]
        assert (late.status, late.overuse, late.input_used) == ("late", 1_400, 1_000)
        assert req.summary().agents["triage"].overuse == 1_400
        req.finish(fresh, input_tokens=2_000, output_tokens=10)
    assert_conserved(controller, req.request_id)


def test_renew_keeps_a_long_call_alive() -> None:
    clock = Clock()
    controller = Controller(support(), policy="uniform", clock=clock, lease_seconds=10)
    with controller.request(30_000) as req:
        grant = req.begin("triage", 1_000, 500)
        clock.now += 8
        renewed = req.renew(grant)
        assert renewed.lease_expires_at == clock.now + 10 and renewed.total == grant.total
        clock.now += 8  # past the first lease, within the renewed one
        assert controller.reap() == 0
        req.finish(grant, input_tokens=1_000, output_tokens=450)
        call = req.calls[grant.grant_id]
        assert (call.status, call.extensions, call.overuse) == ("completed", 0, 0)


def test_reap_reclaims_expired_grants_which_only_a_late_finish_settles() -> None:
    clock = Clock()
    controller = Controller(support(), policy="estimate", clock=clock, lease_seconds=10)
    with controller.request(30_000) as req:
        g = req.begin("reasoner", 1_000, 500)
        clock.now = 1011.0
        assert controller.reap() == 1
        state = controller.store.get(req.request_id)
        assert state.reserved == 0 and state.free == 30_000 and state.grants == {}
        before = snapshot(controller, req.request_id)
        with pytest.raises(GrantExpired) as info:
            req.extend(g, 100)
        assert info.value.settled_by == "expire"
        with pytest.raises(GrantExpired):
            req.release(g)
        assert snapshot(controller, req.request_id) == before
        assert controller.reap() == 0
        req.finish(g, input_tokens=1_000, output_tokens=500)
        assert controller.store.get(req.request_id).consumed == 1_500
        with pytest.raises(GrantSettled):
            req.finish(g, input_tokens=1_000, output_tokens=500)


def test_async_reap_and_expired_grant() -> None:
    clock = Clock()
    controller = AsyncController(support(), policy="elastic", clock=clock, lease_seconds=10)

    async def main() -> None:
        async with controller.request(30_000) as req:
            g = await req.begin("reasoner", 1_000, 500)
            clock.now = 1010.0
            assert await controller.areap() == 1
            before = snapshot(controller, req.request_id)
            with pytest.raises(GrantExpired):
                await req.renew(g)
            assert snapshot(controller, req.request_id) == before
            await req.finish(g, input_tokens=1, output_tokens=1)
            assert req.calls[g.grant_id].status == "late"

    asyncio.run(main())


def test_extend_renews_the_lease() -> None:
    clock = Clock()
    controller = Controller(support(), policy="estimate", clock=clock, lease_seconds=10)
    with controller.request(30_000) as req:
        g = req.begin("reasoner", 1_000, 500)
        assert g.lease_expires_at == 1010.0
        clock.now = 1008.0
        grown = req.extend(g, 200)
        assert grown is not None and grown.lease_expires_at == 1018.0
        clock.now = 1015.0
        assert controller.reap() == 0
        req.finish(grown, input_tokens=1_000, output_tokens=650)
        state = controller.store.get(req.request_id)
        assert state.consumed == 1_650 and state.reserved == 0
        assert not [e for e in controller.store.events(req.request_id) if e.kind == "expire"]


def test_request_ttl_expires_overdue_requests_on_reap() -> None:
    clock = Clock()
    controller = Controller(
        support(), policy="uniform", clock=clock, lease_seconds=10, request_ttl=100
    )
    with controller.request(30_000) as req:
        g = req.begin("triage", 1_000, 500)
        req.finish(g, input_tokens=1_000, output_tokens=100)
        req.begin("reasoner", 1_000, 500)
        clock.now = 1099.0
        assert controller.reap() == 1  # the lease, not the request
        assert controller.store.get(req.request_id).status == "open"
        req.begin("reasoner", 1_000, 500)
        clock.now = 1100.0
        assert controller.reap() == 1  # the request (its lease ends at 1109)
        state = controller.store.get(req.request_id)
        assert state.status == "expired" and req.summary().status == "expired"
        assert state.reserved == 0 and state.consumed == 1_100
        assert controller.store.events(req.request_id)[-1].note == "expired"
        with pytest.raises(RequestClosed) as info:
            req.begin("formatter", 10)
        assert info.value.status == "expired"
    # leaving the block does not fail because the store closed the request already
    assert req.closed
    assert controller.store.get(req.request_id).status == "expired"
    assert_conserved(controller, req.request_id)


def test_expired_request_does_not_mask_the_users_exception() -> None:
    clock = Clock()
    controller = Controller(support(), policy="uniform", clock=clock, request_ttl=100)
    with pytest.raises(Boom), controller.request(30_000) as req:
        req.begin("triage", 1_000, 500)
        clock.now = 2000.0
        controller.reap()
        raise Boom("user error")
    assert req.closed and controller.store.get(req.request_id).status == "expired"
    with pytest.raises(RequestClosed):
        req.close()

    async def main() -> None:
        async with controller.arequest(30_000):
            clock.now = 5000.0
            controller.reap()
            raise Boom("async user error")

    with pytest.raises(Boom):
        asyncio.run(main())


# --------------------------------------------------------- review loops and branches


def test_review_loop_one_agent_several_calls() -> None:
    controller = Controller(support(), policy="uniform")
    with controller.request(30_000) as req:
        grants = []
        for round_ in range(3):
            g = req.begin("reasoner", input_tokens=2_000 + 500 * round_)
            grants.append(g)
            req.finish(g, input_tokens=2_000 + 500 * round_, output_tokens=400)
        state = controller.store.get(req.request_id)
        assert state.calls["reasoner"] == 3
        assert state.consumed_by["reasoner"] == 2_400 + 2_900 + 3_400
        assert len({g.grant_id for g in grants}) == 3
        # uniform: repeated calls draw on the same share, so each grant is smaller
        totals = [g.total for g in grants]
        assert totals[0] > totals[1] > totals[2]
        assert totals[0] == 10_000 and totals[1] == 10_000 - 2_400
    kinds = [e.kind for e in controller.store.events(req.request_id)]
    assert kinds == ["open"] + ["begin", "finish"] * 3 + ["close"]


@pytest.mark.parametrize("policy", ["uniform", "estimate", "elastic", "iterative"])
def test_review_loop_with_predicting_policies(policy: str) -> None:
    controller = Controller(support(), policy=policy)
    with controller.request(50_000) as req:
        for _ in range(4):
            g = req.begin("reasoner", input_tokens=1_000, output_tokens=800)
            assert g.output_tokens <= 800
            req.finish(g, input_tokens=1_000, output_tokens=g.output_tokens // 2)
            assert_conserved(controller, req.request_id)
        assert controller.store.get(req.request_id).calls["reasoner"] == 4


def diamond() -> Pipeline:
    return Pipeline(
        [
            Agent("plan", priority="critical"),
            Agent("search", priority="standard", after=["plan"]),
            Agent("critic", priority="peripheral", after=["plan"]),
            Agent("write", priority="critical", after=["search", "critic"]),
        ]
    )


@pytest.mark.parametrize("policy", ["uniform", "estimate", "elastic", "iterative"])
def test_dag_branches_have_grants_open_together(policy: str) -> None:
    controller = Controller(diamond(), policy=policy)
    with controller.request(40_000) as req:
        g = req.begin("plan", 1_000)
        req.finish(g, input_tokens=1_000, output_tokens=300)
        left = req.begin("search", 1_500)
        right = req.begin("critic", 800)
        state = controller.store.get(req.request_id)
        assert set(state.grants) == {left.grant_id, right.grant_id}
        assert state.reserved == left.total + right.total
        assert state.reserved_by["search"] == left.total
        assert state.reserved_by["critic"] == right.total
        assert_conserved(controller, req.request_id)
        req.finish(right, input_tokens=right.context_tokens, output_tokens=0)
        assert controller.store.get(req.request_id).reserved == left.total
        req.finish(left, input_tokens=left.context_tokens, output_tokens=left.output_tokens)
        last = req.begin("write", 2_000)
        req.finish(last, input_tokens=2_000, output_tokens=1)
    state = controller.store.get(req.request_id)
    assert all(state.calls[a] == 1 for a in diamond().names)
    assert_conserved(controller, req.request_id)


# -------------------------------------------------------------------------- extend


def test_extend_enlarges_the_same_grant() -> None:
    controller = Controller(support(), policy="estimate")
    with controller.request(30_000) as req:
        g = req.begin("reasoner", 1_000, 500)
        reserved = controller.store.get(req.request_id).reserved
        grown = req.extend(g, 300)
        assert isinstance(grown, Grant)
        assert grown.grant_id == g.grant_id and grown.agent == g.agent
        assert grown.output_tokens == g.output_tokens + 300
        assert grown.context_tokens == g.context_tokens
        assert controller.store.get(req.request_id).reserved == reserved + 300

        more = req.extend(grown, 100, context_tokens=700)
        assert more is not None and more.grant_id == g.grant_id
        assert more.context_tokens == g.context_tokens + 700
        assert more.output_tokens == grown.output_tokens + 100
        state = controller.store.get(req.request_id)
        assert state.reserved == reserved + 300 + 800 == state.reserved_by["reasoner"]
        extends = [e for e in controller.store.events(req.request_id) if e.kind == "extend"]
        assert [(e.context_tokens, e.output_tokens) for e in extends] == [(0, 300), (700, 100)]

        # any version of the grant settles it: extensions keep its id
        req.finish(g, input_tokens=1_700, output_tokens=900)
        state = controller.store.get(req.request_id)
        assert state.reserved == 0 and state.consumed == 2_600
        assert state.overuse_by["reasoner"] == 0
        assert_conserved(controller, req.request_id)


def test_extend_returns_none_when_nothing_can_be_spared() -> None:
    controller = Controller(support(), policy="uniform")  # uniform never extends
    with controller.request(30_000) as req:
        g = req.begin("reasoner", 1_000, 500)
        before = snapshot(controller, req.request_id)
        assert req.extend(g, 300) is None
        assert snapshot(controller, req.request_id) == before

    controller = Controller(solo(), policy="estimate")
    with controller.request(1_100) as req:
        g = req.begin("solo", 600, 200)
        left = 1_100 - g.total
        assert left > 0
        grown = req.extend(g, 10_000)
        assert grown is not None and grown.output_tokens == g.output_tokens + left  # all left
        before = snapshot(controller, req.request_id)
        assert req.extend(grown, 50) is None
        assert snapshot(controller, req.request_id) == before
        req.finish(grown, input_tokens=600, output_tokens=grown.output_tokens)
        assert controller.store.get(req.request_id).free == 0


# ------------------------------------------------------------------------- bad input

BAD_COUNTS = [-1, float("nan"), 10.0, True, 10**13, "12", None]


def check_invalid(info: pytest.ExceptionInfo[InvalidTokenCount], field: str, value: object) -> None:
    exc = info.value
    assert isinstance(exc, ApportionError) and isinstance(exc, ValueError)
    assert exc.field == field
    assert same_value(exc.value, value)


@pytest.fixture
def opened() -> Any:
    controller = Controller(support(), policy="elastic")
    with controller.request(30_000) as req:
        g = req.begin("reasoner", 1_000, 500)
        yield controller, req, g


@pytest.mark.parametrize(
    ("field", "value"),
    [("input_tokens", v) for v in BAD_COUNTS]
    # output_tokens=None is valid for begin: "as much as the policy grants"
    + [("output_tokens", v) for v in BAD_COUNTS if v is not None],
    ids=repr,
)
def test_begin_bad_token_counts(opened: Any, field: str, value: object) -> None:
    controller, req, _ = opened
    before = snapshot(controller, req.request_id)
    kwargs: dict[str, Any] = {"input_tokens": 100, "output_tokens": 100, field: value}
    with pytest.raises(InvalidTokenCount) as info:
        req.begin("triage", **kwargs)
    check_invalid(info, field, value)
    assert snapshot(controller, req.request_id) == before


@pytest.mark.parametrize("value", [v for v in BAD_COUNTS if v is not None], ids=repr)
@pytest.mark.parametrize("field", ["input_tokens", "output_tokens"])
def test_finish_bad_token_counts(opened: Any, field: str, value: object) -> None:
    controller, req, g = opened
    before = snapshot(controller, req.request_id)
    kwargs: dict[str, Any] = {"input_tokens": 100, "output_tokens": 100, field: value}
    with pytest.raises(InvalidTokenCount) as info:
        req.finish(g, **kwargs)
    check_invalid(info, field, value)
    assert snapshot(controller, req.request_id) == before
    req.finish(g, input_tokens=1_000, output_tokens=10)  # the grant is still open
    assert controller.store.get(req.request_id).consumed == 1_010


@pytest.mark.parametrize("value", BAD_COUNTS, ids=repr)
@pytest.mark.parametrize("field", ["output_tokens", "context_tokens"])
def test_extend_bad_token_counts(opened: Any, field: str, value: object) -> None:
    controller, req, g = opened
    before = snapshot(controller, req.request_id)
    with pytest.raises(InvalidTokenCount) as info:
        if field == "output_tokens":
            req.extend(g, value)
        else:
            req.extend(g, 100, context_tokens=value)
    check_invalid(info, field, value)
    assert snapshot(controller, req.request_id) == before


def test_async_bad_token_counts_change_nothing() -> None:
    controller = AsyncController(support(), policy="elastic")

    async def main() -> None:
        async with controller.request(30_000) as req:
            g = await req.begin("reasoner", 1_000, 500)
            before = snapshot(controller, req.request_id)
            with pytest.raises(InvalidTokenCount) as info:
                await req.begin("triage", -5)
            assert info.value.field == "input_tokens" and info.value.value == -5
            with pytest.raises(InvalidTokenCount) as info:
                await req.finish(g, input_tokens=1, output_tokens=10**13)
            assert info.value.field == "output_tokens"
            with pytest.raises(InvalidTokenCount) as info:
                await req.extend(g, 1.5)  # type: ignore[arg-type]
            assert info.value.field == "output_tokens"
            assert snapshot(controller, req.request_id) == before

    asyncio.run(main())


def test_unknown_agent(opened: Any) -> None:
    controller, req, _ = opened
    before = snapshot(controller, req.request_id)
    with pytest.raises(UnknownAgent) as info:
        req.begin("summariser", 100)
    assert info.value.agent == "summariser"
    assert info.value.known == ["triage", "reasoner", "formatter"]
    assert "triage" in str(info.value)
    assert snapshot(controller, req.request_id) == before


def test_budget_exceeded_has_fields_and_changes_nothing() -> None:
    controller = Controller(solo(min_output=100), policy="uniform")
    with controller.request(50) as req:
        before = snapshot(controller, req.request_id)
        with pytest.raises(BudgetExceeded) as info:
            req.begin("solo", 10)
        assert info.value.agent == "solo"
        assert info.value.available == 50
        assert info.value.requested > info.value.available
        assert snapshot(controller, req.request_id) == before


def test_finishing_twice_is_grant_settled(opened: Any) -> None:
    controller, req, g = opened
    req.finish(g, input_tokens=1_000, output_tokens=400)
    before = snapshot(controller, req.request_id)
    for again in (
        lambda: req.finish(g, input_tokens=1_000, output_tokens=400),
        lambda: req.release(g),
        lambda: req.extend(g, 10),
    ):
        with pytest.raises(GrantSettled) as info:
            again()
        assert not isinstance(info.value, GrantExpired)
        assert info.value.settled_by == "finish"
        assert info.value.grant_id == g.grant_id and info.value.agent == "reasoner"
        assert snapshot(controller, req.request_id) == before

    released = req.begin("triage", 100, 100)
    req.release(released)
    before = snapshot(controller, req.request_id)
    with pytest.raises(GrantSettled) as info:
        req.finish(released, input_tokens=100, output_tokens=1)
    assert info.value.settled_by == "release"
    assert snapshot(controller, req.request_id) == before


def test_grant_from_another_request_is_foreign() -> None:
    controller = Controller(support(), policy="elastic")
    with controller.request(30_000) as mine, controller.request(30_000) as other:
        theirs = other.begin("reasoner", 1_000, 500)
        g = mine.begin("reasoner", 1_000, 500)
        before_mine = snapshot(controller, mine.request_id)
        before_other = snapshot(controller, other.request_id)
        for call in (
            lambda: mine.finish(theirs, input_tokens=1, output_tokens=1),
            lambda: mine.extend(theirs, 10),
            lambda: mine.release(theirs),
            lambda: mine.note_fitted(theirs, 1, 10),
        ):
            with pytest.raises(ForeignGrant) as info:
                call()
            assert info.value.grant_request_id == other.request_id
            assert info.value.request_id == mine.request_id
        with pytest.raises(ForeignGrant) as info:
            mine.finish(tuple(g), input_tokens=1, output_tokens=1)  # type: ignore[arg-type]
        assert snapshot(controller, mine.request_id) == before_mine
        assert snapshot(controller, other.request_id) == before_other


def test_fitted_messages_are_noted_with_the_request_and_bad_counts_refused() -> None:
    controller = Controller(support(), policy="elastic")
    with controller.request(30_000) as req:
        grant = req.begin("reasoner", 1_000, 500)
        before = snapshot(controller, req.request_id)
        for messages, tokens in ((-1, 10), (2, 1.5), (True, 3)):
            with pytest.raises(InvalidTokenCount):
                req.note_fitted(grant, messages, tokens)  # type: ignore[arg-type]
        req.note_fitted(grant, 3, 420)
        assert snapshot(controller, req.request_id) == before  # no ledger change
        (note,) = [e for e in controller.store.history(req.request_id) if e.kind == "fitted"]
        assert (note.agent, note.grant_id, note.context_tokens, note.note) == (
            "reasoner",
            grant.grant_id,
            420,
            "3",
        )


@pytest.mark.parametrize("ceiling", [0, -1, 10.0, float("nan"), True, None, "100", 10**13])
def test_invalid_ceiling(ceiling: object) -> None:
    controller = Controller(support())
    with pytest.raises(InvalidCeiling) as info:
        controller.request(ceiling)  # type: ignore[arg-type]
    assert isinstance(info.value, InvalidTokenCount) and isinstance(info.value, ApportionError)
    assert info.value.field == "ceiling"
    assert same_value(info.value.value, ceiling)
    with pytest.raises(InvalidCeiling):
        controller.arequest(ceiling)  # type: ignore[arg-type]
    with pytest.raises(InvalidCeiling):
        AsyncController(support()).request(ceiling)  # type: ignore[arg-type]


def test_operations_after_close_raise_request_closed(opened: Any) -> None:
    controller, req, g = opened
    req.close()
    before = snapshot(controller, req.request_id)
    for call in (
        lambda: req.begin("triage", 10),
        lambda: req.finish(g, input_tokens=1, output_tokens=1),
        lambda: req.extend(g, 10),
        lambda: req.release(g),
        lambda: req.close(),
        lambda: req.score(0.5),
    ):
        with pytest.raises(RequestClosed) as info:
            call()
        assert info.value.request_id == req.request_id and info.value.status == "closed"
    assert snapshot(controller, req.request_id) == before


def test_async_operations_after_close() -> None:
    controller = Controller(support(), policy="uniform")

    async def main() -> None:
        async with controller.arequest(30_000) as req:
            g = await req.begin("triage", 10)
        before = snapshot(controller, req.request_id)
        with pytest.raises(RequestClosed):
            await req.begin("triage", 10)
        with pytest.raises(RequestClosed):
            await req.finish(g, input_tokens=1, output_tokens=1)
        with pytest.raises(RequestClosed):
            await req.extend(g, 1)
        assert snapshot(controller, req.request_id) == before

    asyncio.run(main())


@pytest.mark.parametrize("name", ["nope", "uniform:x", "", "Elastic"])
def test_unknown_policy(name: str) -> None:
    with pytest.raises(UnknownPolicy) as info:
        Controller(support(), policy=name)
    assert info.value.name == name
    assert info.value.known == sorted(POLICIES)
    assert {"uniform", "estimate", "elastic", "iterative", "static"} <= set(info.value.known)


@pytest.mark.parametrize("url", ["mongodb://localhost:27017", "nope", "postgres://x", ""])
def test_unknown_store(url: str) -> None:
    with pytest.raises(UnknownStore) as info:
        Controller(support(), store=url)
    assert info.value.url == url
    assert info.value.known == [
        "memory",
        "redis",
        "redis+cluster",
        "redis+sentinel",
        "rediss",
        "rediss+cluster",
        "rediss+sentinel",
    ]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -math.inf, True, "0.5", None])
def test_score_must_be_finite(value: object) -> None:
    controller = Controller(support(), policy="uniform")
    with controller.request(1_000) as req:
        with pytest.raises(ValueError):
            req.score(value)  # type: ignore[arg-type]
        req.score(0.25)  # a good one still works
    assert controller.store.get(req.request_id).outcome == 0.25


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_features_must_be_finite(value: float) -> None:
    controller = Controller(support())
    with pytest.raises(ValueError, match="finite"):
        controller.request(1_000, features={"messages": 3, "doc_length": value})
    with pytest.raises(ValueError, match="finite"):
        controller.arequest(1_000, features={"doc_length": value})


def test_features_must_be_a_mapping_with_string_keys() -> None:
    controller = Controller(support())
    with pytest.raises(TypeError):
        controller.request(1_000, features=[("messages", 3)])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        controller.request(1_000, features={1: 3})  # type: ignore[dict-item]


# ------------------------------------------------------------------------- over-use


def test_overuse_is_recorded_and_charged_to_the_pool() -> None:
    controller = Controller(support(), policy="uniform")
    with controller.request(3_000) as req:
        g = req.begin("triage", 100, 200)
        assert g.total == 300
        req.finish(g, input_tokens=100, output_tokens=500)  # 300 beyond the grant
        state = controller.store.get(req.request_id)
        assert state.overuse_by["triage"] == 300
        assert state.consumed == 600 and state.consumed_by["triage"] == 600
        assert state.free == 2_400 and state.overflow == 0
        assert req.summary().agents["triage"].overuse == 300
        finish = controller.store.events(req.request_id)[-1]
        assert (finish.kind, finish.overuse, finish.output_tokens) == ("finish", 300, 500)
        assert state.available_for("formatter") == 2_400
        assert_conserved(controller, req.request_id)


def test_overuse_beyond_the_pool_lands_in_overflow() -> None:
    controller = Controller(support(), policy="uniform")
    with controller.request(3_000) as req:
        small = req.begin("triage", 100, 200)
        big = req.begin("reasoner", 100)  # uniform: its whole share of 1000
        assert big.total == 1_000
        req.finish(small, input_tokens=500, output_tokens=2_000)  # used 2500, granted 300
        state = controller.store.get(req.request_id)
        assert state.overuse_by["triage"] == 2_200
        assert state.consumed == 2_000  # all the pool had: 3000 - 1000 reserved
        assert state.overflow == 500
        assert state.consumed <= state.ceiling and state.free == 0
        summary = req.summary()
        assert summary.overflow == 500 and "500" in str(summary).splitlines()[-1]
        assert_conserved(controller, req.request_id)

        # the next begin sees the empty pool
        before = snapshot(controller, req.request_id)
        with pytest.raises(BudgetExceeded) as info:
            req.begin("formatter", 10)
        assert info.value.agent == "formatter" and info.value.available == 0
        assert snapshot(controller, req.request_id) == before

        req.finish(big, input_tokens=100, output_tokens=50)
        state = controller.store.get(req.request_id)
        assert state.consumed == 2_150 and state.free == 850 and state.overflow == 500
        assert_conserved(controller, req.request_id)


@pytest.mark.parametrize("policy", ["estimate", "elastic", "iterative"])
def test_overuse_never_breaks_the_cap(policy: str) -> None:
    controller = Controller(support(), policy=policy)
    with controller.request(5_000) as req:
        for agent in ("triage", "reasoner", "formatter"):
            try:
                g = req.begin(agent, 500)
            except BudgetExceeded:
                continue
            req.finish(g, input_tokens=500, output_tokens=g.output_tokens * 5 + 1_000)
            assert_conserved(controller, req.request_id)
    state = controller.store.get(req.request_id)
    assert state.consumed <= 5_000
    assert sum(state.overuse_by.values()) > 0


# -------------------------------------------------------------------------- learning


class Recording(Policy):
    """A tiny policy: grants what is asked (output 100 by default) and records learn."""

    name = "recording"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.learned: list[tuple[str, float | None, str, list[tuple[str, int, int, bool]]]] = []

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        return input_tokens, 100 if output_tokens is None else output_tokens

    def learn(self, obs: Observation, outcome: float | None) -> None:
        self.learned.append((obs.request_id, outcome, obs.state.status, obs.usage()))
        if self.fail:
            raise ZeroDivisionError("bad update")


def test_score_reaches_learn_at_close() -> None:
    policy = Recording()
    controller = Controller(support(), policy=policy)
    assert controller.policy is policy
    with controller.request(10_000) as req:
        g = req.begin("triage", 200, 50)
        req.finish(g, input_tokens=200, output_tokens=40, truncated=True)
        req.score(0.75)
        assert policy.learned == []  # not before close
    assert policy.learned == [(req.request_id, 0.75, "closed", [("triage", 200, 40, True)])]
    assert controller.store.get(req.request_id).outcome == 0.75

    with controller.request(10_000) as unscored:
        pass
    assert policy.learned[-1][:3] == (unscored.request_id, None, "closed")

    with pytest.raises(Boom), controller.request(10_000) as failed:
        failed.score(0.0)
        raise Boom
    assert policy.learned[-1][:3] == (failed.request_id, 0.0, "failed")


def test_async_score_reaches_learn() -> None:
    policy = Recording()
    controller = AsyncController(support(), policy=policy)

    async def main() -> str:
        async with controller.request(10_000) as req:
            g = await req.begin("reasoner", 10)
            await req.finish(g, input_tokens=10, output_tokens=20)
            req.score(1)
        return req.request_id

    rid = asyncio.run(main())
    assert policy.learned == [(rid, 1.0, "closed", [("reasoner", 10, 20, False)])]


def test_failing_learn_warns_and_does_not_break_the_request() -> None:
    policy = Recording(fail=True)
    controller = Controller(support(), policy=policy)
    with (
        pytest.warns(UserWarning, match="failed to learn") as record,
        controller.request(10_000) as req,
    ):
        g = req.begin("formatter", 10)
        req.finish(g, input_tokens=10, output_tokens=10)
        req.score(0.5)
    assert "ZeroDivisionError" in str(record[0].message)
    assert req.closed and controller.store.get(req.request_id).status == "closed"
    assert len(policy.learned) == 1

    # an exception in the block still wins over the warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(Boom), controller.request(10_000):
            raise Boom
    assert any("failed to learn" in str(w.message) for w in caught)


def test_request_ids_of_your_own() -> None:
    controller = Controller(support(), policy="uniform")
    with controller.request(1_000, request_id="ticket-42") as req:
        assert req.request_id == "ticket-42"
        twin = controller.request(1_000, request_id="ticket-42")
        with pytest.raises(DuplicateRequest) as info:
            twin.open()
        assert info.value.request_id == "ticket-42"
        g = req.begin("triage", 10, 10)
        assert g.request_id == "ticket-42"
    assert controller.store.get("ticket-42").status == "closed"
    with controller.request(2_000, request_id="ticket-42") as again:  # reusable once closed
        assert controller.store.get(again.request_id).ceiling == 2_000


def test_a_dead_workers_tokens_come_back_without_anyone_reaping() -> None:
    """Expiry happens by itself: opening a request first reaps (at most every reap_every)."""
    from apportion.pools import Pool
    from apportion.stores import MemoryStore
    from apportion.telemetry import flush

    clock = Clock()
    records: list[Any] = []

    class Sink:
        def write(self, batch: list[Any]) -> None:
            records.extend(batch)

    store = MemoryStore()
    store.define_pool(Pool("tenant", 10_000, math.inf))
    worker = Controller(support(), store=store, clock=clock, request_ttl=60, lease_seconds=30)
    dead = worker.request(8_000, {"messages": 14, "thread": [1, 2]}, pool="tenant")
    dead.open()
    dead.begin("triage", 1_000, 500)  # ... and the worker is killed here
    assert store.get_pool("tenant", clock.now).remaining == 2_000

    other = Controller(
        support(), store=store, clock=clock, reap_every=10, request_ttl=60, telemetry=Sink()
    )
    clock.now += 61
    with other.request(9_000, pool="tenant") as req:  # the open reaps first, then draws
        assert req.summary().free == 9_000
    assert store.get(dead.request_id).status == "expired"
    assert flush(10)
    expired = [r for r in records if r.request_id == dead.request_id]
    assert [r.status for r in expired] == ["expired"]
    assert [c.settled for c in expired[0].calls] == ["expire"]
    assert expired[0].features == {"messages": 14}  # as it opened (a list stays with it)


def test_start_reaper_reaps_on_a_timer() -> None:
    clock = Clock()
    controller = Controller(support(), clock=clock, lease_seconds=5)
    req = controller.request(1_000)
    req.open()
    req.begin("triage", 100, 100)
    clock.now += 10
    with controller.start_reaper(every=0.01) as reaper:
        for _ in range(500):
            if controller.store.get(req.request_id).reserved == 0:
                break
            threading.Event().wait(0.01)
    assert controller.store.get(req.request_id).reserved == 0 and reaper.runs >= 1
    with pytest.raises(ValueError):
        controller.start_reaper(every=0)


def test_a_refused_begin_is_on_record() -> None:
    controller = Controller(support(), policy="uniform")
    with controller.request(300) as req:
        grant = req.begin("triage", 50, 50)
        req.finish(grant, input_tokens=300, output_tokens=0)  # over-use: the pool is spent
        before = controller.store.get(req.request_id).to_dict()
        with pytest.raises(BudgetExceeded):
            req.begin("reasoner", 5_000, 5_000)
        assert controller.store.get(req.request_id).to_dict() == before
        (refused,) = req.refused
        assert (refused.agent, refused.grant_id, refused.status) == ("reasoner", 0, "refused")
        assert refused.input_asked == 5_000 and not refused.finished
        assert list(req.calls) == [grant.grant_id]
