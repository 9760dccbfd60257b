"""Input files from anywhere: each loader refuses a bad one with one short ApportionError.

Also: files written by ``to_yaml`` are whole or untouched, a budgets file naming an agent
the pipeline lacks is refused, and building a pipeline is linear in its agents.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from apportion import Agent, Controller, Pipeline
from apportion.analysis.ingest import read_records
from apportion.errors import ApportionError, SpecError, UnknownAgent
from apportion.files import load_json, read_text
from apportion.limits import MAX_DEPTH, excerpt, listing
from apportion.policies import StaticPolicy
from apportion.policies.constrained import Constrained
from apportion.policies.rollout import Rollout
from apportion.sim.replay import load_calls
from apportion.sim.workload import load_workload
from apportion.yamlfile import MAX_ALIAS_NODES, load_yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HEADER = "run,call,agent,prompt_tokens,completion_tokens\n"


def _write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(data)
    return path


def _refused(load: Callable[[Path], Any], path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < len(str(path)) + 260, message
    message.encode("utf-8")  # printable: no lone surrogate
    return info.value


# --------------------------------------------------------------------------- YAML


def _bomb(depth: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol]"]
    for i in range(1, depth):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_without_expanding_it(tmp_path: Path) -> None:
    text = _bomb()  # 9**8 * 2 = 86 million strings once expanded, from 300 bytes
    assert len(text) < 500
    tracemalloc.start()
    try:
        error = _refused(load_yaml, _write(tmp_path, "bomb.yaml", text))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"aliases expand to more than {MAX_ALIAS_NODES:,} nodes" in str(error)
    assert error.line == 5  # where the expansion passes the bound, not the end
    assert peak < 2_000_000  # nothing was built


def test_aliases_within_the_bound_still_work(tmp_path: Path) -> None:
    text = "base: &b {priority: critical, output_kind: reasoning}\nx: [*b, *b, *b]\n"
    data = load_yaml(_write(tmp_path, "ok.yaml", text))
    assert data["x"] == [data["base"]] * 3


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: &a [*a]\n", "recursive alias"),
        ("[" * 100_000, f"nested more than {MAX_DEPTH} deep"),
        ("{a: " * 5_000 + "1" + "}" * 5_000, f"nested more than {MAX_DEPTH} deep"),
        ("".join(" " * i + "- \n" for i in range(0, 400, 2)), f"nested more than {MAX_DEPTH}"),
        (
            "a: &a [[[[[[[[[[1]]]]]]]]]]\n"
            + "".join(f"b{i}: &b{i} [*{'a' if i == 0 else f'b{i - 1}'}]\n" for i in range(60)),
            "nested more than",
        ),
        ("ceiling: " + "9" * 5_000 + "\n", "out of range"),
        ("ceiling: " + "9" * 4_000 + "\n", "out of range"),
        ("ceiling: 9223372036854775808\n", "out of range"),
        ('name: "\\ud800"\n', "lone surrogate"),
        ('"\\udfff": 1\n', "lone surrogate"),
        ("name: 2020-13-45\n", "cannot read"),
        ("name: a\x00b\n", "character U+0000 is not allowed"),
        ("? [a, b]\n: c\n", "a key must be a string"),
        ("k" * 100_000 + ": 1\n", "not valid YAML"),
    ],
)
def test_yaml_out_of_bounds_is_one_short_spec_error(
    tmp_path: Path, text: str, problem: str
) -> None:
    error = _refused(load_yaml, _write(tmp_path, "bad.yaml", text))
    assert problem in str(error)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text: byte 0x89 at offset 0 (a binary file?)"),
        ("name: caf\xe9\n".encode("latin-1"), "not UTF-8 text: byte 0xe9 at offset 9"),
        (b"name: \xed\xa0\x80\n", "not UTF-8 text: byte 0xed"),
    ],
)
def test_bytes_that_are_not_utf8(tmp_path: Path, data: bytes, problem: str) -> None:
    path = _write(tmp_path, "bad.yaml", data)
    for load in (Pipeline.from_yaml, load_workload, load_calls, read_text):
        error = _refused(load, path)
        assert problem in str(error) and error.file == str(path) and error.line == 1


def test_directory_and_missing_file(tmp_path: Path) -> None:
    for load in (Pipeline.from_yaml, load_workload, load_calls, StaticPolicy.from_yaml):
        assert "cannot read file" in str(_refused(load, tmp_path))
        assert "cannot read file" in str(_refused(load, tmp_path / "missing\udcff.yaml"))


def test_csv_given_as_a_workload_quotes_an_excerpt(tmp_path: Path) -> None:
    rows = "".join(f"r{i},1,agent,{i},1\n" for i in range(5_000))
    error = _refused(load_workload, _write(tmp_path, "calls.csv", HEADER + rows))
    assert "a workload must be a mapping, got the string 'run,call," in str(error)
    assert "...' (" in str(error) and "characters)" in str(error)


def test_long_names_in_pipeline_errors_are_cut(tmp_path: Path) -> None:
    agents = "".join(f"  - {{name: agent{i}}}\n" for i in range(3_000))
    text = "agents:\n" + agents + "  - {name: z, after: [" + "n" * 10_000 + "]}\n"
    error = _refused(Pipeline.from_yaml, _write(tmp_path, "p.yaml", text))
    assert "known agents: agent0, agent1," in str(error) and "more" in str(error)
    assert error.line == 3_002 and error.key == "agents[3000].after"


# --------------------------------------------------------------------------- CSV, JSON


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        ("9" * 5_000, "above the limit of 1,000,000,000,000"),
        (str(2**63), "above the limit"),
        ("-1", "must be a non-negative integer, not -1"),
        ("x" * 500, "must be a non-negative integer, not 'xxxx"),
    ],
)
def test_call_log_counts_out_of_range(tmp_path: Path, cell: str, problem: str) -> None:
    error = _refused(load_calls, _write(tmp_path, "c.csv", f"{HEADER}r,1,a,{cell},1\n"))
    assert problem in str(error) and error.line == 2 and error.key == "prompt_tokens"


def test_call_log_columns_checked_once_each(tmp_path: Path) -> None:
    header = ",".join(f"c{i}" for i in range(50_000)) + ",c7\n"
    error = _refused(load_calls, _write(tmp_path, "c.csv", header + "1\n"))
    assert "column 'c7' appears twice" in str(error)


def _span(**attributes: object) -> str:
    attrs = [{"key": k, "value": v} for k, v in attributes.items()]
    span = {"traceId": "t", "spanId": "s", "name": "chat", "attributes": attrs}
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})


AGENT = {"stringValue": "a"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            _span(**{"gen_ai.agent.name": AGENT, "gen_ai.usage.input_tokens": {"intValue": 2**63}}),
            "out of range",
        ),
        (
            _span(
                **{
                    "gen_ai.agent.name": AGENT,
                    "gen_ai.usage.input_tokens": {"intValue": str(2**63)},
                }
            ),
            "above the limit",
        ),
        (
            _span(
                **{
                    "gen_ai.agent.name": AGENT,
                    "gen_ai.usage.input_tokens": {"intValue": "9" * 5000},
                }
            ),
            "must be a non-negative integer",
        ),
        (
            _span(
                **{
                    "gen_ai.agent.name": AGENT,
                    "gen_ai.usage.input_tokens": {"intValue": 1},
                    "apportion.cost_usd": {"stringValue": "1e999"},
                }
            ),
            "must be a finite number",
        ),
        (_span(**{"gen_ai.agent.name": {"stringValue": "\ud800"}}), "lone surrogate"),
        ('{"resourceSpans": ' + "9" * 5000 + "}", "out of range"),
        ("[" * 100_000 + "]" * 100_000, "nested more than"),
        ('{"resourceSpans": [{"resource": "x", "scopeSpans": []}]}', "must be an object"),
        ('{"resourceSpans": NaN}', "NaN is not a JSON number"),
    ],
)
def test_otlp_out_of_bounds(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path, "spans.json", text)
    error = _refused(lambda p: read_records([p]), path)
    assert problem in str(error)


def test_otlp_start_time_past_2_63(tmp_path: Path) -> None:
    raw = json.loads(
        _span(**{"gen_ai.agent.name": AGENT, "gen_ai.usage.input_tokens": {"intValue": 1}})
    )
    raw["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["startTimeUnixNano"] = str(10**400)
    error = _refused(lambda p: read_records([p]), _write(tmp_path, "t.json", json.dumps(raw)))
    assert "nanoseconds since the epoch" in str(error)


def test_load_json_accepts_ordinary_documents() -> None:
    assert load_json('{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert load_json('"\\ud83d\\ude00"') == "\U0001f600"  # a surrogate pair is a character


def test_excerpt_and_listing() -> None:
    assert excerpt("short") == "'short'"
    assert excerpt("x" * 1000).endswith("...' (1,000 characters)") and len(excerpt("x" * 1000)) < 70
    assert excerpt(10**5000).startswith("an integer of about 5,00")
    assert excerpt("\udcff") == "'\\udcff'"
    assert listing(["a", "b"]) == "a, b"
    assert listing([f"n{i}" for i in range(100)]).endswith("n4 and 95 more")


# --------------------------------------------------------------------------- budgets


def test_budgets_file_naming_an_unknown_agent_is_refused(tmp_path: Path) -> None:
    budgets = _write(
        tmp_path,
        "budgets.yaml",
        "budgets:\n  triage: {context_tokens: 800, output_tokens: 64}\n"
        "  reasner: {context_tokens: 9000, output_tokens: 1500}\n",
    )
    pipeline = Pipeline.from_yaml(EXAMPLES / "pipeline.yaml")
    with pytest.raises(SpecError) as info:
        Controller(pipeline, policy=f"static:{budgets}")
    error = info.value
    assert (error.file, error.line, error.key) == (str(budgets), 3, "budgets.reasner")
    assert "unknown agent 'reasner'" in str(error) and "triage, reasoner, formatter" in str(error)
    with pytest.raises(UnknownAgent):
        Controller(pipeline, policy=StaticPolicy({"nobody": (10, 10)}))
    Controller(pipeline, policy=StaticPolicy({"triage": (10, 10)}))  # a subset is fine
    wrapped = StaticPolicy({"nobody": (10, 10)})
    for policy in (Constrained(wrapped, None), Rollout(wrapped, "uniform")):
        with pytest.raises(UnknownAgent):  # a wrapper asks the policies it wraps
            Controller(pipeline, policy=policy)


# --------------------------------------------------------------------------- atomic writes


def _small_file_limit() -> None:
    """In the child: files may grow to 64 bytes only (as on a full disk or over quota)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))


def _pipeline(n: int) -> Pipeline:
    return Pipeline([Agent(f"agent{i}", after=[f"agent{i - 1}"] if i else []) for i in range(n)])


WRITERS = {
    "pipeline": "Pipeline([Agent(f'agent{i}') for i in range(20)]).to_yaml(sys.argv[1])",
    "static": "StaticPolicy({f'a{i}': (9, 9) for i in range(20)}).to_yaml(sys.argv[1])",
}


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_to_yaml_that_fails_leaves_the_previous_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "out.yaml"
    previous = "previous: file\n"
    path.write_text(previous)
    script = f"import sys\nfrom apportion import Agent, Pipeline, StaticPolicy\n{WRITERS[kind]}\n"
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        preexec_fn=_small_file_limit,  # only the child: pytest's own output is a file too
    )
    assert done.returncode != 0 and "File too large" in done.stderr, done.stderr[-300:]
    assert path.read_text() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.yaml"]


# --------------------------------------------------------------------------- scaling


def _calls_while(build: Callable[[], object]) -> int:
    """Python and C function calls (generator steps included) made by ``build()``:
    a count of the work done, the same on every run and every machine."""
    count = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal count
        count += 1

    sys.setprofile(profile)
    try:
        build()
    finally:
        sys.setprofile(None)
    return count


def test_building_a_pipeline_is_linear_in_its_agents() -> None:
    agents = {
        n: [Agent(f"agent{i}", after=[f"agent{i - 1}"] if i else []) for i in range(n)]
        for n in (400, 800, 1600)
    }
    work = {n: _calls_while(lambda a=a: Pipeline(a)) for n, a in agents.items()}
    # linear: doubling the agents doubles the work (quadratic would quadruple it)
    assert work[1600] / work[800] < 2.3 and work[800] / work[400] < 2.3, work


def test_downstream_is_still_right() -> None:
    pipeline = Pipeline(
        [Agent("a"), Agent("b", after=["a"]), Agent("c"), Agent("d", after=["b", "c"]), Agent("e")]
    )
    assert pipeline.downstream("a") == ("b", "d")
    assert pipeline.downstream("c") == ("d",)
    assert pipeline.downstream("e") == ()
    assert pipeline.downstream("a") is pipeline.downstream("a")  # computed once


def test_every_loader_error_is_an_apportion_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "x.yaml", b"\xff")
    for load in (Pipeline.from_yaml, load_workload, load_calls, StaticPolicy.from_yaml):
        with pytest.raises(ApportionError):
            load(path)


def test_numbers_past_a_float_from_code_are_spec_errors() -> None:
    from apportion.sim.workload import Workload
    from apportion.spec import LinearEstimator

    with pytest.raises(SpecError, match="must be a finite number, not an integer of about"):
        LinearEstimator(base=10**400)
    document = {
        "name": "w",
        "features": {"m": {"median": 10**400, "p90": 10**401}},
        "agents": [],
    }
    with pytest.raises(SpecError, match="must be finite"):
        Workload.from_dict(document)
