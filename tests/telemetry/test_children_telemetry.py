"""A request tree in telemetry: each child is a record of its own, and its parent's events
record each draw (``child``) and fold-back (``child_close``) by the child's id, so a report
can roll the tree up from the records alone."""

from __future__ import annotations

from telemetry_helpers import ListSink

from apportion import Agent, Controller, Pipeline
from apportion.telemetry import flush

PIPELINE = Pipeline([Agent("lead", priority="critical"), Agent("worker")])


def test_a_tree_reaches_telemetry_as_records_linked_by_events() -> None:
    sink = ListSink()
    controller = Controller(PIPELINE, policy="uniform", telemetry=sink)
    with controller.request(10_000) as req:
        with req.child("solo", ceiling=1_000) as solo:
            grant = solo.begin("worker", 100, 100)
            solo.finish(grant, input_tokens=100, output_tokens=40)
        for kid in req.fan_out(2, share=0.5):
            with kid:
                grant = kid.begin("worker", 50, 50)
                kid.finish(grant, input_tokens=50, output_tokens=10)
    assert flush(10)
    records = {r.request_id: r for r in sink.records}
    root = records[req.request_id]
    kids = {rid: r for rid, r in records.items() if rid != req.request_id}
    assert set(kids) == {f"{req.request_id}::{n}" for n in ("solo", "1", "2")}
    drawn = {e.note: e.output_tokens for e in root.events if e.kind == "child"}
    back = {e.note: e.context_tokens for e in root.events if e.kind == "child_close"}
    assert drawn == {rid: r.ceiling for rid, r in kids.items()}
    assert back == {rid: r.consumed for rid, r in kids.items()}
    assert root.consumed == sum(r.consumed for r in kids.values()) == 140 + 2 * 60
