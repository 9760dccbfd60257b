"""Choosing sinks, and the promise: telemetry never blocks nor breaks a request."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from telemetry_helpers import ListSink, give_up_when_unreachable, make_controller, run_request

from apportion.errors import MissingExtra
from apportion.telemetry import (
    TelemetryWarning,
    UnknownSink,
    emit,
    flush,
    open_sinks,
)
from apportion.telemetry import channel as channel_module
from apportion.telemetry.channel import Channel
from apportion.telemetry.records import RolloutRecord
from apportion.testing.ports import free_port


def test_urls_choose_sinks(tmp_path: Path) -> None:
    assert open_sinks(None) == []
    kinds = [
        type(c.sink).__name__
        for c in open_sinks(
            [
                f"sqlite:///{tmp_path / 'a.db'}",
                str(tmp_path / "b.db"),
                "postgresql://user:secret@db.example/telemetry",
                "otel://",
                "prometheus://",
            ]
        )
    ]
    assert kinds == ["SQLSink", "SQLSink", "SQLSink", "OTelSink", "PrometheusSink"]
    (pg,) = open_sinks("postgres://user:secret@db.example/telemetry")
    assert "secret" not in pg.name and "***" in pg.name
    sink = ListSink()
    assert open_sinks(sink)[0].sink is sink
    assert open_sinks(sink)[0] is open_sinks([sink])[0]  # one channel per sink object


def test_nothing_is_connected_and_no_thread_starts_until_a_request_closes(
    tmp_path: Path,
) -> None:
    db = tmp_path / "telemetry.db"
    before = threading.active_count()
    controller = make_controller(f"sqlite:///{db}")
    assert threading.active_count() == before
    assert not db.exists()
    run_request(controller)
    assert flush(10)
    assert db.exists()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("ftp://files.example/x", "ftp://files.example/x"),
        ("redis://user:hunter2@host/0", "redis://user:***@host/0"),
        ("not a url", "not a url"),
        ("otel://collector:4317", "otel://collector:4317"),
        ("prometheus://0.0.0.0", "prometheus://0.0.0.0"),
    ],
)
def test_unknown_sink_urls_fail_when_the_controller_is_made(url: str, shown: str) -> None:
    with pytest.raises(UnknownSink) as caught:
        make_controller(url)
    assert shown in str(caught.value) and "hunter2" not in str(caught.value)
    assert "sqlite://" in str(caught.value)


def test_a_sink_object_without_write_is_refused() -> None:
    with pytest.raises(TypeError, match="sink object"):
        make_controller(42)


@pytest.mark.parametrize(
    ("module", "url", "extra"),
    [
        ("sqlalchemy", "sqlite:///x.db", "sql"),
        ("psycopg", "postgresql://u@h/db", "postgres"),
        ("opentelemetry.trace", "otel://", "otel"),
        ("prometheus_client", "prometheus://", "prometheus"),
    ],
)
def test_a_missing_library_names_its_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, url: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtra) as caught:
        open_sinks(url)
    assert caught.value.extra == extra
    assert f"apportion[{extra}]" in str(caught.value)


def test_importing_telemetry_pulls_no_optional_library() -> None:
    code = (
        "import sys, apportion, apportion.telemetry, apportion.analysis.report, "
        "apportion.analysis.ingest, apportion.analysis.profile; "
        "heavy = {'sqlalchemy', 'psycopg', 'opentelemetry', 'prometheus_client', 'matplotlib'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class SlowSink:
    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.records: list[Any] = []

    def write(self, batch: Sequence[Any]) -> None:
        time.sleep(self.seconds)
        self.records.extend(batch)


def test_a_slow_sink_does_not_slow_the_request() -> None:
    sink = SlowSink(1.0)
    controller = make_controller(sink)
    started = time.perf_counter()
    run_request(controller)
    assert time.perf_counter() - started < 0.5
    assert flush(10)
    assert len(sink.records) == 1


class BrokenSink:
    name = "broken"

    def write(self, batch: Sequence[Any]) -> None:
        raise OSError("disk full")


def test_a_failing_sink_is_reported_and_skipped() -> None:
    good = ListSink()
    controller = make_controller([BrokenSink(), good])
    with pytest.warns(TelemetryWarning, match=r"broken failed to write [12] record.*disk full"):
        run_request(controller)
        run_request(controller)
        assert flush(10)
    assert len(good.records) == 2  # the other sink got everything


def test_an_unreachable_database_is_reported_without_its_password() -> None:
    url = f"postgresql://apportion:hunter2@127.0.0.1:{free_port()}/telemetry"
    controller = make_controller(url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_request(controller)  # the request itself is not affected
        give_up_when_unreachable(controller)
    messages = [str(w.message) for w in caught if issubclass(w.category, TelemetryWarning)]
    assert messages, "the failure was not reported"
    assert all("hunter2" not in m for m in messages)
    assert any("apportion:***@127.0.0.1" in m for m in messages)


def test_emit_never_raises() -> None:
    with pytest.warns(TelemetryWarning, match="not recorded"):
        emit([ListSink()], object(), [])  # not an observation at all
    emit([], object(), [])  # no sinks: nothing to do, nothing said


def test_a_full_buffer_drops_the_oldest_records_and_says_so_once() -> None:
    writing = threading.Event()
    release = threading.Event()

    class Blocked:
        name = "blocked"

        def __init__(self) -> None:
            self.records: list[Any] = []

        def write(self, batch: Sequence[Any]) -> None:
            writing.set()
            release.wait(10)
            self.records.extend(batch)

    sink = Blocked()
    channel = Channel(sink, capacity=2)
    channel.submit(0)
    assert writing.wait(10)  # 0 is being written: the buffer is empty
    with pytest.warns(TelemetryWarning, match="falling behind") as caught:
        results = [channel.submit(i) for i in range(1, 6)]
    assert len(caught) == 1
    assert results == [True, True, False, False, False]
    assert (channel.dropped, channel.dropped_full) == (3, 3)
    release.set()
    assert channel.flush(10)
    assert sink.records == [0, 4, 5]  # 1, 2 and 3 were the oldest waiting
    assert channel.delivered == 3


def test_an_idle_worker_ends_and_the_next_record_starts_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(channel_module, "IDLE_SECONDS", 0.05)
    sink = ListSink()
    channel = Channel(sink)
    channel.submit("a")
    assert channel.flush(5)
    deadline = time.monotonic() + 5
    while channel._thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert channel._thread is None
    channel.submit("b")
    assert channel.flush(5)
    assert sink.records == ["a", "b"]


def test_records_queued_at_exit_are_written(tmp_path: Path) -> None:
    db = tmp_path / "exit.db"
    code = (
        "import time\n"
        "from apportion import Agent, Controller, Pipeline\n"
        "p = Pipeline([Agent('a')])\n"
        f"c = Controller(p, telemetry={str(db)!r})\n"
        "for _ in range(20):\n"
        "    with c.request(ceiling=1000) as r:\n"
        "        g = r.begin('a', input_tokens=10, output_tokens=10)\n"
        "        r.finish(g, input_tokens=10, output_tokens=5)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    from apportion.telemetry.sql import open_database

    with open_database(str(db)) as database:
        assert len(database.load().requests) == 20


class FlakySink:
    """Fails every write while ``failing`` is set; keeps what it is given otherwise."""

    name = "flaky"

    def __init__(self) -> None:
        self.failing = True
        self.records: list[Any] = []

    def write(self, batch: Sequence[Any]) -> None:
        if self.failing:
            raise OSError("disk full")
        self.records.extend(batch)


def _telemetry_messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TelemetryWarning)]


def _failed_counts(messages: list[str]) -> list[int]:
    """The records each "failed to write N record(s)" warning says were lost."""
    found = (re.search(r"failed to write (\d+) record", m) for m in messages)
    return [int(match[1]) for match in found if match]


def test_records_lost_to_failed_writes_are_counted_in_records() -> None:
    sink = FlakySink()
    channel = Channel(sink)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(450):  # more than two batches' worth
            channel.submit(i)
        assert channel.flush(10)
        sink.failing = False
        for i in range(7):
            channel.submit(i)
        assert channel.flush(10)
    assert (channel.dropped, channel.dropped_failed, channel.dropped_full) == (450, 450, 0)
    assert channel.delivered == len(sink.records) == 7
    messages = _telemetry_messages(caught)
    counts = _failed_counts(messages)
    assert sum(counts) == 450 and len(counts) == channel.failures
    assert "450 record(s) lost so far" in messages[-1]


def test_records_dropped_by_a_full_buffer_and_by_failed_writes_add_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writing = threading.Event()
    release = threading.Event()

    class BlockedThenBroken:
        name = "blocked"

        def write(self, batch: Sequence[Any]) -> None:
            writing.set()
            release.wait(10)
            raise OSError("disk full")

    channel = Channel(BlockedThenBroken(), capacity=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        channel.submit(0)
        assert writing.wait(10)
        for i in range(1, 6):
            channel.submit(i)
        release.set()
        assert channel.flush(10)
    assert (channel.dropped, channel.dropped_full, channel.dropped_failed) == (6, 3, 3)
    assert channel.delivered == 0
    assert sum(_failed_counts(_telemetry_messages(caught))) == 3
    # at exit, what each sink lost is said once more, in records
    monkeypatch.setattr(channel_module, "_channels", weakref.WeakSet([channel]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        channel_module._flush_at_exit()
    (summary,) = _telemetry_messages(caught)
    assert "blocked lost 6 record(s)" in summary
    assert "3 dropped (the oldest) because its buffer was full" in summary
    assert "3 in writes that failed" in summary


def test_a_failed_rollout_write_loses_only_the_rollouts() -> None:
    class NoRollouts(ListSink):
        name = "no-rollouts"

        def write_rollouts(self, batch: Sequence[Any]) -> None:
            raise OSError("no such table")

    sink = NoRollouts()
    channel = Channel(sink)
    decision = RolloutRecord("r", "estimate", "elastic", "start", 0.05, "started", 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for item in ("a", decision, "b", decision, "c"):
            channel.submit(item)
        assert channel.flush(10)
    assert sink.records == ["a", "b", "c"]
    assert (channel.delivered, channel.dropped, channel.dropped_failed) == (3, 2, 2)
    assert sum(_failed_counts(_telemetry_messages(caught))) == 2
