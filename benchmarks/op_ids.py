"""What operation ids cost: begin + finish pairs on one request, with and without ids.

Each round opens a request and runs ``--pairs`` begin + finish pairs on it, through the
store directly (no policy, no controller), first without operation ids, then with a fresh
id per call, then with every call repeated once with its id (the repeat is answered from
the operation record: what a retry after a lost reply costs). Rounds alternate between
the variants, and the medians are printed with their ratios to the plain variant, for the
memory store and for Redis (a ``redis-server`` of its own unless ``--store`` is given, as
in ``benchmarks/load.py``; ``server_us_per_call`` from ``INFO commandstats``).

Prints one JSON object.

    python benchmarks/op_ids.py [--pairs 2000] [--rounds 5] [--store URL]
"""

from __future__ import annotations

import argparse
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

VARIANTS = ("plain", "ids", "ids_repeated")


def _round(store: Store, pairs: int, variant: str, n: int) -> float:
    """Seconds ``pairs`` begin + finish pairs took (one new request, opened first)."""
    rid = f"bench-{variant}-{n}-{uuid.uuid4().hex[:8]}"
    store.open(rid, RANKS, 10**11, 0.0)
    ids = variant != "plain"
    again = variant == "ids_repeated"
    start = time.perf_counter()
    for _ in range(pairs):
        op = {"op_id": uuid.uuid4().hex} if ids else {}
        grant, _ = store.begin(rid, "lead", 100, 50, 0.0, 600.0, **op)
        if again:
            store.begin(rid, "lead", 100, 50, 0.0, 600.0, **op)
        op = {"op_id": uuid.uuid4().hex} if ids else {}
        store.finish(rid, grant, 90, 40, 0.0, **op)
        if again:
            store.finish(rid, grant, 90, 40, 0.0, **op)
    seconds = time.perf_counter() - start
    store.close(rid, 1.0)
    return seconds


def _measure(make: Callable[[], Store], pairs: int, rounds: int) -> dict[str, Any]:
    store = make()
    _round(store, min(pairs, 200), "ids", -1)  # warm up (loads the scripts)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for n in range(rounds):
        for variant in VARIANTS:
            times[variant].append(_round(store, pairs, variant, n))
    medians = {v: statistics.median(t) for v, t in times.items()}
    plain = medians["plain"]
    return {
        v: {
            "median_s": round(m, 4),
            "pairs_per_s": round(pairs / m, 1),
            "ratio_to_plain": round(m / plain, 3),
        }
        for v, m in medians.items()
    }


def _server_us(url: str) -> dict[str, float | None]:
    """Microseconds of server time per operation so far (``INFO commandstats``).

    The store's operations are ``FCALL`` (``EVALSHA`` on a server without Redis Functions).
    """
    stats = RedisStore(url)._client.info("commandstats")
    runs = [stats.get(name, {}) for name in ("cmdstat_fcall", "cmdstat_evalsha")]
    calls = sum(run.get("calls", 0) for run in runs)
    usec = sum(run.get("usec", 0) for run in runs)
    return {"calls": calls, "us_per_call": usec / calls if calls else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", default=None, help="a Redis URL (default: start one)")
    args = parser.parse_args()
    out: dict[str, Any] = {
        "pairs": args.pairs,
        "rounds": args.rounds,
        "python": platform.python_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "memory": _measure(MemoryStore, args.pairs, args.rounds),
    }
    with redis_url(args.store) as url:
        out["redis"] = _measure(lambda: RedisStore(url), args.pairs, args.rounds)
        if not args.store:  # a server of its own: its counts are this run's alone
            out["redis_server"] = _server_us(url)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
