"""A squeezed call: what it may take from the agents after it, and how it shares a shortfall."""

from __future__ import annotations

from apportion import Agent, AgentKind, Controller, Pipeline
from apportion.spec import OutputKind


def _trained(pipeline: Pipeline, policy: str, calls: list[tuple[str, int, int]]) -> Controller:
    """A controller whose policy saw 40 requests making ``calls`` (agent, input, output)."""
    controller = Controller(pipeline, policy=policy)
    for r in range(40):
        with controller.request(ceiling=50_000) as req:
            for name, inp, out in calls:
                grant = req.begin(name, input_tokens=inp)
                req.finish(grant, input_tokens=inp, output_tokens=out + 10 * (r % 5) - 20)
    return controller


def test_a_squeezed_call_leaves_a_later_record_its_size() -> None:
    """A writer with four times more input than the request holds, then a formatter whose
    record (80 to 120 tokens) is worth nothing cut: the writer, squeezed, takes its share
    of the pool but never what the record is expected to need, so the formatter can still
    write its expected 100 tokens (before: the writer's share ate into it, leaving 35)."""
    pipeline = Pipeline(
        [
            Agent("writer", "standard"),
            Agent("formatter", "standard", after=["writer"], output_kind=OutputKind.STRUCTURED),
        ]
    )
    for policy in ("estimate", "elastic"):
        controller = _trained(pipeline, policy, [("writer", 1_000, 500), ("formatter", 20, 100)])
        with controller.request(ceiling=1_800) as req:
            grant = req.begin("writer", input_tokens=4_000)
            req.finish(grant, input_tokens=grant.context_tokens, output_tokens=grant.output_tokens)
            left = req.begin("formatter", input_tokens=20)
        assert left.output_tokens >= 95, policy


def test_estimate_shares_a_shortfall_among_the_inputs_to_come() -> None:
    """Three alike researchers (1,000 tokens of input, answers of 200) in a request of
    2,400 tokens, 1,200 short of their 3,600: each reads about 600 of its 1,000 (the answers
    first, the inputs cut alike), instead of the first ones bearing the shortfall (before:
    378 read by the first, 934 by the last)."""
    pipeline = Pipeline([Agent("r1"), Agent("r2", after=["r1"]), Agent("r3", after=["r2"])])
    controller = _trained(pipeline, "estimate", [(r, 1_000, 200) for r in ("r1", "r2", "r3")])
    read = []
    with controller.request(ceiling=2_400) as req:
        for name in ("r1", "r2", "r3"):
            grant = req.begin(name, input_tokens=1_000)
            read.append(grant.context_tokens)
            assert grant.output_tokens >= 200
            req.finish(grant, input_tokens=grant.context_tokens, output_tokens=200)
    assert max(read) - min(read) <= 100, read
    assert min(read) >= 500, read


def _fan_day(controller: Controller, ceiling: int) -> tuple[list[int], int]:
    """A lead, four workers (1,000 tokens of input, answers of 200), a report reading
    1,000 tokens: what each worker read, and what the report read."""
    read = []
    with controller.request(ceiling=ceiling) as req:
        grant = req.begin("lead", input_tokens=300)
        req.finish(grant, input_tokens=300, output_tokens=100)
        for i in range(4):
            grant = req.begin(f"worker:{i}", input_tokens=1_000)
            read.append(grant.context_tokens)
            req.finish(grant, input_tokens=grant.context_tokens, output_tokens=200)
        grant = req.begin("report", input_tokens=1_000)
        req.finish(grant, input_tokens=grant.context_tokens, output_tokens=200)
    return read, grant.context_tokens


def test_a_line_of_many_calls_gives_way_before_a_single_reader() -> None:
    """Four workers (a kind) then a report, 6,400 tokens of need in a request of 4,000: a
    worker's call is a quarter of its line, the report's the whole of its own, so the
    workers' inputs give way first and the report reads most of its 1,000 (read alike,
    every input would get about 520)."""
    pipeline = Pipeline(
        [Agent("lead"), Agent("report", after=["worker"])],
        kinds=[AgentKind("worker", "worker:*", after=["lead"])],
    )
    controller = Controller(pipeline, policy="estimate")
    for _ in range(40):
        _fan_day(controller, 50_000)
    workers, report = _fan_day(controller, 4_000)
    assert report >= 800, (workers, report)
    assert max(workers) < report


def test_elastic_reserves_only_for_critical_agents_seen_in_every_request() -> None:
    """An escalation (critical) that runs in a third of the requests: no reservation, so
    in a request it skips, the formatter after the reasoner may draw every token left
    (before: its reservation, a third of its need, stayed unspent to the close and the
    formatter's record was cut)."""
    pipeline = Pipeline(
        [
            Agent("escalation", "critical"),
            Agent("reasoner", "critical"),
            Agent("formatter", "peripheral", after=["reasoner"], output_kind=OutputKind.STRUCTURED),
        ]
    )
    controller = Controller(pipeline, policy="elastic")
    for r in range(30):
        with controller.request(ceiling=20_000) as req:
            for name, inp, out in (("escalation", 800, 600), ("reasoner", 1_000, 700)):
                if name == "escalation" and r % 3:
                    continue
                grant = req.begin(name, input_tokens=inp)
                req.finish(grant, input_tokens=inp, output_tokens=out)
            grant = req.begin("formatter", input_tokens=300)
            req.finish(grant, input_tokens=300, output_tokens=150)
    with controller.request(ceiling=3_000) as req:
        reserve = dict(controller.store.get(req.request_id).reserve)  # type: ignore[attr-defined]
        grant = req.begin("reasoner", input_tokens=1_000)
        req.finish(grant, input_tokens=1_000, output_tokens=1_500)
        left = controller.store.get(req.request_id).available_for("formatter")  # type: ignore[attr-defined]
        consumed = controller.store.get(req.request_id).consumed  # type: ignore[attr-defined]
    assert "escalation" not in reserve and "reasoner" in reserve
    assert left == 3_000 - consumed
