"""The wrap-up reserve (``begin(..., wrap_up_tokens=N)``) and the call statuses.

A grant may keep N of its output tokens for handing back a partial result once it is
spent and an extension is refused; a reserve larger than the grant is refused with fields
and changes nothing. A call's status says how its answer ended (``completed``,
``wrapped_up``, ``cut``, ``refused``), and every output that counts calls carries it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apportion import (
    Agent,
    AsyncController,
    BudgetExceeded,
    Controller,
    Grant,
    InvalidArgument,
    InvalidTokenCount,
    Observation,
    Pipeline,
    Policy,
    WrapUpTooLarge,
)

PIPELINE = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
    ]
)


class Fixed(Policy):
    """Grants the input and ``output`` output tokens; extends by ``extra``."""

    name = "fixed"

    def __init__(self, output: int = 200, extra: int = 0) -> None:
        self.output = output
        self.extra = extra

    def grant(
        self, obs: Observation, agent: Agent, input_tokens: int, output_tokens: int | None
    ) -> tuple[int, int]:
        out = self.output if output_tokens is None else min(self.output, output_tokens)
        return input_tokens, out

    def extend(
        self, obs: Observation, grant: Grant, output_tokens: int, context_tokens: int
    ) -> int:
        return self.extra


def make(policy: Policy | None = None, **kwargs: Any) -> Controller:
    return Controller(PIPELINE, policy=policy or Fixed(), clock=lambda: 0.0, **kwargs)


def test_the_reserve_rides_inside_the_grant_beside_the_policys_output() -> None:
    with make().request(ceiling=2_000) as req:
        grant = req.begin("reasoner", 100, 150, wrap_up_tokens=50)
        assert (grant.output_tokens, grant.wrap_up_tokens, grant.working_tokens) == (200, 50, 150)
        assert req.summary().reserved == 300  # the grant holds it: nothing beside the grant
        assert req.calls[grant.grant_id].wrap_up_reserve == 50
        req.finish(grant, input_tokens=100, output_tokens=190)
        assert req.calls[grant.grant_id].status == "completed"


def test_the_working_output_shrinks_to_make_room_for_the_reserve() -> None:
    with make().request(ceiling=400) as req:  # 100 in + 200 out + 150 kept: 50 too many
        grant = req.begin("reasoner", 100, wrap_up_tokens=150)
        assert (grant.working_tokens, grant.wrap_up_tokens, grant.total) == (150, 150, 400)


def test_a_reserve_the_agent_cannot_draw_is_refused_with_fields_changing_nothing() -> None:
    with make().request(ceiling=300) as req:
        before = req.summary()
        with pytest.raises(WrapUpTooLarge) as info:
            req.begin("reasoner", 100, wrap_up_tokens=200)  # 200 left for output: none to work
        assert (info.value.agent, info.value.wrap_up_tokens, info.value.output_tokens) == (
            "reasoner",
            200,
            200,
        )
        assert isinstance(info.value, BudgetExceeded)
        after = req.summary()
        assert (after.reserved, after.consumed, after.free) == (0, 0, 300) and not req.calls
        assert before.statuses == {} and after.statuses == {"refused": 1}
        assert [r.status for r in req.refused] == ["refused"]


@pytest.mark.parametrize("bad", (-1, 2.5, "10", True))
def test_bad_reserves_are_refused(bad: Any) -> None:
    with make().request(ceiling=2_000) as req:
        with pytest.raises(InvalidTokenCount) as info:
            req.begin("reasoner", 100, wrap_up_tokens=bad)
        assert info.value.field == "wrap_up_tokens" and not req.calls
    with pytest.raises(InvalidTokenCount):
        make(wrap_up_tokens=bad)
    with pytest.raises(InvalidArgument):
        make(show_budget="yes")


def test_the_controllers_reserve_is_the_default() -> None:
    with make(wrap_up_tokens=20).request(ceiling=2_000) as req:
        grant = req.begin("reasoner", 10)
        assert (grant.wrap_up_tokens, grant.working_tokens) == (20, 200)
        assert req.begin("reasoner", 10, wrap_up_tokens=0).wrap_up_tokens == 0
    with make(wrap_up_tokens=20).request(ceiling=2_000) as req:
        assert req.call_options() == {"show_budget": False}


def test_statuses_say_how_each_answer_ended() -> None:
    with make(Fixed(output=100, extra=0)).request(ceiling=5_000) as req:
        done = req.begin("reasoner", 10)
        req.finish(done, input_tokens=10, output_tokens=50)
        cut = req.begin("reasoner", 10)
        req.finish(cut, input_tokens=10, output_tokens=100, truncated=True)
        wrapped = req.begin("reasoner", 10, wrap_up_tokens=30)
        assert req.extend(wrapped, 100) is None  # refused: wrap up now
        req.finish(wrapped, input_tokens=30, output_tokens=100, truncated=False)
        refused_then_cut = req.begin("reasoner", 10)
        assert req.extend(refused_then_cut, 100) is None
        req.finish(refused_then_cut, input_tokens=10, output_tokens=100, truncated=True)
        with pytest.raises(BudgetExceeded):
            req.begin("reasoner", 10_000)
        statuses = [r.status for r in req.calls.values()]
        assert statuses == ["completed", "cut", "wrapped_up", "cut"]  # a cut is never success
        summary = req.summary()
        assert summary.statuses == {"completed": 1, "wrapped_up": 1, "cut": 2, "refused": 1}
        assert summary.agents["reasoner"].statuses == summary.statuses
        assert summary.agents["triage"].statuses == {}
        text = str(summary)
        assert "calls: completed 1, wrapped_up 1, cut 2, refused 1" in text


def test_async_begin_takes_the_reserve() -> None:
    async def main() -> None:
        ctl = AsyncController(PIPELINE, policy=Fixed(), clock=lambda: 0.0)
        async with ctl.request(ceiling=2_000) as req:
            grant = await req.begin("reasoner", 10, wrap_up_tokens=60)
            assert (grant.working_tokens, grant.output_tokens) == (200, 260)
            assert await req.extend(grant, 10) is None
            await req.finish(grant, input_tokens=10, output_tokens=250)
            assert req.calls[grant.grant_id].status == "wrapped_up"
            with pytest.raises(WrapUpTooLarge):
                await req.begin("reasoner", 10, wrap_up_tokens=2_000)

    asyncio.run(main())
