"""Closing (and reaping) a Redis-stored request that holds thousands of open grants.

For each grant count, a request is given that many open grants
(:func:`apportion.testing.many_grants.seed_open_grants`), then closed; while the close
script runs, a second client pings the server in a loop, and the longest ping is how long
the script blocked every other client. The same is done for ``reap`` with every grant's
lease ended. Each run then checks that the operation was applied whole: no grant left
open, nothing reserved, one event per grant.

Prints one JSON object: per grant count, ``close_s`` and ``reap_s`` (seconds the script
took, seen from the caller), ``blocked_s`` (the longest ping of the other client during
the close), ``ok`` (applied whole) and ``error`` (the error's type and first line, if the
operation failed). Without ``--store`` it starts its own ``redis-server`` (as
``benchmarks/load.py`` does).

    python benchmarks/close_many_grants.py [--grants 1000 4000 10000] [--store URL]
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from typing import Any

from load import redis_url

from apportion.stores.redis import RedisStore
from apportion.testing.many_grants import seed_open_grants
from apportion.testing.store_conformance import RANKS


def _pinger(url: str, stop: threading.Event, longest: list[float]) -> None:
    client = RedisStore(url, socket_timeout=600.0)._client
    while not stop.is_set():
        start = time.perf_counter()
        while True:  # past lua-time-limit the server answers BUSY until the script ends
            try:
                client.ping()
                break
            except Exception:
                time.sleep(0.001)
        longest[0] = max(longest[0], time.perf_counter() - start)


def _timed(store: RedisStore, operation: str) -> tuple[float, float, str]:
    """Seconds ``close`` or ``reap`` of request ``r`` took, the longest ping, the error."""
    stop, longest = threading.Event(), [0.0]
    pinger = threading.Thread(target=_pinger, args=(store._raw_url, stop, longest))
    pinger.start()
    time.sleep(0.05)
    error = ""
    start = time.perf_counter()
    try:
        if operation == "close":
            store.close("r", 2.0)
        else:
            store.reap(6.0)
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    seconds = time.perf_counter() - start
    time.sleep(0.05)
    stop.set()
    pinger.join()
    return seconds, longest[0], error


def _whole(store: RedisStore, count: int, events_before: int, kind: str) -> bool:
    state = store.get("r")
    released = [e for e in store.events("r")[events_before:] if e.kind == kind]
    return (
        not state.grants
        and state.reserved == 0
        and state.free + state.consumed == state.ceiling
        and len(released) == count
    )


def run(url: str, counts: list[int]) -> dict[str, Any]:
    store = RedisStore(url, socket_timeout=600.0)
    results = {}
    for count in counts:
        row: dict[str, Any] = {}
        for operation, lease_ends in (("close", 10.0**6), ("reap", 5.0)):
            store._client.flushdb()
            store.open("r", RANKS, 10**9, 0.0, ttl=100.0 if operation == "reap" else 10.0**6)
            seed_open_grants(store, "r", "lead", count, 1.0, lease_ends)
            before = len(store.events("r"))
            seconds, blocked, error = _timed(store, operation)
            row[f"{operation}_s"] = round(seconds, 4)
            if operation == "close":
                row["blocked_s"] = round(blocked, 4)
            kind = "release" if operation == "close" else "expire"
            row[f"{operation}_ok"] = not error and _whole(store, count, before, kind)
            row[f"{operation}_error"] = error
        results[str(count)] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, nargs="+", default=[1000, 2000, 4000, 8000, 10000])
    parser.add_argument("--store", help="redis://host:port/db (default: start a server)")
    args = parser.parse_args()
    with redis_url(args.store) as url:
        results = run(url, args.grants)
    print(json.dumps({"python": platform.python_version(), "grants": results}))


if __name__ == "__main__":
    main()
