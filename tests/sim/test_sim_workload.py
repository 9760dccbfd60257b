"""Workload files: loading, defaults, and errors that name file, line and key."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest

from apportion.errors import SpecError
from apportion.sim import Workload, load_workload

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workloads"

BASE = """\
name: demo
seed: 3
requests: 10
ceiling: 5000
features:
  messages: {median: 12, p90: 40}
agents:
  - name: first
    priority: critical
    input:
      base: 100
      per_feature: {messages: 20}
      noise: 0.1
    output:
      base: 40
  - name: second
    priority: peripheral
    after: [first]
    input:
      base: 50
      upstream: true
    output:
      base: 30
      noise: 0.2
    output_kind: structured
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workload.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> SpecError:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        load_workload(path)
    assert caught.value.file == str(path)
    return caught.value


def test_base_file_loads_with_defaults(tmp_path: Path) -> None:
    workload = load_workload(write(tmp_path, BASE))
    assert (workload.name, workload.seed, workload.requests, workload.ceiling) == (
        "demo",
        3,
        10,
        5000,
    )
    assert workload.extension_overhead == "resend"
    assert workload.models == () and workload.ceiling_usd is None
    first, second = workload.agents
    assert first.after == () and first.output_kind == "prose"
    assert first.input_sensitivity == 1.0 and first.influence == 1.0 and first.model is None
    assert dict(first.input.per_feature) == {"messages": 20.0}
    assert first.input.upstream is False and first.output.noise == 0.0
    assert dict(first.output.per_feature) == {}
    assert second.after == ("first",) and second.input.upstream is True
    assert second.output_kind == "structured"
    assert workload.upstream_indices(1) == (0,)
    assert workload.features[0].sigma == pytest.approx(math.log(40 / 12) / 1.2816)


def test_seed_requests_ceiling_are_optional(tmp_path: Path) -> None:
    text = "\n".join(
        line for line in BASE.splitlines() if not line.startswith(("seed", "requests", "ceiling"))
    )
    workload = load_workload(write(tmp_path, text))
    assert (workload.seed, workload.requests, workload.ceiling) == (None, None, None)


def test_upstream_without_after_is_accepted(tmp_path: Path) -> None:
    text = BASE.replace("    after: [first]\n", "")
    assert load_workload(write(tmp_path, text)).agents[1].input.upstream is True


def _line_of(text: str, fragment: str) -> int:
    fragment, _, nth = fragment.partition("@")
    occurrence = int(nth or 1)
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(fragment)


@pytest.mark.parametrize(
    ("old", "new", "key", "line_fragment", "words"),
    [
        ("ceiling: 5000", "ceilng: 5000", "ceilng", "ceilng", "unknown key"),
        (
            "    priority: critical",
            "    priority: critical\n    prority: x",
            "agents[0].prority",
            "prority",
            "unknown key",
        ),
        (
            "      base: 100",
            "      base: 100\n      bse: 1",
            "agents[0].input.bse",
            "bse",
            "unknown key",
        ),
        (
            "      base: 40",
            "      base: 40\n      upstream: true",
            "agents[0].output.upstream",
            "upstream: true",
            "only to an agent's input",
        ),
        (
            "  messages: {median: 12, p90: 40}",
            "  messages: {median: 12, p90: 40, p95: 50}",
            "features.messages.p95",
            "messages:",
            "unknown key",
        ),
        (
            "{median: 12, p90: 40}",
            "{median: 12, p90: 10}",
            "features.messages.p90",
            "messages:",
            "at least the median",
        ),
        (
            "{median: 12, p90: 40}",
            "{median: 0, p90: 10}",
            "features.messages.median",
            "messages:",
            "positive",
        ),
        (
            "      base: 100",
            "      base: -100",
            "agents[0].input.base",
            "base: -100",
            "non-negative",
        ),
        ("      noise: 0.1", "      noise: .nan", "agents[0].input.noise", "noise: .nan", "finite"),
        ("      noise: 0.1", "      noise: .inf", "agents[0].input.noise", "noise: .inf", "finite"),
        (
            "      noise: 0.1",
            "      noise: 'big'",
            "agents[0].input.noise",
            "noise: 'big'",
            "must be a number",
        ),
        (
            "      noise: 0.1",
            "      noise: true",
            "agents[0].input.noise",
            "noise: true",
            "must be a number",
        ),
        (
            "{messages: 20}",
            "{pages: 20}",
            "agents[0].input.per_feature.pages",
            "pages",
            "unknown feature",
        ),
        (
            "{messages: 20}",
            "{messages: -2}",
            "agents[0].input.per_feature.messages",
            "messages: -2",
            "non-negative",
        ),
        (
            "    priority: peripheral",
            "    priority: low",
            "agents[1].priority",
            "priority: low",
            "critical | standard | peripheral",
        ),
        (
            "    output_kind: structured",
            "    output_kind: json",
            "agents[1].output_kind",
            "output_kind: json",
            "structured | prose | reasoning",
        ),
        ("  - name: second", "  - name: first", "agents[1].name", "name: first@2", "used twice"),
        (
            "    after: [first]",
            "    after: [second]",
            "agents[1].after[0]",
            "after:",
            "run after itself",
        ),
        (
            "    after: [first]",
            "    after: [nobody]",
            "agents[1].after[0]",
            "after:",
            "not an earlier agent",
        ),
        (
            "    after: [first]",
            "    after: [first, first]",
            "agents[1].after[1]",
            "after:",
            "listed twice",
        ),
        (
            "      upstream: true",
            "      upstream: yes please",
            "agents[1].input.upstream",
            "upstream: yes",
            "true or false",
        ),
        ("ceiling: 5000", "ceiling: 0", "ceiling", "ceiling: 0", "at least 1"),
        ("ceiling: 5000", "ceiling: 12.5", "ceiling", "ceiling: 12.5", "integer"),
        ("requests: 10", "requests: -1", "requests", "requests: -1", "at least 1"),
        (
            "ceiling: 5000",
            "ceiling: 5000\nextension_overhead: sometimes",
            "extension_overhead",
            "extension_overhead",
            "resend | none",
        ),
        (
            "    priority: critical",
            "    priority: critical\n    model: large",
            "agents[0].model",
            "model: large",
            "no 'models'",
        ),
        (
            "    priority: critical",
            "    priority: critical\n    influence: -1",
            "agents[0].influence",
            "influence: -1",
            "non-negative",
        ),
    ],
)
def test_errors_name_file_line_and_key(
    tmp_path: Path, old: str, new: str, key: str, line_fragment: str, words: str
) -> None:
    assert old in BASE
    text = BASE.replace(old, new, 1)
    error = error_for(tmp_path, text)
    assert error.key == key
    assert error.line == _line_of(text, line_fragment)
    assert words in str(error)
    assert str(error).startswith(f"{error.file}, line {error.line}: key '{key}'")


def test_later_agent_in_after_is_rejected(tmp_path: Path) -> None:
    text = BASE.replace("    priority: critical", "    priority: critical\n    after: [second]")
    error = error_for(tmp_path, text)
    assert error.key == "agents[0].after[0]"
    assert "not an earlier agent" in str(error)


def test_missing_required_keys(tmp_path: Path) -> None:
    text = BASE.replace("    priority: peripheral\n", "")
    error = error_for(tmp_path, text)
    assert error.key == "agents[1]"
    assert error.line == _line_of(text, "name: second")
    assert "priority" in str(error)

    error = error_for(tmp_path, BASE.replace("name: demo\n", ""))
    assert error.key is None and error.line == 1 and "'name'" in str(error)

    text = BASE.replace("    output:\n      base: 40\n", "")
    error = error_for(tmp_path, text)
    assert error.key == "agents[0]" and "'output'" in str(error)

    text = BASE.replace("      base: 40\n", "      noise: 0.1\n", 1)
    error = error_for(tmp_path, text)
    assert error.key == "agents[0].output" and "'base'" in str(error)


def test_agents_must_be_a_nonempty_list(tmp_path: Path) -> None:
    error = error_for(tmp_path, "name: x\nagents: []\n")
    assert error.key == "agents" and error.line == 2
    error = error_for(tmp_path, "name: x\nagents: {a: 1}\n")
    assert error.key == "agents" and "list" in str(error)
    error = error_for(tmp_path, "name: x\nagents:\n  - 3\n")
    assert error.key == "agents[0]" and error.line == 3


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    error = error_for(tmp_path, "- 1\n- 2\n")
    assert "mapping" in str(error)
    error = error_for(tmp_path, "name: [\n")
    assert "not valid YAML" in str(error)


MODELS = """\
ceiling_usd: 0.04
models:
  - name: large
    input_price: 3.00
    output_price: 15.00
    context_window: 200000
    max_output: 8192
    capability: {structured: 1.0, prose: 1.0, reasoning: 1.0}
  - name: small
    input_price: 0.15
    output_price: 0.60
    context_window: 128000
    max_output: 16384
    capability: {structured: 0.97, prose: 0.85, reasoning: 0.55}
"""


def with_models() -> str:
    agent_model = "    priority: critical\n    model: small"
    return BASE.replace("    priority: critical", agent_model) + MODELS


def test_models_section(tmp_path: Path) -> None:
    text = with_models()
    workload = load_workload(write(tmp_path, text))
    assert workload.ceiling_usd == 0.04
    assert [m.name for m in workload.models] == ["large", "small"]
    small = workload.model("small")
    assert small.capability["reasoning"] == 0.55 and small.max_output == 16384
    assert small.cost(1_000_000, 1_000_000) == pytest.approx(0.75)
    assert workload.agents[0].model == "small"


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        ("model: small", "model: medium", "agents[0].model", "unknown model"),
        ("  - name: small", "  - name: large", "models[1].name", "used twice"),
        (
            "prose: 0.85, reasoning",
            "prose: 1.5, reasoning",
            "models[1].capability.prose",
            "at most 1",
        ),
        (
            "prose: 0.85, reasoning",
            "poetry: 0.85, reasoning",
            "models[1].capability.poetry",
            "unknown output kind",
        ),
        (
            "{structured: 0.97, prose: 0.85, reasoning: 0.55}",
            "{prose: 0.85}",
            "models[1].capability",
            "structured",
        ),
        ("    max_output: 8192", "    max_output: 0", "models[0].max_output", "at least 1"),
        ("    input_price: 3.00", "    input_price: -3", "models[0].input_price", "non-negative"),
        ("    input_price: 3.00\n", "", "models[0]", "input_price"),
        ("ceiling_usd: 0.04", "ceiling_usd: 0", "ceiling_usd", "positive"),
    ],
)
def test_model_errors(tmp_path: Path, old: str, new: str, key: str, words: str) -> None:
    text = with_models()
    assert old in text
    text = text.replace(old, new, 1)
    error = error_for(tmp_path, text)
    assert error.key == key
    assert words in str(error)
    assert error.line is not None


def base_dict() -> dict[str, Any]:
    return {
        "name": "code",
        "agents": [
            {"name": "a", "priority": "critical", "input": {"base": 10}, "output": {"base": 5}},
        ],
    }


def test_from_dict_without_lines() -> None:
    workload = Workload.from_dict(base_dict())
    assert workload.agents[0].name == "a" and workload.ceiling is None

    data = base_dict()
    data["agents"][0]["input"]["noise"] = float("nan")
    with pytest.raises(SpecError) as caught:
        Workload.from_dict(data, file="in-code")
    assert caught.value.key == "agents[0].input.noise"
    assert caught.value.file == "in-code" and caught.value.line is None

    data = base_dict()
    data["agents"][0]["after"] = ["a"]
    with pytest.raises(SpecError) as caught:
        Workload.from_dict(data)
    assert caught.value.key == "agents[0].after[0]"

    data = base_dict()
    data["agents"][0]["surprise"] = 1
    with pytest.raises(SpecError) as caught:
        Workload.from_dict(data)
    assert caught.value.key == "agents[0].surprise"


def test_examples_load() -> None:
    triage = load_workload(EXAMPLES / "support-triage.yaml")
    assert triage.agent_names == ("triage", "reasoner", "formatter")
    assert (triage.ceiling, triage.requests) == (20000, 1000)
    assert [a.priority for a in triage.agents] == ["peripheral", "critical", "peripheral"]

    mispriority = load_workload(EXAMPLES / "mispriority.yaml")
    assert len(mispriority.agents) == 5
    strongest = max(mispriority.agents, key=lambda agent: agent.influence)
    assert strongest.priority == "peripheral"
