"""Call statuses in telemetry: the records, the SQL sink (and its older databases), and
``apportion report``: a cut or wrapped-up answer is never counted as a success."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from telemetry_helpers import PIPELINE, ListSink, ticking_clock
from typer.testing import CliRunner

from apportion import BudgetExceeded, Controller
from apportion.analysis.page import report_page
from apportion.analysis.report import STATUS_COLUMNS, build_report, status_rows
from apportion.cli import app
from apportion.telemetry import SCHEMA_VERSION, flush
from apportion.telemetry.records import CallUsage, RequestUsage
from apportion.telemetry.sql import Database, open_database
from policy_helpers import NoMore


def four_endings(controller: Controller) -> None:
    """One request: completed, cut, wrapped up (reserve spent), and one refused begin."""
    with controller.request(ceiling=5_000) as req:
        g = req.begin("triage", 100, 50)
        req.finish(g, input_tokens=100, output_tokens=20)
        g = req.begin("reasoner", 100)
        req.finish(g, input_tokens=100, output_tokens=200, truncated=True)
        g = req.begin("reasoner", 100, wrap_up_tokens=80)
        assert req.extend(g, 100) is None
        req.finish(g, input_tokens=150, output_tokens=230)  # the wrap-up concluded it
        with pytest.raises(BudgetExceeded):
            req.begin("reasoner", 9_000)


def test_records_carry_each_calls_status_and_the_refused_begins() -> None:
    sink = ListSink()
    four_endings(Controller(PIPELINE, NoMore(), telemetry=sink, clock=ticking_clock()))
    assert flush(30)
    (record,) = sink.records
    assert [c.status for c in record.calls] == ["completed", "cut", "wrapped_up"]
    assert record.refused == {"reasoner": 1}


def test_the_sql_sink_keeps_statuses_and_refusals(db_url: str) -> None:
    four_endings(Controller(PIPELINE, NoMore(), telemetry=db_url, clock=ticking_clock()))
    assert flush(30)
    with open_database(db_url) as db:
        data = db.load()
    assert [c.status for c in data.calls] == ["completed", "cut", "wrapped_up"]
    (request,) = data.requests.values()
    assert request.refused == {"reasoner": 1}


def test_a_version_2_database_is_read_and_upgraded(db_url: str) -> None:
    from sqlalchemy import text, update

    with Database(db_url, create=True) as db:
        db.write([RequestUsage("r1", "p", 100, 10, calls=(CallUsage("r1", 1, "a"),))])
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE apportion_calls DROP COLUMN status"))
            conn.execute(text("ALTER TABLE apportion_requests DROP COLUMN refused"))
            meta = db.tables.meta
            conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="2"))
    with open_database(db_url) as db:  # a reader leaves it as it is
        assert db.version == 2
        data = db.load()
    assert [c.status for c in data.calls] == [None] and data.requests["r1"].refused == {}
    done = CallUsage("r2", 1, "a", status="wrapped_up")
    with Database(db_url, create=True) as db:  # a writer adds the columns
        assert db.version == SCHEMA_VERSION
        db.write([RequestUsage("r2", "p", 100, 10, calls=(done,), refused={"a": 2})])
    with open_database(db_url) as db:
        data = db.load()
    assert [c.status for c in data.calls] == [None, "wrapped_up"]
    assert data.requests["r2"].refused == {"a": 2}


def _calls(*statuses: Any) -> tuple[CallUsage, ...]:
    return tuple(
        CallUsage(
            "r1",
            i + 1,
            "writer",
            used_input=10,
            used_output=10,
            truncated=None if status is None else status == "cut",
            status=status,
        )
        for i, status in enumerate(statuses)
    )


def test_the_report_counts_calls_by_status(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    calls = _calls("completed", "completed", "wrapped_up", "cut", "late", None)
    with Database(url, create=True) as db:
        db.write([RequestUsage("r1", "p", 1_000, 60, calls=calls, refused={"writer": 2})])
        report = build_report(db.load())
    writer = report["agents"]["writer"]
    assert writer["statuses"] == {
        "completed": 2,
        "wrapped_up": 1,
        "cut": 1,
        "late": 1,
        "refused": 2,
        "unknown": 1,
    }
    assert writer["success_rate"] == pytest.approx(2 / 7)  # unknown left out; refused in
    assert report["statuses"] == writer["statuses"]
    row = dict(zip(STATUS_COLUMNS, status_rows(report)[0], strict=True))
    assert row == {
        "agent": "writer",
        "completed": "2",
        "wrapped up": "1",
        "cut": "1",
        "refused": "2",
        "other": "2",
        "success": "29%",
    }
    assert "How calls ended" in report_page(report, {"writer": calls})
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["report", url, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["agents"]["writer"]["statuses"]["wrapped_up"] == 1
    assert "how calls ended" in result.output


def test_prometheus_counts_calls_by_status_refused_begins_included() -> None:
    from prometheus_client import CollectorRegistry

    from apportion import Agent, AgentKind, Pipeline
    from apportion.telemetry.prometheus import PrometheusSink

    registry = CollectorRegistry()
    sink = PrometheusSink(registry)
    four_endings(Controller(PIPELINE, NoMore(), telemetry=sink, clock=ticking_clock()))
    team = Pipeline([Agent("lead")], name="team", kinds=[AgentKind("expert", "expert:*")])
    with Controller(team, NoMore(), telemetry=sink).request(ceiling=1_000) as req:
        for name in ("expert:ada", "expert:bob"):  # refused on their kind: bounded labels
            with pytest.raises(BudgetExceeded):
                req.begin(name, 5_000)
    assert flush(30)

    def calls(pipeline: str, agent: str, status: str) -> float | None:
        labels = {"pipeline": pipeline, "agent": agent, "status": status}
        return registry.get_sample_value("apportion_calls_total", labels)

    assert calls("support", "triage", "completed") == 1
    assert calls("support", "reasoner", "cut") == 1
    assert calls("support", "reasoner", "wrapped_up") == 1
    assert calls("support", "reasoner", "refused") == 1
    assert calls("support", "reasoner", "completed") is None
    assert calls("team", "expert", "refused") == 2
    assert calls("team", "expert:ada", "refused") is None
    grants = {"pipeline": "support", "agent": "reasoner"}
    assert registry.get_sample_value("apportion_grants_total", grants) == 2  # no refused
