"""What a squeezed call keeps of its answer, and what a critical agent leaves for answers."""

from __future__ import annotations

from apportion import Agent, Controller, Pipeline
from apportion.policies.predicting import divide
from apportion.spec import OutputKind


def test_a_squeezed_answer_that_others_read_keeps_three_quarters() -> None:
    """1,000 tokens for 900 of input and an answer of 600: an answer read by later
    agents keeps 600 (what it lacks, their inputs lack), one nobody reads half."""
    writer = Agent("writer", output_kind=OutputKind.PROSE)
    assert divide(1_000, 900, 700, 600, writer, feeds=True) == (400, 600)
    assert divide(1_000, 900, 700, 600, writer) == (500, 500)
    assert divide(1_000, 900, 1_000, 900, writer, feeds=True) == (250, 750)


def test_elastic_leaves_a_structured_answer_its_margin() -> None:
    """A critical reasoner with more input than the request holds, then a peripheral
    formatter whose record (100 to 140 tokens) is worthless when cut: the reasoner leaves
    room for the record's grant with its margin and spread (about 250), not only for its
    expected size (before: about 195 of room, a margin short)."""
    pipeline = Pipeline(
        [
            Agent("reasoner", "critical"),
            Agent("formatter", "peripheral", after=["reasoner"], output_kind=OutputKind.STRUCTURED),
        ]
    )
    controller = Controller(pipeline, policy="elastic")
    for r in range(40):
        with controller.request(ceiling=20_000) as req:
            grant = req.begin("reasoner", input_tokens=1_000)
            req.finish(grant, input_tokens=1_000, output_tokens=500)
            grant = req.begin("formatter", input_tokens=20)
            req.finish(grant, input_tokens=20, output_tokens=100 + 10 * (r % 5))
    records = []
    for given in (2_000, 2_500, 3_000):
        with controller.request(ceiling=3_000) as req:
            grant = req.begin("reasoner", input_tokens=given)
            req.finish(grant, input_tokens=grant.context_tokens, output_tokens=500)
            grant = req.begin("formatter", input_tokens=20)
            records.append(grant.output_tokens)
    assert min(records) >= 250
