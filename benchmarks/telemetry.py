"""Whether the SQLite telemetry sink keeps up with one process, and what it costs the caller.

One process runs request lifecycles (open, five begin/finish pairs, close: the pipeline of
``benchmarks/overhead.py``) through a controller whose telemetry is a SQLite file, paced
at ``--rate`` requests per second for ``--seconds``. It then waits for the sink to write
everything and counts the requests stored. In the same run, lifecycles of a controller
without telemetry give the baseline: a short block (a fifth of ``--block``) after each
paced block, its time left out of the pace and of the throughput.

Prints one JSON object:

- ``drops``: records the sink's channel dropped (buffer full or failed writes);
  ``stored``: requests found in the database at the end (should be ``requests``);
- ``caller_us_median``: the median lifecycle with telemetry minus the median without, in
  microseconds: what telemetry costs the caller's thread per request (the events read
  from the store, queuing the record, the writer thread taking the GIL);
  ``emit_us_median``: the median time spent in ``apportion.telemetry.emit`` alone;
- ``throughput_rps``: requests per second reached (``rate_rps`` was asked);
  ``drain_seconds``: how long the sink took, after the last request, to write the rest;
- ``cpu_us_per_request``: the process's CPU time (all threads: the caller's and the
  writer's) per lifecycle run, the baseline ones included, until the sink had written
  everything;
- ``load_average``: the 1-minute load average when the run ended.

    python benchmarks/telemetry.py [--rate 2000] [--seconds 5] [--block 50]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from overhead import AGENTS, CEILING, USAGE

import apportion.telemetry as telemetry
from apportion import Controller, Pipeline
from apportion.telemetry.sql import open_database


def lifecycle(controller: Controller) -> None:
    with controller.request(ceiling=CEILING, features={"messages": 12}) as req:
        for agent, (inp, out) in zip(AGENTS, USAGE, strict=True):
            grant = req.begin(agent.name, input_tokens=inp)
            req.finish(
                grant,
                input_tokens=grant.context_tokens,
                output_tokens=min(out, grant.output_tokens),
            )


def timed(fn: Any, *args: Any) -> float:
    start = time.perf_counter_ns()
    fn(*args)
    return (time.perf_counter_ns() - start) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--block", type=int, default=50, help="lifecycles per timed block")
    args = parser.parse_args()

    emit_us: list[float] = []
    real_emit = telemetry.emit

    def timed_emit(*a: Any, **k: Any) -> None:
        start = time.perf_counter_ns()
        real_emit(*a, **k)
        emit_us.append((time.perf_counter_ns() - start) / 1000)

    telemetry.emit = timed_emit  # the controller imports it from the module at each close

    pipeline = Pipeline(AGENTS)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'telemetry.db'}"
        plain = Controller(pipeline, policy="uniform")
        recorded = Controller(pipeline, policy="uniform", telemetry=url)
        for _ in range(200):  # warm up; creates the database
            lifecycle(plain)
            lifecycle(recorded)
        telemetry.flush(60)
        (channel,) = recorded.sinks
        before_delivered, before_dropped = channel.delivered, channel.dropped
        emit_us.clear()

        total = int(args.rate * args.seconds)
        interval = 1.0 / args.rate
        with_telemetry: list[float] = []
        without: list[float] = []
        cpu_start = time.process_time()
        start = time.perf_counter()
        done = 0
        while done < total:
            for _ in range(min(args.block, total - done)):
                due = start + done * interval
                ahead = due - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
                with_telemetry.append(timed(lifecycle, recorded))
                done += 1
            without.extend(timed(lifecycle, plain) for _ in range(args.block // 5 or 1))
            start += sum(without[-(args.block // 5 or 1) :]) / 1e6  # not in the pace
        elapsed = time.perf_counter() - start  # the baseline blocks' time left out
        drain_start = time.perf_counter()
        flushed = telemetry.flush(120)
        drain = time.perf_counter() - drain_start
        cpu = time.process_time() - cpu_start
        with open_database(url) as db:
            stored = len(db.load().requests) - 200
        result = {
            "store": "memory://",
            "sink": "sqlite",
            "rate_rps": args.rate,
            "requests": total,
            "throughput_rps": round(total / elapsed, 1),
            "drops": channel.dropped - before_dropped,
            "delivered": channel.delivered - before_delivered,
            "stored": stored,
            "flushed": flushed,
            "drain_seconds": round(drain, 3),
            "lifecycle_us_median": round(statistics.median(with_telemetry), 2),
            "baseline_us_median": round(statistics.median(without), 2) if without else None,
            "caller_us_median": (
                round(statistics.median(with_telemetry) - statistics.median(without), 2)
                if without
                else None
            ),
            "emit_us_median": round(statistics.median(emit_us), 2),
            "baseline_samples": len(without),
            "cpu_us_per_request": round(cpu / (total + len(without)) * 1e6, 1),
            "load_average": round(os.getloadavg()[0], 2),
        }
    telemetry.emit = real_emit
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
