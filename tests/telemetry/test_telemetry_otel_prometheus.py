"""OpenTelemetry spans with the GenAI conventions, and Prometheus metrics per agent."""

from __future__ import annotations

import socket
import urllib.request
from typing import Any

import pytest
from telemetry_helpers import make_controller, run_request

from apportion.telemetry import flush

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("prometheus_client")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from prometheus_client import CollectorRegistry

from apportion.telemetry.otel import OTelSink
from apportion.telemetry.prometheus import PrometheusSink


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_spans_carry_the_genai_conventions_and_the_grant() -> None:
    provider, exporter = _provider()
    controller = make_controller(OTelSink(provider))
    request_id = run_request(controller, score=0.5)
    assert flush(10)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    request = spans["apportion.request support"]
    attrs: Any = request.attributes
    assert attrs["apportion.request.id"] == request_id
    assert attrs["apportion.request.ceiling"] == 20_000
    assert attrs["apportion.request.outcome"] == 0.5
    calls = [s for s in exporter.get_finished_spans() if s.name.startswith("chat")]
    assert len(calls) == 3
    assert all(s.parent is not None and s.parent.span_id == request.context.span_id for s in calls)
    by_agent = {s.attributes["gen_ai.agent.name"]: s for s in calls}  # type: ignore[index]
    reasoner = by_agent["reasoner"]
    assert reasoner.name == "chat gpt-4o"
    r: Any = reasoner.attributes
    assert r["gen_ai.operation.name"] == "chat"
    assert r["gen_ai.request.model"] == "gpt-4o"
    assert (r["gen_ai.usage.input_tokens"], r["gen_ai.usage.output_tokens"]) == (4_000, 1_100)
    assert r["gen_ai.request.max_tokens"] == 1_200
    assert r["apportion.grant.output_tokens"] == 1_200
    assert r["apportion.grant.extensions"] == 1
    assert r["apportion.input_cut"] is True and r["apportion.ceiling_hit"] is True
    assert tuple(r["gen_ai.response.finish_reasons"]) == ("stop",)
    assert [e.name for e in reasoner.events] == ["apportion.extend"]
    assert reasoner.start_time < reasoner.end_time
    assert request.start_time <= reasoner.start_time and reasoner.end_time <= request.end_time
    t: Any = by_agent["triage"].attributes
    assert t["apportion.truncated"] is True and t["apportion.call.status"] == "cut"
    assert r["apportion.call.status"] == "completed"
    f: Any = by_agent["formatter"].attributes
    assert f["apportion.grant.settled"] == "release" and f["apportion.call.status"] == "released"
    assert "gen_ai.usage.input_tokens" not in f


def test_the_request_span_joins_the_trace_that_was_current() -> None:
    provider, exporter = _provider()
    controller = make_controller(OTelSink(provider))
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("handle ticket") as outer:
        run_request(controller)
    assert flush(10)
    request = next(s for s in exporter.get_finished_spans() if s.name.startswith("apportion."))
    assert request.parent is not None
    assert request.parent.span_id == outer.get_span_context().span_id
    assert request.context.trace_id == outer.get_span_context().trace_id


def test_prometheus_counts_per_agent() -> None:
    registry = CollectorRegistry()
    controller = make_controller(PrometheusSink(registry))
    run_request(controller)
    run_request(controller)
    assert flush(10)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"pipeline": "support", **labels})

    assert value("apportion_grants_total", agent="reasoner") == 2
    assert value("apportion_granted_tokens_total", agent="reasoner", kind="output") == 2_400
    assert value("apportion_consumed_tokens_total", agent="reasoner", kind="output") == 2_200
    assert value("apportion_consumed_tokens_total", agent="triage", kind="input") == 600
    assert value("apportion_ceiling_hits_total", agent="triage") == 2
    assert value("apportion_ceiling_hits_total", agent="reasoner") == 2  # input cut
    assert value("apportion_extensions_total", agent="reasoner") == 2
    assert value("apportion_released_total", agent="formatter", how="release") == 2
    assert value("apportion_utilization_count", agent="triage") == 2
    assert value("apportion_utilization_sum", agent="triage") == pytest.approx(2.0)
    assert value("apportion_requests_total", status="closed") == 2


def test_two_sinks_on_one_registry_share_its_metrics() -> None:
    registry = CollectorRegistry()
    PrometheusSink(registry)
    PrometheusSink(registry)  # no "duplicated timeseries" error


def test_prometheus_serves_its_registry_when_given_a_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = CollectorRegistry()
    sink = PrometheusSink(registry, port=port, addr="127.0.0.1")
    try:
        run_request(make_controller(sink))
        assert flush(10)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert 'apportion_grants_total{agent="reasoner",pipeline="support"} 1.0' in text
    finally:
        sink.close()


def test_prometheus_counts_a_kinds_members_on_the_kind() -> None:
    """Names drawn per run (a team) would make a series each: they count on their kind."""
    from apportion import Agent, AgentKind, Controller, Pipeline

    registry = CollectorRegistry()
    pipeline = Pipeline([Agent("lead")], name="team", kinds=[AgentKind("expert", "expert:*")])
    controller = Controller(pipeline, policy="elastic", telemetry=PrometheusSink(registry))
    with controller.request(ceiling=5_000) as req:
        for name in ("expert:ada", "expert:bob", "expert:cy"):
            grant = req.begin(name, input_tokens=100)
            req.finish(grant, input_tokens=100, output_tokens=10)
    assert flush(10)
    labels = {"pipeline": "team", "agent": "expert"}
    assert registry.get_sample_value("apportion_grants_total", labels) == 3
    assert (
        registry.get_sample_value("apportion_grants_total", {**labels, "agent": "expert:ada"})
        is None
    )


def test_child_request_spans_nest_under_their_parents_span() -> None:
    from apportion import Agent, Controller, Pipeline

    provider, exporter = _provider()
    pipeline = Pipeline([Agent("lead"), Agent("worker")], name="tree")
    controller = Controller(pipeline, policy="uniform", telemetry=OTelSink(provider))
    with controller.request(10_000) as req:
        with req.child("researcher", ceiling=2_000) as researcher:
            g = researcher.begin("worker", 100, 100)
            researcher.finish(g, input_tokens=100, output_tokens=40)
            with researcher.child("helper", ceiling=500) as helper:
                g = helper.begin("worker", 50, 50)
                helper.finish(g, input_tokens=50, output_tokens=50)
        g = req.begin("lead", 100, 50)
        req.finish(g, input_tokens=100, output_tokens=20)
    assert flush(10)
    spans = exporter.get_finished_spans()
    requests = {
        s.attributes["apportion.request.id"]: s  # type: ignore[index]
        for s in spans
        if s.name.startswith("apportion.request")
    }
    root, kid = req.request_id, f"{req.request_id}::researcher"
    grandkid = f"{kid}::helper"
    assert set(requests) == {root, kid, grandkid}
    assert requests[root].parent is None
    for child, parent in ((kid, root), (grandkid, kid)):
        span: Any = requests[child]
        assert span.parent is not None
        assert span.parent.span_id == requests[parent].context.span_id
        assert span.context.trace_id == requests[root].context.trace_id
        assert span.attributes["apportion.request.parent_id"] == parent
        assert span.attributes["apportion.request.root_id"] == root
    assert requests[grandkid].attributes["apportion.request.depth"] == 2  # type: ignore[index]
    helper_call = next(
        s
        for s in spans
        if s.name == "chat" and s.parent.span_id == requests[grandkid].context.span_id  # type: ignore[union-attr]
    )
    assert helper_call.attributes["gen_ai.usage.output_tokens"] == 50  # type: ignore[index]


def test_a_child_waits_for_its_parent_only_when_the_parent_is_local() -> None:
    from apportion.telemetry.records import RequestUsage

    provider, exporter = _provider()
    sink = OTelSink(provider)
    local = RequestUsage("p::a", "t", 10, 1, parent_id="p", root_id="p", depth=1, parent_local=True)
    remote = RequestUsage("q::b", "t", 10, 1, parent_id="q", root_id="q", depth=1)
    sink.write([local, remote])
    written = [s.attributes["apportion.request.id"] for s in exporter.get_finished_spans()]  # type: ignore[index]
    assert written == ["q::b"]  # the remote parent's record never comes here
    sink.close()  # the parent never came: written unnested, still naming it
    (late,) = [
        s for s in exporter.get_finished_spans() if s.attributes["apportion.request.id"] == "p::a"
    ]  # type: ignore[index]
    assert late.parent is None and late.attributes["apportion.request.parent_id"] == "p"  # type: ignore[index]
