"""Telemetry under pressure: a sink that is down keeps its records up to the buffer's bound
(the oldest dropped past it), and a record a sink refuses loses only itself."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from telemetry_helpers import make_controller, run_request

from apportion.telemetry import TelemetryWarning, flush
from apportion.telemetry.channel import Channel
from apportion.telemetry.records import CallUsage, RequestUsage
from apportion.telemetry.sql import Database, SQLSink, open_database


class Outage:
    """Unreachable (``ConnectionError``) until ``up`` is set; keeps what it is given then."""

    name = "outage"

    def __init__(self) -> None:
        self.up = threading.Event()
        self.tries = 0
        self.records: list[Any] = []

    def write(self, batch: Sequence[Any]) -> None:
        self.tries += 1
        if not self.up.is_set():
            raise ConnectionError("connection refused")
        self.records.extend(batch)


def _messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TelemetryWarning)]


def _until(done: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the worker never got there"
        time.sleep(0.005)


def _wait_for_tries(sink: Outage, tries: int) -> None:
    _until(lambda: sink.tries >= tries)


def test_a_sink_that_is_down_keeps_its_records_until_it_is_back() -> None:
    sink = Outage()
    channel = Channel(sink, retry=(0.0, 0.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(50):
            channel.submit(i)
        _wait_for_tries(sink, 3)
        assert not channel.flush(0)  # kept, not given up on
        sink.up.set()
        assert channel.flush(10)
    assert sink.records == list(range(50))
    assert (channel.delivered, channel.dropped) == (50, 0)
    assert channel.retries >= 3
    messages = _messages(caught)
    assert len(messages) == 1 and "cannot be reached, keeping" in messages[0], messages


def test_past_the_bound_the_oldest_records_are_dropped_and_counted() -> None:
    sink = Outage()
    channel = Channel(sink, capacity=10, retry=(0.0, 0.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        channel.submit(0)
        _wait_for_tries(sink, 1)  # 0 is kept and tried again while the others come
        for i in range(1, 25):
            channel.submit(i)
        _wait_for_tries(sink, sink.tries + 2)  # 0 went back to the buffer, then out
        sink.up.set()
        assert channel.flush(10)
    assert sink.records == list(range(15, 25))  # the newest ten
    assert (channel.delivered, channel.dropped, channel.dropped_full) == (10, 15, 15)
    assert sum("falling behind" in m for m in _messages(caught)) >= 1


class Picky:
    """Refuses any batch holding a record in ``bad`` (as a database refuses a batch)."""

    name = "picky"

    def __init__(self, bad: set[Any]) -> None:
        self.bad = bad
        self.calls = 0
        self.records: list[Any] = []

    def write(self, batch: Sequence[Any]) -> None:
        self.calls += 1
        if self.bad.intersection(batch):
            raise ValueError("value out of range")
        self.records.extend(batch)


@pytest.mark.parametrize("bad", [{0}, {37}, {199}, {5, 150}])
def test_a_refused_record_loses_only_itself(bad: set[int]) -> None:
    sink = Picky(bad)
    channel = Channel(sink)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(200):
            channel.submit(i)
        assert channel.flush(10)
    assert sorted(sink.records) == sorted(set(range(200)) - bad)
    assert (channel.delivered, channel.dropped_failed) == (200 - len(bad), len(bad))
    messages = _messages(caught)
    assert messages and all("value out of range" in m for m in messages)
    assert sum(int(m.split("failed to write ")[1].split()[0]) for m in messages) == len(bad)


def test_a_sink_that_refuses_everything_is_given_up_on_after_a_few_halvings() -> None:
    sink = Picky(set(range(1000)))
    channel = Channel(sink)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for i in range(1000):
            channel.submit(i)
        assert channel.flush(10)
    assert (channel.delivered, channel.dropped_failed) == (0, 1000)
    assert sink.calls <= 3 * (2 * (1000).bit_length() + 2)  # not a try per record


def _request(request_id: str, grants: Sequence[int] = (1,)) -> RequestUsage:
    calls = tuple(CallUsage(request_id, g, "reasoner", used_input=5) for g in grants)
    return RequestUsage(request_id, "p", 100, 5, calls=calls)


def test_a_record_the_database_refuses_by_a_constraint_loses_only_itself(db_url: str) -> None:
    """Two calls with one grant id break the calls' key: that record, not the batch."""
    channel = Channel(SQLSink(db_url))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(40):
            channel.submit(_request(f"ok-{i}"))
            if i == 20:
                channel.submit(_request("twice", grants=(1, 1)))
        assert channel.flush(60)
    assert (channel.delivered, channel.dropped) == (40, 1)
    messages = _messages(caught)
    assert len(messages) == 1 and "'twice'" in messages[0], messages
    assert "cannot open" not in messages[0]
    with open_database(db_url) as db:
        assert set(db.load().requests) == {f"ok-{i}" for i in range(40)}


def test_a_nul_in_a_name_loses_nothing_in_a_batch(db_url: str) -> None:
    """PostgreSQL's text refuses NUL: the name is stored with U+2400, every record kept."""
    channel = Channel(SQLSink(db_url))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(30):
            calls = (CallUsage(f"r{i}", 1, "rea\x00der" if i == 7 else "reasoner"),)
            channel.submit(RequestUsage(f"r{i}", "p", 100, 0, calls=calls))
        assert channel.flush(60)
    assert _messages(caught) == []
    assert (channel.delivered, channel.dropped) == (30, 0)
    with Database(db_url) as db:
        agents = {c.agent for c in db.load().calls}
    assert agents == {"reasoner", "rea\u2400der"}


def test_a_database_that_comes_back_gets_every_record(tmp_path: Path) -> None:
    """A SQLite file whose directory is missing cannot be opened: kept until it exists."""
    directory = tmp_path / "later"
    url = f"sqlite:///{directory / 'telemetry.db'}"
    controller = make_controller(url)
    (channel,) = controller.sinks
    channel.retry = (0.0, 0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            run_request(controller)
        _until(lambda: channel.retries > 0)
        directory.mkdir()
        assert flush(60)
    assert (channel.delivered, channel.dropped) == (5, 0)
    assert len(_messages(caught)) == 1
    with open_database(url) as db:
        assert len(db.load().requests) == 5


def test_drops_are_counted_in_prometheus() -> None:
    from prometheus_client import CollectorRegistry

    from apportion.telemetry.prometheus import PrometheusSink

    registry = CollectorRegistry()
    PrometheusSink(registry)  # its metrics count the drops of every channel of the process
    sink = Picky({3})
    sink.name = "picky-prometheus"
    channel = Channel(sink, capacity=1_000)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for i in range(10):
            channel.submit(i)
        assert channel.flush(10)
        channel.discard()

    def sample(reason: str) -> float | None:
        labels = {"sink": "picky-prometheus", "reason": reason}
        return registry.get_sample_value("apportion_telemetry_dropped_total", labels)

    assert sample("failed") == 1.0


def test_the_report_says_what_the_writers_lost(db_url: str) -> None:
    from apportion.analysis.window_report import report_database

    channel = Channel(SQLSink(db_url))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for i in range(10):
            channel.submit(_request(f"ok-{i}"))
        channel.submit(_request("twice", grants=(1, 1)))
        assert channel.flush(60)
    document = report_database(db_url).document
    assert document["telemetry_lost"] == {
        "dropped_full": 0,
        "dropped_failed": 1,
        "discarded": 0,
        "total": 1,
    }
    assert document["requests"] == 10
    # a second writer's losses add up; its later totals replace its earlier ones
    with Database(db_url) as db:
        db.record_losses("other", {"dropped_full": 5})
        db.record_losses("other", {"dropped_full": 7})
        assert db.losses() == {"dropped_full": 7, "dropped_failed": 1, "discarded": 0}


def test_a_report_without_losses_says_nothing_of_them(tmp_path: Path) -> None:
    from apportion.analysis.window_report import report_database

    url = f"sqlite:///{tmp_path / 't.db'}"
    channel = Channel(SQLSink(url))
    channel.submit(_request("ok"))
    assert channel.flush(60)
    assert "telemetry_lost" not in report_database(url).document


def test_apportion_report_warns_of_the_lost_records(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from apportion.cli import app

    url = f"sqlite:///{tmp_path / 't.db'}"
    channel = Channel(SQLSink(url))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        channel.submit(_request("ok"))
        channel.submit(_request("twice", grants=(1, 1)))
        assert channel.flush(60)
    result = CliRunner().invoke(app, ["report", url])
    assert result.exit_code == 0, result.output
    assert "1 telemetry record(s) never reached this database" in result.output


def test_records_are_built_in_the_worker_not_the_callers_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from telemetry_helpers import ListSink

    from apportion.telemetry import records

    built_in: list[str] = []
    real = records.usage_from

    def spy(*args: Any, **kwargs: Any) -> RequestUsage:
        built_in.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(records, "usage_from", spy)
    sink = ListSink()
    controller = make_controller([sink, ListSink()])
    for _ in range(3):
        run_request(controller)
        assert built_in == [] or all(n.startswith("apportion-telemetry-") for n in built_in)
    assert flush(10)
    assert len(built_in) == 3  # once per request, for both sinks
    assert all(name.startswith("apportion-telemetry-") for name in built_in)
    assert all(isinstance(r, RequestUsage) for r in sink.records) and len(sink.records) == 3


def test_a_backlog_is_written_in_batches_of_a_thousand() -> None:
    from telemetry_helpers import ListSink

    from apportion.telemetry.channel import BATCH_SIZE

    writing, release = threading.Event(), threading.Event()

    class Held(ListSink):
        def write(self, batch: Sequence[Any]) -> None:
            writing.set()
            release.wait(10)
            super().write(batch)

    sink = Held()
    channel = Channel(sink)
    channel.submit(-1)
    assert writing.wait(10)
    for i in range(2_500):  # a backlog piles up behind the held write
        channel.submit(i)
    release.set()
    assert channel.flush(10)
    sizes = [len(batch) for batch in sink.batches]
    assert sizes == [1, BATCH_SIZE, BATCH_SIZE, 500]
    assert sink.records == [-1, *range(2_500)]
