"""Daily rollups (schema version 5): kept by every write, built when an older database is
upgraded, taken back when a request is written again, and read by the report within the
stated error bound (:data:`~apportion.telemetry.rollups.RELATIVE_ERROR`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from apportion.analysis.window_report import report_database
from apportion.telemetry.records import SCHEMA_VERSION
from apportion.telemetry.rollups import RELATIVE_ERROR, bucket_of, bucket_value
from apportion.telemetry.sql import Database, open_database
from report_data import agree_within_the_bound, generated, make_version_4


def daily_rows(url: str) -> list[tuple[Any, ...]]:
    """The rollup rows, sorted, zero rows left out (sums rounded: float addition order)."""
    with open_database(url) as db, db.engine.connect() as conn:
        d = db.tables.daily.c
        rows = conn.execute(
            select(
                d.day, d.pipeline, d.agent, d.kind, d.measure, d.key, d["count"], d.total, d.total2
            )
        ).all()
    return sorted(
        (*row[:7], round(row[7], 6), round(row[8], 6))
        for row in rows
        if row[6] or abs(row[7]) > 1e-9 or abs(row[8]) > 1e-9
    )


@given(st.integers(min_value=0, max_value=10**12))
def test_a_bucket_stands_within_the_bound_of_its_values(value: int) -> None:
    stand_in = bucket_value(bucket_of(value))
    assert abs(stand_in - value) <= RELATIVE_ERROR * value * (1 + 1e-9)
    assert bucket_value(bucket_of(value + 1)) >= stand_in  # monotone: order kept


def test_a_version_4_database_gets_its_rollups_when_upgraded(db_url: str, tmp_path: Any) -> None:
    with Database(db_url, create=True) as db:
        db.write(generated(21))
    kept = daily_rows(db_url)
    assert kept
    make_version_4(db_url)
    with open_database(db_url) as db:
        assert db.version == 4 and not db.has_rollups()
    with Database(db_url, create=True) as db:  # the first writer upgrades in place
        assert db.version == SCHEMA_VERSION == 5
    assert daily_rows(db_url) == kept


def test_writing_a_request_again_takes_back_its_rollups(db_url: str, tmp_path: Any) -> None:
    first = generated(4, requests=60)
    again = [
        dataclasses.replace(
            r,
            outcome=None if r.outcome is None else 1 - r.outcome,
            calls=tuple(
                dataclasses.replace(c, used_output=(c.used_output or 0) + 3, truncated=True)
                if c.used_output is not None
                else c
                for c in r.calls
            ),
        )
        for r in first[::2]
    ]
    with Database(db_url, create=True) as db:
        db.write(first)
        db.write(again)
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    with Database(fresh, create=True) as db:
        replaced = {r.request_id for r in again}
        db.write([r for r in first if r.request_id not in replaced] + again)
    assert daily_rows(db_url) == daily_rows(fresh)


def test_the_report_from_rollups_is_within_the_bound(db_url: str) -> None:
    with Database(db_url, create=True) as db:
        db.write(generated(9))
    raw = report_database(db_url, rollups="never").document
    rolled = report_database(db_url, rollups="always").document
    assert raw["calls"] > 500
    agree_within_the_bound(raw, rolled)
    assert rolled["requests"] == raw["requests"]
    assert rolled["requests_scored"] == raw["requests_scored"]
    assert rolled["overflow"] == raw["overflow"]


def _spanning_midnight(requests: list[Any]) -> list[Any]:
    """The requests with each one's calls spread over 30 hours: many cross a midnight."""
    out = []
    for r in requests:
        if r.opened_at is None:
            out.append(r)
            continue
        calls = tuple(
            dataclasses.replace(
                c,
                began_at=None if c.at is None else r.opened_at + i * 9_000,
                at=None if c.at is None else r.opened_at + i * 9_000 + 1,
            )
            for i, c in enumerate(r.calls)
        )
        closed = max([r.opened_at, *(c.at for c in calls if c.at is not None)]) + 1
        out.append(dataclasses.replace(r, calls=calls, closed_at=closed))
    return out


def test_auto_reads_past_days_from_the_rollups_and_stays_exact(db_url: str) -> None:
    """``auto`` with nothing pruned: every figure equals the raw report's, percentiles
    included (its histograms are read raw), with an agent's calls of one request on
    both sides of midnight, and with "now" inside the data (today read raw)."""
    from report_data import DAYS, START

    with Database(db_url, create=True) as db:
        db.write(_spanning_midnight(generated(17)))
    for now in (START + (DAYS + 3) * 86_400, START + 3.5 * 86_400):
        raw = report_database(db_url, rollups="never", until=now).document
        auto = report_database(db_url, rollups="auto", until=now, now=now).document
        assert raw["calls"] > 300
        assert _without_float_noise(auto) == _without_float_noise(raw)


def _without_float_noise(value: Any) -> Any:
    """The document with floats rounded (sums added in another order differ in the last bits)."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: _without_float_noise(v) for k, v in value.items() if k != "source"}
    if isinstance(value, list):
        return [_without_float_noise(v) for v in value]
    return value
