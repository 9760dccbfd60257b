"""What a handle's first read costs: a request's state, and its state with its features.

Every call through the gateway attaches to its request by id (``Controller.aattach``),
which reads the request's state and the features it opened with
(``Store.aget_with_features``: on Redis one function, ``lua/read.lua``). This times that
read against the state alone (``aget``: what a handle read before features were kept),
async as the gateway reads, and the sync ones too, on the memory store and on Redis (a
``redis-server`` of its own unless ``--store`` is given, as in ``benchmarks/load.py``).
Rounds alternate between the reads; medians of the rounds, in microseconds per read, with
each read's ratio to the state alone.

Prints one JSON object.

    python benchmarks/store_reads.py [--reads 2000] [--rounds 7] [--store URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from load import redis_url

from apportion.stores.base import Store
from apportion.stores.memory import MemoryStore
from apportion.stores.redis import RedisStore
from apportion.testing.store_conformance import RANKS

READS = ("get", "get_with_features")
FEATURES = {"messages": 40, "doc_tokens": 1_200}


async def _round(store: Store, request_id: str, read: str, reads: int, run_async: bool) -> float:
    """Microseconds per read, over ``reads`` reads of one kind."""
    if run_async:
        call = getattr(store, "a" + read)
        start = time.perf_counter()
        for _ in range(reads):
            await call(request_id)
    else:
        call = getattr(store, read)
        start = time.perf_counter()
        for _ in range(reads):
            call(request_id)
    return (time.perf_counter() - start) / reads * 1e6


def _measure(make: Callable[[], Store], reads: int, rounds: int) -> dict[str, Any]:
    store = make()
    request_id = f"bench-reads-{uuid.uuid4().hex[:8]}"
    store.open(request_id, RANKS, 10**9, 0.0, features=FEATURES)
    assert store.get_with_features(request_id)[1] == FEATURES

    async def measure() -> dict[str, Any]:
        found: dict[str, Any] = {}
        for run_async in (True, False):
            for read in READS:  # warm up (loads the functions)
                await _round(store, request_id, read, min(reads, 200), run_async)
            times: dict[str, list[float]] = {read: [] for read in READS}
            for _ in range(rounds):
                for read in READS:
                    times[read].append(await _round(store, request_id, read, reads, run_async))
            medians = {read: statistics.median(t) for read, t in times.items()}
            found["async" if run_async else "sync"] = {
                read: {
                    "us_median": round(m, 2),
                    "ratio_to_get": round(m / medians["get"], 3),
                }
                for read, m in medians.items()
            }
        return found

    return asyncio.run(measure())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--store", default=None, help="a Redis URL (default: start one)")
    args = parser.parse_args()
    out: dict[str, Any] = {
        "reads": args.reads,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "memory": _measure(MemoryStore, args.reads, args.rounds),
    }
    with redis_url(args.store) as url:
        out["redis"] = _measure(lambda: RedisStore(url), args.reads, args.rounds)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
