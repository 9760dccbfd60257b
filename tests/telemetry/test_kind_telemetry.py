"""The agent kind of each call in telemetry: the SQL sink's ``kind`` column (schema
version 4, and older databases upgraded in place), ingest, and ``apportion report``'s
rollup per kind (terminal, JSON, HTML)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apportion import Agent, AgentKind, BudgetExceeded, Controller, Pipeline
from apportion.analysis.report import build_report
from apportion.cli import app
from apportion.telemetry import SCHEMA_VERSION, flush
from apportion.telemetry.records import CallUsage, RequestUsage
from apportion.telemetry.sql import Database, open_database
from policy_helpers import NoMore

TEAM = Pipeline(
    [Agent("lead", priority="critical")],
    name="team",
    kinds=[AgentKind("expert", "expert:*"), AgentKind("critic", "critic:*")],
)


def team_run(telemetry: object) -> None:
    """Two requests: the lead and experts drawn per run, one expert refused."""
    controller = Controller(TEAM, NoMore(), telemetry=telemetry)
    for names in (("expert:ada", "expert:bob"), ("expert:ada", "critic:cy")):
        with controller.request(ceiling=3_000) as req:
            g = req.begin("lead", 100, 50)
            req.finish(g, input_tokens=100, output_tokens=40)
            for name in names:
                g = req.begin(name, 100, 50)
                req.finish(g, input_tokens=100, output_tokens=50, truncated=name == "critic:cy")
            with pytest.raises(BudgetExceeded):
                req.begin("expert:zed", 9_000)
    assert flush(30)


def test_the_sql_sink_keeps_each_calls_kind(db_url: str) -> None:
    team_run(db_url)
    with open_database(db_url) as db:
        assert db.version == SCHEMA_VERSION == 5
        data = db.load()
    assert [(c.agent, c.kind) for c in data.calls] == [
        ("lead", None),
        ("expert:ada", "expert"),
        ("expert:bob", "expert"),
        ("lead", None),
        ("expert:ada", "expert"),
        ("critic:cy", "critic"),
    ]
    for request in data.requests.values():
        assert request.refused == {"expert:zed": 1}
        assert request.refused_kinds == {"expert:zed": "expert"}


def test_a_version_3_database_gains_the_kind_columns_in_place(db_url: str) -> None:
    from sqlalchemy import text, update

    old = RequestUsage("r1", "p", 100, 10, calls=(CallUsage("r1", 1, "a"),), refused={"a": 1})
    with Database(db_url, create=True) as db:
        db.write([old])
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE apportion_calls DROP COLUMN kind"))
            conn.execute(text("ALTER TABLE apportion_requests DROP COLUMN refused_kinds"))
            meta = db.tables.meta
            conn.execute(update(meta).where(meta.c.key == "schema_version").values(value="3"))
    with open_database(db_url) as db:  # a reader leaves it as it is: no kinds
        assert db.version == 3
        data = db.load()
    assert [c.kind for c in data.calls] == [None]
    assert data.requests["r1"].refused == {"a": 1} and data.requests["r1"].refused_kinds == {}
    new = RequestUsage(
        "r2",
        "p",
        100,
        10,
        calls=(CallUsage("r2", 1, "expert:ada", kind="expert", status="completed"),),
        refused={"expert:bob": 2},
        refused_kinds={"expert:bob": "expert"},
    )
    with Database(db_url, create=True) as db:  # a writer adds the columns
        assert db.version == SCHEMA_VERSION
        db.write([new])
    with open_database(db_url) as db:
        data = db.load()
    assert [(c.agent, c.kind) for c in data.calls] == [("a", None), ("expert:ada", "expert")]
    assert data.requests["r2"].refused_kinds == {"expert:bob": "expert"}


def test_the_report_rolls_up_calls_per_kind(db_url: str, tmp_path: Path) -> None:
    team_run(db_url)
    with open_database(db_url) as db:
        report = build_report(db.load())
    kinds = report["kinds"]
    assert set(kinds) == {"expert", "critic"}
    expert = kinds["expert"]
    assert expert["members"] == 2  # ada and bob; zed was only refused
    assert expert["calls"] == 3 and expert["requests"] == 2
    assert expert["statuses"] == {"completed": 3, "refused": 2}
    assert expert["success_rate"] == pytest.approx(3 / 5)
    assert kinds["critic"]["statuses"] == {"cut": 1} and kinds["critic"]["members"] == 1
    assert set(report["agents"]) == {"lead", "expert:ada", "expert:bob", "critic:cy"}
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", db_url, "--json", str(out), "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert "per agent kind" in result.output
    assert json.loads(out.read_text())["kinds"]["expert"]["calls"] == 3
    html = page.read_text()
    assert "Per agent kind" in html and "critic" in html


def test_without_kinds_the_report_has_no_kind_rollup(db_url: str, tmp_path: Path) -> None:
    flat = Pipeline([Agent("lead")], name="flat")
    with Controller(flat, NoMore(), telemetry=db_url).request(ceiling=1_000) as req:
        g = req.begin("lead", 100, 50)
        req.finish(g, input_tokens=100, output_tokens=40)
    assert flush(30)
    page = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", db_url, "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert "per agent kind" not in result.output
    assert "Per agent kind" not in page.read_text()
    with open_database(db_url) as db:
        assert build_report(db.load())["kinds"] == {}
