from __future__ import annotations

import dataclasses
import math
import pickle
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apportion.errors import ApportionError, SpecError, UnknownAgent
from apportion.spec import (
    Agent,
    Estimator,
    LinearEstimator,
    OutputKind,
    Pipeline,
    Priority,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pipeline.yaml"


def support_pipeline() -> Pipeline:
    return Pipeline(
        [
            Agent("triage", priority="peripheral", output_kind="structured"),
            Agent("reasoner", priority="critical", after=["triage"], output_kind="reasoning"),
            Agent("formatter", priority="peripheral", after=["reasoner"], output_kind="structured"),
        ],
        name="support",
    )


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing ``needle``."""
    seen = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in {path}")


def load_error(tmp_path: Path, text: str) -> tuple[SpecError, Path]:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        Pipeline.from_yaml(path)
    return info.value, path


# --- Priority / OutputKind ---------------------------------------------------------------


def test_priority_values_and_rank() -> None:
    assert [p.value for p in Priority] == ["critical", "standard", "peripheral"]
    assert Priority.CRITICAL.rank == 2
    assert Priority.STANDARD.rank == 1
    assert Priority.PERIPHERAL.rank == 0
    assert Priority("critical") is Priority.CRITICAL
    assert Priority.CRITICAL == "critical"  # type: ignore[comparison-overlap]
    assert sorted(Priority, key=lambda p: p.rank) == [
        Priority.PERIPHERAL,
        Priority.STANDARD,
        Priority.CRITICAL,
    ]


def test_output_kind_values() -> None:
    assert [k.value for k in OutputKind] == ["structured", "prose", "reasoning"]
    assert OutputKind("prose") is OutputKind.PROSE
    assert str(OutputKind.REASONING) == "reasoning"


# --- LinearEstimator ---------------------------------------------------------------------


def test_linear_estimator_maths() -> None:
    est = LinearEstimator(base=300, per_feature={"messages": 20, "docs": 0.5}, per_input=0.05)
    assert est({"messages": 40, "docs": 10}, 1000) == pytest.approx(300 + 800 + 5 + 50)
    # missing features count as 0; unknown input tokens too
    assert est({}) == pytest.approx(300)
    assert est({"messages": 2}, None) == pytest.approx(340)
    # features not in the estimator are ignored
    assert est({"other": 1e9}, 0) == pytest.approx(300)


def test_linear_estimator_defaults_and_never_negative() -> None:
    assert LinearEstimator()({"x": 5}, 100) == 0.0
    est = LinearEstimator(base=10, per_feature={"x": -5})
    assert est({"x": 1}) == pytest.approx(5)
    assert est({"x": 100}) == 0.0
    assert LinearEstimator(base=-50)({}) == 0.0


def test_linear_estimator_normalises_and_is_read_only() -> None:
    source = {"messages": 20}
    est = LinearEstimator(300, source, 1)
    assert isinstance(est.base, float)
    assert isinstance(est.per_input, float)
    assert est.per_feature == {"messages": 20.0}
    assert isinstance(est.per_feature["messages"], float)
    source["messages"] = 99  # the estimator keeps its own copy
    assert est.per_feature["messages"] == 20.0
    with pytest.raises(TypeError):
        est.per_feature["messages"] = 1  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.base = 1  # type: ignore[misc]


def test_linear_estimator_eq_hash_repr_pickle() -> None:
    a = LinearEstimator(300, {"m": 20}, 0.05)
    b = LinearEstimator(300.0, {"m": 20.0}, 0.05)
    assert a == b
    assert hash(a) == hash(b)
    assert a != LinearEstimator(300, {"m": 21}, 0.05)
    assert repr(a) == "LinearEstimator(base=300.0, per_feature={'m': 20.0}, per_input=0.05)"
    assert pickle.loads(pickle.dumps(a)) == a
    assert eval(repr(a)) == a


def test_linear_estimator_to_dict() -> None:
    assert LinearEstimator().to_dict() == {}
    assert LinearEstimator(300, {"m": 20}, 0.05).to_dict() == {
        "base": 300,
        "per_feature": {"m": 20},
        "per_input": 0.05,
    }
    assert isinstance(LinearEstimator(300).to_dict()["base"], int)


def test_linear_estimator_is_an_estimator() -> None:
    est: Estimator = LinearEstimator(base=1)
    assert est({}, None) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"base": True}, "base"),
        ({"base": "300"}, "base"),
        ({"base": math.nan}, "base"),
        ({"per_input": math.inf}, "per_input"),
        ({"per_input": None}, "per_input"),
        ({"per_feature": [("m", 1)]}, "per_feature"),
        ({"per_feature": {"m": "x"}}, "per_feature.m"),
        ({"per_feature": {1: 2}}, "per_feature"),
        ({"per_feature": {"": 2}}, "per_feature"),
    ],
)
def test_linear_estimator_validation(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(SpecError) as info:
        LinearEstimator(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key  # type: ignore[attr-defined]
    assert info.value.file is None  # type: ignore[attr-defined]
    assert info.value.line is None  # type: ignore[attr-defined]


# --- Agent ------------------------------------------------------------------------------


def test_agent_defaults() -> None:
    agent = Agent("solo")
    assert agent.name == "solo"
    assert agent.priority is Priority.STANDARD
    assert agent.after == ()
    assert agent.output_kind is OutputKind.PROSE
    assert agent.model is None
    assert agent.min_output == 1
    assert agent.max_output is None
    assert agent.estimator is None


def test_agent_positional_construction() -> None:
    est = LinearEstimator(base=10)
    agent = Agent("r", "critical", ["a", "b"], "reasoning", "gpt-4o", 64, 4096, est)
    assert agent == Agent(
        name="r",
        priority=Priority.CRITICAL,
        after=("a", "b"),
        output_kind=OutputKind.REASONING,
        model="gpt-4o",
        min_output=64,
        max_output=4096,
        estimator=est,
    )
    assert Agent("triage", priority="peripheral", output_kind="structured").priority is (
        Priority.PERIPHERAL
    )


def test_agent_normalises() -> None:
    agent = Agent("r", priority="Critical", after=["a"], output_kind=" REASONING ")
    assert agent.priority is Priority.CRITICAL
    assert type(agent.priority) is Priority
    assert agent.output_kind is OutputKind.REASONING
    assert agent.after == ("a",)
    assert isinstance(agent.after, tuple)
    assert Agent("x", after=None).after == ()
    assert Agent("x", after=("a", "b")).after == ("a", "b")


def test_agent_repr_shows_what_is_set() -> None:
    assert repr(Agent("x")) == "Agent('x')"
    agent = Agent("r", "critical", ["a"], "reasoning", "m", 0, 9, LinearEstimator(1))
    assert repr(agent) == (
        "Agent('r', priority='critical', after=['a'], output_kind='reasoning', model='m', "
        "min_output=0, max_output=9, "
        "estimator=LinearEstimator(base=1.0, per_feature={}, per_input=0.0))"
    )
    assert eval(repr(agent)) == agent


def test_agent_is_frozen_hashable_picklable() -> None:
    agent = Agent("r", priority="critical", after=["a"], estimator=LinearEstimator(1, {"m": 2}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        agent.name = "other"  # type: ignore[misc]
    assert hash(agent) == hash(
        Agent("r", "critical", ("a",), estimator=LinearEstimator(1, {"m": 2}))
    )
    assert pickle.loads(pickle.dumps(agent)) == agent
    assert {agent, agent} == {agent}


def test_agent_replace_revalidates() -> None:
    agent = Agent("r")
    assert dataclasses.replace(agent, priority=Priority.CRITICAL).priority is Priority.CRITICAL
    with pytest.raises(SpecError):
        dataclasses.replace(agent, min_output=-1)


def test_agent_accepts_any_callable_estimator() -> None:
    def estimate(features: Mapping[str, float], input_tokens: int | None) -> float:
        return 1.0

    assert Agent("x", estimator=estimate).estimator is estimate


@pytest.mark.parametrize(
    ("kwargs", "key", "fragment"),
    [
        ({"name": ""}, "name", "non-empty string"),
        ({"name": "   "}, "name", "non-empty string"),
        ({"name": 3}, "name", "non-empty string"),
        ({"name": None}, "name", "non-empty string"),
        ({"priority": "urgent"}, "priority", "critical, standard, peripheral"),
        ({"priority": 2}, "priority", "critical, standard, peripheral"),
        ({"output_kind": "json"}, "output_kind", "structured, prose, reasoning"),
        ({"after": "triage"}, "after", "list of agent names"),
        ({"after": {"triage"}}, "after", "list of agent names"),
        ({"after": ["a", 1]}, "after", "non-empty strings"),
        ({"after": [""]}, "after", "non-empty strings"),
        ({"after": ["a", "a"]}, "after", "listed twice"),
        ({"after": ["x"]}, "after", "cycle (x -> x)"),
        ({"model": ""}, "model", "non-empty string"),
        ({"model": 4}, "model", "non-empty string"),
        ({"min_output": -1}, "min_output", "non-negative integer"),
        ({"min_output": 1.5}, "min_output", "non-negative integer"),
        ({"min_output": 2.0}, "min_output", "non-negative integer"),
        ({"min_output": True}, "min_output", "non-negative integer"),
        ({"min_output": "x"}, "min_output", "non-negative integer"),
        ({"max_output": 0}, "max_output", "at least max(min_output, 1) = 1"),
        ({"min_output": 0, "max_output": 0}, "max_output", "at least"),
        ({"min_output": 64, "max_output": 63}, "max_output", "= 64, not 63"),
        ({"max_output": False}, "max_output", "non-negative integer"),
        ({"max_output": 10.0}, "max_output", "non-negative integer"),
        ({"estimator": 3}, "estimator", "callable"),
        ({"typical_input": -1}, "typical_input", "non-negative integer"),
        ({"typical_input": 1.5}, "typical_input", "non-negative integer"),
        ({"typical_input": "big"}, "typical_input", "non-negative integer"),
        ({"typical_output": True}, "typical_output", "non-negative integer"),
        ({"typical_output": 2.0}, "typical_output", "non-negative integer"),
    ],
)
def test_agent_validation(kwargs: dict[str, object], key: str, fragment: str) -> None:
    fields: dict[str, object] = {"name": "x", **kwargs}
    with pytest.raises(SpecError) as info:
        Agent(**fields)  # type: ignore[arg-type]
    error = info.value
    assert error.key == key  # type: ignore[attr-defined]
    assert error.file is None  # type: ignore[attr-defined]
    assert error.line is None  # type: ignore[attr-defined]
    assert fragment in str(error)
    assert isinstance(error, ApportionError)
    assert isinstance(error, ValueError)


def test_agent_bounds_that_are_fine() -> None:
    assert Agent("x", min_output=0).min_output == 0
    assert Agent("x", min_output=0, max_output=1).max_output == 1
    assert Agent("x", min_output=64, max_output=64).max_output == 64


def test_agent_to_dict_omits_defaults() -> None:
    assert Agent("x").to_dict() == {"name": "x"}
    full = Agent(
        "r",
        "critical",
        ["a"],
        "reasoning",
        "gpt-4o",
        64,
        4096,
        LinearEstimator(300, {"messages": 20}, 0.05),
    )
    assert full.to_dict() == {
        "name": "r",
        "priority": "critical",
        "after": ["a"],
        "output_kind": "reasoning",
        "model": "gpt-4o",
        "min_output": 64,
        "max_output": 4096,
        "estimator": {"base": 300, "per_feature": {"messages": 20}, "per_input": 0.05},
    }
    # plain values only (no enum members), so any YAML dumper can write it
    assert type(full.to_dict()["priority"]) is str
    # other callables are not serialisable and are left out
    assert Agent("x", estimator=lambda f, i: 1.0).to_dict() == {"name": "x"}


def test_typical_sizes_round_trip_through_yaml(tmp_path: Path) -> None:
    agent = Agent("r", typical_input=6000, typical_output=900)
    assert agent.to_dict() == {"name": "r", "typical_input": 6000, "typical_output": 900}
    assert repr(agent) == "Agent('r', typical_input=6000, typical_output=900)"
    pipeline = Pipeline([agent, Agent("f", after=["r"], typical_output=0)])
    path = tmp_path / "p.yaml"
    pipeline.to_yaml(path)
    assert Pipeline.from_yaml(path) == pipeline
    assert Pipeline.from_yaml(path)["f"].typical_input is None


def test_typical_size_mistake_in_yaml_names_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("agents:\n  - name: a\n    typical_output: -5\n")
    with pytest.raises(SpecError) as info:
        Pipeline.from_yaml(path)
    assert (info.value.line, info.value.key) == (3, "agents[0].typical_output")
    assert "non-negative integer, not -5" in str(info.value)


# --- Pipeline: construction and lookup ---------------------------------------------------


def test_pipeline_basics() -> None:
    pipeline = support_pipeline()
    assert pipeline.name == "support"
    assert pipeline.names == ("triage", "reasoner", "formatter")
    assert isinstance(pipeline.agents, tuple)
    assert [a.name for a in pipeline] == list(pipeline.names)
    assert len(pipeline) == 3
    assert pipeline["reasoner"].priority is Priority.CRITICAL
    assert "triage" in pipeline
    assert "nobody" not in pipeline
    assert 3 not in pipeline
    assert ["unhashable"] not in pipeline
    assert pipeline.index("triage") == 0
    assert pipeline.index("formatter") == 2
    assert Pipeline([Agent("a")]).name == "pipeline"


def test_pipeline_accepts_any_iterable_of_agents() -> None:
    agents = support_pipeline().agents
    assert Pipeline(iter(agents), name="support") == support_pipeline()
    assert Pipeline(support_pipeline(), name="support") == support_pipeline()


def test_unknown_agent_fields() -> None:
    pipeline = support_pipeline()
    for call in (
        lambda: pipeline["nobody"],
        lambda: pipeline.index("nobody"),
        lambda: pipeline.downstream("nobody"),
    ):
        with pytest.raises(UnknownAgent) as info:
            call()
        error = info.value
        assert error.agent == "nobody"  # type: ignore[attr-defined]
        assert error.known == ["triage", "reasoner", "formatter"]  # type: ignore[attr-defined]
        assert isinstance(error, LookupError)
        assert isinstance(error, ApportionError)
        assert "triage, reasoner, formatter" in str(error)


def test_pipeline_keeps_a_valid_given_order() -> None:
    agents = [Agent("b"), Agent("a"), Agent("c", after=["a"]), Agent("d", after=["b", "c"])]
    assert Pipeline(agents).names == ("b", "a", "c", "d")


def test_pipeline_reorders_stably() -> None:
    agents = [
        Agent("formatter", after=["reasoner"]),
        Agent("reasoner", after=["triage"]),
        Agent("other"),
        Agent("triage"),
    ]
    # each agent as early as its `after` allows, ties kept in the given order
    assert Pipeline(agents).names == ("other", "triage", "reasoner", "formatter")
    diamond = [
        Agent("end", after=["left", "right"]),
        Agent("right", after=["start"]),
        Agent("left", after=["start"]),
        Agent("start"),
    ]
    assert Pipeline(diamond).names == ("start", "right", "left", "end")


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_pipeline_order_respects_after(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, 8))
    names = [f"a{i}" for i in range(size)]
    # a DAG: agent i may only run after agents with a smaller index
    agents = [
        Agent(
            names[i],
            after=data.draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else [],
        )
        for i in range(size)
    ]
    shuffled = data.draw(st.permutations(agents))
    pipeline = Pipeline(shuffled)
    assert sorted(pipeline.names) == sorted(names)
    for agent in pipeline:
        for upstream in agent.after:
            assert pipeline.index(upstream) < pipeline.index(agent.name)
    # an order that is already valid is kept as given
    assert Pipeline(pipeline.agents) == pipeline
    assert Pipeline(agents).names == tuple(names)


def test_downstream() -> None:
    pipeline = support_pipeline()
    assert pipeline.downstream("triage") == ("reasoner", "formatter")
    assert pipeline.downstream("reasoner") == ("formatter",)
    assert pipeline.downstream("formatter") == ()
    diamond = Pipeline(
        [
            Agent("start"),
            Agent("side"),
            Agent("left", after=["start"]),
            Agent("right", after=["start", "side"]),
            Agent("end", after=["left", "right"]),
        ]
    )
    assert diamond.downstream("start") == ("left", "right", "end")
    assert diamond.downstream("side") == ("right", "end")
    assert diamond.downstream("left") == ("end",)


def test_with_priorities() -> None:
    pipeline = support_pipeline()
    changed = pipeline.with_priorities({"triage": "critical", "reasoner": Priority.STANDARD})
    assert changed is not pipeline
    assert changed["triage"].priority is Priority.CRITICAL
    assert changed["reasoner"].priority is Priority.STANDARD
    assert changed["formatter"] == pipeline["formatter"]
    assert changed.names == pipeline.names
    assert changed.name == "support"
    # the original is unchanged
    assert pipeline["triage"].priority is Priority.PERIPHERAL
    assert pipeline.with_priorities({}) == pipeline


def test_with_priorities_errors() -> None:
    pipeline = support_pipeline()
    with pytest.raises(UnknownAgent) as unknown:
        pipeline.with_priorities({"nobody": "critical"})
    assert unknown.value.agent == "nobody"  # type: ignore[attr-defined]
    with pytest.raises(SpecError) as bad:
        pipeline.with_priorities({"triage": "urgent"})
    assert bad.value.key == "priorities.triage"  # type: ignore[attr-defined]
    assert "critical, standard, peripheral" in str(bad.value)


def test_pipeline_eq_hash_repr_pickle_immutability() -> None:
    a, b = support_pipeline(), support_pipeline()
    assert a == b
    assert hash(a) == hash(b)
    assert a != Pipeline(a.agents, name="other")
    assert a != a.with_priorities({"triage": "critical"})
    assert a != "support"
    assert pickle.loads(pickle.dumps(a)) == a
    text = repr(a)
    assert text.startswith("Pipeline([Agent('triage', priority='peripheral'")
    assert text.endswith("name='support')")
    assert eval(text, {**globals()}) == a
    with pytest.raises(AttributeError):
        a.name = "x"  # type: ignore[misc]


# --- Pipeline: validation in code --------------------------------------------------------


def pipeline_error(agents: object, name: object = "pipeline") -> SpecError:
    with pytest.raises(SpecError) as info:
        Pipeline(agents, name)  # type: ignore[arg-type]
    assert info.value.file is None  # type: ignore[attr-defined]
    assert info.value.line is None  # type: ignore[attr-defined]
    return info.value


def test_pipeline_needs_agents() -> None:
    assert pipeline_error([]).key == "agents"  # type: ignore[attr-defined]
    assert "at least one agent" in str(pipeline_error([]))
    assert pipeline_error("abc").key == "agents"  # type: ignore[attr-defined]
    assert pipeline_error(Agent("a")).key == "agents"  # type: ignore[attr-defined]
    assert pipeline_error(None).key == "agents"  # type: ignore[attr-defined]


def test_pipeline_name_must_be_a_string() -> None:
    assert pipeline_error([Agent("a")], name="").key == "name"  # type: ignore[attr-defined]
    assert pipeline_error([Agent("a")], name=3).key == "name"  # type: ignore[attr-defined]


def test_pipeline_items_must_be_agents() -> None:
    error = pipeline_error([Agent("a"), {"name": "b"}])
    assert error.key == "agents[1]"  # type: ignore[attr-defined]
    assert "must be an Agent" in str(error)


def test_pipeline_unique_names() -> None:
    error = pipeline_error([Agent("a"), Agent("b"), Agent("a")])
    assert error.key == "agents[2].name"  # type: ignore[attr-defined]
    assert "'a' is already used by agents[0]" in str(error)


def test_pipeline_after_must_name_known_agents() -> None:
    error = pipeline_error([Agent("a"), Agent("b"), Agent("c", after=["a", "ghost"])])
    assert error.key == "agents[2].after"  # type: ignore[attr-defined]
    assert "'ghost'" in str(error)
    assert "known agents: a, b, c" in str(error)


def test_pipeline_cycle_of_two() -> None:
    error = pipeline_error([Agent("a", after=["b"]), Agent("b", after=["a"])])
    assert error.key == "agents[0].after"  # type: ignore[attr-defined]
    assert "a -> b -> a" in str(error)
    assert "cycle" in str(error)


def test_pipeline_cycle_of_three_shown_in_flow_order() -> None:
    # c runs after b, b after a, a after c: data flows a -> b -> c -> a
    agents = [
        Agent("start"),
        Agent("c", after=["b"]),
        Agent("a", after=["c", "start"]),
        Agent("b", after=["a"]),
        Agent("end", after=["c"]),
    ]
    error = pipeline_error(agents)
    assert error.problem == (  # type: ignore[attr-defined]
        "the agents' 'after' form a cycle: c -> a -> b -> c (each runs after the one before it)"
    )
    assert error.key == "agents[1].after"  # type: ignore[attr-defined]


# --- YAML -------------------------------------------------------------------------------


def test_example_file_loads() -> None:
    pipeline = Pipeline.from_yaml(EXAMPLE)
    assert pipeline.name == "support"
    assert pipeline.names == ("triage", "reasoner", "formatter")
    reasoner = pipeline["reasoner"]
    assert reasoner.priority is Priority.CRITICAL
    assert reasoner.after == ("triage",)
    assert reasoner.output_kind is OutputKind.REASONING
    assert reasoner.model == "gpt-4o"
    assert (reasoner.min_output, reasoner.max_output) == (64, 4096)
    assert reasoner.estimator == LinearEstimator(300, {"messages": 20}, 0.05)
    assert pipeline["triage"].priority is Priority.PERIPHERAL
    assert pipeline["formatter"].output_kind is OutputKind.STRUCTURED
    # the same pipeline as the one in the design document, plus the reasoner's extras
    assert pipeline.with_priorities({}) == Pipeline.from_yaml(str(EXAMPLE))


def test_yaml_round_trip(tmp_path: Path) -> None:
    original = Pipeline.from_yaml(EXAMPLE)
    path = tmp_path / "out.yaml"
    text = original.to_yaml(path)
    assert path.read_text(encoding="utf-8") == text
    assert Pipeline.from_yaml(path) == original
    assert "after: [triage]" in text
    assert Pipeline.from_dict(original.to_dict()) == original


def test_to_yaml_without_path_writes_nothing(tmp_path: Path) -> None:
    text = support_pipeline().to_yaml()
    assert text.startswith("name: support\nagents:\n- name: triage\n")
    assert list(tmp_path.iterdir()) == []


def test_yaml_round_trip_after_reorder(tmp_path: Path) -> None:
    pipeline = Pipeline([Agent("b", after=["a"]), Agent("a", min_output=0)], name="x")
    path = tmp_path / "p.yaml"
    pipeline.to_yaml(path)
    assert Pipeline.from_yaml(path) == pipeline


def test_yaml_minimal(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        agents:
          - name: only
            after:
            model: null
            max_output: null
            estimator: null
        """,
    )
    pipeline = Pipeline.from_yaml(path)
    assert pipeline.name == "pipeline"
    assert pipeline.agents == (Agent("only"),)


def test_yaml_top_level_not_a_mapping(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, "- name: a\n")
    assert error.file == str(path)  # type: ignore[attr-defined]
    assert error.line == 1  # type: ignore[attr-defined]
    assert error.key is None  # type: ignore[attr-defined]
    assert "must be a mapping" in str(error)
    error, _ = load_error(tmp_path, "just text\n")
    assert "must be a mapping" in str(error)


@pytest.mark.parametrize(
    ("text", "key", "needle", "fragment"),
    [
        (
            """
            name: p
            agent:
              - name: a
            """,
            "agent",
            "agent:",
            "unknown key 'agent'; allowed: agents, kinds, name",
        ),
        ("name: p\n", None, "name: p", "missing required key 'agents'"),
        ("agents: a\n", "agents", "agents:", "must be a list of agents"),
        ("agents: {a: 1}\n", "agents", "agents:", "must be a list of agents"),
        ("agents: []\n", "agents", "agents:", "at least one agent"),
        ("name: 5\nagents: [{name: a}]\n", "name", "name: 5", "non-empty string"),
        (
            """
            agents:
              - name: a
              - just-a-string
            """,
            "agents[1]",
            "just-a-string",
            "must be a mapping",
        ),
        (
            """
            agents:
              - name: a
              - priority: critical
            """,
            "agents[1]",
            "priority: critical",
            "missing required key 'name'",
        ),
        (
            """
            agents:
              - name: a
                prio: critical
            """,
            "agents[0].prio",
            "prio:",
            "unknown key 'prio'; allowed: after, estimator, max_output, min_output, model, "
            "name, output_kind, priority, typical_input, typical_output",
        ),
        (
            """
            agents:
              - name: triage
              - name: reasoner
                after: triage
            """,
            "agents[1].after",
            "after: triage",
            "must be a list of agent names, not str 'triage'",
        ),
        (
            """
            agents:
              - name: a
                min_output: "x"
            """,
            "agents[0].min_output",
            "min_output",
            "non-negative integer",
        ),
        (
            """
            agents:
              - name: a
                min_output: 1.5
            """,
            "agents[0].min_output",
            "min_output",
            "non-negative integer, not float 1.5",
        ),
        (
            """
            agents:
              - name: a
                max_output: 0
            """,
            "agents[0].max_output",
            "max_output",
            "at least",
        ),
        (
            """
            agents:
              - name: a

                priority: urgent
            """,
            "agents[0].priority",
            "priority: urgent",
            "must be one of: critical, standard, peripheral; got 'urgent'",
        ),
        (
            """
            agents:
              - name: a
                output_kind: json
            """,
            "agents[0].output_kind",
            "output_kind",
            "structured, prose, reasoning",
        ),
        (
            """
            agents:
              - name: 12
            """,
            "agents[0].name",
            "name: 12",
            "non-empty string",
        ),
        (
            """
            agents:
              - name: a
                estimator: 300
            """,
            "agents[0].estimator",
            "estimator",
            "must be a mapping with keys base, per_feature, per_input",
        ),
        (
            """
            agents:
              - name: a
                estimator:
                  base: 300
                  slope: 2
            """,
            "agents[0].estimator.slope",
            "slope",
            "unknown key 'slope'; allowed: base, per_feature, per_input",
        ),
        (
            """
            agents:
              - name: a
                estimator:
                  base: 300
                  per_feature:
                    docs: 1
                    messages: many
            """,
            "agents[0].estimator.per_feature.messages",
            "messages: many",
            "must be a number",
        ),
        (
            """
            agents:
              - name: a
                estimator: {base: yes}
            """,
            "agents[0].estimator.base",
            "estimator",
            "must be a number, not bool True",
        ),
        (
            """
            agents:
              - name: a
                estimator:
                  per_feature: [messages]
            """,
            "agents[0].estimator.per_feature",
            "per_feature",
            "must be a mapping",
        ),
        (
            """
            agents:
              - name: triage
              - name: reasoner
              - name: triage
            """,
            "agents[2].name",
            "name: triage",
            "already used by agents[0]",
        ),
        (
            """
            agents:
              - name: triage
              - name: reasoner
                after: [triage]
              - name: formatter
                after:
                  - reasoner
                  - ghost
            """,
            "agents[2].after",
            "after:",
            "'ghost', which is not in the pipeline; known agents: triage, reasoner, formatter",
        ),
        (
            """
            agents:
              - name: a
                after: [b]
              - name: b
                after: [a]
            """,
            "agents[0].after",
            "after: [b]",
            "cycle: a -> b -> a",
        ),
        (
            """
            agents:
              - name: a
                after: [a]
            """,
            "agents[0].after",
            "after: [a]",
            "cycle (a -> a)",
        ),
    ],
)
def test_yaml_errors_are_located(
    tmp_path: Path, text: str, key: str | None, needle: str, fragment: str
) -> None:
    error, path = load_error(tmp_path, text)
    # the mistake is on the second line matching the needle in these two cases
    occurrence = 2 if key in ("agents[2].name", "agents[2].after") else 1
    assert error.file == str(path)  # type: ignore[attr-defined]
    assert error.key == key  # type: ignore[attr-defined]
    assert error.line == line_of(path, needle, occurrence)  # type: ignore[attr-defined]
    assert fragment in str(error)
    assert str(error).startswith(f"{path}, line {error.line}")  # type: ignore[attr-defined]


def test_yaml_malformed(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, "agents:\n  - name: a\n   priority: [critical\n")
    assert error.file == str(path)  # type: ignore[attr-defined]
    assert isinstance(error.line, int)  # type: ignore[attr-defined]
    assert "not valid YAML" in str(error)


def test_yaml_empty_and_missing_files(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, "")
    assert error.file == str(path)  # type: ignore[attr-defined]
    with pytest.raises(SpecError) as info:
        Pipeline.from_yaml(tmp_path / "absent.yaml")
    assert info.value.file == str(tmp_path / "absent.yaml")  # type: ignore[attr-defined]


def test_yaml_and_code_report_the_same_problem(tmp_path: Path) -> None:
    error, _ = load_error(
        tmp_path,
        """
        agents:
          - name: a
            min_output: 1.5
        """,
    )
    with pytest.raises(SpecError) as in_code:
        Agent("a", min_output=1.5)  # type: ignore[arg-type]
    assert error.problem == in_code.value.problem  # type: ignore[attr-defined]

    error, _ = load_error(
        tmp_path,
        """
        agents:
          - name: a
            after: [b]
          - name: b
            after: [a]
        """,
    )
    code = pipeline_error([Agent("a", after=["b"]), Agent("b", after=["a"])])
    assert error.problem == code.problem  # type: ignore[attr-defined]
    assert error.key == code.key  # type: ignore[attr-defined]


# --- from_dict on plain data -------------------------------------------------------------


def test_from_dict_plain_data() -> None:
    pipeline = Pipeline.from_dict(
        {
            "name": "support",
            "agents": [
                {"name": "triage", "priority": "peripheral", "output_kind": "structured"},
                {
                    "name": "reasoner",
                    "priority": "critical",
                    "after": ["triage"],
                    "output_kind": "reasoning",
                },
                {
                    "name": "formatter",
                    "priority": "peripheral",
                    "after": ["reasoner"],
                    "output_kind": "structured",
                },
            ],
        }
    )
    assert pipeline == support_pipeline()


def test_from_dict_accepts_agent_and_estimator_objects() -> None:
    est = LinearEstimator(base=5)
    pipeline = Pipeline.from_dict({"agents": [Agent("a"), {"name": "b", "estimator": est}]})
    assert pipeline["b"].estimator is est


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        (["a"], None, "must be a mapping"),
        ({"agents": [{"name": "a"}], "extra": 1}, "extra", "unknown key 'extra'"),
        ({}, None, "missing required key 'agents'"),
        ({"agents": "a"}, "agents", "must be a list"),
        ({"agents": [{"name": "a", "colour": 1}]}, "agents[0].colour", "unknown key"),
        ({"agents": [{"name": "a"}, {"name": "b", "after": "a"}]}, "agents[1].after", "list"),
        ({"agents": [{"name": "a", "estimator": {"base": "x"}}]}, "agents[0].estimator.base", ""),
        ({"agents": [{"name": "a", "estimator": {"k": 1}}]}, "agents[0].estimator.k", "unknown"),
        ({"agents": [{"name": "b", "after": ["zz"]}]}, "agents[0].after", "'zz'"),
    ],
)
def test_from_dict_errors(data: object, key: str | None, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        Pipeline.from_dict(data, file="inline.yaml")
    error = info.value
    assert error.file == "inline.yaml"  # type: ignore[attr-defined]
    assert error.line is None  # type: ignore[attr-defined]
    assert error.key == key  # type: ignore[attr-defined]
    assert fragment in str(error)
