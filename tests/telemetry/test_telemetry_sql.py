"""The SQL sink against SQLite and a real PostgreSQL server: rows, versions, bad databases."""

from __future__ import annotations

import re
import socket
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from telemetry_helpers import give_up_when_unreachable, make_controller, run_request

from apportion.errors import DatabaseUnavailable, SchemaVersionError
from apportion.telemetry import SCHEMA_VERSION, TelemetryWarning, flush
from apportion.telemetry.records import CallUsage, RequestUsage
from apportion.telemetry.sql import Database, open_database


def _count(url: str, table: str) -> int:
    from sqlalchemy import text

    with Database(url) as db, db.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_requests_calls_and_events_are_written(db_url: str) -> None:
    controller = make_controller(db_url)
    ids = [run_request(controller, score=s) for s in (0.25, 0.5, None)]
    assert flush(30)
    with open_database(db_url) as db:
        assert db.version == SCHEMA_VERSION
        data = db.load()
    assert not data.empty
    assert set(data.requests) == set(ids)
    assert [data.requests[i].outcome for i in ids] == [0.25, 0.5, None]
    assert data.requests[ids[0]].features == {"messages": 4}
    assert data.requests[ids[0]].ceiling == 20_000
    assert len(data.calls) == 9
    reasoner = next(c for c in data.calls if c.agent == "reasoner")
    assert (reasoner.granted_output, reasoner.used_output, reasoner.extensions) == (1_200, 1_100, 1)
    assert (reasoner.model, reasoner.input_cut, reasoner.dropped_tokens) == ("gpt-4o", True, 120)
    assert reasoner.cost_usd == pytest.approx(0.012)
    assert {c.settled for c in data.calls} == {"finish", "release"}
    assert _count(db_url, "apportion_events") == 3 * 9


def test_writing_a_request_again_replaces_it(db_url: str) -> None:
    call = CallUsage("r1", 1, "a", granted_context=10, granted_output=5, used_input=10)
    record = RequestUsage("r1", "p", 100, 11, calls=(call,))
    with Database(db_url, create=True) as db:
        db.write([record])
        db.write([RequestUsage("r1", "p", 100, 12, calls=(replace(call, used_output=2),))])
        data = db.load()
    assert len(data.calls) == 1 and data.calls[0].used_output == 2
    assert data.requests["r1"].consumed == 12


def test_a_database_of_a_newer_schema_is_refused(db_url: str) -> None:
    from sqlalchemy import update

    with Database(db_url, create=True) as db, db.engine.begin() as conn:
        meta = db.tables.meta
        conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="7"))
    with pytest.raises(SchemaVersionError) as caught:
        open_database(db_url)
    assert (caught.value.found, caught.value.supported) == (7, SCHEMA_VERSION)
    assert "schema version 7" in str(caught.value)
    controller = make_controller(db_url)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run_request(controller)  # the request is fine; its record is refused
        assert flush(30)
    assert any("schema version 7" in str(w.message) for w in seen)


def test_rows_of_a_newer_schema_are_refused(db_url: str) -> None:
    with Database(db_url, create=True) as db:
        db.write([RequestUsage("r1", "p", 100, 0)])
        with pytest.raises(SchemaVersionError):
            db.write([RequestUsage("r2", "p", 100, 0, schema_version=SCHEMA_VERSION + 1)])
        from sqlalchemy import update

        with db.engine.begin() as conn:
            conn.execute(update(db.tables.requests).values(schema_version=SCHEMA_VERSION + 1))
        with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}"):
            db.load()


def test_an_unreachable_server_is_named_without_its_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://apportion:hunter2@127.0.0.1:{port}/telemetry"
    with pytest.raises(DatabaseUnavailable) as caught:
        open_database(url)
    message = str(caught.value)
    assert "hunter2" not in message and "hunter2" not in caught.value.url
    assert f"postgresql://apportion:***@127.0.0.1:{port}/telemetry" in message


def test_a_missing_sqlite_file_is_an_error_not_a_new_database(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable, match="no such file"):
        open_database(str(tmp_path / "missing.db"))
    assert not (tmp_path / "missing.db").exists()


def test_an_empty_database_loads_as_empty(db_url: str) -> None:
    with Database(db_url, create=True):
        pass
    with open_database(db_url) as db:
        data = db.load()
    assert data.empty and data.calls == () and not data.requests


def test_since_and_pipeline_filter(db_url: str) -> None:
    def record(rid: str, pipeline: str, at: float | None) -> RequestUsage:
        call = CallUsage(rid, 1, "a", used_input=1, used_output=1, began_at=at, at=at)
        return RequestUsage(rid, pipeline, None, 2, opened_at=at, closed_at=at, calls=(call,))

    with Database(db_url, create=True) as db:
        db.write([record("old", "p", 100.0), record("new", "p", 300.0), record("q", "q", 300.0)])
        db.write([record("untimed", "p", None)])
        assert {c.request_id for c in db.load(since=200.0).calls} == {"new", "q"}
        assert set(db.load(since=200.0, pipeline="p").requests) == {"new"}
        assert len(db.load().calls) == 4


def test_warnings_from_the_worker_name_the_sink(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    controller = make_controller(f"sqlite:///{directory / 'x.db'}")  # its directory is missing
    with pytest.warns(TelemetryWarning, match=r"sql\(sqlite:///"):
        run_request(controller)
        give_up_when_unreachable(controller)


def _refuse_writes(url: str, refuse: bool) -> None:
    """Make the database refuse new requests (or accept them again), as a full disk would.

    A trigger, not file permissions: the tests may run as root, whom no mode stops.
    """
    from sqlalchemy import text

    sqlite = url.startswith("sqlite")
    if refuse and sqlite:
        statements = [
            "CREATE TRIGGER apportion_refuse BEFORE INSERT ON apportion_requests "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        ]
    elif refuse:
        statements = [
            "CREATE FUNCTION apportion_refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
            "CREATE TRIGGER apportion_refuse BEFORE INSERT ON apportion_requests "
            "FOR EACH ROW EXECUTE FUNCTION apportion_refuse()",
        ]
    else:
        statements = [
            "DROP TRIGGER apportion_refuse" + ("" if sqlite else " ON apportion_requests")
        ]
    with Database(url) as db, db.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def test_records_lost_to_a_database_that_refuses_writes_are_counted(db_url: str) -> None:
    lost = 30
    controller = make_controller(db_url)
    (channel,) = controller.sinks
    run_request(controller)
    assert flush(30)  # the tables exist, one request is in
    _refuse_writes(db_url, True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(lost):
            run_request(controller)
        assert flush(30)
    _refuse_writes(db_url, False)
    run_request(controller)
    assert flush(30)
    assert (channel.dropped, channel.dropped_failed, channel.dropped_full) == (lost, lost, 0)
    assert channel.delivered == 2 == _count(db_url, "apportion_requests")
    messages = [str(w.message) for w in caught if issubclass(w.category, TelemetryWarning)]
    assert all("refused by the test" in m for m in messages)
    # each record refused on its own (a refusal is the data's, not a lost connection)
    found = (re.search(r"(?:failed to write|could not store) (\d+)", x) for x in messages)
    counts = [int(m[1]) for m in found if m]
    assert sum(counts) == lost
    assert f"{lost} record(s) lost so far" in messages[-1]
