"""The live dashboard under load, in a real headless Chromium: update latency and page memory.

Starts a ``redis-server`` on a free loopback port, opens ``--requests`` requests (default
1,000; five agents each) in its store, runs the real gateway (``apportion serve``: uvicorn,
``--workers`` processes, open mode) over that store, and opens the live page ``/`` in
Debian's headless ``chromium`` driven over the DevTools Protocol
(:class:`apportion.testing.cdp.Browser`, the flags of :mod:`apportion.testing.chromium`).
Then, for ``--duration`` seconds (default 60; the issue's long run is ``--duration 600``),
a driver settles ``--rate`` grants per second (default 100) straight in the store, as
another replica would (each settlement is followed by a new grant elsewhere, so about
``2 x rate`` changes a second reach the page), and every ``1 / --churn`` seconds closes one
request and opens a new one (the page fetches its rows; the closed one leaves the page a
minute later).

A ``MutationObserver`` (installed over CDP; the page's own script is unchanged) notes when
an agent's ``data-used`` changes, and the first animation frame after it. For each
settlement the driver notes the wall-clock time just before ``finish`` was sent to the
store and the agent's consumed tokens after it; the page's note of that value gives:

* ``update_p95_ms`` (and p50 / p99 / max): settlement sent to the store -> the next frame
  after the bar and figures changed (the page shows it);
* ``dom_p95_ms``: the same to the DOM change itself;
* ``missed``: settlements the page never showed (counted after a short drain at the end).

Every ``--sample-every`` seconds the page's memory is read: ``renderer_rss_mb`` (the
resident memory of Chromium's page renderer processes, read from ``/proc``),
``js_heap_mb`` (V8's used heap, ``Runtime.getHeapUsage``), ``dom_nodes``
(``Memory.getDOMCounters``: garbage nodes count until collected). Three samples follow a
forced full garbage collection (``collected``): at page load, at the end of the warm-up
(a fifth of the run, at least 10 s; one pause of the page) and at the end.
``page_memory_mb`` is the renderer's resident memory at the end; ``memory_growth_mb`` its
growth from the warm-up's collected sample to the end's, and ``memory_bound_mb`` the
bound the run is checked against (``--memory-bound``, default 64 MB, about a tenth of the
page's resident memory with 1,000 requests): a page that kept every event, or every
closed request's rows, would pass it in a ten-minute run. ``long_tasks`` counts the
page's tasks over 50 ms (``PerformanceObserver``), a measure of whether it stays
responsive.

Prints one JSON line (``--save PATH`` also writes it, indented, e.g. to
``benchmarks/results/dashboard-<commit>.json``), with ``load_average`` before and after
(the machine is shared: quote figures with it).

    python benchmarks/dashboard.py [--duration 60] [--requests 1000] [--rate 100]
        [--churn 1] [--workers 1] [--sample-every 5] [--memory-bound 64] [--save PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from load import own_server  # noqa: E402

from apportion.stores import open_store  # noqa: E402
from apportion.stores.base import Store  # noqa: E402
from apportion.testing.cdp import Browser  # noqa: E402
from apportion.testing.chromium import find_chromium  # noqa: E402
from apportion.testing.ports import free_port  # noqa: E402

AGENTS = ("intake", "retriever", "reasoner", "critic", "formatter")
RANKS = {name: i for i, name in enumerate(AGENTS)}
CEILING = 50_000_000
TENANT = "default/"  # the open-mode tenant's prefix
HELD = 200
"""Grants kept open at once (each settlement settles the oldest and begins one)."""

OBSERVER = """
(() => {
  window.__lat = [];
  window.__long = [];
  let due = [];
  const observer = new MutationObserver(records => {
    const now = Date.now();
    for (const rec of records) {
      const row = rec.target;
      const used = row.getAttribute('data-used');
      if (used === rec.oldValue) continue;
      const tb = row.closest('tbody.request');
      if (!tb) continue;
      due.push([tb.dataset.request, row.dataset.agent, Number(used), now]);
    }
    if (due.length) {
      const batch = due;
      due = [];
      requestAnimationFrame(() => {
        const shown = Date.now();
        for (const item of batch) { item.push(shown); window.__lat.push(item); }
      });
    }
  });
  observer.observe(document.getElementById('requests'), {
    subtree: true, attributes: true, attributeFilter: ['data-used'], attributeOldValue: true,
  });
  new PerformanceObserver(list => {
    for (const e of list.getEntries()) window.__long.push(e.duration);
  }).observe({ type: 'longtask', buffered: false });
  return true;
})()
"""
DRAIN = "(() => { const a = window.__lat; window.__lat = []; return a; })()"
DRAIN_LONG = "(() => { const a = window.__long; window.__long = []; return a; })()"


@contextlib.contextmanager
def gateway(store_url: str, workers: int, folder: Path) -> Iterator[tuple[str, int]]:
    """``apportion serve`` (open mode) over ``store_url``; its URL and process id."""
    config = folder / "serve.yaml"
    config.write_text(
        f"store: {store_url}\nrequest_ttl: 86400\n"
        "signing_key: a-benchmark-signing-key-of-some-length\n",
        encoding="utf-8",
    )
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    log = (folder / "gateway.log").open("wb")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "apportion.cli", "serve", "--config", str(config)),
            *("--port", str(port), "--workers", str(workers), "--log-level", "warning"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                raise SystemExit(f"the gateway exited: {(folder / 'gateway.log').read_text()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/healthz", timeout=1) as answer,
            ):
                if answer.status == 200:
                    break
            time.sleep(0.1)
        else:
            raise SystemExit("the gateway never answered")
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def open_request(store: Store, rid: str) -> None:
    share = CEILING // (2 * len(AGENTS))
    store.open(
        rid,
        RANKS,
        CEILING,
        time.time(),
        allocation=dict.fromkeys(AGENTS, share),
        ttl=86_400.0,
    )


class Driver(threading.Thread):
    """Settles ``rate`` grants a second in the store (and churns requests) until stopped."""

    def __init__(self, store: Store, ids: list[str], rate: float, churn: float) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.ids = ids
        self.rate = rate
        self.churn = churn
        self.stop = threading.Event()
        self.settled: dict[tuple[str, str, int], float] = {}
        """(request id, agent, its consumed tokens after) -> time the finish was sent."""
        self.lock = threading.Lock()
        self.held: deque[tuple[str, str, Any]] = deque()
        self.errors: list[str] = []
        self.closed = 0
        self.opened = 0
        self.started = 0.0
        self.ended = 0.0
        self._next = 0

    def begin_one(self) -> None:
        rid = self.ids[self._next % len(self.ids)]
        agent = AGENTS[(self._next // len(self.ids)) % len(AGENTS)]
        self._next += 7  # a stride prime to the counts: requests and agents vary
        if any(r == rid and a == agent for r, a, _ in self.held):
            return
        grant, _ = self.store.begin(rid, agent, 400, 200, time.time(), 3600.0)
        self.held.append((rid, agent, grant))

    def settle_one(self, n: int) -> None:
        rid, agent, grant = self.held.popleft()
        sent = time.time()
        state = self.store.finish(rid, grant, 300 + n % 97, 100 + n % 53, sent)
        with self.lock:
            self.settled[(rid, agent, state.consumed_by[agent])] = sent

    def churn_one(self) -> None:
        old = self.ids.pop(0)
        self.held = deque(h for h in self.held if h[0] != old)
        self.store.close(old, time.time())
        self.closed += 1
        rid = f"{TENANT}late-{self.opened:05d}"
        open_request(self.store, rid)
        self.ids.append(rid)
        self.opened += 1

    def run(self) -> None:
        try:
            while len(self.held) < HELD:
                self.begin_one()
            self.started = time.time()
            n = 0
            next_churn = self.started + (1 / self.churn if self.churn else float("inf"))
            while not self.stop.is_set():
                due = self.started + n / self.rate
                wait = due - time.time()
                if wait > 0:
                    self.stop.wait(wait)
                    continue
                self.settle_one(n)
                self.begin_one()
                n += 1
                if time.time() >= next_churn:
                    self.churn_one()
                    next_churn += 1 / self.churn
        except Exception as exc:  # reported in the results
            self.errors.append(f"{type(exc).__name__}: {exc}")
        self.ended = time.time()


def descendants(pid: int) -> list[int]:
    """The ids of every process below ``pid`` (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def renderer_rss_mb(browser_pid: int) -> float:
    """The resident memory of the browser's page renderers (not its own UI's), MB."""
    total = 0
    for pid in descendants(browser_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()  # Chromium joins it with spaces
            if b"--type=renderer" not in argv or b"--top-chrome-webui" in argv:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def memory_sample(
    browser: Browser, browser_pid: int, at: float, *, collect: bool = False
) -> dict[str, Any]:
    """The page's memory now (``collect``: after a full garbage collection, a long pause)."""
    if collect:
        browser.send("HeapProfiler.collectGarbage")
    heap = browser.send("Runtime.getHeapUsage")
    counters = browser.send("Memory.getDOMCounters")
    return {
        "t_s": round(at, 1),
        "collected": collect,
        "renderer_rss_mb": renderer_rss_mb(browser_pid),
        "js_heap_mb": round(heap["usedSize"] / 2**20, 2),
        "dom_nodes": counters["nodes"],
        "listeners": counters["jsEventListeners"],
    }


TIMINGS = ("TaskDuration", "ScriptDuration", "RecalcStyleDuration", "LayoutDuration")


def timings(browser: Browser) -> dict[str, float]:
    """The page's cumulative main-thread seconds (``Performance.getMetrics``) and counts."""
    metrics = browser.send("Performance.getMetrics")["metrics"]
    return {m["name"]: float(m["value"]) for m in metrics}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


def run(args: argparse.Namespace, chromium: str, folder: Path) -> dict[str, Any]:
    with own_server(None) as redis_url:
        store_url = f"{redis_url}?prefix=dashbench"
        store = open_store(store_url)
        ids = [f"{TENANT}bench-{i:05d}" for i in range(args.requests)]
        for rid in ids:
            open_request(store, rid)
        with (
            gateway(store_url, args.workers, folder) as (url, gateway_pid),
            Browser(chromium, folder, window=(1280, 900), reply_seconds=120) as browser,
        ):
            browser_pid = browser.pid
            loading = time.perf_counter()
            browser.go(f"{url}/")
            browser.wait_for("document.getElementById('live')?.dataset.state === 'open'")
            load_ms = round((time.perf_counter() - loading) * 1000)
            rows = browser.evaluate("document.querySelectorAll('tbody.request').length")
            browser.evaluate(OBSERVER)
            browser.send("Performance.enable")
            before = timings(browser)
            driver = Driver(store, list(ids), args.rate, args.churn)
            seen: dict[tuple[str, str, int], tuple[float, float]] = {}
            long_tasks: list[float] = []
            samples = [memory_sample(browser, browser_pid, 0.0, collect=True)]
            servers = [gateway_pid, *descendants(gateway_pid)]
            cpu_before = cpu_seconds(servers)
            browsers = [browser_pid, *descendants(browser_pid)]
            browser_cpu_before = cpu_seconds(browsers)
            driver.start()
            start = time.time()
            next_sample = start + args.sample_every
            warm = max(10.0, args.duration / 5)
            baseline: dict[str, Any] | None = None
            while time.time() - start < args.duration and not driver.errors:
                time.sleep(1.0)
                for rid, agent, used, dom, shown in browser.evaluate(DRAIN) or []:
                    seen.setdefault((rid, agent, int(used)), (dom, shown))
                if baseline is None and time.time() - start >= warm:
                    baseline = memory_sample(browser, browser_pid, warm, collect=True)
                    samples.append(baseline)
                elif time.time() >= next_sample:
                    samples.append(memory_sample(browser, browser_pid, time.time() - start))
                    next_sample += args.sample_every
            driver.stop.set()
            driver.join(30)
            time.sleep(3.0)  # let the last settlements reach the page
            for rid, agent, used, dom, shown in browser.evaluate(DRAIN) or []:
                seen.setdefault((rid, agent, int(used)), (dom, shown))
            long_tasks.extend(browser.evaluate(DRAIN_LONG) or [])
            samples.append(memory_sample(browser, browser_pid, time.time() - start, collect=True))
            after = timings(browser)
            cpu_gateway = cpu_seconds(servers) - cpu_before
            cpu_browser = cpu_seconds(browsers) - browser_cpu_before
            live = browser.evaluate("document.getElementById('live').dataset.state")
            on_page = browser.evaluate("document.querySelectorAll('tbody.request').length")
    elapsed = max(1e-9, driver.ended - driver.started)
    shown_ms, dom_ms = [], []
    for key, sent in driver.settled.items():
        found = seen.get(key)
        if found is not None:
            dom_ms.append(found[0] - sent * 1000)
            shown_ms.append(found[1] - sent * 1000)
    if baseline is None:  # a run shorter than its warm-up
        baseline = samples[0]
    growth = round(samples[-1]["renderer_rss_mb"] - baseline["renderer_rss_mb"], 1)
    return {
        "update_p95_ms": pct(shown_ms, 0.95),
        "update_p50_ms": pct(shown_ms, 0.50),
        "update_p99_ms": pct(shown_ms, 0.99),
        "update_max_ms": pct(shown_ms, 1.0),
        "dom_p95_ms": pct(dom_ms, 0.95),
        "page_memory_mb": samples[-1]["renderer_rss_mb"],
        "memory_growth_mb": growth,
        "memory_bound_mb": args.memory_bound,
        "memory_within_bound": growth <= args.memory_bound,
        "js_heap_growth_mb": round(samples[-1]["js_heap_mb"] - samples[0]["js_heap_mb"], 2),
        "dom_nodes": samples[-1]["dom_nodes"],
        "duration_s": args.duration,
        "open_requests": args.requests,
        "rows_at_load": rows,
        "rows_at_end": on_page,
        "page_load_ms": load_ms,
        "settlements": len(driver.settled),
        "settlements_per_s": round(len(driver.settled) / elapsed, 1),
        "missed": len(driver.settled) - len(shown_ms),
        "requests_churned": driver.closed,
        "long_tasks": len(long_tasks),
        "long_task_max_ms": round(max(long_tasks), 1) if long_tasks else 0,
        "stream_state_at_end": live,
        "page_main_thread_s_per_s": {
            name.removesuffix("Duration").lower(): round((after[name] - before[name]) / elapsed, 3)
            for name in TIMINGS
        },
        "layouts_per_s": round((after["LayoutCount"] - before["LayoutCount"]) / elapsed, 1),
        "gateway_workers": args.workers,
        "gateway_cpu_s_per_s": round(cpu_gateway / elapsed, 3),
        "browser_cpu_s_per_s": round(cpu_browser / elapsed, 3),
        "driver_errors": driver.errors,
        "memory_samples": samples,
        "baseline_sample_t_s": baseline["t_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (60)")
    parser.add_argument("--requests", type=int, default=1000, help="open requests (1000)")
    parser.add_argument("--rate", type=float, default=100.0, help="settlements a second")
    parser.add_argument("--churn", type=float, default=1.0, help="requests replaced a second")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes")
    parser.add_argument("--sample-every", type=float, default=5.0, help="memory sample period")
    parser.add_argument("--memory-bound", type=float, default=64.0, help="growth bound, MB")
    parser.add_argument("--save", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="apportion-dashboard-") as folder:
        result = run(args, chromium, Path(folder))
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    result["cpus"] = os.cpu_count()
    result["chromium"] = subprocess.run(
        [chromium, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(json.dumps(result))
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
