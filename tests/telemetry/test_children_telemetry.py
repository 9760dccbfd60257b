"""A request tree in telemetry: each child is a record of its own, and its parent's events
record each draw (``child``) and fold-back (``child_close``) by the child's id, so a report
can roll the tree up from the records alone."""

from __future__ import annotations

import pytest
from telemetry_helpers import ListSink, child_left_open

from apportion import Agent, BudgetExceeded, Controller, Pipeline
from apportion.telemetry import SCHEMA_VERSION, flush
from apportion.telemetry.records import CallUsage, RequestUsage
from apportion.telemetry.sql import Database, open_database

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


def _tree_run(controller: Controller) -> str:
    """A root with a researcher (which has a helper of its own) and two fanned-out kids."""
    with controller.request(10_000) as req:
        grant = req.begin("lead", 100, 50)
        req.finish(grant, input_tokens=100, output_tokens=20)
        with req.child("researcher", ceiling=2_000) as researcher:
            grant = researcher.begin("worker", 100, 100)
            researcher.finish(grant, input_tokens=100, output_tokens=40)
            with researcher.child("helper", ceiling=500) as helper:
                grant = helper.begin("worker", 50, 50)
                helper.finish(grant, input_tokens=50, output_tokens=50, truncated=True)
        for kid in req.fan_out(2, share=0.5):
            with kid:
                grant = kid.begin("worker", 50, 50)
                kid.finish(grant, input_tokens=50, output_tokens=10)
    return req.request_id


def test_each_record_names_its_parent_root_and_depth() -> None:
    sink = ListSink()
    root = _tree_run(Controller(PIPELINE, policy="uniform", telemetry=sink))
    assert flush(10)
    places = {r.request_id: (r.parent_id, r.root_id, r.depth) for r in sink.records}
    researcher = f"{root}::researcher"
    assert places == {
        root: (None, root, 0),
        researcher: (root, root, 1),
        f"{researcher}::helper": (researcher, root, 2),
        f"{root}::1": (root, root, 1),
        f"{root}::2": (root, root, 1),
    }


def test_a_child_still_open_when_its_parent_closes_is_recorded() -> None:
    sink = ListSink()
    controller = Controller(PIPELINE, policy="uniform", telemetry=sink)
    with controller.request(10_000) as req:
        kid = req.child("left", ceiling=1_000)
        kid.open()
        grant = kid.begin("worker", 100, 100)
        kid.finish(grant, input_tokens=100, output_tokens=30)
    assert flush(10)
    records = {r.request_id: r for r in sink.records}
    assert set(records) == {req.request_id, kid.request_id}
    left = records[kid.request_id]
    assert left.parent_id == req.request_id and left.consumed == 130
    assert [c.used for c in left.calls] == [130]


def test_children_opened_through_other_handles_and_left_open_are_recorded() -> None:
    """As in a gateway, where every call takes a handle of its own (``attach``)."""
    sink = ListSink()
    controller = Controller(PIPELINE, policy="uniform", telemetry=sink)
    with controller.request(10_000) as req:
        kid = child_left_open(controller, req.request_id, "elsewhere", 1_000, (100, 30))
        mine = req.child("mine", ceiling=1_000)
        mine.open()  # opened here, with a child of its own opened through a handle
        grandchild = child_left_open(controller, mine.request_id, "deep", 200, (50, 5))
        done = controller.attach(req.request_id).child("closed", ceiling=100)
        done.open()
        done.close()  # recorded by its own handle, once
    assert flush(10)
    ids = sorted(r.request_id for r in sink.records)
    assert ids == sorted(
        [
            req.request_id,
            kid.request_id,
            mine.request_id,
            grandchild.request_id,
            done.request_id,
        ]
    )
    records = {r.request_id: r for r in sink.records}
    assert [c.used for c in records[kid.request_id].calls] == [130]
    assert records[grandchild.request_id].parent_id == mine.request_id
    assert records[grandchild.request_id].consumed == 55
    assert records[req.request_id].consumed == 130 + 55
    assert req.summary().status == records[kid.request_id].status == "closed"


def test_begins_refused_through_other_handles_are_counted() -> None:
    pipeline = Pipeline([Agent("lead", min_output=2_000), Agent("worker", min_output=2_000)])
    sink = ListSink()
    controller = Controller(pipeline, policy="uniform", telemetry=sink)
    with controller.request(1_000) as req:
        with pytest.raises(BudgetExceeded):
            controller.attach(req.request_id).begin("lead", 100)
        with pytest.raises(BudgetExceeded):
            req.begin("worker", 100)
    assert flush(10)
    (record,) = sink.records
    assert record.refused == {"lead": 1, "worker": 1}
    assert all(e.kind != "refused" for e in record.events)  # the ledger's events alone


def _indexes(db: Database) -> set[str]:
    from sqlalchemy import inspect

    with db.engine.connect() as conn:
        return {i["name"] or "" for i in inspect(conn).get_indexes("apportion_requests")}


def test_the_sql_sink_keeps_the_tree(db_url: str) -> None:
    root = _tree_run(Controller(PIPELINE, policy="uniform", telemetry=db_url))
    assert flush(30)
    with open_database(db_url) as db:
        data = db.load()
        assert {"ix_apportion_requests_parent_id", "ix_apportion_requests_root_id"} <= (
            _indexes(db)
        )
    places = {rid: (r.parent_id, r.root_id, r.depth) for rid, r in data.requests.items()}
    assert places[f"{root}::researcher::helper"] == (f"{root}::researcher", root, 2)
    assert places[root] == (None, root, 0)
    assert len(places) == 5


def test_a_version_2_database_gains_the_tree_columns_in_place(db_url: str) -> None:
    from sqlalchemy import text, update

    with Database(db_url, create=True) as db:
        db.write([RequestUsage("r1", "p", 100, 10, calls=(CallUsage("r1", 1, "a"),))])
        with db.engine.begin() as conn:
            for index in ("parent_id", "root_id"):
                conn.execute(text(f"DROP INDEX ix_apportion_requests_{index}"))
            for column in ("parent_id", "root_id", "depth"):
                conn.execute(text(f"ALTER TABLE apportion_requests DROP COLUMN {column}"))
            meta = db.tables.meta
            conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="2"))
    with open_database(db_url) as db:  # a reader leaves it as it is: flat requests
        assert db.version == 2
        old = db.load().requests["r1"]
    assert (old.parent_id, old.root_id, old.depth, old.tree_root) == (None, None, 0, "r1")
    kid = RequestUsage("r1::a", "p", 50, 5, parent_id="r1", root_id="r1", depth=1)
    with Database(db_url, create=True) as db:  # a writer adds the columns and indexes
        assert db.version == SCHEMA_VERSION
        db.write([kid])
        assert {"ix_apportion_requests_parent_id", "ix_apportion_requests_root_id"} <= (
            _indexes(db)
        )
    with open_database(db_url) as db:
        read = db.load().requests["r1::a"]
    assert (read.parent_id, read.root_id, read.depth) == ("r1", "r1", 1)
