"""``apportion ingest``: ChatDev call logs and OTLP JSON spans, good files and bad ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from apportion.analysis.ingest import read_otlp, read_records
from apportion.analysis.report import build_report
from apportion.cli import app
from apportion.errors import SchemaVersionError, SpecError
from apportion.telemetry import SCHEMA_VERSION
from apportion.telemetry.sql import open_database

runner = CliRunner()
CHATDEV = Path(__file__).resolve().parents[2] / "examples" / "chatdev" / "calls.csv"

CSV = """run,split,call,phase,agent,prompt_tokens,completion_tokens,max_tokens
r1,train,1,Coding,Programmer,900,1000,1000
r1,train,2,Review,Reviewer,1200,100,14800
r2,test,1,Coding,Programmer,800,700,1000
r2,test,2,Review,Reviewer,1000,50,
"""


def _ingest(url: str, *files: Path, fmt: str = "auto") -> Any:
    return runner.invoke(app, ["ingest", *map(str, files), "--into", url, "--format", fmt])


def test_chatdev_csv_becomes_requests_and_calls(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    path.write_text(CSV)
    result = _ingest(db_url, path)
    assert result.exit_code == 0, result.output
    assert "2 requests, 4 calls" in result.output
    with open_database(db_url) as db:
        data = db.load()
    assert set(data.requests) == {"r1", "r2"}
    assert data.requests["r1"].features == {"split": "train"}
    assert data.requests["r1"].pipeline == "chatdev" and data.requests["r1"].ceiling is None
    calls = {(c.request_id, c.grant_id): c for c in data.calls}
    cut = calls["r1", 1]
    assert (cut.granted_context, cut.granted_output, cut.truncated) == (900, 1000, True)
    assert calls["r1", 2].truncated is False
    unlogged = calls["r2", 2]  # no max_tokens: the grant and the cut are unknown
    assert (unlogged.granted_context, unlogged.granted_output, unlogged.truncated) == (None,) * 3
    report = build_report(data)
    programmer = report["agents"]["Programmer"]
    assert programmer["utilization"] == pytest.approx((900 + 1000 + 800 + 700) / (1900 + 1800))
    assert programmer["ceiling_hit_rate"] == 0.5 and programmer["under_budgeted"] is True
    reviewer = report["agents"]["Reviewer"]
    assert reviewer["utilization"] == pytest.approx(1300 / 16000)  # r2's call has no grant
    assert reviewer["ceiling_hit_rate"] == 0.0  # over the one call whose cut is known
    # ingesting again replaces, never duplicates
    assert _ingest(db_url, path).exit_code == 0
    with open_database(db_url) as db:
        assert len(db.load().calls) == 4


def test_the_real_chatdev_log(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chatdev.db'}"
    result = _ingest(url, CHATDEV)
    assert result.exit_code == 0, result.output
    assert "56 requests, 1,370 calls" in result.output
    with open_database(url) as db:
        report = build_report(db.load())
    assert report["calls"] == 1370
    assert len(report["agents"]) == 8
    # a logged cap is the rest of a 4k, 8k or 16k window: every agent uses a small share of
    # what it is granted, and yet the Code Reviewer's long replies fill a 4k window: it is
    # under-budgeted (cut), so not over-budgeted, whatever share of its grants it used
    reviewer = report["agents"].pop("Code Reviewer")
    assert all(a["over_budgeted"] for a in report["agents"].values())
    assert reviewer["under_budgeted"] and reviewer["over_budgeted"] is False
    assert not report["agents"]["Programmer"]["under_budgeted"]


@pytest.mark.parametrize(
    ("body", "line", "key", "problem"),
    [
        ("r1,train,1,C,P,900,lots,1000\n", 2, "completion_tokens", "non-negative integer"),
        ("r1,train,1,C,P,900,10,1000\nr1,train,x,C,P,1,1,1\n", 3, "call", "non-negative"),
        ("r1,train,1,C,,900,10,1000\n", 2, "agent", "empty"),
    ],
)
def test_a_malformed_csv_names_file_line_and_field(
    tmp_path: Path, body: str, line: int, key: str, problem: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(CSV.splitlines()[0] + "\n" + body)
    db = tmp_path / "t.db"
    with pytest.raises(SpecError) as caught:
        read_records([path])
    assert (caught.value.file, caught.value.line, caught.value.key) == (str(path), line, key)
    assert problem in str(caught.value)
    result = _ingest(f"sqlite:///{db}", path)
    assert result.exit_code == 2
    assert f"line {line}" in result.output and key in result.output
    assert not db.exists()  # nothing written


# ------------------------------------------------------------------ OTLP JSON


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        wrapped: dict[str, Any] = {"boolValue": value}
    elif isinstance(value, int):
        wrapped = {"intValue": str(value)}
    elif isinstance(value, float):
        wrapped = {"doubleValue": value}
    elif isinstance(value, list | tuple):
        wrapped = {"arrayValue": {"values": [_attr("", v)["value"] for v in value]}}
    else:
        wrapped = {"stringValue": str(value)}
    return {"key": key, "value": wrapped}


def _span(trace: str, span: str, parent: str, name: str, start: int, **attrs: Any) -> Any:
    return {
        "traceId": trace,
        "spanId": span,
        "parentSpanId": parent,
        "name": name,
        "kind": 3,
        "startTimeUnixNano": str(start * 10**9),
        "endTimeUnixNano": str((start + 1) * 10**9),
        "attributes": [_attr(k.replace("__", "."), v) for k, v in attrs.items()],
    }


def _export(spans: list[Any], service: str = "support-bot") -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attr("service.name", service)]},
                "scopeSpans": [{"scope": {"name": "some.genai.instrumentation"}, "spans": spans}],
            }
        ]
    }


T1, T2 = "5b8efff798038103d269b633813fc60c", "5b8efff798038103d269b633813fc60d"


def _genai_spans() -> list[Any]:
    return [
        _span(
            T1, "a000000000000001", "", "invoke_agent planner", 100,
            gen_ai__agent__name="planner",
        ),
        _span(
            T1, "a000000000000002", "a000000000000001", "chat gpt-4o", 101,
            gen_ai__request__model="gpt-4o", gen_ai__request__max_tokens=200,
            gen_ai__usage__input_tokens=1000, gen_ai__usage__output_tokens=200,
            gen_ai__response__finish_reasons=["length"],
        ),
        _span(
            T1, "a000000000000003", "", "chat gpt-4o", 103, gen_ai__agent__name="writer",
            gen_ai__usage__input_tokens=500, gen_ai__usage__output_tokens=50,
        ),
        _span(T1, "a000000000000004", "", "chat", 104, gen_ai__usage__input_tokens=5),  # no agent
        _span(
            T2, "b000000000000001", "", "chat", 200, gen_ai__agent__name="planner",
            gen_ai__usage__input_tokens=800, gen_ai__usage__output_tokens=100,
            gen_ai__request__max_tokens=400, gen_ai__response__finish_reasons=["stop"],
        ),
    ]  # fmt: skip


def test_otlp_genai_spans_become_calls(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "spans.json"
    path.write_text(json.dumps(_export(_genai_spans()), indent=2))
    result = _ingest(db_url, path)
    assert result.exit_code == 0, result.output
    assert "2 requests, 3 calls" in result.output
    assert "skipped 1 span(s): no gen_ai.agent.name" in result.output
    with open_database(db_url) as db:
        data = db.load()
    assert set(data.requests) == {T1, T2}
    assert data.requests[T1].pipeline == "support-bot"
    by_key = {(c.request_id, c.agent): c for c in data.calls}
    planner = by_key[T1, "planner"]  # its agent comes from the parent invoke_agent span
    assert (planner.used_input, planner.used_output, planner.truncated) == (1000, 200, True)
    assert (planner.granted_context, planner.granted_output) == (1000, 200)
    assert planner.model == "gpt-4o" and planner.began_at == 101.0
    writer = by_key[T1, "writer"]
    assert (writer.granted_output, writer.truncated) == (None, None)
    assert by_key[T2, "planner"].truncated is False


def test_otlp_json_lines(tmp_path: Path) -> None:
    spans = _genai_spans()
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps(_export(spans[:4])) + "\n\n" + json.dumps(_export(spans[4:])) + "\n")
    found = read_records([path])
    assert len(found.records) == 2 and found.calls == 3


def _otlp(exporter: Any) -> list[dict[str, Any]]:
    """The finished spans of an in-memory exporter, as OTLP JSON spans."""
    return [
        {
            "traceId": f"{s.context.trace_id:032x}",
            "spanId": f"{s.context.span_id:016x}",
            "parentSpanId": f"{s.parent.span_id:016x}" if s.parent else "",
            "name": s.name,
            "startTimeUnixNano": str(s.start_time),
            "endTimeUnixNano": str(s.end_time),
            "attributes": [_attr(k, v) for k, v in (s.attributes or {}).items()],
        }
        for s in exporter.get_finished_spans()
    ]


def test_a_request_tree_round_trips_through_otlp(tmp_path: Path) -> None:
    """Child requests' spans, exported and ingested, keep their parent, root and depth."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from apportion import Agent, Controller, Pipeline
    from apportion.telemetry import flush
    from apportion.telemetry.otel import OTelSink

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    db = f"sqlite:///{tmp_path / 'direct.db'}"
    pipeline = Pipeline([Agent("lead"), Agent("worker")], name="tree")
    controller = Controller(pipeline, policy="uniform", telemetry=[OTelSink(provider), db])
    with controller.request(ceiling=8_000) as req:
        g = req.begin("lead", input_tokens=100, output_tokens=50)
        req.finish(g, input_tokens=100, output_tokens=30)
        for kid in req.fan_out(["web", "papers"], share=0.5):
            with kid:
                g = kid.begin("worker", input_tokens=200, output_tokens=100)
                kid.finish(g, input_tokens=200, output_tokens=60)
                with kid.child("check", ceiling=300) as check:
                    g = check.begin("worker", input_tokens=50, output_tokens=50)
                    check.finish(g, input_tokens=50, output_tokens=50, truncated=True)
    with controller.request(ceiling=1_000) as orchestrator:  # no calls of its own
        for kid in orchestrator.fan_out(2, share=1.0):
            with kid:
                g = kid.begin("worker", input_tokens=20, output_tokens=20)
                kid.finish(g, input_tokens=20, output_tokens=20)
    assert flush(10)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_export(_otlp(exporter))))
    ingested = f"sqlite:///{tmp_path / 'ingested.db'}"
    assert _ingest(ingested, path).exit_code == 0
    with open_database(db) as one, open_database(ingested) as two:
        direct, replayed = one.load(), two.load()
    assert len(direct.requests) == 8
    assert replayed.calls == direct.calls
    assert {r: (q.parent_id, q.root_id, q.depth) for r, q in replayed.requests.items()} == {
        r: (q.parent_id, q.root_id, q.depth) for r, q in direct.requests.items()
    }
    assert replayed.requests[f"{req.request_id}::web::check"].depth == 2


def test_apportion_spans_round_trip(tmp_path: Path) -> None:
    """Spans from the OTel sink, exported as OTLP JSON, ingest to the SQL sink's rows."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from apportion import Agent, Controller, Pipeline
    from apportion.telemetry import flush
    from apportion.telemetry.otel import OTelSink

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    db = f"sqlite:///{tmp_path / 'direct.db'}"
    pipeline = Pipeline([Agent("a"), Agent("b", after=["a"])], name="rt")
    controller = Controller(pipeline, telemetry=[OTelSink(provider), db])
    for score in (0.2, 0.9):
        with controller.request(ceiling=5_000) as req:
            g = req.begin("a", input_tokens=100, output_tokens=50)
            req.finish(g, input_tokens=100, output_tokens=50, truncated=True)
            g = req.begin("b", input_tokens=300, output_tokens=100)
            g = req.extend(g, 20) or g
            req.finish(g, input_tokens=300, output_tokens=110)
            req.score(score)
    assert flush(10)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_export(_otlp(exporter), service="ignored")))
    ingested = f"sqlite:///{tmp_path / 'ingested.db'}"
    assert _ingest(ingested, path).exit_code == 0
    with open_database(db) as one, open_database(ingested) as two:
        direct, replayed = one.load(), two.load()
    assert replayed.calls == direct.calls
    for rid, request in direct.requests.items():
        again = replayed.requests[rid]
        assert (again.pipeline, again.ceiling, again.outcome, again.status, again.consumed) == (
            request.pipeline, request.ceiling, request.outcome, request.status, request.consumed
        )  # fmt: skip
    assert build_report(replayed)["agents"] == build_report(direct)["agents"]


@pytest.mark.parametrize(
    ("mutate", "key", "problem"),
    [
        (
            lambda s: s[1]["attributes"].__setitem__(3, _attr("gen_ai.usage.input_tokens", "abc")),
            "resourceSpans[0].scopeSpans[0].spans[1].attributes.gen_ai.usage.input_tokens",
            "non-negative integer, not 'abc'",
        ),
        (
            lambda s: s[2].__setitem__("startTimeUnixNano", "yesterday"),
            "resourceSpans[0].scopeSpans[0].spans[2].startTimeUnixNano",
            "nanoseconds",
        ),
        (
            lambda s: s[2].pop("traceId"),
            "resourceSpans[0].scopeSpans[0].spans[2].traceId",
            "missing",
        ),
    ],
)
def test_malformed_spans_name_file_line_and_field(
    tmp_path: Path, mutate: Any, key: str, problem: str
) -> None:
    spans = _genai_spans()
    mutate(spans)
    path = tmp_path / "bad.json"
    text = json.dumps(_export(spans), indent=2)
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        read_records([path])
    error = caught.value
    assert (error.file, error.key) == (str(path), key)
    assert problem in str(error)
    lines = text.splitlines()
    assert error.line is not None and 1 < error.line <= len(lines)
    if key.endswith("input_tokens"):  # the line of that very attribute
        assert '"gen_ai.usage.input_tokens"' in lines[error.line - 1]
    result = _ingest(f"sqlite:///{tmp_path / 't.db'}", path)
    assert result.exit_code == 2 and f"line {error.line}" in result.output


def test_invalid_json_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "resourceSpans": [\n    {,}\n  ]\n}\n')
    with pytest.raises(SpecError) as caught:
        read_records([path])
    assert caught.value.line == 3 and "not valid JSON" in str(caught.value)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text(json.dumps(_export(_genai_spans())) + "\n{oops\n")
    with pytest.raises(SpecError) as caught:
        read_records([jsonl])
    assert caught.value.line == 2


def test_not_an_otlp_export(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"spans": []}')
    with pytest.raises(SpecError, match="resourceSpans"):
        read_records([path])


def test_spans_of_a_newer_schema_are_refused_with_the_version(tmp_path: Path) -> None:
    spans = _genai_spans()
    spans[2]["attributes"].append(_attr("apportion.schema_version", SCHEMA_VERSION + 4))
    path = tmp_path / "new.json"
    path.write_text(json.dumps(_export(spans), indent=2))
    with pytest.raises(SchemaVersionError) as caught:
        read_otlp(path)
    assert caught.value.found == SCHEMA_VERSION + 4
    result = _ingest(f"sqlite:///{tmp_path / 't.db'}", path)
    assert result.exit_code == 2
    assert f"schema version {SCHEMA_VERSION + 4}" in result.output


def test_the_same_request_in_two_files_is_refused(tmp_path: Path) -> None:
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    one.write_text(CSV)
    two.write_text(CSV)
    with pytest.raises(SpecError, match="'r1' is also in"):
        read_records([one, two])


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    result = _ingest(f"sqlite:///{tmp_path / 't.db'}", tmp_path / "nope.csv")
    assert result.exit_code == 2 and "nope.csv" in result.output
    path = tmp_path / "calls.csv"
    path.write_text(CSV)
    result = _ingest(f"sqlite:///{tmp_path / 't.db'}", path, fmt="parquet")
    assert result.exit_code == 2 and "format" in result.output


def test_the_kind_of_each_call_round_trips_through_otlp(tmp_path: Path) -> None:
    """A name budgeted by its agent kind keeps its kind once exported and ingested."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from apportion import Agent, AgentKind, Controller, Pipeline
    from apportion.telemetry import flush
    from apportion.telemetry.otel import OTelSink

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    db = f"sqlite:///{tmp_path / 'direct.db'}"
    pipeline = Pipeline([Agent("lead")], name="team", kinds=[AgentKind("expert", "expert:*")])
    controller = Controller(pipeline, telemetry=[OTelSink(provider), db])
    with controller.request(ceiling=5_000) as req:
        for name in ("lead", "expert:ada"):
            g = req.begin(name, input_tokens=100, output_tokens=50)
            req.finish(g, input_tokens=100, output_tokens=40)
    assert flush(10)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(_export(_otlp(exporter))))
    ingested = f"sqlite:///{tmp_path / 'ingested.db'}"
    assert _ingest(ingested, path).exit_code == 0
    with open_database(db) as one, open_database(ingested) as two:
        direct, replayed = one.load(), two.load()
    assert [(c.agent, c.kind) for c in replayed.calls] == [("lead", None), ("expert:ada", "expert")]
    assert replayed.calls == direct.calls
    assert build_report(replayed)["kinds"] == build_report(direct)["kinds"]
