"""Text the database cannot hold as is (a NUL byte, a lone surrogate) loses no record;
nor does a number beyond a column lose more than its own record.

PostgreSQL's text cannot hold NUL, and no UTF-8 database can hold a lone surrogate: a name
with either once made the sink drop its whole batch, with a message about something else.
Each such character is now stored as a visible stand-in (NUL as U+2400, a lone surrogate
as U+FFFD), and every record is written.
"""

from __future__ import annotations

import warnings

import pytest

from apportion import Agent, Controller, Pipeline
from apportion.telemetry import TelemetryWarning, flush
from apportion.telemetry.records import CallUsage, RequestUsage
from apportion.telemetry.sql import Database, open_database

ODD = ["rea\x00der", "both\x00\x00", "plain"]  # names are valid text: no lone surrogate


def _pipeline() -> Pipeline:
    return Pipeline([Agent(name) for name in ODD], name="pipe\x00line")


def test_odd_names_from_a_controller_lose_nothing(db_url: str) -> None:
    controller = Controller(_pipeline(), policy="uniform", telemetry=db_url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(150):
            rid = f"req-{i}\x00" if i % 7 == 0 else f"req-{i}"
            with controller.request(10_000, request_id=rid, features={"k\x00": "v\x00"}) as req:
                for name in ODD:
                    grant = req.begin(name, input_tokens=10, output_tokens=5)
                    req.annotate(grant, model="m\x00\ud800", finish_reason="\udfffstop")
                    req.finish(grant, input_tokens=10, output_tokens=5)
        assert flush(60)
    problems = [str(w.message) for w in caught if issubclass(w.category, TelemetryWarning)]
    assert problems == []
    with open_database(db_url) as db:
        data = db.load()
    assert len(data.requests) == 150
    assert len(data.calls) == 150 * len(ODD)
    assert {c.agent for c in data.calls} == {"rea\u2400der", "both\u2400\u2400", "plain"}
    assert {(c.model, c.finish_reason) for c in data.calls} == {("m\u2400\ufffd", "\ufffdstop")}
    assert "req-0\u2400" in data.requests and "req-1" in data.requests
    assert {r.pipeline for r in data.requests.values()} == {"pipe\u2400line"}
    assert data.requests["req-1"].features == {"k\x00": "v\x00"}  # JSON holds it exactly


@pytest.mark.parametrize("field", ["request_id", "pipeline", "source", "status"])
def test_each_text_column_of_a_request(db_url: str, field: str) -> None:
    values = {"request_id": "r", "pipeline": "p", "source": "s", "status": "closed"}
    values[field] = values[field] + "\x00\ud800"
    call = CallUsage(values["request_id"], 1, "a\x00", model="m\x00", finish_reason="\ud800")
    record = RequestUsage(
        values["request_id"],
        values["pipeline"],
        100,
        0,
        calls=(call,),
        source=values["source"],
        status=values["status"],
    )
    with Database(db_url, create=True) as db:
        assert db.write([record, RequestUsage("other", "p", 100, 0)]) == 2
        data = db.load()
    assert len(data.requests) == 2 and len(data.calls) == 1
    assert data.calls[0].agent == "a\u2400" and data.calls[0].model == "m\u2400"
    assert data.calls[0].finish_reason == "\ufffd"


def test_a_record_the_database_refuses_loses_only_itself(db_url: str) -> None:
    """A number beyond a column (overflow past 2**63) once lost its whole batch."""
    from apportion.errors import RecordsRejected

    good = [RequestUsage(f"ok-{i}", "p", 100, 0) for i in range(5)]
    big = RequestUsage("big", "p", 100, 0, overflow=2**70)
    with Database(db_url, create=True) as db:
        with pytest.raises(RecordsRejected) as caught:
            db.write([*good[:2], big, *good[2:]])
        assert (caught.value.rejected, caught.value.written) == (1, 5)
        assert "'big'" in caught.value.reasons[0] and "cannot open" not in str(caught.value)
        assert set(db.load().requests) == {r.request_id for r in good}


def test_the_channel_counts_only_the_refused_record(db_url: str) -> None:
    from apportion.telemetry.channel import Channel
    from apportion.telemetry.sql import SQLSink

    channel = Channel(SQLSink(db_url))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(5):
            channel.submit(RequestUsage(f"ok-{i}", "p", 100, 0))
        channel.submit(RequestUsage("big", "p", 100, 0, overflow=2**70))
        assert channel.flush(60)
    assert (channel.delivered, channel.dropped) == (5, 1)
    messages = [str(w.message) for w in caught if issubclass(w.category, TelemetryWarning)]
    assert any("could not store 1 of" in m and "'big'" in m for m in messages), messages
    with open_database(db_url) as db:
        assert len(db.load().requests) == 5
