"""``benchmarks/report.py`` runs and prints its one JSON line (a small N, for speed)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "report.py"


def test_the_report_benchmark_prints_one_json_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    db = tmp_path / "bench.db"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--events", "2003", "--db", str(db)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    line = json.loads(lines[0])
    assert line["events"] == 2003
    assert line["requests"] == 401  # five calls a request, the last one short
    assert isinstance(line["seconds"], float) and line["seconds"] > 0
    assert line["html"] is True
    # The events are in the sink's tables, one row per call.
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from apportion_calls").fetchone() == (2003,)
        assert conn.execute("select count(*) from apportion_requests").fetchone() == (401,)


def test_the_report_benchmark_makes_trees(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    db = tmp_path / "bench.db"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--events", "2003", "--db", str(db), "--tree", "--no-html"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert (line["events"], line["requests"], line["trees"]) == (2003, 2003, 401)
    with sqlite3.connect(db) as conn:
        assert conn.execute(
            "select count(*) from apportion_requests where parent_id is not null"
        ).fetchone() == (1602,)
