"""Load on a shared store: many processes granting and finishing at once.

Each of ``--processes`` workers runs ``--requests`` requests of its own, one after the
other: open, ``--calls`` begin/finish pairs (one per agent of a four-agent pipeline,
usage drawn at random inside the grant, now and then above it), close. Every
``--pooled``-th request draws its ceiling from one shared pool, sized so that it runs out
before the end (those opens are refused and the request runs without the pool). The store
is driven directly (no policy), every operation timed on its own; with ``--op-ids`` every
call carries an operation id, as the controller's calls do (the store records each one).

At the end it checks what must hold:

* ``overspend``: tokens consumed beyond a request's ceiling, plus tokens consumed by the
  pool's requests beyond the pool's capacity (must be 0);
* ``tokens_lost``: after every request has closed, each ledger's ``free`` must equal its
  ceiling less what it consumed, and the pool's ``remaining`` its capacity less what its
  requests consumed (must be 0);
* ``accounting_errors``: requests whose ``consumed + overflow`` differ from the usage the
  worker reported (must be 0).

Prints JSON: ``pairs_per_s`` (begin+finish pairs per second, wall clock, open and close
included), ``p50_us`` and ``p99_us`` per operation, ``round_trips_per_op`` (all operations)
and per operation, ``overspend``, ``tokens_lost``. On a standalone server also
``server_us_per_script``, the server's own time per script call (``INFO commandstats``
after a ``CONFIG RESETSTAT``), and, unless ``--no-ceiling``, the ceiling: the same
number of processes sending as many trivial ``EVALSHA`` calls (``return 1``) through the
store's client, ``trivial_ops_per_s``, and ``ratio_to_trivial``, the operations per second
of the real run over it (issue 20, item 8 aims at 0.7 from 8 processes and at most 8 µs
of server time per script). Without ``--store`` it starts its own
``redis-server`` (from PATH) on a free loopback port and stops it at the end; ``--aof``
turns its append-only file on (``--aof always``: fsync every write). ``durability`` is the
server's (:meth:`~apportion.stores.redis.RedisStore.durability`).

Then the pool-window case (``pool_windows``; ``--window-seconds 0`` skips it): the same
processes draw as fast as they can from one pool of ``--window-capacity`` tokens per
``--window-seconds``, for ``--window-run`` seconds, across many window boundaries, once with
every clock right and once with each process's clock off by up to ``--skew`` seconds
(spread over ``[-skew, +skew]``). Each request uses most of its ceiling and closes; each
process records, per successful draw, the window the store charged it to (the draw
script's reply) and the tokens its request used. Printed per run: the windows seen, draws,
the most tokens used in one window, and ``overspend_by_window`` (tokens used beyond the
capacity, per window; all must be 0) with its sum ``overspend``.

With ``--cluster`` it compares topologies instead: the same load from 8 and from 16
processes (``--cluster-processes``) on a standalone server and on a Redis Cluster of three
primaries (no replicas), both started here (the cluster by the test suite's starter,
``tests/stores/redis_cluster_server.py``), one after the other in the same run. Printed
per topology and process count: ``pairs_per_s``, ``ops_per_s``, the median and p99 of a
``begin``, the checks (``overspend``, ``tokens_lost``, ``accounting_errors``, all 0) and
``durability``; and ``cluster_vs_standalone``, the cluster's pairs per second over the
standalone server's, per process count.

    python benchmarks/load.py [--store redis://host:port/db] [--processes 8] [--requests N]
        [--op-ids] [--aof [always|everysec|no]]
        [--window-seconds 0.25] [--window-capacity 30000] [--window-run 3] [--skew 0.05]
    python benchmarks/load.py --cluster [--cluster-processes 8,16] [--requests N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from apportion.pools import Pool, PoolExhausted
from apportion.stores import open_store
from apportion.stores.redis import RedisStore
from apportion.testing.pool_windows import clock_offsets, draw_until, overspend

RANKS = {"intake": 0, "retriever": 1, "reasoner": 2, "formatter": 0}
CEILING = 20_000
POOL = "load"
LEASE = 60.0


def worker(
    url: str,
    index: int,
    requests: int,
    calls: int,
    pooled: int,
    op_ids: bool,
    start: Any,
    out: Any,
) -> None:
    store = open_store(url)
    assert isinstance(store, RedisStore)
    rng = random.Random(index)
    agents = list(RANKS)
    times: dict[str, list[int]] = {"open": [], "begin": [], "finish": [], "close": []}
    trips: dict[str, int] = dict.fromkeys(times, 0)
    totals = {"overspend": 0, "lost": 0, "accounting": 0, "pool_consumed": 0, "refused": 0}
    clock = time.time
    tick = time.perf_counter_ns
    # warm up (loads the scripts), then wait for the others
    store.open(f"warm-{index}", RANKS, 10, clock(), pool=POOL if pooled else None)
    grant, _ = store.begin(f"warm-{index}", "intake", 1, 1, clock(), LEASE)
    store.finish(f"warm-{index}", grant, 1, 1, clock())
    warm = store.close(f"warm-{index}", clock())
    if pooled:
        totals["pool_consumed"] += warm.consumed
    start.wait()
    for r in range(requests):
        request_id = f"p{index}-{r}"

        def op(name: str, request_id: str = request_id) -> dict[str, str]:
            """An operation id per call, as the controller makes them (``--op-ids``)."""
            return {"op_id": f"{request_id}:{name}"} if op_ids else {}

        pool = POOL if pooled and r % pooled == 0 else None
        t0, n0 = tick(), store.round_trips
        try:
            store.open(request_id, RANKS, CEILING, clock(), ttl=600.0, pool=pool, **op("open"))
        except PoolExhausted:
            totals["refused"] += 1
            pool = None
            store.open(request_id, RANKS, CEILING, clock(), ttl=600.0, **op("open-unpooled"))
        times["open"].append(tick() - t0)
        trips["open"] += store.round_trips - n0
        used = 0
        for c in range(calls):
            agent = agents[c % len(agents)]
            t0, n0 = tick(), store.round_trips
            grant, state = store.begin(
                request_id, agent, 2_000, 1_500, clock(), LEASE, **op(f"b{c}")
            )
            times["begin"].append(tick() - t0)
            trips["begin"] += store.round_trips - n0
            inp = rng.randint(500, 2_000)
            outp = rng.randint(0, 1_500) if rng.random() > 0.02 else 2_500  # some over-use
            used += inp + outp
            t0, n0 = tick(), store.round_trips
            state = store.finish(
                request_id, grant, inp, outp, clock(), truncated=outp >= 1_500, **op(f"f{c}")
            )
            times["finish"].append(tick() - t0)
            trips["finish"] += store.round_trips - n0
        t0, n0 = tick(), store.round_trips
        state = store.close(request_id, clock(), **op("close"))
        times["close"].append(tick() - t0)
        trips["close"] += store.round_trips - n0
        totals["overspend"] += max(0, state.consumed - state.ceiling)
        totals["lost"] += abs(state.ceiling - state.consumed - state.free) + state.reserved
        totals["accounting"] += int(state.consumed + state.overflow != used)
        if pool is not None:
            totals["pool_consumed"] += state.consumed
    out.put({"times": times, "trips": trips, "totals": totals})


TRIVIAL = "return 1"
"""The script of the ceiling: what one EVALSHA per operation costs with no work in it."""


def trivial_worker(url: str, ops: int, start: Any, out: Any) -> None:
    """One process of the ceiling: ``ops`` trivial EVALSHA calls through the store's client."""
    store = open_store(url)
    assert isinstance(store, RedisStore)
    sha = store._command("SCRIPT", "LOAD", TRIVIAL)
    start.wait()
    for _ in range(ops):
        store._command("EVALSHA", sha, 0)
    out.put(ops)


def race(
    target: Any,
    argses: list[tuple[Any, ...]],
    *,
    warm_up: float = 0.5,
    ready: Any = None,
) -> tuple[list[Any], float]:
    """A forked process per ``argses`` entry, released together; their results, wall time.

    Each process runs ``target(*args, start, out)``: it waits for ``start``, then puts its
    result on ``out``. After ``warm_up`` seconds (they warm up and wait) ``ready()`` runs,
    if given, then all start at once; the wall time runs from then to the last result.
    """
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    workers = [context.Process(target=target, args=(*args, start, out)) for args in argses]
    for w in workers:
        w.start()
    time.sleep(warm_up)
    if ready is not None:
        ready()
    began = time.perf_counter()
    start.set()
    results = [out.get(timeout=3600) for _ in workers]
    wall = time.perf_counter() - began
    for w in workers:
        w.join(60)
    return results, wall


def trivial_ceiling(url: str, processes: int, ops: int) -> float:
    """Operations per second the same number of processes reach with a trivial script."""
    done, wall = race(trivial_worker, [(url, ops)] * processes)
    return sum(done) / wall


def script_stats(store: RedisStore) -> tuple[int, float] | None:
    """``(FCALL and EVALSHA calls, their microseconds of server time)`` since the last reset.

    Standalone only. The store's operations are ``FCALL`` (``EVALSHA`` on a server without
    Redis Functions); the ceiling's trivial calls are ``EVALSHA``.
    """
    try:
        text = store._command("INFO", "commandstats")
    except Exception:  # a server that refuses INFO (a managed service): not measured
        return None
    calls, usec, seen = 0, 0.0, False
    for line in (text if isinstance(text, str) else text.decode()).splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_fcall:")):
            fields = dict(part.split("=") for part in line.split(":", 1)[1].split(","))
            calls, usec, seen = calls + int(fields["calls"]), usec + float(fields["usec"]), True
    return (calls, usec) if seen else None


def run_windows(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The pool-window case: tokens used per window charged, without and with skew."""
    store = open_store(url)
    runs = []
    for run_index, skew in enumerate(sorted({0.0, args.skew})):
        pool = f"{POOL}-window-{run_index}"
        store.define_pool(Pool(pool, args.window_capacity, args.window_seconds))
        offsets = enumerate(clock_offsets(skew, args.processes))
        argses = [(url, pool, RANKS, i, offset, args.window_run) for i, offset in offsets]
        drawn, _ = race(draw_until, argses, warm_up=0.0)
        records = [r for result in drawn for r in result]
        over = list(overspend(records, args.window_capacity).values())
        used: dict[int, int] = {}
        for window, tokens in records:
            used[window] = used.get(window, 0) + tokens
        runs.append(
            {
                "skew_s": skew,
                "windows": len(over),
                "draws": len(records),
                "max_used_in_a_window": max(used.values(), default=0),
                "overspend_by_window": over,
                "overspend": sum(over),
            }
        )
    return {
        "processes": args.processes,
        "window_seconds": args.window_seconds,
        "capacity": args.window_capacity,
        "seconds_per_run": args.window_run,
        "runs": runs,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def own_server(aof: str | None) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no --store given and redis-server is not installed")
    folder = tempfile.mkdtemp(prefix="apportion-load-")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder, "--save", ""]
    argv += ["--appendonly", "yes" if aof else "no", "--logfile", os.path.join(folder, "log")]
    argv += ["--appendfsync", aof or "everysec"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        client = RedisStore(url)._client
        for _ in range(500):
            try:
                client.ping()
                break
            except Exception:
                time.sleep(0.01)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def redis_url(given: str | None, aof: str | None = None) -> Iterator[str]:
    """``given`` (``--store``), or the URL of a server of this run's own, stopped after."""
    if given:
        yield given
        return
    with own_server(aof) as url:
        yield url


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] / 1000.0


def flush(store: RedisStore) -> None:
    """Empty the store's server (every primary of a cluster), so each run starts clean."""
    if store.topology == "cluster":
        client = store._cluster_client()
        client.execute_command("FLUSHDB", target_nodes=client.PRIMARIES)
    else:
        store._client.flushdb()


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(url)
    assert isinstance(store, RedisStore)
    flush(store)
    pooled_requests = (args.requests + args.pooled - 1) // args.pooled if args.pooled else 0
    capacity = max(1, pooled_requests * args.processes * CEILING * 3 // 10)
    store.define_pool(Pool(POOL, capacity, 86_400.0))
    standalone = store.topology != "cluster"

    def reset_stats() -> None:  # after the warm-up: the server's time of the run alone
        if standalone:
            with contextlib.suppress(Exception):  # refused by a managed service: not measured
                store._command("CONFIG", "RESETSTAT")

    argses = [
        (url, i, args.requests, args.calls, args.pooled, args.op_ids) for i in range(args.processes)
    ]
    results, wall = race(worker, argses, ready=reset_stats)
    stats = script_stats(store) if standalone else None
    times: dict[str, list[int]] = {}
    trips: dict[str, int] = {}
    totals: dict[str, int] = {}
    for result in results:
        for op, values in result["times"].items():
            times.setdefault(op, []).extend(values)
        for op, n in result["trips"].items():
            trips[op] = trips.get(op, 0) + n
        for key, n in result["totals"].items():
            totals[key] = totals.get(key, 0) + n
    status = store.get_pool(POOL, time.time())
    pool_lost = abs(status.drawn - totals["pool_consumed"])
    pool_overspend = max(0, totals["pool_consumed"] - capacity)
    pairs = args.processes * args.requests * args.calls
    ops = sum(len(v) for v in times.values())
    ceiling = trivial_ceiling(url, args.processes, ops // args.processes) if args.ceiling else 0.0
    return {
        "benchmark": "load",
        "store": store.url,
        "durability": getattr(store, "durability", lambda: "n/a")(),
        "processes": args.processes,
        "requests_per_process": args.requests,
        "pairs_per_request": args.calls,
        "op_ids": args.op_ids,
        "pairs": pairs,
        "seconds": round(wall, 3),
        "pairs_per_s": round(pairs / wall),
        "ops_per_s": round(ops / wall),
        "p50_us": {op: round(percentile(v, 0.50), 1) for op, v in times.items()},
        "p99_us": {op: round(percentile(v, 0.99), 1) for op, v in times.items()},
        "round_trips_per_op": round(sum(trips.values()) / ops, 3),
        "server_us_per_script": (
            round(stats[1] / stats[0], 1) if stats is not None and stats[0] else None
        ),
        "trivial_ops_per_s": round(ceiling) if ceiling else None,
        "ratio_to_trivial": round(ops / wall / ceiling, 3) if ceiling else None,
        "round_trips_by_op": {op: round(trips[op] / len(times[op]), 3) for op in times},
        "overspend": totals["overspend"] + pool_overspend,
        "tokens_lost": totals["lost"] + pool_lost,
        "accounting_errors": totals["accounting"],
        "pool": {
            "capacity": capacity,
            "drawn": status.drawn,
            "consumed_by_its_requests": totals["pool_consumed"],
            "refused_opens": totals["refused"],
            "open_draws": status.open_draws,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


ROOT = Path(__file__).resolve().parents[1]


def compare_topologies(args: argparse.Namespace) -> dict[str, Any]:
    """The same load on a standalone server and on a three-primary cluster, side by side."""
    sys.path.insert(0, str(ROOT / "tests" / "stores"))
    from redis_cluster_server import RedisCluster

    counts = [int(n) for n in args.cluster_processes.split(",")]
    runs: list[dict[str, Any]] = []
    cluster = RedisCluster(primaries=3, replicas=0)
    with own_server(args.aof) as standalone:
        try:
            cluster.start()
            for processes in counts:
                for topology, url in (("standalone", standalone), ("cluster", cluster.url)):
                    args.processes = processes
                    result = run(url, args)
                    runs.append(
                        {
                            "topology": topology,
                            "processes": processes,
                            **{
                                key: result[key]
                                for key in (
                                    "pairs_per_s",
                                    "ops_per_s",
                                    "seconds",
                                    "round_trips_per_op",
                                    "overspend",
                                    "tokens_lost",
                                    "accounting_errors",
                                    "durability",
                                )
                            },
                            "begin_p50_us": result["p50_us"]["begin"],
                            "begin_p99_us": result["p99_us"]["begin"],
                        }
                    )
        finally:
            cluster.cleanup()
    pace = {(r["topology"], r["processes"]): r["pairs_per_s"] for r in runs}
    return {
        "benchmark": "load-topologies",
        "requests_per_process": args.requests,
        "pairs_per_request": args.calls,
        "cluster": "3 primaries, no replicas, on this machine's loopback",
        "runs": runs,
        "cluster_vs_standalone": {
            str(n): round(pace["cluster", n] / pace["standalone", n], 2) for n in counts
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="redis://host:port/db (default: start a server)")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500, help="requests per process")
    parser.add_argument("--calls", type=int, default=4, help="begin/finish pairs per request")
    parser.add_argument("--pooled", type=int, default=4, help="every Nth request uses the pool")
    parser.add_argument(
        "--op-ids",
        action="store_true",
        help="give every call an operation id, as the controller does (recorded by the store)",
    )
    parser.add_argument(
        "--aof",
        nargs="?",
        const="everysec",
        choices=["always", "everysec", "no"],
        help="own server: appendonly yes, with this appendfsync (default everysec)",
    )
    parser.add_argument(
        "--window-seconds", type=float, default=0.25, help="pool-window case (0: skip it)"
    )
    parser.add_argument("--window-capacity", type=int, default=30_000)
    parser.add_argument("--window-run", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--skew", type=float, default=0.05, help="clock offsets up to +-skew")
    parser.add_argument(
        "--no-ceiling",
        dest="ceiling",
        action="store_false",
        help="skip the ceiling run (the same processes, one trivial EVALSHA per operation)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="compare a standalone server with a three-primary cluster (both started here)",
    )
    parser.add_argument(
        "--cluster-processes", default="8,16", help="process counts compared (comma-separated)"
    )
    args = parser.parse_args()
    if args.cluster:
        if args.store:
            parser.error("--cluster starts its own servers: leave --store out")
        print(json.dumps(compare_topologies(args), indent=2))
        return

    def both(url: str) -> dict[str, Any]:
        result = run(url, args)
        if args.window_seconds > 0:
            result["pool_windows"] = run_windows(url, args)
        return result

    with redis_url(args.store, args.aof) as url:
        result = both(url)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
