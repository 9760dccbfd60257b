"""What a closed request tells the sinks: one record per request, one call per grant."""

from __future__ import annotations

import pytest
from telemetry_helpers import PIPELINE, ListSink, make_controller, run_request, ticking_clock

from apportion import Controller
from apportion.telemetry import flush


def test_a_request_becomes_one_record_with_every_grant() -> None:
    sink = ListSink()
    controller = make_controller(sink)
    request_id = run_request(controller, score=0.75)
    assert flush(10)
    (record,) = sink.records
    assert record.request_id == request_id
    assert record.pipeline == "support"
    assert (record.ceiling, record.status, record.outcome) == (20_000, "closed", 0.75)
    assert record.features == {"messages": 4}
    assert record.consumed == 300 + 64 + 4_000 + 1_100
    assert record.opened_at is not None and record.closed_at > record.opened_at
    triage, reasoner, formatter = record.calls
    assert (triage.agent, triage.grant_id, triage.priority) == ("triage", 1, "peripheral")
    assert (triage.used_input, triage.used_output, triage.truncated) == (300, 64, True)
    assert triage.settled == "finish" and triage.ceiling_hit
    assert triage.granted_output == 64
    assert reasoner.extensions == 1
    assert reasoner.granted_output == 1_200  # 1,000 granted, then 200 more
    assert (reasoner.used_input, reasoner.used_output, reasoner.truncated) == (4_000, 1_100, False)
    assert (reasoner.model, reasoner.cost_usd, reasoner.finish_reason) == ("gpt-4o", 0.012, "stop")
    assert (reasoner.input_cut, reasoner.dropped_tokens, reasoner.estimated) == (True, 120, False)
    assert reasoner.ceiling_hit  # its input was cut
    assert formatter.settled == "release"
    assert formatter.used_input is None and formatter.used is None
    kinds = [e.kind for e in record.events]
    assert kinds == [
        "open",
        "begin",
        "finish",
        "begin",
        "extend",
        "finish",
        "begin",
        "release",
        "close",
    ]


def test_expired_grants_failed_requests_and_grants_open_at_close() -> None:
    sink = ListSink()
    now = [1000.0]
    controller = Controller(PIPELINE, telemetry=sink, clock=lambda: now[0], lease_seconds=5)
    with pytest.raises(RuntimeError), controller.request(ceiling=10_000) as req:
        g = req.begin("triage", input_tokens=100, output_tokens=10)
        now[0] += 10  # the lease runs out
        req.begin("reasoner", input_tokens=100, output_tokens=10)  # open when the request fails
        raise RuntimeError("the orchestrator crashed")
    assert flush(10)
    (record,) = sink.records
    assert record.status == "failed" and record.outcome is None
    by_agent = {c.agent: c for c in record.calls}
    assert by_agent["triage"].settled == "expire"
    assert by_agent["reasoner"].settled == "close"
    assert g.grant_id == 1


def test_annotations_of_the_wrong_type_are_ignored() -> None:
    sink = ListSink()
    controller = make_controller(sink)
    with controller.request(ceiling=5_000) as req:
        g = req.begin("triage", input_tokens=10, output_tokens=10)
        req.annotate(g, model=42, cost_usd="free", input_cut="yes", dropped_tokens=-3)
        req.finish(g, input_tokens=10, output_tokens=5)
    assert flush(10)
    (call,) = sink.records[0].calls
    assert (call.model, call.cost_usd, call.dropped_tokens) == (None,) * 3
    assert call.input_cut is False  # known from the ledger: it had 10 in hand, 10 granted


def test_every_request_of_many_threads_is_recorded() -> None:
    import threading

    sink = ListSink()
    controller = make_controller(sink, clock=ticking_clock())
    threads = [threading.Thread(target=run_request, args=(controller,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert flush(10)
    assert len({r.request_id for r in sink.records}) == 8


def test_async_requests_are_recorded_the_same_way() -> None:
    import asyncio

    from apportion import AsyncController

    sink = ListSink()
    controller = AsyncController(PIPELINE, telemetry=sink, clock=ticking_clock())

    async def main() -> None:
        async with controller.request(ceiling=5_000) as req:
            g = await req.begin("triage", input_tokens=100, output_tokens=20)
            await req.finish(g, input_tokens=100, output_tokens=20, truncated=True)
            req.score(1.0)

    asyncio.run(main())
    assert flush(10)
    (record,) = sink.records
    assert record.outcome == 1.0 and record.calls[0].truncated is True
