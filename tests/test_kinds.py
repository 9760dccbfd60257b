"""Agent kinds: names not listed in the pipeline, budgeted by the kind that matches them."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from apportion import (
    Agent,
    AgentKind,
    Controller,
    KindConflict,
    Pipeline,
    SpecError,
    UnknownAgent,
)
from apportion.telemetry.records import usage_from


def _team() -> Pipeline:
    return Pipeline(
        [Agent("planner", "critical"), Agent("writer", after=["planner"])],
        name="team",
        kinds=[
            AgentKind("expert", "expert:*", after=["planner"], output_kind="reasoning"),
            AgentKind("helper", default=True, priority="peripheral", max_output=300),
        ],
    )


def test_a_name_no_kind_matches_is_refused_as_before() -> None:
    pipeline = Pipeline([Agent("planner")], kinds=[AgentKind("expert", "expert:*")])
    controller = Controller(pipeline, policy="elastic")
    with controller.request(ceiling=5_000) as req:
        before = req.summary()
        with pytest.raises(UnknownAgent) as caught:
            req.begin("critic", input_tokens=10)
        assert caught.value.agent == "critic"
        assert req.summary() == before
    plain = Controller(Pipeline([Agent("planner")]), policy="elastic")
    with plain.request(ceiling=5_000) as req, pytest.raises(UnknownAgent):
        req.begin("expert:ann", input_tokens=10)


def test_resolve_listed_pattern_default() -> None:
    pipeline = _team()
    assert pipeline.resolve("planner").name == "planner"
    assert pipeline.kind_of("planner") is None
    assert pipeline.resolve("expert:ann").name == "expert"
    assert pipeline.resolve("expert:ann").output_kind.value == "reasoning"
    assert pipeline.kind_of("expert:ann").name == "expert"  # type: ignore[union-attr]
    assert pipeline.resolve("anyone").name == "helper"
    assert pipeline.resolve("anyone").max_output == 300
    assert pipeline.names == ("planner", "writer", "expert", "helper")


def test_a_listed_agent_wins_over_a_pattern() -> None:
    pipeline = Pipeline([Agent("expert:lead", "critical")], kinds=[AgentKind("e", "expert:*")])
    assert pipeline.resolve("expert:lead").name == "expert:lead"
    assert pipeline.resolve("expert:other").name == "e"


@pytest.mark.parametrize("policy", ["elastic", "estimate", "learned", "uniform", "iterative"])
def test_an_unlisted_name_is_budgeted_by_its_kind(policy: str) -> None:
    controller = Controller(_team(), policy=policy)
    with controller.request(ceiling=20_000) as req:
        grant = req.begin("planner", input_tokens=200)
        req.finish(grant, input_tokens=200, output_tokens=100)
        grant = req.begin("expert:ann", input_tokens=500)
        assert grant.agent == "expert:ann"
        grown = req.extend(grant, 50)
        req.finish(grown or grant, input_tokens=500, output_tokens=40)
        grant = req.begin("expert:bob", input_tokens=400)
        req.release(grant)
        grant = req.begin("stranger", input_tokens=100)
        assert grant.agent == "stranger"
        assert grant.output_tokens <= 300
        req.finish(grant, input_tokens=100, output_tokens=10)
        summary = req.summary()
        assert summary.members == {
            "expert:ann": "expert",
            "expert:bob": "expert",
            "stranger": "helper",
        }
        assert summary.agents["expert"].calls == 2
        assert summary.agents["expert"].consumed == 540
        assert summary.agents["helper"].consumed == 110
        assert summary.consumed + summary.reserved + summary.free == summary.ceiling
        assert "kind expert: expert:ann, expert:bob" in str(summary)
        records = list(req.calls.values())
        assert [(r.agent, r.kind) for r in records] == [
            ("planner", None),
            ("expert:ann", "expert"),
            ("expert:bob", "expert"),
            ("stranger", "helper"),
        ]


def test_a_member_grant_of_another_request_is_still_foreign() -> None:
    controller = Controller(_team(), policy="elastic")
    with controller.request(ceiling=5_000) as first, controller.request(ceiling=5_000) as second:
        grant = first.begin("expert:ann", input_tokens=10)
        with pytest.raises(Exception, match="grant"):
            second.finish(grant, input_tokens=1, output_tokens=1)
        first.finish(grant, input_tokens=1, output_tokens=1)


def test_telemetry_shows_the_name_and_its_kind() -> None:
    controller = Controller(_team(), policy="elastic")
    with controller.request(ceiling=5_000) as req:
        grant = req.begin("expert:ann", input_tokens=10)
        req.finish(grant, input_tokens=10, output_tokens=5)
    steps = req._steps
    events = controller.store.events(req.request_id)
    record = usage_from(steps.obs, events)
    (call,) = record.calls
    assert (call.agent, call.kind, call.priority) == ("expert:ann", "expert", "standard")


def test_kinds_in_yaml_round_trip(tmp_path: Path) -> None:
    pipeline = _team()
    path = tmp_path / "team.yaml"
    pipeline.to_yaml(path)
    text = path.read_text()
    assert "kinds:" in text and "match: ['expert:*']" in text and "default: true" in text
    again = Pipeline.from_yaml(path)
    assert again == pipeline
    assert pickle.loads(pickle.dumps(pipeline)) == pipeline
    assert again.with_priorities({"expert": "critical"}).resolve("expert:x").priority.value == (
        "critical"
    )


def test_two_kinds_matching_one_name_fail_at_load(tmp_path: Path) -> None:
    with pytest.raises(KindConflict) as caught:
        Pipeline([Agent("a")], kinds=[AgentKind("expert", "expert:*"), AgentKind("late", "*:late")])
    error = caught.value
    assert error.kinds == ("expert", "late")
    assert error.patterns == ("expert:*", "*:late")
    assert Pipeline([Agent("a")], kinds=[AgentKind("expert", "expert:*")]).resolve(error.example)
    assert "expert" in str(error) and "late" in str(error)
    path = tmp_path / "p.yaml"
    path.write_text(
        "agents:\n  - name: a\nkinds:\n  - name: x\n    match: 'r?:*'\n"
        "  - name: y\n    match: [q, 'r1:z*']\n"
    )
    with pytest.raises(KindConflict) as caught:
        Pipeline.from_yaml(path)
    assert (caught.value.file, caught.value.line, caught.value.key) == (
        str(path),
        7,
        "kinds[1].match",
    )
    assert caught.value.kinds == ("x", "y")


def test_disjoint_patterns_load() -> None:
    kinds = [AgentKind("e", ["expert:*", "exp?"]), AgentKind("r", "reviewer-*")]
    assert Pipeline([Agent("a")], kinds=kinds).resolve("exp1").name == "e"


def test_two_default_kinds_fail() -> None:
    with pytest.raises(KindConflict) as caught:
        Pipeline(
            [Agent("a")],
            kinds=[AgentKind("d1", default=True), AgentKind("d2", default=True)],
        )
    assert caught.value.kinds == ("d1", "d2")


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"name": "k"}, "match"),
        ({"name": "k", "match": [""]}, "match"),
        ({"name": "k", "match": ["a", "a"]}, "match"),
        ({"name": "k", "match": 3}, "match"),
        ({"name": "k", "match": "a", "default": "yes"}, "default"),
        ({"name": "k", "match": "a", "priority": "top"}, "priority"),
    ],
)
def test_bad_kinds_say_which_field(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(SpecError) as caught:
        AgentKind(**kwargs)  # type: ignore[arg-type]
    assert caught.value.key == key


def test_kind_name_clashing_with_an_agent_is_refused() -> None:
    with pytest.raises(SpecError) as caught:
        Pipeline([Agent("expert")], kinds=[AgentKind("expert", "expert:*")])
    assert caught.value.key == "kinds[0].name"
    with pytest.raises(SpecError) as caught:
        Pipeline([Agent("a")], kinds=[AgentKind("k", "k:*", after=["nobody"])])
    assert caught.value.key == "kinds[0].after"


def test_validate_shows_the_kinds(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from apportion.cli import app

    path = tmp_path / "team.yaml"
    _team().to_yaml(path)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())  # the console wraps long lines
    assert "expert (standard; kind: expert:*)" in shown
    assert "helper (peripheral; kind: default)" in shown
