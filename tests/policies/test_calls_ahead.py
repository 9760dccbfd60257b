"""The calls still expected of every agent, worked out in arrays, are the rule's, agent by agent."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from apportion import Agent, Controller, ElasticPolicy, EstimatePolicy, Pipeline
from apportion.policies.base import Observation
from apportion.policies.occurrence import CallCounts
from apportion.policies.predicting import _ARRAYS_FROM, PredictingPolicy, _Ahead


def _checked(base: type[PredictingPolicy]) -> type[PredictingPolicy]:
    """``base`` whose every array answer is compared with the one agent by agent."""

    class Checked(base):  # type: ignore[valid-type,misc]
        compared = 0
        arrays = 0

        def _count_ahead(self, obs: Observation, caller: str | None) -> Sequence[float]:
            found = super()._count_ahead(obs, caller)
            each = self._each_ahead(_Ahead(self, obs, caller))
            assert list(found) == pytest.approx(each, rel=1e-12, abs=1e-12), caller
            Checked.compared += 1
            Checked.arrays += obs.state is not None and len(obs.pipeline) >= _ARRAYS_FROM
            return found

    return Checked


def _pipeline(n: int) -> Pipeline:
    """A chain of ``n`` agents, every third also reading the one two back."""
    agents = []
    for i in range(n):
        after = [f"a{i - 1:02d}"] if i else []
        if i >= 2 and i % 3 == 0:
            after.append(f"a{i - 2:02d}")
        agents.append(
            Agent(f"a{i:02d}", priority=("critical", "standard", "peripheral")[i % 3], after=after)
        )
    return Pipeline(agents)


@pytest.mark.parametrize("loops", [False, True])
@pytest.mark.parametrize("base", [ElasticPolicy, EstimatePolicy])
def test_arrays_give_what_the_rule_gives_agent_by_agent(
    base: type[PredictingPolicy], loops: bool
) -> None:
    """Optional agents, an agent that runs early or late, features, agents that loop (or
    not: the line begun last counts then): every view of every call agrees."""
    rng = random.Random(7)
    pipeline = _pipeline(_ARRAYS_FROM + 8)
    policy = _checked(base)()
    controller = Controller(pipeline, policy=policy)
    names = pipeline.names
    for _ in range(20):
        with controller.request(ceiling=400_000, features={"messages": rng.randint(1, 30)}) as req:
            late = rng.random() < 0.5  # a09 runs in its place or at the end
            for name in [n for n in names if n != "a09" or not late] + ["a09"] * late:
                if name in ("a05", "a11") and rng.random() < 0.5:
                    continue  # optional: runs in about half the requests
                for _ in range(rng.randint(1, 3) if loops and name in ("a07", "a16") else 1):
                    grant = req.begin(name, input_tokens=rng.randint(50, 900))
                    req.finish(grant, input_tokens=grant.context_tokens, output_tokens=40)
    assert type(policy).arrays > 500  # the array path ran, and was compared every time


def test_the_counts_after_each_line_round_trip_through_a_document() -> None:
    counts = CallCounts(["a", "b", "c"])
    counts.observe({"a": 1, "c": 2}, order=["a", "c"])
    counts.observe({"b": 1, "a": 1}, order=["b", "a"])
    document = counts.document_after()
    assert document == {
        "a": {"b": [1, 0], "c": [2, 2]},
        "b": {"a": [1, 1], "c": [1, 0]},
        "c": {"b": [1, 0]},
    }
    again = CallCounts(["a", "b", "c"])
    again.restore_after(document)
    assert again.document_after() == document
    for last in ("a", "b", "c"):
        assert [again.remaining_after(x, last) for x in "abc"] == list(
            again.remaining_after_all(last)
        )


@pytest.mark.parametrize("base", [ElasticPolicy, EstimatePolicy])
def test_the_single_call_rule_is_the_rule_where_every_agent_calls_once(
    base: type[PredictingPolicy],
) -> None:
    """Every agent once per request, in changing orders: the shortcut's views are the rule's;
    once a request skips an agent, the shortcut is off (and the rule still agrees)."""
    rng = random.Random(11)
    pipeline = _pipeline(6)
    taken = {True: 0, False: 0}

    class Checked(base):  # type: ignore[valid-type,misc]
        def calls_ahead(self, obs: Observation, caller: str | None = None) -> Sequence[float]:
            found = super().calls_ahead(obs, caller)
            assert list(found) == list(self._each_ahead(_Ahead(self, obs, caller))), caller
            taken[self._calls_model(obs).fixed()] += 1
            return found

    controller = Controller(pipeline, policy=Checked())
    for k in range(30):
        order = list(pipeline.names)
        rng.shuffle(order)
        if k == 20:
            order.remove("a03")  # from here on, a03 may not run
        with controller.request(ceiling=20_000) as req:
            for name in order:
                grant = req.begin(name, input_tokens=rng.randint(50, 900))
                req.finish(grant, input_tokens=grant.context_tokens, output_tokens=40)
    assert taken[True] > 100 and taken[False] > 20
    counts = CallCounts(["a", "b"])
    assert counts.fixed()  # the prior: one call each
    counts.observe({"a": 1, "b": 1}, order=["b", "a"])
    assert counts.fixed()
    counts.observe({"a": 1, "b": 2}, order=["a", "b"])
    assert not counts.fixed()
