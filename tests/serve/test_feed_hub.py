"""The feed hub: one reader of the store's feed per worker, fanned out to every stream."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
from test_budget_api import BASE

from apportion.serve import Gateway
from apportion.serve.app import create_app
from apportion.serve.dashboard.session import COOKIE
from apportion.serve.feed_hub import FeedHub, Subscription
from apportion.stores.feed import FeedEvent, FeedPage
from apportion.stores.memory import MemoryStore
from conftest import KEYS, LiveServer, auth

RANKS = {"a": 0, "b": 1}


class CountingStore(MemoryStore):
    """A memory store that counts the feed reads waiting at once (and at most)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0
        self.most_waiting = 0
        self._count = threading.Lock()

    async def afeed(
        self, after: str | None = None, *, prefix: str = "", limit: int = 1000, timeout: float = 0.0
    ) -> FeedPage:
        if timeout <= 0:
            return await super().afeed(after, prefix=prefix, limit=limit, timeout=timeout)
        with self._count:
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            return await super().afeed(after, prefix=prefix, limit=limit, timeout=timeout)
        finally:
            with self._count:
                self.waiting -= 1


async def drain(sub: Subscription, until: int) -> list[FeedEvent]:
    """Catch up from the store, then take the hub's events until ``until`` are in hand."""
    got: list[FeedEvent] = []
    while page := await sub.catch_up():
        got += page
    for _ in range(200):  # bounded: each wait ends at the next event or in 0.05 s
        if len(got) >= until:
            break
        got += await sub.next(0.05)
    return got


def test_every_subscriber_gets_its_events_once_in_order_from_one_reader() -> None:
    store = CountingStore()

    async def main() -> None:
        hub = FeedHub(store, wait_seconds=0.2)
        store.open("x/early", RANKS, 100, 0.0)
        start = store.feed_cursor()
        for i in range(3):
            store.open(f"x/before-{i}", RANKS, 100, 0.0)  # before anyone subscribed
        late = hub.subscribe(start, "x/")  # catches up from start
        now = hub.subscribe(store.feed_cursor(), "")
        other = hub.subscribe(store.feed_cursor(), "y/")
        assert hub.running and hub.subscribers == 3
        await asyncio.sleep(0.05)
        for i in range(4):
            store.open(f"x/after-{i}", RANKS, 100, 0.0)
            store.open(f"y/after-{i}", RANKS, 100, 0.0)
            await asyncio.sleep(0)
        got_late = await drain(late, 7)
        got_now = await drain(now, 8)
        got_other = await drain(other, 4)
        assert [e.request_id for e in got_late] == [
            *(f"x/before-{i}" for i in range(3)),
            *(f"x/after-{i}" for i in range(4)),
        ]
        assert [e.request_id for e in got_now] == [
            f"{t}/after-{i}" for i in range(4) for t in ("x", "y")
        ]
        assert [e.request_id for e in got_other] == [f"y/after-{i}" for i in range(4)]
        assert store.most_waiting == 1  # one waiting read for three subscribers
        for sub in (late, now, other):
            hub.unsubscribe(sub)
        await asyncio.sleep(0)
        assert not hub.running  # the last one left: the reader stops

    asyncio.run(main())


def test_a_slow_subscriber_is_dropped_and_the_others_go_on() -> None:
    store = MemoryStore()

    async def main() -> None:
        hub = FeedHub(store, queue_events=5, wait_seconds=0.2)
        slow = hub.subscribe(store.feed_cursor())
        quick = hub.subscribe(store.feed_cursor())
        got: list[FeedEvent] = []
        for i in range(12):
            store.open(f"r{i}", RANKS, 100, 0.0)
            while page := await quick.catch_up():  # what the hub read before it started
                got += page
            got += await quick.next(1.0)
        for _ in range(50):  # bounded
            if len(got) >= 12:
                break
            got += await quick.next(0.1)
        assert [e.request_id for e in got] == [f"r{i}" for i in range(12)]
        assert slow.dropped and not quick.dropped
        assert await slow.next(5.0) == []  # at once: it gets nothing more
        assert hub.subscribers == 1
        await hub.aclose()
        assert not hub.running and quick.dropped

    asyncio.run(main())


def test_several_streams_share_one_reader_of_the_store(tmp_path: Any) -> None:
    from dashboard_helpers import dashboard_config

    store = CountingStore()
    gateway = Gateway(dashboard_config(tmp_path), store=store)
    with LiveServer(create_app(gateway)) as server, httpx.Client(base_url=server.url) as http:
        cookies = {}
        for tenant in ("acme", "globex", "ops"):
            answer = http.post("/dashboard/login", data={"key": KEYS[tenant]})
            cookies[tenant] = {COOKIE: answer.cookies[COOKIE]}
        clients = {t: httpx.Client(base_url=server.url, cookies=c) for t, c in cookies.items()}
        streams = {t: c.stream("GET", "/dashboard/events", timeout=30) for t, c in clients.items()}
        try:
            lines = {t: s.__enter__().iter_lines() for t, s in streams.items()}
            for it in lines.values():
                assert next(it) == "retry: 2000"
            opened = {}
            for tenant in ("acme", "globex", "acme"):
                answer = http.post(BASE, json={"ceiling": 300}, headers=auth(tenant))
                assert answer.status_code == 201
                opened.setdefault(tenant, []).append(f"{tenant}/{answer.json()['request_id']}")
            seen = {t: _opens(lines[t], n) for t, n in (("acme", 2), ("globex", 1), ("ops", 3))}
        finally:
            for s in streams.values():
                s.__exit__(None, None, None)
            for c in clients.values():
                c.close()
    assert seen["acme"] == opened["acme"]
    assert seen["globex"] == opened["globex"]
    assert sorted(seen["ops"]) == sorted(opened["acme"] + opened["globex"])  # the admin: all
    assert store.most_waiting == 1  # three streams, one reader waiting on the feed


def _opens(lines: Any, wanted: int) -> list[str]:
    import json

    found: list[str] = []
    for line in lines:
        if line.startswith("data: "):
            found.append(json.loads(line[6:])["r"])
            if len(found) >= wanted:
                break
    return found
