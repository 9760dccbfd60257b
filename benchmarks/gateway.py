"""The gateway's proxy on loopback: proxied calls per second and the latency it adds.

Starts a fake upstream speaking OpenAI's chat-completions protocol
(:mod:`apportion.testing.fast_upstream`, a process of its own, answering at once with
usage), a ``redis-server`` on a free loopback port (as ``benchmarks/load.py`` does), the
gateway (``apportion serve`` processes, one per configuration: memory or Redis store, 1 or
2 workers, the LiteLLM sender or the direct one, ``direct: true``) and LiteLLM's own proxy
(``litellm --config litellm.yaml``: the same upstream, no budget; ``--litellm-bin``).

Each run measures, for the upstream called directly (the client's own floor) and then
each target in turn, with the same raw HTTP/1.1 keep-alive client (asyncio, requests made
ahead, in ``--client-processes`` processes so the client is not the bottleneck):

* **latency**: one client, ``--latency-calls`` calls one after the other (after a few
  warm-up calls); ``added_p50_ms`` / ``added_p99_ms`` are the target's p50 / p99 minus the
  direct calls' p50 / p99 of the same run;
* **throughput**: ``--clients`` clients at once, ``--calls`` calls each (or until
  ``--max-seconds``); ``calls_per_s`` is the calls answered over the phase's wall time,
  with the p50 / p99 latency under that load.

Every gateway call names its request (``Apportion-Request``, ``--per-request`` calls a
request, ceiling ``--ceiling``) and agent (the five agents of the default pipeline in
turn); after each throughput phase the script checks that every call was budgeted: every
answer was a 200 with ``Apportion-Granted``, and the requests' ledgers (``GET
/v1/budget/requests/{id}``: ``consumed``), the ``Apportion-Used`` headers and the tokens
the upstream billed for those requests all agree (``budget_check``).

The CPU time each server used during its throughput phase (its processes and workers,
read from ``/proc``) is reported per call (``cpu_ms_per_call``): unlike calls per second,
it hardly moves when other work shares the machine. The fake upstream's own figure (under
``direct``) shows it is not the bottleneck (a few hundredths of a millisecond a call, and
thousands of calls per second called directly).

Prints one JSON line: ``calls_per_s``, ``added_p50_ms``, ``added_p99_ms`` of the gateway's
best configuration (the most calls per second; medians over ``--runs``), ``best``,
``uvloop_httptools`` (the event loop and HTTP parser its workers ran: uvicorn picks uvloop
and httptools when installed), the same three keys under ``litellm`` (or ``{"error":
...}`` when its proxy cannot be started) with its ``cpu_ms_per_call`` and ``runtime``,
``ratio_to_litellm`` (the best configuration's calls per second and added p50 over
LiteLLM's, measured in the same runs), ``configs`` (each configuration's medians, CPU per
call, runtime and every run's figures), ``direct`` (the upstream called directly),
``every_call_budgeted``, ``load_average`` (before and after), ``cpus``. ``--save PATH``
also writes it (indented) to a file, such as ``benchmarks/results/gateway-<commit>.json``.

    python benchmarks/gateway.py [--runs 3] [--clients 32] [--calls 100] [--latency-calls 300]
        [--client-processes 2] [--configs memory-1w-direct ...] [--litellm-bin litellm]
        [--no-litellm] [--max-seconds 30] [--save PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ("intake", "retriever", "reasoner", "critic", "formatter")
MODEL = "gpt-4o-mini"
CONFIGS = (
    "memory-1w-litellm",
    "memory-1w-direct",
    "redis-1w-litellm",
    "redis-1w-direct",
    "redis-2w-litellm",
    "redis-2w-direct",
)
WARMUP = 20
MASTER_KEY = "sk-bench-5f1c0a7d9e2b4c6a8f3e1d0b9a7c5e3f"
"""LiteLLM proxy's master key (every client sends it; the gateway runs open, keyless)."""
OFFLINE = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",
    "DISABLE_ADMIN_UI": "True",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- the client


def request_bytes(port: int, request_id: str | None, agent: str, ceiling: int) -> bytes:
    """One chat-completions call as HTTP/1.1 bytes (budget headers when ``request_id``)."""
    tag = request_id or "direct"
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": f"{tag} sort this ticket"}]},
        separators=(",", ":"),
    ).encode()
    head = [
        "POST /v1/chat/completions HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Authorization: Bearer {MASTER_KEY}",
        f"Content-Length: {len(body)}",
    ]
    if request_id is not None:
        head += [
            f"Apportion-Request: {request_id}",
            f"Apportion-Ceiling: {ceiling}",
            f"Apportion-Agent: {agent}",
        ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names), body."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    parts = []
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return status, headers, b"".join(parts)


async def one_client(
    port: int, calls: list[tuple[str | None, bytes]], deadline: float, out: dict[str, Any]
) -> None:
    """Make ``calls`` one after the other on a keep-alive connection (until ``deadline``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for rid, call in calls:
            if time.monotonic() > deadline:
                break
            if rid is not None:
                out["requests"].add(rid)
            began = time.perf_counter()
            writer.write(call)
            status, headers, _ = await read_response(reader)
            out["latencies"].append((time.perf_counter() - began) * 1000.0)
            out["statuses"][status] = out["statuses"].get(status, 0) + 1
            if status == 200 and "apportion-granted" in headers:
                out["budgeted"] += 1
                out["used"] += int(headers.get("apportion-used", "0"))
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


def drive(spec: dict[str, Any]) -> dict[str, Any]:
    """A client process: ``spec["clients"]`` clients at once; its calls' figures."""
    port, budgeted = spec["port"], spec["budgeted"]
    per_request, ceiling = spec["per_request"], spec["ceiling"]
    out: dict[str, Any] = {
        "latencies": [],
        "statuses": {},
        "budgeted": 0,
        "used": 0,
        "requests": set(),
    }
    plans = []
    for client in range(spec["clients"]):
        calls = []
        for n in range(spec["calls"]):
            rid = None
            if budgeted:
                rid = f"{spec['tag']}-p{spec['process']}-c{client}-r{n // per_request}"
            calls.append((rid, request_bytes(port, rid, AGENTS[n % len(AGENTS)], ceiling)))
        plans.append(calls)

    async def main() -> tuple[float, float]:
        deadline = time.monotonic() + spec["max_seconds"]
        began = time.monotonic()
        await asyncio.gather(*(one_client(port, calls, deadline, out) for calls in plans))
        return began, time.monotonic()

    out["began"], out["ended"] = asyncio.run(main())
    out["requests"] = sorted(out["requests"])
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


class Driver:
    """The client processes (a pool, kept for the whole benchmark)."""

    def __init__(self, processes: int, args: argparse.Namespace) -> None:
        self.pool = multiprocessing.get_context("spawn").Pool(processes)
        self.processes = processes
        self.args = args

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

    def phase(
        self, port: int, tag: str, *, clients: int, calls: int, budgeted: bool, processes: int
    ) -> dict[str, Any]:
        """``clients`` clients (spread over ``processes``) making ``calls`` calls each."""
        shares = [clients // processes + (i < clients % processes) for i in range(processes)]
        specs = [
            {
                "port": port,
                "tag": tag,
                "process": i,
                "clients": share,
                "calls": calls,
                "budgeted": budgeted,
                "per_request": self.args.per_request,
                "ceiling": self.args.ceiling,
                "max_seconds": self.args.max_seconds,
            }
            for i, share in enumerate(shares)
            if share
        ]
        results = self.pool.map(drive, specs)
        latencies = [x for r in results for x in r["latencies"]]
        statuses: dict[str, int] = {}
        for r in results:
            for status, n in r["statuses"].items():
                statuses[str(status)] = statuses.get(str(status), 0) + n
        wall = max(r["ended"] for r in results) - min(r["began"] for r in results)
        return {
            "calls": len(latencies),
            "seconds": wall,
            "calls_per_s": len(latencies) / wall if wall > 0 else 0.0,
            "p50_ms": percentile(latencies, 0.50),
            "p99_ms": percentile(latencies, 0.99),
            "statuses": statuses,
            "budgeted": sum(r["budgeted"] for r in results),
            "used": sum(r["used"] for r in results),
            "requests": sorted({rid for r in results for rid in r["requests"]}),
        }

    def latency(self, port: int, tag: str, budgeted: bool) -> dict[str, Any]:
        """One client, calls one after the other: the latency without queueing."""
        self.phase(port, tag + "-warm", clients=1, calls=WARMUP, budgeted=budgeted, processes=1)
        return self.phase(
            port, tag, clients=1, calls=self.args.latency_calls, budgeted=budgeted, processes=1
        )

    def throughput(self, port: int, tag: str, budgeted: bool) -> dict[str, Any]:
        args = self.args
        return self.phase(
            port,
            tag,
            clients=args.clients,
            calls=args.calls,
            budgeted=budgeted,
            processes=min(self.processes, args.clients),
        )


# --------------------------------------------------------------------------- the servers


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, polls: int = 1200) -> None:
    """Poll ``url`` until it answers (at most ``polls`` tries, 0.1 s apart)."""
    for _ in range(polls):
        if process.poll() is not None:
            raise RuntimeError(f"{url}: exited {process.returncode}: {log.read_text()[-1500:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def env() -> dict[str, str]:
    paths = [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, **OFFLINE, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


@contextmanager
def process(argv: list[str], url: str, folder: Path, name: str) -> Iterator[int]:
    """A server process answering at ``url`` once started; stopped at the end."""
    log = folder / f"{name}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env())
    try:
        wait_http(url, proc, log)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def upstream(folder: Path) -> Iterator[tuple[int, int]]:
    """The fake upstream in its own process; its port and process id."""
    port = free_port()
    argv = [sys.executable, "-m", "apportion.testing.fast_upstream", "--port", str(port)]
    with process(argv, f"http://127.0.0.1:{port}/healthz", folder, "upstream") as pid:
        yield port, pid


def gateway_config(folder: Path, name: str, store: str, upstream_port: int) -> Path:
    """The ``serve.yaml`` of one configuration (open mode: no tenants, no keys)."""
    direct = "true" if name.endswith("direct") else "false"
    path = folder / f"{name}.yaml"
    path.write_text(
        f"store: {store}\n"
        "request_ttl: 3600\n"
        "signing_key: benchmark-signing-key-0123456789\n"
        "upstreams:\n"
        "  fake:\n"
        "    prefix: ''\n"
        f"    model: openai/{MODEL}\n"
        f"    api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "    api_key: sk-fake-upstream\n"
        f"    direct: {direct}\n",
        encoding="utf-8",
    )
    return path


@contextmanager
def gateway(
    folder: Path, name: str, redis_url: str | None, upstream_port: int
) -> Iterator[tuple[int, int]]:
    """``apportion serve`` for configuration ``name`` (``memory-1w-direct`` ...); port, pid."""
    store_kind, workers, _ = name.split("-")
    if store_kind == "redis":
        if redis_url is None:
            raise RuntimeError("no redis-server")
        store = f"{redis_url}?prefix=bench-{name}"
    else:
        store = "memory://"
    config = gateway_config(folder, name, store, upstream_port)
    port = free_port()
    argv = [sys.executable, "-m", "apportion.cli", "serve", "--config", str(config)]
    argv += ["--port", str(port), "--workers", workers.removesuffix("w")]
    argv += ["--log-level", "warning"]
    with process(argv, f"http://127.0.0.1:{port}/healthz", folder, name) as pid:
        yield port, pid


@contextmanager
def litellm_proxy(folder: Path, binary: str, upstream_port: int) -> Iterator[tuple[int, int]]:
    """LiteLLM's proxy over the same upstream (no budget, no database, no access log)."""
    config = folder / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: sk-fake-upstream\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  num_retries: 0\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n",
        encoding="utf-8",
    )
    logging = folder / "litellm-logging.json"
    logging.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "loggers": {"uvicorn.access": {"level": "WARNING"}},
            }
        ),
        encoding="utf-8",
    )
    port = free_port()
    argv = [binary, "--config", str(config), "--port", str(port), "--host", "127.0.0.1"]
    argv += ["--log_config", str(logging)]
    with process(argv, f"http://127.0.0.1:{port}/health/liveliness", folder, "litellm") as pid:
        yield port, pid


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A ``redis-server`` on a free loopback port (no persistence); its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    argv += ["--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(500):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.01)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def budget_check(port: int, upstream_port: int, phase: dict[str, Any]) -> dict[str, Any]:
    """Every call budgeted: 200s with ``Apportion-Granted``; ledgers, headers and bills agree."""
    consumed = 0
    for rid in phase["requests"]:
        consumed += int(get_json(f"http://127.0.0.1:{port}/v1/budget/requests/{rid}")["consumed"])
    billed = get_json(f"http://127.0.0.1:{upstream_port}/stats")["billed"]
    upstream_billed = sum(int(billed.get(rid, 0)) for rid in phase["requests"])
    ok = phase["budgeted"] == phase["calls"] == phase["statuses"].get("200", 0)
    return {
        "calls": phase["calls"],
        "budgeted": phase["budgeted"],
        "requests": len(phase["requests"]),
        "ledger_consumed": consumed,
        "used_headers": phase["used"],
        "upstream_billed": upstream_billed,
        "ok": ok and consumed == phase["used"] == upstream_billed and phase["calls"] > 0,
    }


# --------------------------------------------------------------------------- processes


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn's workers), from ``/proc``."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) used so far by ``pid`` and its descendants."""
    total = 0
    for one in process_tree(pid):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def server_runtime(pid: int) -> dict[str, Any]:
    """The event loop and HTTP parser a server's processes run (their loaded libraries).

    uvicorn picks uvloop and httptools when they are installed (``loop``/``http``
    ``auto``): a worker that mapped ``uvloop``'s and ``httptools``' extension modules runs
    them, else asyncio's loop and h11.
    """
    loops, parsers = set(), set()
    for one in process_tree(pid):
        if process_tree(one) != [one]:  # a supervisor: its workers serve
            continue
        try:
            maps = Path(f"/proc/{one}/maps").read_text()
            command = Path(f"/proc/{one}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" in command:  # multiprocessing's helper, not a server
            continue
        loops.add("uvloop" if "/uvloop/loop" in maps else "asyncio")
        parsers.add("httptools" if "/httptools/parser/" in maps else "h11")
    return {"loop": "/".join(sorted(loops)), "http": "/".join(sorted(parsers))}


# --------------------------------------------------------------------------- the runs


def figures(target: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    """One run's figures of a target, its added latency against the direct calls."""
    lat, load = target["latency"], target["throughput"]
    return {
        "calls_per_s": round(load["calls_per_s"], 1),
        "added_p50_ms": round(lat["p50_ms"] - direct["latency"]["p50_ms"], 3),
        "added_p99_ms": round(lat["p99_ms"] - direct["latency"]["p99_ms"], 3),
        "p50_ms": round(lat["p50_ms"], 3),
        "p99_ms": round(lat["p99_ms"], 3),
        "loaded_p50_ms": round(load["p50_ms"], 3),
        "loaded_p99_ms": round(load["p99_ms"], 3),
        "statuses": load["statuses"],
        "latency_calls": lat["calls"],
        "throughput_calls": load["calls"],
        "cpu_ms_per_call": round(target["cpu_ms_per_call"], 3),
    }


KEYS = ("calls_per_s", "added_p50_ms", "added_p99_ms")


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in KEYS}


def measure(driver: Driver, port: int, pid: int, tag: str, budgeted: bool) -> dict[str, Any]:
    """The latency and throughput phases against ``port``; the server's CPU per call."""
    latency = driver.latency(port, tag + "-lat", budgeted)
    began = cpu_seconds(pid)
    throughput = driver.throughput(port, tag + "-load", budgeted)
    used = cpu_seconds(pid) - began
    return {
        "latency": latency,
        "throughput": throughput,
        "cpu_ms_per_call": 1000.0 * used / max(1, throughput["calls"]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]
    result: dict[str, Any] = {}
    per_config: dict[str, list[dict[str, Any]]] = {name: [] for name in args.configs}
    checks: dict[str, list[dict[str, Any]]] = {name: [] for name in args.configs}
    litellm_runs: list[dict[str, Any]] = []
    direct_runs: list[dict[str, Any]] = []
    litellm_error: str | None = None
    with tempfile.TemporaryDirectory(prefix="apportion-gateway-bench-") as tmp, ExitStack() as st:
        folder = Path(tmp)
        up, up_pid = st.enter_context(upstream(folder))
        redis_url = None
        if any(name.startswith("redis") for name in args.configs):
            redis_url = st.enter_context(redis_server(folder))
        ports = {
            name: st.enter_context(gateway(folder, name, redis_url, up)) for name in args.configs
        }
        litellm_port = litellm_pid = None
        if not args.no_litellm:
            named = args.litellm_bin
            beside = Path(named) if "/" in named else Path(sys.executable).with_name(named)
            binary = str(beside) if beside.is_file() else shutil.which(named) or ""
            if not Path(binary).is_file():
                litellm_error = f"no LiteLLM proxy at {args.litellm_bin!r}"
            else:
                try:
                    litellm_port, litellm_pid = st.enter_context(litellm_proxy(folder, binary, up))
                except RuntimeError as error:
                    litellm_error = f"LiteLLM's proxy did not start: {str(error)[:500]}"
        driver = Driver(args.client_processes, args)
        st.callback(driver.close)
        for index in range(args.runs):
            tag = f"r{index}"
            direct = measure(driver, up, up_pid, f"{tag}-direct", False)
            direct_runs.append(
                {
                    "p50_ms": round(direct["latency"]["p50_ms"], 3),
                    "p99_ms": round(direct["latency"]["p99_ms"], 3),
                    "calls_per_s": round(direct["throughput"]["calls_per_s"], 1),
                    "loaded_p50_ms": round(direct["throughput"]["p50_ms"], 3),
                    "cpu_ms_per_call": round(direct["cpu_ms_per_call"], 3),
                }
            )
            for name, (port, pid) in ports.items():
                measured = measure(driver, port, pid, f"{tag}-{name}", True)
                per_config[name].append(figures(measured, direct))
                checks[name].append(budget_check(port, up, measured["throughput"]))
            if litellm_port is not None and litellm_pid is not None:
                litellm_runs.append(
                    figures(measure(driver, litellm_port, litellm_pid, f"{tag}-ll", False), direct)
                )
        runtimes = {name: server_runtime(pid) for name, (_, pid) in ports.items()}
        if litellm_pid is not None:
            runtimes["litellm"] = server_runtime(litellm_pid)
    configs = {
        name: {
            **medians(runs),
            "cpu_ms_per_call": statistics.median(r["cpu_ms_per_call"] for r in runs),
            "runtime": runtimes.get(name),
            "runs": runs,
            "budget_checks": checks[name],
        }
        for name, runs in per_config.items()
    }
    best = max(configs, key=lambda name: configs[name]["calls_per_s"])
    result.update(medians(per_config[best]))
    result["best"] = best
    result["uvloop_httptools"] = runtimes.get(best)
    if litellm_runs:
        result["litellm"] = {
            **medians(litellm_runs),
            "cpu_ms_per_call": statistics.median(r["cpu_ms_per_call"] for r in litellm_runs),
            "runtime": runtimes.get("litellm"),
            "runs": litellm_runs,
        }
        result["ratio_to_litellm"] = {
            "calls_per_s": round(
                result["calls_per_s"] / max(result["litellm"]["calls_per_s"], 1e-9), 2
            ),
            "added_p50_ms": round(
                result["added_p50_ms"] / max(result["litellm"]["added_p50_ms"], 1e-9), 3
            ),
        }
    else:
        result["litellm"] = {"error": litellm_error or "not measured (--no-litellm)"}
    result["every_call_budgeted"] = all(c["ok"] for cs in checks.values() for c in cs)
    result["configs"] = configs
    result["direct"] = {
        "p50_ms": statistics.median(r["p50_ms"] for r in direct_runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in direct_runs),
        "calls_per_s": statistics.median(r["calls_per_s"] for r in direct_runs),
        "cpu_ms_per_call": statistics.median(r["cpu_ms_per_call"] for r in direct_runs),
        "runs": direct_runs,
    }
    result["settings"] = {
        "runs": args.runs,
        "clients": args.clients,
        "calls_per_client": args.calls,
        "latency_calls": args.latency_calls,
        "client_processes": args.client_processes,
        "per_request": args.per_request,
        "max_seconds": args.max_seconds,
    }
    result["load_average"] = {
        "before": load_before,
        "after": [round(x, 2) for x in os.getloadavg()],
    }
    result["cpus"] = os.cpu_count()
    result["python"] = platform.python_version()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (K)")
    parser.add_argument("--calls", type=int, default=100, help="calls per client (throughput)")
    parser.add_argument("--latency-calls", type=int, default=300, help="sequential calls")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--per-request", type=int, default=20, help="calls per budget request")
    parser.add_argument("--ceiling", type=int, default=1_000_000, help="each request's ceiling")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="bound of a phase")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument(
        "--litellm-bin",
        default="litellm",
        help="LiteLLM's proxy command (first looked for beside this Python, then on PATH)",
    )
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy")
    parser.add_argument("--save", type=Path, help="also write the JSON (indented) here")
    args = parser.parse_args()
    for name in ("runs", "clients", "calls", "latency_calls", "client_processes", "per_request"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_seconds <= 0:
        parser.error("--max-seconds must be positive")
    try:
        result = run(args)
    except RuntimeError as error:
        raise SystemExit(f"error: {error}") from None
    print(json.dumps(result, separators=(",", ":")))
    if args.save is not None:
        args.save.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
