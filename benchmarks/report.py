"""``apportion report`` over a large telemetry database: 1,000,000 usage events by default.

A usage event is one settled call (a row of ``apportion_calls``, what the report reads).
The events are generated for a five-agent pipeline (five calls per request, so 200,000
requests by default) with usage drawn per agent from a seeded generator, some calls
truncated or with their input cut, half the requests scored, spread over a week. They are
written into a fresh SQLite file through the SQL sink's own insert path
(:meth:`apportion.telemetry.sql.Database.write`, the tables of the sink's schema), in
batches. Then the report runs over the file exactly as ``apportion report DB --json ...
--html ...`` runs it: the command itself is invoked (through Typer's test runner, in this
process), and the JSON it writes is checked to count every event.

With ``--tree`` each request is a tree: its first call is the root's own, and each later
call is made by a child request of its own (``r0000001::retriever`` ...), so the report
also rolls up trees and groups children by name (five times as many requests).

Prints one JSON line: ``events``, ``seconds`` (the report command, end to end: reading the
database, the report, its tables, the JSON and the HTML page), and ``write_seconds``
(generating and writing the events, not part of ``seconds``), ``requests``, ``db_mb``,
``max_rss_mb`` (the process's peak memory), ``load_average`` (the machine's, over the last
minute, at the end: other work slows the run), ``python`` and ``machine``.

    python benchmarks/report.py [--events N] [--seed N] [--db PATH] [--no-html] [--tree]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from apportion.telemetry.records import CallUsage, RequestUsage
from apportion.telemetry.sql import Database

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


def write(url: str, events: int, seed: int, tree: bool = False) -> int:
    """Write the events through the SQL sink's insert path; the number of requests."""
    written = 0
    batch: list[RequestUsage] = []
    with Database(url, create=True) as db:
        for record in requests(events, seed, tree):
            batch.append(record)
            if len(batch) == BATCH:
                written += db.write(batch)
                batch = []
        written += db.write(batch)
    return written


def report(url: str, out: Path, html: bool) -> dict[str, object]:
    """Run ``apportion report`` on ``url``; the JSON document it wrote."""
    from typer.testing import CliRunner

    from apportion.cli import app

    args = ["report", url, "--json", str(out / "report.json")]
    if html:
        args += ["--html", str(out / "report.html")]
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise SystemExit(f"apportion report failed ({result.exit_code}): {result.output[-2000:]}")
    document: dict[str, object] = json.loads((out / "report.json").read_text())
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="calls to generate")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--db", type=Path, help="SQLite file to create (default: temporary)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML page")
    parser.add_argument("--tree", action="store_true", help="make each request a tree")
    args = parser.parse_args()
    if args.events < 1:
        parser.error("--events must be at least 1")
    with tempfile.TemporaryDirectory(prefix="apportion-report-bench-") as tmp:
        out = Path(tmp)
        path = args.db or out / "telemetry.db"
        if path.exists():
            parser.error(f"{path} exists: give a new file")
        url = f"sqlite:///{path}"
        start = time.perf_counter()
        count = write(url, args.events, args.seed, args.tree)
        write_seconds = time.perf_counter() - start
        start = time.perf_counter()
        document = report(url, out, html=not args.no_html)
        seconds = time.perf_counter() - start
        if document["calls"] != args.events or document["requests"] != count:
            raise SystemExit(
                f"the report counted {document['calls']} calls and {document['requests']} "
                f"requests, not {args.events} and {count}"
            )
        line = {
            "events": args.events,
            "seconds": round(seconds, 3),
            "requests": count,
            "write_seconds": round(write_seconds, 3),
            "html": not args.no_html,
            "tree": args.tree,
            "trees": document["trees"]["trees"],  # type: ignore[index]
            "db_mb": round(os.path.getsize(path) / 1e6, 1),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "load_average": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "machine": platform.machine(),
        }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
