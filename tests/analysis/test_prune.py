"""``apportion prune DB --older-than DURATION``: raw rows go, their figures stay (rollups).

A report over the pruned window still gives its figures (from the daily rollups, within
the stated bound); a bad duration is refused with its fields, exit code 2 and one line,
nothing deleted; a database from before the rollups gets them built before anything is
deleted.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from apportion.analysis.report import parse_duration
from apportion.analysis.window_report import report_database
from apportion.cli import app
from apportion.errors import InvalidDuration
from apportion.telemetry.rollups import DAY
from apportion.telemetry.sql import Database, open_database
from report_data import START, agree_within_the_bound, generated, make_version_4

runner = CliRunner()


def counts(url: str) -> tuple[int, int, int]:
    with open_database(url) as db, db.engine.connect() as conn:
        t = db.tables
        return tuple(  # type: ignore[return-value]
            conn.execute(select(func.count()).select_from(table)).scalar()
            for table in (t.calls, t.requests, t.daily)
        )


def older_than_days(cutoff: float) -> str:
    """The ``--older-than`` that prunes the whole days before ``cutoff`` (a midnight)."""
    return f"{math.floor((time.time() - cutoff) / DAY)}d"


def test_a_pruned_window_reports_its_figures_from_the_rollups(db_url: str) -> None:
    with Database(db_url, create=True) as db:
        db.write(generated(13))
    before = report_database(db_url).document
    calls, requests, _ = counts(db_url)
    cutoff = START + 3 * DAY
    result = runner.invoke(app, ["prune", db_url, "--older-than", older_than_days(cutoff)])
    assert result.exit_code == 0, result.output
    assert "pruned" in result.output and "rollups" in result.output
    left_calls, left_requests, rollups = counts(db_url)
    assert 0 < left_calls < calls and 0 < left_requests < requests and rollups
    with open_database(db_url) as db:
        assert db.pruned_before() == cutoff
        data = db.load()
    assert all(
        c.at is None or c.at >= cutoff or (c.at is None and c.began_at >= cutoff)
        for c in data.calls
    )
    after = report_database(db_url).document  # auto: the pruned days from the rollups
    agree_within_the_bound(before, after)
    assert after["requests"] == before["requests"]
    raw_only = report_database(db_url, rollups="never").document
    assert raw_only["calls"] < before["calls"]


def test_a_report_since_a_pruned_day_reads_that_day_from_the_rollups(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with Database(url, create=True) as db:
        db.write(generated(14))
    since = START + DAY
    before = report_database(url, since=since).document
    with Database(url, create=True) as db:
        db.prune(START + 2 * DAY + 100)  # whole days: rows before START + 2 days go
    agree_within_the_bound(before, report_database(url, since=since).document)


@pytest.mark.parametrize("bad", ["30", "abc", "-3d", "0d", "3x", "1e400d", "30 days", ""])
def test_a_bad_duration_is_refused_and_nothing_is_deleted(tmp_path: Path, bad: str) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with Database(url, create=True) as db:
        db.write(generated(2, requests=30))
    kept = counts(url)
    result = runner.invoke(app, ["prune", url, "--older-than", bad])
    assert result.exit_code == 2
    assert result.output.startswith("error: --older-than")
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2
    assert counts(url) == kept
    with pytest.raises(InvalidDuration) as caught:
        parse_duration(bad)
    assert (caught.value.option, caught.value.value) == ("--older-than", bad)


def test_prune_builds_the_rollups_of_an_older_database_first(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with Database(url, create=True) as db:
        db.write(generated(17))
    before = report_database(url).document
    make_version_4(url)
    result = runner.invoke(app, ["prune", url, "--older-than", older_than_days(START + 4 * DAY)])
    assert result.exit_code == 0, result.output
    agree_within_the_bound(before, report_database(url).document)


def test_prune_needs_a_finite_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with Database(url, create=True) as db:
        db.write(generated(1, requests=5))
        kept = counts(url)
        with pytest.raises(ValueError, match="before"):
            db.prune(math.nan)
    assert counts(url) == kept
