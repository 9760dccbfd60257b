"""``benchmarks/report.py`` runs and prints its one JSON line (a small N, for speed)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from script_run import run_script

from apportion.testing.postgres import PostgresServer


def test_the_report_benchmark_prints_one_json_line(tmp_path: Path) -> None:
    db = tmp_path / "bench.db"
    out = run_script("report.py", "--events", "2003", "--db", str(db))
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    line = json.loads(lines[0])
    assert line["events"] == 2003
    assert line["requests"] == 401  # five calls a request, the last one short
    assert isinstance(line["seconds"], float) and line["seconds"] > 0
    assert isinstance(line["peak_rss_mb"], int) and line["peak_rss_mb"] > 0
    assert (line["database"], line["write_path"], line["html"]) == ("sqlite", "bulk", True)
    # The events are in the sink's tables, one row per call.
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from apportion_calls").fetchone() == (2003,)
        assert conn.execute("select count(*) from apportion_requests").fetchone() == (401,)


def test_the_report_benchmark_makes_trees(tmp_path: Path) -> None:
    db = tmp_path / "bench.db"
    out = run_script("report.py", "--events", "2003", "--db", str(db), "--tree", "--no-html")
    line = json.loads(out.strip().splitlines()[-1])
    assert (line["events"], line["requests"], line["trees"]) == (2003, 2003, 401)
    with sqlite3.connect(db) as conn:
        assert conn.execute(
            "select count(*) from apportion_requests where parent_id is not null"
        ).fetchone() == (1602,)


def _run(*args: str) -> dict[str, object]:
    out = run_script("report.py", *args)
    line: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return line


def test_the_report_benchmark_runs_on_postgresql(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    line = _run("--events", "1001", "--url", url, "--no-html")
    assert (line["events"], line["requests"], line["database"]) == (1001, 201, "postgresql")
    assert isinstance(line["db_mb"], float) and line["db_mb"] > 0
    again = _run("--events", "500", "--url", url, "--no-html", "--sink-writes")  # emptied first
    assert (again["events"], again["write_path"]) == (500, "sink")


def test_the_report_benchmark_reads_a_year_of_rollups(tmp_path: Path) -> None:
    line = _run("--events", "200000", "--from-rollups", "--no-html", "--db", str(tmp_path / "r.db"))
    assert line["from_rollups"] is True and line["rollup_days"] == 365
    assert line["rollups"] == "always"
    assert isinstance(line["events"], int) and line["events"] >= 200_000 * 0.5
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert conn.execute("select count(*) from apportion_calls").fetchone() == (0,)
        assert conn.execute("select count(distinct day) from apportion_daily").fetchone() == (365,)
