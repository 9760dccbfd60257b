"""``apportion report`` and ``apportion profile`` as a user runs them, on both databases."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

from analysis_helpers import write_hand_set
from typer.testing import CliRunner

from apportion import Agent, Controller, Pipeline, StaticPolicy
from apportion.cli import app
from apportion.telemetry import SCHEMA_VERSION
from apportion.telemetry.sql import Database

runner = CliRunner()


def test_report_json_keeps_the_pinned_keys(db_url: str, tmp_path: Path) -> None:
    write_hand_set(db_url)
    out, page = tmp_path / "report.json", tmp_path / "report.html"
    result = runner.invoke(app, ["report", db_url, "--json", str(out), "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert "writer" in result.output and "under-budgeted" in result.output
    document = json.loads(out.read_text())
    for name, agent in document["agents"].items():
        assert {
            "calls",
            "input",
            "output",
            "utilization",
            "ceiling_hit_rate",
            "over_budgeted",
            "under_budgeted",
            "recommended",
        } <= set(agent), name
        for side in ("input", "output"):
            assert {"p50", "p90", "p99"} <= set(agent[side])
        assert {"context_tokens", "output_tokens"} <= set(agent["recommended"])
    assert document["agents"]["critic"]["over_budgeted"] is True
    assert document["agents"]["writer"]["recommended"]["output_tokens"] == 110
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<svg") == 4
    assert "budgets:" in text  # the recommended budgets file
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing is fetched


def test_report_since(db_url: str, tmp_path: Path) -> None:
    write_hand_set(db_url)
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["report", db_url, "--since", "1500", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert set(json.loads(out.read_text())["agents"]) == {"planner", "writer"}


def test_report_of_an_empty_database(db_url: str, tmp_path: Path) -> None:
    with Database(db_url, create=True):
        pass
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    result = runner.invoke(app, ["report", db_url, "--json", str(out), "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert "nothing to report" in result.output and "no telemetry" in result.output
    assert json.loads(out.read_text())["agents"] == {}
    assert "Nothing to report" in page.read_text()


def test_report_of_an_unreachable_database_names_it_without_password(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://reader:s3cret@127.0.0.1:{port}/telemetry"
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["report", url, "--json", str(out)])
    assert result.exit_code == 2
    assert "s3cret" not in result.output
    assert "cannot open database" in result.output and f"127.0.0.1:{port}" in result.output
    assert not out.exists()


def test_report_of_a_newer_schema_is_refused_with_its_version(db_url: str) -> None:
    from sqlalchemy import update

    with Database(db_url, create=True) as db, db.engine.begin() as conn:
        conn.execute(update(db.tables.meta).values(value=str(SCHEMA_VERSION + 1)))
    result = runner.invoke(app, ["report", db_url])
    assert result.exit_code == 2
    assert f"schema version {SCHEMA_VERSION + 1}" in result.output


def test_report_bad_since(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(tmp_path / "x.db"), "--since", "yesterday-ish"])
    assert result.exit_code == 2 and "--since" in result.output


def test_profile_writes_a_file_the_static_policy_loads(db_url: str, tmp_path: Path) -> None:
    write_hand_set(db_url)
    path = tmp_path / "budgets.yaml"
    result = runner.invoke(
        app,
        [
            "profile",
            db_url,
            "-o",
            str(path),
            "--input-percentile",
            "50",
            "--output-percentile",
            "99",
            "--margin",
            "0.2",
        ],
    )
    assert result.exit_code == 0, result.output
    policy = StaticPolicy.from_yaml(path)
    # planner: P50 input 85 -> 102, P99 output 49.7 -> 60; critic: 150 -> 180, 149 -> 179;
    # writer (many cut): P50 input 100 -> 120, raised to 150 -> 180; output 99.1 -> 119,
    # raised to 100 -> 120
    assert {a: tuple(b) for a, b in policy.budgets.items()} == {
        "critic": (180, 179),
        "planner": (102, 60),
        "writer": (180, 120),
    }
    pipeline = Pipeline([Agent("planner"), Agent("critic"), Agent("writer")])
    controller = Controller(pipeline, policy=f"static:{path}")
    with controller.request(ceiling=10_000) as req:
        grant = req.begin("planner", input_tokens=500)
    assert (grant.context_tokens, grant.output_tokens) == (102, 60)


def test_profile_min_calls_and_empty(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    with Database(db_url, create=True):
        pass
    result = runner.invoke(app, ["profile", db_url, "-o", str(path)])
    assert result.exit_code == 2 and "no telemetry" in result.output
    assert not path.exists()
    write_hand_set(db_url)
    result = runner.invoke(app, ["profile", db_url, "-o", str(path), "--min-calls", "3"])
    assert result.exit_code == 0, result.output
    assert set(StaticPolicy.from_yaml(path).budgets) == {"planner", "writer"}
