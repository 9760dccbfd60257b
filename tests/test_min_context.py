"""``begin(..., min_context_tokens=N)``: a grant that holds what fitting cannot drop.

The issue's shape: under ``uniform`` a reasoning agent's share of 1,952 tokens is split
1,464 context / 488 output, so a 2,318-token prompt was refused by fitting
(``InputTooLarge``, needs 2,318, granted 1,464) though the request had 5,856 free.
"""

from __future__ import annotations

import asyncio

import pytest

from apportion import (
    Agent,
    AsyncController,
    Controller,
    InvalidTokenCount,
    Pipeline,
    UnknownAgent,
)
from apportion.catalog import Catalog, ModelInfo

PIPELINE = Pipeline(
    [
        Agent("triage", priority="peripheral", output_kind="structured"),
        Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
        Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="prose"),
    ]
)
CEILING = 5_856
NEEDS = 2_318


def test_the_policy_alone_grants_less_context_than_the_prompt_needs() -> None:
    ctl = Controller(PIPELINE, policy="uniform")
    with ctl.request(CEILING) as req:
        grant = req.begin("reasoner", NEEDS)
    assert (grant.context_tokens, grant.output_tokens) == (1_464, 488)


def test_the_grant_holds_the_irreducible_part_when_the_request_can_afford_it() -> None:
    ctl = Controller(PIPELINE, policy="uniform")
    with ctl.request(CEILING) as req:
        grant = req.begin("reasoner", NEEDS, min_context_tokens=NEEDS)
        assert (grant.context_tokens, grant.output_tokens) == (NEEDS, 488)  # output kept
        assert req.summary().reserved == NEEDS + 488
        record = req.calls[grant.grant_id]
        assert (record.input_asked, record.context_granted) == (NEEDS, NEEDS)
        # a floor below what the policy grants changes nothing
        small = req.begin("triage", 500, min_context_tokens=100)
        assert small.context_tokens == 500


def test_a_floor_the_request_cannot_afford_leaves_the_policys_grant() -> None:
    ctl = Controller(PIPELINE, policy="uniform")
    with ctl.request(2_400) as req:  # 2,318 + the policy's 200 of output are not there
        grant = req.begin("reasoner", NEEDS, min_context_tokens=NEEDS)
        assert (grant.context_tokens, grant.output_tokens) == (600, 200)


def test_the_floor_leaves_other_agents_reservations_alone() -> None:
    ctl = Controller(PIPELINE, policy="elastic")
    with ctl.request(4_000, {"messages": 40}) as req:
        held = req.summary().agents["reasoner"].held
        assert held > 0  # the critical reasoner's reservation, which triage cannot drain
        grant = req.begin("triage", 3_500, min_context_tokens=3_500)
        assert grant.context_tokens + grant.output_tokens <= 4_000 - held
        assert grant.context_tokens < 3_500


def test_bad_floors_are_refused_and_change_nothing() -> None:
    ctl = Controller(PIPELINE, policy="uniform")
    with ctl.request(CEILING) as req:
        before = req.summary()
        for bad in (-1, 1.5, True, "10"):
            with pytest.raises(InvalidTokenCount) as caught:
                req.begin("reasoner", NEEDS, min_context_tokens=bad)  # type: ignore[arg-type]
            assert caught.value.field == "min_context_tokens"
        with pytest.raises(InvalidTokenCount, match="more than the input"):
            req.begin("reasoner", 100, min_context_tokens=101)
        with pytest.raises(UnknownAgent):
            req.begin("nobody", 100, min_context_tokens=10)
        assert req.summary() == before and not req.calls


def test_async_begin_takes_the_floor_too() -> None:
    ctl = AsyncController(PIPELINE, policy="uniform")

    async def main() -> tuple[int, int]:
        async with ctl.request(CEILING) as req:
            grant = await req.begin("reasoner", NEEDS, min_context_tokens=NEEDS)
            return grant.context_tokens, grant.output_tokens

    assert asyncio.run(main()) == (NEEDS, 488)


@pytest.mark.parametrize(("ceiling_usd", "context"), [(0.015, NEEDS), (0.013, 1_464)])
def test_the_floor_keeps_the_cost_ceiling(ceiling_usd: float, context: int) -> None:
    # 3 and 15 USD per million tokens: the policy's grant costs 0.011712 USD, the floored
    # one 0.014274 USD
    catalog = Catalog([ModelInfo("large", 3.0, 15.0)], litellm=False)
    ctl = Controller(PIPELINE, policy="uniform", catalog=catalog)
    with ctl.request(CEILING, ceiling_usd=ceiling_usd) as req:
        grant = req.begin("reasoner", NEEDS, model="large", min_context_tokens=NEEDS)
        assert (grant.context_tokens, grant.output_tokens) == (context, 488)
