"""``apportion report`` over a large telemetry database: 1,000,000 usage events by default.

A usage event is one settled call (a row of ``apportion_calls``, what the report reads).
The events are generated for a five-agent pipeline (five calls per request, so 200,000
requests by default) with usage drawn per agent from a seeded generator, some calls
truncated or with their input cut, half the requests scored, spread over a week. They are
written into a fresh database (a temporary SQLite file, ``--db PATH``, or ``--url``: a
``postgresql://`` database, emptied first) through the SQL sink's own schema and row
builders, in batches of 5,000 requests, each in one transaction with its daily rollups:
by :meth:`~apportion.telemetry.sql.Database.append` (bulk: ``executemany`` on SQLite,
``COPY`` on PostgreSQL), or with ``--sink-writes`` by the sink's own
:meth:`~apportion.telemetry.sql.Database.write` (which looks for earlier rows of each id).
Then ``apportion report DB --json ... [--html ...]`` runs in a child process (so its peak
memory is its own), and the JSON it writes is checked to count every event.

With ``--tree`` each request is a tree: its first call is the root's own, and each later
call is made by a child request of its own (``r0000001::retriever`` ...), so the report
also rolls up trees and groups children by name (five times as many requests).

With ``--from-rollups`` no raw row is written: a year of daily rollup rows is, each day
the rollups of one of seven generated days (1,000 requests each) with every count
multiplied so the year holds about ``--events`` calls, and at least the 1,825,000 of
one multiple (``events`` is the exact number),
and the report reads every whole day from the rollups (``--rollups always``).

Prints one JSON line: ``events``, ``seconds`` (the report command, end to end in its
process: reading the database, the report, its tables, the JSON and the HTML page),
``peak_rss_mb`` (the report process's peak memory; ``max_rss_mb`` the same, its older
name), ``cpu_seconds`` (the report process's CPU time, user and system: SQLite works in
that process, PostgreSQL in its server; less sensitive than ``seconds`` to a loaded
machine), ``write_seconds`` (generating and writing the events, not part of ``seconds``),
``write_path``, ``database`` (``sqlite`` or ``postgresql``), ``requests``, ``db_mb``,
``load_average`` (the machine's, over the last minute, at the end: other work slows the
run), ``python`` and ``machine``.

    python benchmarks/report.py [--events N] [--url URL | --db PATH] [--seed N] [--no-html]
        [--tree] [--sink-writes] [--from-rollups] [--rollups auto|always|never]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apportion.telemetry.records import CallUsage, RequestUsage
from apportion.telemetry.rollups import DAY, Rollup, upsert
from apportion.telemetry.sql import Database, storable

# (agent, priority, median input, median output, output grant): usage is drawn around
# the medians; the output grant is what the budget allowed (a draw above it is truncated).
AGENTS = (
    ("intake", "peripheral", 700, 45, 120),
    ("retriever", "standard", 1_200, 330, 600),
    ("reasoner", "critical", 9_000, 800, 1_400),
    ("critic", "standard", 1_500, 160, 450),
    ("formatter", "peripheral", 250, 180, 300),
)
CONTEXT_GRANT = 10_000
"""Context tokens granted to every call; a larger input is cut to it."""
WEEK = 7 * 24 * 3600.0
START = 1_750_000_000.0
BATCH = 5_000
"""Requests per write (one transaction each)."""


def requests(events: int, seed: int, tree: bool = False) -> Iterator[RequestUsage]:
    """Requests of the five-agent pipeline, ``events`` calls in all (the last may be short).

    With ``tree``, every call after a request's first is made by a child request.
    """
    rng = random.Random(seed)
    count = -(-events // len(AGENTS))
    for number in range(count):
        rid = f"r{number:07d}"
        opened = START + WEEK * number / count
        calls = []
        agents = AGENTS[: min(len(AGENTS), events - number * len(AGENTS))]
        for grant_id, (agent, priority, med_in, med_out, out_grant) in enumerate(agents, 1):
            want_in = max(1, round(rng.lognormvariate(0.0, 0.5) * med_in))
            want_out = max(1, round(rng.lognormvariate(0.0, 0.6) * med_out))
            used_in, used_out = min(want_in, CONTEXT_GRANT), min(want_out, out_grant)
            began = opened + grant_id
            calls.append(
                CallUsage(
                    request_id=rid,
                    grant_id=grant_id,
                    agent=agent,
                    priority=priority,
                    granted_context=CONTEXT_GRANT,
                    granted_output=out_grant,
                    used_input=used_in,
                    used_output=used_out,
                    truncated=want_out > out_grant,
                    input_cut=want_in > CONTEXT_GRANT,
                    dropped_tokens=max(0, want_in - CONTEXT_GRANT),
                    began_at=began,
                    at=began + 0.5,
                )
            )
        own = calls[:1] if tree else calls
        for call in calls[len(own) :]:  # a child per later call
            kid = f"{rid}::{call.agent}"
            yield RequestUsage(
                request_id=kid,
                pipeline="support",
                ceiling=4_000,
                consumed=call.used or 0,
                opened_at=call.began_at,
                closed_at=call.at,
                calls=(dataclasses.replace(call, request_id=kid),),
                parent_id=rid,
                root_id=rid,
                depth=1,
            )
        yield RequestUsage(
            request_id=rid,
            pipeline="support",
            ceiling=20_000,
            consumed=sum(c.used or 0 for c in calls),
            outcome=round(rng.random(), 3) if number % 2 == 0 else None,
            opened_at=opened,
            closed_at=opened + len(calls) + 1,
            calls=tuple(own),
            root_id=rid if tree else None,
        )


def write(url: str, events: int, seed: int, tree: bool = False, sink: bool = False) -> int:
    """Write the events in batches (bulk, or through the sink's write); the requests written."""
    written = 0
    batch: list[RequestUsage] = []
    with Database(url, create=True) as db:
        put = db.write if sink else db.append
        for record in requests(events, seed, tree):
            batch.append(record)
            if len(batch) == BATCH:
                written += put(batch)
                batch = []
        written += put(batch)
    return written


SAMPLE_DAYS = 7
SAMPLE_REQUESTS = 1_000
YEAR = 365


def write_rollups(url: str, events: int, seed: int) -> tuple[int, int]:
    """A year of daily rollups of about ``events`` calls; the calls and the rows written.

    Each day is one of ``SAMPLE_DAYS`` generated days of ``SAMPLE_REQUESTS`` requests,
    rolled up as the sink rolls up, every count (and sum) multiplied by one factor.
    """
    per_day = SAMPLE_REQUESTS * len(AGENTS)
    factor = max(1, round(events / (YEAR * per_day)))
    samples = []
    for number in range(SAMPLE_DAYS):
        rollup = Rollup(storable)
        for record in requests(per_day, seed + number):
            rollup.add(record)
        merged: dict[tuple[object, ...], dict[str, Any]] = {}  # one day: the week's days
        for row in rollup.rows():
            key = (row["pipeline"], row["agent"], row["kind"], row["measure"], row["key"])
            seen = merged.get(key)
            if seen is None:
                merged[key] = row
                continue
            for name in ("count", "total", "total2"):
                seen[name] += row[name]
            if row["top"] is not None and (seen["top"] is None or row["top"] > seen["top"]):
                seen["top"] = row["top"]
        samples.append(list(merged.values()))
    first_day = math.floor(START / DAY)
    rows_written = 0
    with Database(url, create=True) as db:
        for day in range(YEAR):
            rows = []
            for row in samples[day % SAMPLE_DAYS]:
                rows.append(
                    row
                    | {
                        "day": first_day + day,
                        "count": row["count"] * factor,
                        "total": row["total"] * factor,
                        "total2": row["total2"] * factor,
                    }
                )
            with db.engine.begin() as conn:
                upsert(conn, db.tables.daily, rows)
            rows_written += len(rows)
    return YEAR * per_day * factor, rows_written


def run_report(
    url: str, out: Path, html: bool, rollups: str
) -> tuple[dict[str, object], dict[str, float]]:
    """Run ``apportion report`` on ``url`` in a child process.

    Returns:
        The JSON document it wrote, and what the child measured: ``seconds`` (around
        the command), ``peak_rss_mb`` and ``cpu`` (its CPU seconds).
    """
    args = ["report", url, "--json", str(out / "report.json"), "--rollups", rollups]
    if html:
        args += ["--html", str(out / "report.html")]
    child = subprocess.run(
        [sys.executable, __file__, "--run-report", json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        raise SystemExit(f"apportion report failed: {(child.stdout + child.stderr)[-2000:]}")
    measured: dict[str, float] = json.loads(child.stdout.strip().splitlines()[-1])
    document: dict[str, object] = json.loads((out / "report.json").read_text())
    return document, measured


def _child(args: list[str]) -> None:
    """The child: run the command, print its seconds and peak memory."""
    from typer.testing import CliRunner

    from apportion.cli import app

    start = time.perf_counter()
    result = CliRunner().invoke(app, args)
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        print(result.output[-2000:], file=sys.stderr)
        raise SystemExit(result.exit_code)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    print(
        json.dumps({"seconds": seconds, "peak_rss_mb": round(usage.ru_maxrss / 1024), "cpu": cpu})
    )


def _fresh_postgres(url: str) -> None:
    """Drop the telemetry tables of a PostgreSQL database (the benchmark starts empty)."""
    from sqlalchemy import text

    with Database(url, create=True) as db, db.engine.begin() as conn:
        for table in reversed(db.tables):
            conn.execute(text(f'DROP TABLE IF EXISTS "{table.name}"'))


def _db_mb(url: str, path: Path | None) -> float:
    if path is not None:
        return round(os.path.getsize(path) / 1e6, 1)
    from sqlalchemy import text

    with Database(url) as db, db.engine.connect() as conn:
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
    return round(int(size or 0) / 1e6, 1)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--run-report":
        _child(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="calls to generate")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--db", type=Path, help="SQLite file to create (default: temporary)")
    parser.add_argument("--url", help="a postgresql:// database to use instead (emptied first)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML page")
    parser.add_argument("--tree", action="store_true", help="make each request a tree")
    parser.add_argument("--sink-writes", action="store_true", help="write with Database.write")
    parser.add_argument(
        "--from-rollups", action="store_true", help="write a year of daily rollups only"
    )
    parser.add_argument("--rollups", choices=("auto", "always", "never"), default=None)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="report on the --db file an earlier run wrote (same --events), without writing",
    )
    args = parser.parse_args()
    if args.events < 1:
        parser.error("--events must be at least 1")
    if args.url and args.db:
        parser.error("give --url or --db, not both")
    if args.url and not args.url.startswith("postgresql"):
        parser.error("--url must be a postgresql:// URL (use --db for a SQLite file)")
    if args.reuse and (args.db is None or not args.db.exists() or args.from_rollups):
        parser.error("--reuse needs the --db file of an earlier run (not --from-rollups)")
    rollups = args.rollups or ("always" if args.from_rollups else "auto")
    with tempfile.TemporaryDirectory(prefix="apportion-report-bench-") as tmp:
        out = Path(tmp)
        path: Path | None = None
        if args.url:
            url = args.url
            _fresh_postgres(url)
        else:
            path = args.db or out / "telemetry.db"
            if path.exists() and not args.reuse:
                parser.error(f"{path} exists: give a new file (or --reuse it)")
            url = f"sqlite:///{path}"
        start = time.perf_counter()
        extra: dict[str, object] = {}
        if args.reuse:
            events, count = args.events, 0  # the report's count of calls is checked below
        elif args.from_rollups:
            events, rows = write_rollups(url, args.events, args.seed)
            count = 0
            extra = {"from_rollups": True, "rollup_days": YEAR, "rollup_rows": rows}
        else:
            events = args.events
            count = write(url, events, args.seed, args.tree, args.sink_writes)
        write_seconds = time.perf_counter() - start
        document, measured = run_report(url, out, not args.no_html, rollups)
        seconds, peak = measured["seconds"], measured["peak_rss_mb"]
        if document["calls"] != events or (count and document["requests"] != count):
            raise SystemExit(
                f"the report counted {document['calls']} calls and {document['requests']} "
                f"requests, not {events} and {count}"
            )
        line = {
            "events": events,
            "seconds": round(seconds, 3),
            "peak_rss_mb": peak,
            "cpu_seconds": round(measured["cpu"], 3),
            "requests": document["requests"],
            "write_seconds": None if args.reuse else round(write_seconds, 3),
            "write_path": "sink" if args.sink_writes else "bulk",
            "database": "postgresql" if args.url else "sqlite",
            "rollups": rollups,
            **extra,
            "html": not args.no_html,
            "tree": args.tree,
            "trees": document["trees"]["trees"],  # type: ignore[index]
            "db_mb": _db_mb(url, path),
            "max_rss_mb": peak,
            "load_average": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "machine": platform.machine(),
        }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
