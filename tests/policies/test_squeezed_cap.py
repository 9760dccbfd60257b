"""A squeezed call trades its output margin against its input; an unusual input does not
drive a record's cap to nothing."""

from __future__ import annotations

import pytest

from apportion import Agent, Controller, Pipeline
from apportion.spec import OutputKind


def _trained(policy: str, pipeline: Pipeline, rounds, ceiling: int = 50_000) -> Controller:
    controller = Controller(pipeline, policy=policy)
    for calls in rounds:
        with controller.request(ceiling=ceiling) as req:
            for agent, inp, out in calls:
                grant = req.begin(agent, input_tokens=inp)
                req.finish(grant, input_tokens=inp, output_tokens=out)
    return controller


@pytest.mark.parametrize("policy", ["estimate", "elastic"])
def test_a_record_keeps_its_cap_when_its_input_is_unusually_long(policy: str) -> None:
    """A formatter wrote 100 to 150 tokens, a little less the longer its input (1,000 to
    2,000). Its input is then 12,000 with room to spare: the output's regression on the
    input, taken far outside the inputs seen, predicted nothing, and the record was capped
    at 2 tokens (worth 0 cut). The cap now covers the answers seen."""
    pipeline = Pipeline([Agent("formatter", output_kind=OutputKind.STRUCTURED)])
    rounds = [[("formatter", 1_000 + 100 * (r % 11), 150 - 5 * (r % 11))] for r in range(60)]
    controller = _trained(policy, pipeline, rounds)
    with controller.request(ceiling=50_000) as req:
        grant = req.begin("formatter", input_tokens=12_000)
    assert grant.context_tokens == 12_000
    assert grant.output_tokens >= 150


@pytest.mark.parametrize("policy", ["estimate", "elastic"])
def test_a_squeezed_conclusion_trades_its_margin_for_input(policy: str) -> None:
    """A reasoner's answers ran 900 to 1,100 tokens. Squeezed (7,200 tokens for an input
    of 7,000 and its answer), it used to keep its whole margin (about 1,300 tokens: the
    spread of its answers with 20% on top) and read 5,900 of its input; the cap that
    covers every answer seen costs less input: it reads more, and still writes whole."""
    pipeline = Pipeline([Agent("reasoner", "critical", output_kind=OutputKind.REASONING)])
    rounds = [[("reasoner", 6_000 + 50 * (r % 7), 900 + 20 * (r % 11))] for r in range(80)]
    controller = _trained(policy, pipeline, rounds)
    with controller.request(ceiling=7_200) as req:
        grant = req.begin("reasoner", input_tokens=7_000)
    assert grant.context_tokens + grant.output_tokens <= 7_200
    assert grant.output_tokens >= 1_100  # every answer seen fits
    assert grant.context_tokens > 7_200 - 1_250  # not the whole margin before the input


def test_elastic_reserves_a_critical_answer_with_its_margin() -> None:
    """A critical reasoner reads 2,000 tokens and writes 900 to 1,100. A peripheral triage
    before it asks for more than the request holds: the reasoner's reservation used to hold
    its expected answer only, so its grant paid for the margin with its input (it read
    1,942 of its 2,000). It now reserves the answer its grant will have."""
    pipeline = Pipeline(
        [
            Agent("triage", "peripheral", output_kind=OutputKind.STRUCTURED),
            Agent("reasoner", "critical", after=["triage"], output_kind=OutputKind.REASONING),
        ]
    )
    rounds = [[("triage", 500, 50), ("reasoner", 2_000, 900 + 20 * (r % 11))] for r in range(60)]
    controller = _trained("elastic", pipeline, rounds)
    with controller.request(ceiling=5_000) as req:
        grant = req.begin("triage", input_tokens=6_000)
        req.finish(grant, input_tokens=grant.context_tokens, output_tokens=50)
        grant = req.begin("reasoner", input_tokens=2_000)
    assert grant.context_tokens == 2_000
    assert grant.output_tokens >= 1_100


def test_elastic_reserves_the_margin_only_when_the_pipeline_is_fixed() -> None:
    """The same reasoner after a triage that runs in half the requests: its reservation
    holds its expected answer only (the margin held until it begins would be taken from
    the agents that run; on the shipped trees and teams that cost 0.002 to 0.024)."""
    pipeline = Pipeline(
        [
            Agent("triage", "peripheral", output_kind=OutputKind.STRUCTURED),
            Agent("reasoner", "critical", after=["triage"], output_kind=OutputKind.REASONING),
        ]
    )
    answers = [900 + 20 * (r % 11) for r in range(60)]
    fixed = [[("triage", 500, 50), ("reasoner", 2_000, a)] for a in answers]
    varying = [
        [("triage", 500, 50)] * (r % 2) + [("reasoner", 2_000, a)] for r, a in enumerate(answers)
    ]

    def reserved(rounds) -> int:
        controller = _trained("elastic", pipeline, rounds)
        with controller.request(ceiling=20_000) as req:
            return int(controller.store.get(req.request_id).reserve["reasoner"])  # type: ignore[attr-defined]

    with_margin, without = reserved(fixed), reserved(varying)
    assert with_margin - without > 200  # the margin, 272 tokens here
    assert with_margin >= 2_000 + max(answers)  # every answer seen fits the reservation


def test_a_standard_agent_leaves_room_for_a_peripheral_record() -> None:
    """A standard writer, then a peripheral formatter whose record (100 to 140 tokens) is
    worth nothing cut. The writer's input nearly fills the ceiling: it used to leave room
    for standard and critical agents only, and the record got what was left (a cap of
    104). It now leaves room for the record with its margin (not for the formatter's
    input)."""
    pipeline = Pipeline(
        [
            Agent("writer", "standard", output_kind=OutputKind.PROSE),
            Agent("formatter", "peripheral", after=["writer"], output_kind=OutputKind.STRUCTURED),
        ]
    )
    rounds = [[("writer", 2_000, 500), ("formatter", 300, 100 + 10 * (r % 5))] for r in range(40)]
    controller = _trained("elastic", pipeline, rounds)
    with controller.request(ceiling=3_000) as req:
        grant = req.begin("writer", input_tokens=2_600)
        req.finish(grant, input_tokens=grant.context_tokens, output_tokens=500)
        grant = req.begin("formatter", input_tokens=300)
    assert grant.output_tokens >= 140
